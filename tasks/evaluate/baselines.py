"""Prompt-engineering baselines scored beside the fine-tune: what prompting alone gives on the same test rows.

- ``base``: the base model, zero-shot, with the config's system prompt (the test record's own prompt).
- ``base_fewshot``: the base model with ``k`` train examples put before the test prompt as earlier user /
  assistant turns, the same examples for every test prompt (deterministic: a seeded pick from the train split).
"""

import json

import pandas as pd

from tasks.evaluate.metrics import parse_json_object

BASELINES = ("base", "base_fewshot", "external")


def is_baseline(name: str) -> bool:
    """Whether a metrics row is a prompt-engineering baseline (base, base_fewshot, external models)."""
    return name in BASELINES or name.startswith("external")


def _diversity_key(answer: str, task: str) -> str:
    if task == "json":
        obj = parse_json_object(answer)
        if obj:
            first = next(iter(obj))
            return json.dumps(obj[first], sort_keys=True, default=str)
    return answer.strip()


def pick_fewshot(pool: pd.DataFrame, k: int, seed: int, pick: str = "seeded", task: str = "generation") -> list[dict]:
    """``k`` examples (``{"user", "assistant"}``) from single-turn train records, chosen deterministically.

    Args:
        pool: train records (``id``, ``messages``).
        k: how many.
        seed: seed of the pick.
        pick: ``seeded`` (a seeded sample) or ``diverse`` (the same order, at most one example per distinct
            answer, or per value of a JSON answer's first field).
        task: the eval task (``json`` changes what ``diverse`` compares).
    """
    if k == 0 or len(pool) == 0:
        return []
    rows = pool.sort_values("id", kind="stable").sample(frac=1.0, random_state=seed)
    chosen, seen = [], set()
    for msgs in rows["messages"]:
        turns = [m for m in msgs if m["role"] != "system"]
        if len(turns) != 2 or turns[0]["role"] != "user" or turns[1]["role"] != "assistant":
            continue
        key = _diversity_key(str(turns[1]["content"]), task)
        if pick == "diverse" and key in seen:
            continue
        seen.add(key)
        chosen.append({"user": str(turns[0]["content"]), "assistant": str(turns[1]["content"]).strip()})
        if len(chosen) == k:
            break
    return chosen


def with_fewshot(prompt: list[dict], examples: list[dict]) -> list[dict]:
    """The prompt with the examples inserted as user / assistant turns after its system message."""
    head = [m for m in prompt[:1] if m["role"] == "system"]
    shots = [
        t
        for ex in examples
        for t in ({"role": "user", "content": ex["user"]}, {"role": "assistant", "content": ex["assistant"]})
    ]
    return [*head, *shots, *prompt[len(head) :]]
