"""Evaluate baselines, the candidate adapter and the current champion on the same frozen test split.

Modules: :mod:`~tasks.evaluate.config` (settings), :mod:`~tasks.evaluate.generation` (batched greedy decoding,
label-constrained decoding, answer loss), :mod:`~tasks.evaluate.metrics` (suites by task),
:mod:`~tasks.evaluate.baselines` (zero-shot and few-shot prompting), :mod:`~tasks.evaluate.significance`
(paired bootstrap, McNemar), :mod:`~tasks.evaluate.forgetting`, :mod:`~tasks.evaluate.judge` (pairwise LLM
judge), :mod:`~tasks.evaluate.report` and :mod:`~tasks.evaluate.stage` (the stage itself). Heavy imports
(torch, transformers, peft, sacrebleu, rouge-score, matplotlib) happen inside the functions.
"""

from tasks.evaluate.config import EvalConfig, EvalResult, ExternalModelConfig, JudgeConfig
from tasks.evaluate.generation import LabelTrie, label_token_ids, score_all, trie_max
from tasks.evaluate.stage import evaluate_models, evaluate_task

__all__ = [
    "EvalConfig",
    "EvalResult",
    "ExternalModelConfig",
    "JudgeConfig",
    "LabelTrie",
    "evaluate_models",
    "evaluate_task",
    "label_token_ids",
    "score_all",
    "trie_max",
]
