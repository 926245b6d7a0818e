"""How sure is "the candidate is better": paired bootstrap intervals, McNemar's exact test for accuracies.

The bootstrap resamples test items (prompts) with replacement, the same items for both models, and recomputes
each corpus metric from the per-item statistics (:class:`~tasks.evaluate.metrics.ItemStats`), so the interval is
for exactly the number the gate compares. ``low`` is what ``register.require_significance`` checks.
"""

import numpy as np

from tasks.evaluate.metrics import ItemStats


def paired_bootstrap(
    candidate: ItemStats, other: ItemStats, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """``{"diff", "low", "high"}`` of candidate − other: the observed difference and its percentile interval."""
    n = len(candidate.values)
    diff = candidate.reduce() - other.reduce()
    if n == 0 or resamples == 0:
        return {"diff": diff, "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, size=n)
        diffs[b] = candidate.reduce(idx) - other.reduce(idx)
    alpha = (1 - confidence) / 2
    return {"diff": float(diff), "low": float(np.quantile(diffs, alpha)), "high": float(np.quantile(diffs, 1 - alpha))}


def mcnemar_p(candidate: np.ndarray, other: np.ndarray) -> float:
    """Two-sided exact McNemar p-value on paired right/wrong outcomes (binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    c, o = candidate.astype(bool), other.astype(bool)
    wins, losses = int((c & ~o).sum()), int((~c & o).sum())
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def candidate_intervals(
    stats: dict[str, dict[str, ItemStats]],
    candidate: str = "candidate",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """For every other model and every metric both have: the paired interval of candidate − other.

    Accuracy-like metrics (0/1 per item) also get ``mcnemar_p``.
    """
    mine = stats.get(candidate)
    if not mine:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, theirs in stats.items():
        if name == candidate:
            continue
        per_metric = {}
        for metric, s in mine.items():
            if metric not in theirs or len(theirs[metric].values) != len(s.values):
                continue
            res = paired_bootstrap(s, theirs[metric], resamples, confidence, seed)
            if (
                s.kind == "mean"
                and np.isin(s.values, (0.0, 1.0)).all()
                and np.isin(theirs[metric].values, (0.0, 1.0)).all()
            ):
                res["mcnemar_p"] = mcnemar_p(s.values, theirs[metric].values)
            per_metric[metric] = {k: round(v, 6) for k, v in res.items()}
        out[name] = per_metric
    return out
