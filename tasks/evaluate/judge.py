"""Optional pairwise LLM-as-judge: candidate vs champion (or the best baseline), positions swapped per item.

Every item is judged twice, candidate as A then as B, which cancels a judge's position bias: the candidate wins
an item when both orders prefer it (or one prefers it and the other calls a tie), loses symmetrically, and
anything else is a tie. Verdicts are cached per (prompt, ordered outputs, endpoint, model, rubric) as small JSON
files (no key, no run data beyond the hash), so a re-run costs no calls; ``max_calls`` caps the new calls of one
run (items past the cap are counted as not judged). Identical outputs are a tie without a call.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from tasks.evaluate.config import JudgeConfig
from tasks.evaluate.openai_client import ChatClient, EndpointError

_VERDICT = re.compile(r"\b(A|B|TIE)\b", re.IGNORECASE)


def judge_messages(rubric: str, prompt: str, a: str, b: str) -> list[dict]:
    """The judge's chat messages for one ordered pair."""
    return [
        {"role": "system", "content": "You compare two responses to the same request. Answer with A, B or TIE only."},
        {
            "role": "user",
            "content": f"{rubric}\n\n[Request]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\nAnswer:",
        },
    ]


def parse_verdict(text: str) -> str:
    """``A``, ``B`` or ``TIE`` from the judge's answer (anything unreadable is a tie)."""
    m = _VERDICT.search(text or "")
    return m.group(1).upper() if m else "TIE"


def _cache_dir(cfg: JudgeConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    from tasks.home import loraflow_home

    return loraflow_home() / "cache" / "judge"


class _CachedJudge:
    def __init__(self, cfg: JudgeConfig):
        self.cfg, self.dir = cfg, _cache_dir(cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client = ChatClient(cfg.url, cfg.model, cfg.api_key_env, cfg.api_key_secret, cfg.timeout_s)
        self.cached = 0

    def verdict(self, prompt: str, a: str, b: str) -> str | None:
        """The verdict for (A, B), from the cache or one call; None when the call cap is reached."""
        key = hashlib.sha256(
            json.dumps([prompt, a, b, self.cfg.url, self.cfg.model, self.cfg.rubric]).encode()
        ).hexdigest()
        path = self.dir / f"{key}.json"
        if path.exists():
            self.cached += 1
            return json.loads(path.read_text())["verdict"]
        if self.client.calls >= self.cfg.max_calls:
            return None
        v = parse_verdict(self.client.complete(judge_messages(self.cfg.rubric, prompt, a, b)))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"verdict": v}))
        tmp.replace(path)
        return v


def _combine(first: str, second: str) -> float:
    """Item score for the candidate (A in ``first``, B in ``second``): 1 win, 0.5 tie, 0 loss."""
    votes = {"A": 1, "B": -1, "TIE": 0}[first] + {"B": 1, "A": -1, "TIE": 0}[second]
    return 1.0 if votes > 0 else 0.0 if votes < 0 else 0.5


def judge_pairwise(
    prompts: list[str], candidate: list[str], other: list[str], cfg: JudgeConfig, seed: int = 0
) -> dict[str, float | int | str]:
    """Win / tie / loss rates of the candidate against ``other`` with a bootstrap interval of the win rate."""
    judge = _CachedJudge(cfg)
    scores, not_judged, error = [], 0, ""
    for prompt, c, o in zip(prompts, candidate, other, strict=True):
        if c.strip() == o.strip():
            scores.append(0.5)
            continue
        try:
            first = judge.verdict(prompt, c, o)
            second = judge.verdict(prompt, o, c) if first is not None else None
        except EndpointError as e:
            error = str(e)
            break
        if second is None:
            not_judged += 1
            continue
        scores.append(_combine(first, second))
    s = np.array(scores)
    wins = (s == 1.0).astype(float)
    out: dict[str, float | int | str] = {
        "items": len(s),
        "not_judged": not_judged + (len(prompts) - len(s) - not_judged if error else 0),
        "calls": judge.client.calls,
        "cached": judge.cached,
        "win_rate": float(wins.mean()) if len(s) else float("nan"),
        "tie_rate": float((s == 0.5).mean()) if len(s) else float("nan"),
        "loss_rate": float((s == 0.0).mean()) if len(s) else float("nan"),
    }
    if len(s):
        rng = np.random.default_rng(seed)
        boot = [wins[rng.integers(0, len(s), len(s))].mean() for _ in range(1000)]
        out["win_rate_low"], out["win_rate_high"] = float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))
    if error:
        out["error"] = error
    return out
