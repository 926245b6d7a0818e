"""The pictures of a retrain, as PNG files: loss curves, confusion matrices, metric bars, stage counts.

Plain functions from data to a PNG path, with matplotlib's Agg backend (no display needed) imported inside each
function so that importing ``tasks`` stays light. ``tasks.tracking.log_charts`` decides what to draw for a run
and logs the files under the run's ``charts/`` artifact folder, where the MLflow UI shows them as images.
"""

from pathlib import Path
from typing import Any

# Colours by role, the same in every chart: base grey, few-shot sand, candidate blue, champion green.
COLOURS = {"base": "#9e9e9e", "few_shot": "#d9b26f", "candidate": "#1f77b4", "champion": "#2ca02c"}
_OTHER = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _plt().close(fig)
    return out


def colour(model: str, i: int = 0) -> str:
    return COLOURS.get(model, _OTHER[i % len(_OTHER)])


def best_step(val: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The (step, loss) with the lowest validation loss; the earliest one on a tie."""
    return min(val, key=lambda sv: (sv[1], sv[0])) if val else None


def loss_curves(train: list[tuple[int, float]], val: list[tuple[int, float]], out: str | Path) -> Path:
    """Train and validation loss per optimizer step, the best validation step marked.

    Args:
        train: ``(step, train_loss)`` pairs.
        val: ``(step, val_loss)`` pairs.
        out: PNG file to write.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*sorted(train), strict=True), label="train loss", color=COLOURS["candidate"], lw=1.5)
    if val:
        ax.plot(*zip(*sorted(val), strict=True), "o-", label="val loss", color="#d62728", lw=1.5, ms=4)
        step, loss = best_step(val)
        ax.axvline(step, color="#d62728", ls=":", lw=1)
        ax.annotate(f"best val {loss:.3f}\nstep {step}", (step, loss), textcoords="offset points", xytext=(-70, 14))
    ax.set(xlabel="optimizer step", ylabel="loss (answer tokens)", title="Loss per step")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


def metric_bars(metrics: dict[str, dict[str, float]], out: str | Path, keys: list[str] | None = None) -> Path:
    """One group of bars per metric, one bar per model (base / few-shot / candidate / champion).

    Args:
        metrics: ``{model: {metric: value}}`` as in ``EvalResult.metrics``.
        out: PNG file to write.
        keys: metrics to draw (default: every metric in [0, 1] that some model has; losses are left out).
    """
    plt = _plt()
    models = list(metrics)
    if keys is None:
        found = {k for m in models for k, v in metrics[m].items() if 0.0 <= v <= 1.0 and "loss" not in k}
        keys = sorted(found)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) + 2), 4))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(keys))]
        vals = [metrics[model].get(k, 0.0) for k in keys]
        bars = ax.bar(xs, vals, width, label=model, color=colour(model, i))
        ax.bar_label(bars, labels=[f"{v:.0%}" if k in metrics[model] else "" for k, v in zip(keys, vals, strict=True)],
                     fontsize=7, padding=1)  # fmt: skip
    ax.set_xticks(range(len(keys)), keys)
    ax.set(ylim=(0, 1.1), ylabel="share of test rows", title="Test-set metrics by model")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def confusion_matrices(
    predictions, out: str | Path, models: tuple[str, ...] = ("base", "candidate"), column: str | None = None
) -> Path | None:
    """Confusion matrices side by side (rows: target label, columns: predicted), one per model.

    Args:
        predictions: the predictions table (``model``, ``target``, ``prediction`` and, for classification,
            ``prediction_constrained``).
        out: PNG file to write.
        models: models to draw, those present in the table.
        column: prediction column (default ``prediction_constrained`` when present: every answer is a label).

    Returns:
        The PNG path, or None when none of ``models`` is in the table.
    """
    import numpy as np

    plt = _plt()
    column = column or ("prediction_constrained" if "prediction_constrained" in predictions else "prediction")
    present = [m for m in models if (predictions["model"] == m).any()]
    if not present:
        return None
    labels = set(predictions["target"])
    if column == "prediction_constrained":  # every constrained answer is a label, seen in the test set or not
        labels |= set(predictions.loc[predictions["model"].isin(present), column])
    labels = sorted(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    n = len(labels)
    other = n  # any answer that is not a label gets its own column
    size = min(16, 3 + 0.18 * n)
    fig, axes = plt.subplots(1, len(present), figsize=(size * len(present), size), squeeze=False)
    for ax, model in zip(axes[0], present, strict=True):
        rows = predictions[predictions["model"] == model]
        cm = np.zeros((n, n + 1))
        for t, p in zip(rows["target"], rows[column], strict=True):
            cm[index[t], index.get(p, other)] += 1
        acc = float(np.trace(cm[:, :n]) / max(1, cm.sum()))
        ax.imshow(cm, cmap="Blues", aspect="auto")
        ticks = labels + ["(other)"]
        fs = max(4, 9 - n // 12)
        ax.set_xticks(range(n + 1), ticks, rotation=90, fontsize=fs)
        ax.set_yticks(range(n), labels, fontsize=fs)
        ax.set(xlabel=f"predicted ({column})", ylabel="target", title=f"{model}: accuracy {acc:.1%}")
    return _save(fig, out)


def stage_counts(stages: list[dict[str, Any]], out: str | Path) -> Path:
    """Per stage, rows kept and quarantined by reason (horizontal stacked bars).

    Args:
        stages: ``{"stage": name, "counts": {"rows_in", "kept", "quarantined", "quarantined_<reason>"...}}``.
        out: PNG file to write.
    """
    plt = _plt()
    names = [s["stage"] for s in stages]
    reasons = sorted({k for s in stages for k in s["counts"] if k.startswith("quarantined_")})
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.8))
    left = [float(s["counts"].get("kept", 0)) for s in stages]
    ax.barh(names, left, color=COLOURS["candidate"], label="kept")
    for i, reason in enumerate(reasons):
        vals = [float(s["counts"].get(reason, 0)) for s in stages]
        ax.barh(names, vals, left=left, color=_OTHER[i % len(_OTHER)], label=reason.removeprefix("quarantined_"))
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for y, s in enumerate(stages):
        c = s["counts"]
        ax.text(left[y], y, f"  {c.get('kept', 0)} kept / {c.get('quarantined', 0)} out", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="rows", title="Rows kept and quarantined per stage", xlim=(0, max(left + [1]) * 1.35))
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


def count_bars(counts: dict[str, float], out: str | Path, title: str, xlabel: str = "count") -> Path:
    """One horizontal bar per key (e.g. PII entities found by type), largest first."""
    plt = _plt()
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.5))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=COLOURS["few_shot"])
    ax.bar_label(bars, fmt="%g", fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    return _save(fig, out)
