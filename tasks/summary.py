"""The retrain's summary for the Prefect UI: one markdown page of stage counts, metrics and the gate's decision.

Counts, metric values, ids and reasons only: nothing here quotes a record.
"""

from typing import Any

from tasks.core import StageResult
from tasks.tracking import metrics_markdown


def stage_table(stages: list[StageResult]) -> list[str]:
    """``| stage | rows in | kept | quarantined |`` rows, one per stage."""
    lines = ["| stage | rows in | kept | quarantined |", "|---|---:|---:|---:|"]
    lines += [f"| {r.stage} | {r.counts['rows_in']} | {r.counts['kept']} | {r.counts['quarantined']} |" for r in stages]
    return lines


def split_and_train(split: dict[str, int] | None, train: dict[str, Any] | None) -> list[str]:
    """The split's sizes and one training row (steps, best validation step, speed), when there are any."""
    lines = []
    if split:
        lines += ["", f"**Split** of {split.get('rows_in', '?')} rows: train {split.get('train', 0)}, "
                  f"val {split.get('val', 0)}, test {split.get('test', 0)}"
                  + (f", {split['sampled_out']} sampled out" if split.get("sampled_out") else "")]  # fmt: skip
    if train:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines += ["", "| train rows | steps | best step | best val loss | final train loss | tokens/s | seconds | device |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|",
                  f"| {train.get('train_rows')} | {train.get('steps')} | {fmt(train.get('best_step'), 'd')} | "
                  f"{fmt(train.get('best_val_loss'), '.4f')} | {fmt(train.get('train_loss'), '.4f')} | "
                  f"{fmt(train.get('tokens_per_s'), '.0f')} | {fmt(train.get('runtime_s'), '.0f')} | "
                  f"{train.get('device', '')} |"]  # fmt: skip
    return lines


def cost_lines(cost: dict[str, float] | None) -> list[str]:
    """What the run used and cost (``tasks.cost.cost_metrics``): CPU / GPU seconds, tokens, memory, estimate."""
    if not cost:
        return []
    tokens = ", ".join(f"{k.removeprefix('cost.tokens_')} {v:,.0f}" for k, v in cost.items() if "tokens_" in k)
    return ["", "| CPU s | GPU s | tokens | peak RSS | estimate |", "|---:|---:|---|---:|---:|",
            f"| {cost.get('cost.cpu_s', 0):.0f} | {cost.get('cost.gpu_s', 0):.0f} | {tokens or '-'} | "
            f"{cost.get('cost.peak_rss_mb', 0) / 1024:.1f} GB | {cost.get('cost.estimate', 0):.4f} |"]  # fmt: skip


def retrain_markdown(
    name: str,
    run_link: str,
    stages: list[StageResult],
    metrics: dict[str, dict[str, float]] | None,
    decision: Any,
    split: dict[str, int] | None = None,
    train: dict[str, Any] | None = None,
    cost: dict[str, float] | None = None,
) -> str:
    """The whole page: title, MLflow run, stage counts, metrics, and the registration with its reasons.

    Args:
        name: the project (config ``name``).
        run_link: how to reach the MLflow run (a link, or the id and how to open it).
        stages: the data stages' results, in order.
        metrics: evaluation metrics by model (None when the run stopped before evaluation).
        decision: the register stage's result (``model_name``, ``version``, ``aliases``, ``promoted``,
            ``reasons``), or None.
        split: the split's counts (``rows_in``, ``train``, ``val``, ``test``), or None.
        train: ``tracking.train_summary`` of the training, or None.
        cost: the run's ``cost.*`` metrics (``tasks.cost.cost_metrics``), or None.
    """
    lines = [f"# Retrain `{name}`", "", f"MLflow run: {run_link}", "", *stage_table(stages)]
    lines += split_and_train(split, train) + cost_lines(cost)
    if metrics:
        lines += ["", *metrics_markdown(metrics)]
    if decision is not None:
        lines += [
            "",
            f"**Model** `{decision.model_name}` version {decision.version}, aliases "
            f"{', '.join(decision.aliases) or 'none'}; promoted: **{decision.promoted}**",
        ]
        lines += [f"- {r}" for r in decision.reasons]
    return "\n".join(lines)
