"""The promotion gate: does the candidate beat every prompt-engineering baseline and the champion, for sure?

On the same frozen test prompts, the candidate's ``gate_metric`` must beat the **best** baseline (``base``
zero-shot, ``base_fewshot``, an optional external model: "if you can't beat prompting, don't fine-tune") and the
current champion by at least ``gate_margin``. With ``require_significance`` the lower bound of the paired
bootstrap interval of candidate − other (from the evaluate stage) must clear the margin as well, so a win within
test-set noise does not promote. ``max_forgetting`` blocks a candidate whose answer loss on general instructions
rose by more than that. Pure: no MLflow involved; every reason is a sentence for the registry and the summary.
"""

from pydantic import Field

from tasks.core import StrictModel
from tasks.evaluate.baselines import is_baseline


class GateConfig(StrictModel):
    """What a candidate must beat, and by how much, to become champion."""

    gate_metric: str = Field(
        "accuracy_constrained",
        description="Eval metric the gate compares (higher is better): accuracy_constrained for classifiers, "
        "rougeL / chrf / bleu for generation, field_f1 / schema_valid / exact_match for json.",
    )
    gate_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="The candidate must beat the best baseline and the champion by at least this much (0.02 = 2 "
        "points). Larger: fewer promotions on test-set noise (one row of 500 is 0.2 points).",
    )
    require_champion_comparison: bool = Field(
        True,
        description="When a champion exists but could not be scored on this test set (e.g. a different base "
        "model), refuse promotion (True) or compare with the baselines only (False).",
    )
    require_significance: bool = Field(
        False,
        description="Also require the lower bound of the paired bootstrap interval of candidate − other to clear "
        "the margin (evaluate.bootstrap resamples, evaluate.confidence).",
    )
    max_forgetting: float | None = Field(
        None,
        ge=0.0,
        description="Block a candidate whose answer loss on the general regression set rose by more than this "
        "(nats per token, candidate − base; None: report only).",
    )


def _beats(candidate: float, other: float, margin: float) -> bool:
    """``candidate - other >= margin``, tolerant of float noise (0.12 - 0.10 is 0.01999...)."""
    return candidate - other >= margin - 1e-9


def _compare(cand: float, other: float, label: str, cfg: GateConfig, interval: dict | None):
    """(ok, reason) for candidate vs one other model, ``label`` naming it in the reason."""
    key, margin = cfg.gate_metric, cfg.gate_margin
    diff = cand - other
    if not _beats(cand, other, margin):
        return (
            False,
            f"candidate {key} {cand:.4f} does not beat {label} {other:.4f} by the margin {margin} ({diff:+.4f})",
        )
    reason = f"candidate {key} {cand:.4f} beats {label} {other:.4f} by {diff:+.4f} (margin {margin})"
    if cfg.require_significance:
        low = (interval or {}).get("low")
        if low is None:
            return False, f"{reason}, but there is no interval to check (register.require_significance=true)"
        if not _beats(low, 0.0, margin):
            return False, (
                f"{reason}, but not significantly: the interval's lower bound {low:+.4f} does not clear the margin "
                f"(register.require_significance=true)"
            )
        reason += f"; interval lower bound {low:+.4f} clears it"
    return True, reason


def _best_baseline(metrics: dict[str, dict[str, float]], key: str) -> tuple[str | None, float | None]:
    scored = [(m[key], name) for name, m in metrics.items() if is_baseline(name) and m.get(key) is not None]
    if not scored:
        return None, None
    value, name = max(scored)
    return name, value


def _champion_check(metrics, cfg: GateConfig, cand: float, champion_version: str | None, intervals) -> tuple[bool, str]:
    key = cfg.gate_metric
    if champion_version is None:
        return True, "no current champion: the baselines are the only comparison"
    champ = metrics.get("champion", {}).get(key)
    if champ is None:
        if cfg.require_champion_comparison:
            return False, (
                f"champion v{champion_version} could not be scored on this test set; "
                "refusing to replace it (register.require_champion_comparison=true)"
            )
        return True, f"champion v{champion_version} not scored; compared with base only"
    interval = (intervals or {}).get("champion", {}).get(key)
    return _compare(cand, champ, f"champion v{champion_version}", cfg, interval)


def gate_decision(
    metrics: dict[str, dict[str, float]],
    cfg: GateConfig,
    champion_version: str | None = None,
    candidate: str = "candidate",
    intervals: dict[str, dict[str, dict[str, float]]] | None = None,
    forgetting: float | None = None,
) -> tuple[bool, list[str]]:
    """Decide promotion from the eval metrics; returns (promote, reasons).

    Args:
        metrics: ``EvalResult.metrics`` (``{"base": {...}, "base_fewshot": {...}, "candidate": {...}, ...}``).
        cfg: gate settings (``RegisterConfig`` is one).
        champion_version: the current champion's version, or None when there is none yet.
        candidate: the key of the candidate in ``metrics``.
        intervals: ``EvalResult.intervals`` (other → metric → ``{diff, low, high}``), for require_significance.
        forgetting: ``EvalResult.forgetting`` (candidate − base answer loss on general instructions).
    """
    key = cfg.gate_metric
    cand = metrics.get(candidate, {}).get(key)
    if cand is None:
        return False, [f"candidate has no {key!r} metric (evaluated: {sorted(metrics.get(candidate, {}))})"]
    reasons: list[str] = []
    name, best = _best_baseline(metrics, key)
    if name is None:
        ok = False
        reasons.append(f"base model has no {key!r} metric to compare with")
    else:
        interval = (intervals or {}).get(name, {}).get(key)
        ok, reason = _compare(cand, best, f"the prompt-engineering baseline {name}", cfg, interval)
        reasons.append(reason)
    champ_ok, reason = _champion_check(metrics, cfg, cand, champion_version, intervals)
    ok = ok and champ_ok
    reasons.append(reason)
    if forgetting is not None:
        if cfg.max_forgetting is not None and forgetting > cfg.max_forgetting + 1e-12:
            ok = False
            reasons.append(
                f"candidate forgot too much: answer loss on general instructions rose by {forgetting:+.4f} "
                f"(register.max_forgetting={cfg.max_forgetting})"
            )
        else:
            reasons.append(f"forgetting (answer loss on general instructions, candidate − base): {forgetting:+.4f}")
    return ok, reasons
