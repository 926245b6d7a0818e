"""Did the fine-tune forget general skills? Answer loss on general instructions, base vs candidate.

PEFT's forgetting metric: mean cross-entropy of reference answers to general instructions after fine-tuning
minus before. The default regression set is Self-Instruct's 175 human-written seed tasks (Wang et al. 2023,
Apache-2.0), read from ``../shared/data/self_instruct_seed/seed_tasks.jsonl`` beside the checkout (a seeded
sample of ``forgetting_rows``); where it is absent the check is skipped and says so. Point
``evaluate.forgetting_set`` at your own (chat JSONL or prompt/completion / Alpaca JSONL).
"""

import json
from pathlib import Path

from tasks.core import StageError
from tasks.evaluate.generation import score_all
from tasks.prompting import render_full, render_prompt


def _resolve(path: str) -> Path:
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return Path(__file__).resolve().parents[2] / path


def default_set_missing(path: str | None) -> bool:
    """Whether ``path`` is the shipped default and this installation lacks it (then the check is skipped)."""
    from tasks.evaluate.config import DEFAULT_FORGETTING_SET

    return path == DEFAULT_FORGETTING_SET and not _resolve(path).exists()


def load_regression_set(path: str, limit: int, seed: int = 0) -> list[tuple[list[dict], str]]:
    """(prompt messages, reference answer) pairs from a chat, prompt/completion or Alpaca JSONL file."""
    p = _resolve(path)
    if not p.exists():
        raise StageError(f"evaluate.forgetting_set {path!r} does not exist (set it to null to skip the check).")
    pairs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise StageError(f"{p}, line {n}: not valid JSON.") from None
        if "messages" in obj:
            msgs = obj["messages"]
            pairs.append((msgs[:-1], str(msgs[-1]["content"])))
        elif "prompt" in obj:
            pairs.append(([{"role": "user", "content": str(obj["prompt"])}], str(obj["completion"])))
        elif "instruction" in obj:
            user = obj["instruction"] + (f"\n\n{obj['input']}" if obj.get("input") else "")
            pairs.append(([{"role": "user", "content": user}], str(obj["output"])))
        else:
            raise StageError(f"{p}, line {n}: expected `messages`, `prompt`/`completion` or `instruction`/`output`.")
    if len(pairs) > limit:
        import random

        pairs = random.Random(seed).sample(pairs, limit)
    return pairs


def forgetting_delta(scorer, candidate_adapter: str, cfg, template: str | None = None) -> float:
    """Candidate's answer loss minus the base model's on the regression set (positive: it forgot)."""
    pairs = load_regression_set(cfg.forgetting_set, cfg.forgetting_rows, cfg.seed)
    tok = scorer.tokenizer
    prompts = [render_prompt(tok, m, template) for m, _ in pairs]
    fulls = [render_full(tok, m, a, template) for m, a in pairs]
    losses = {}
    for name, adapter in (("base", None), ("candidate", candidate_adapter)):
        model, ctx = scorer.activate(name, adapter)
        with ctx:
            _, _, losses[name] = score_all(
                model, tok, prompts, fulls, 1, cfg.batch_size, generate=False, desc=f"forgetting.{name}"
            )
    return round(losses["candidate"] - losses["base"], 6)
