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


def retrain_markdown(
    name: str, run_link: str, stages: list[StageResult], metrics: dict[str, dict[str, float]] | None, decision: Any
) -> str:
    """The whole page: title, MLflow run, stage counts, metrics, and the registration with its reasons.

    Args:
        name: the project (config ``name``).
        run_link: how to reach the MLflow run (a link, or the id and how to open it).
        stages: the data stages' results, in order.
        metrics: evaluation metrics by model (None when the run stopped before evaluation).
        decision: the register stage's result (``model_name``, ``version``, ``aliases``, ``promoted``,
            ``reasons``), or None.
    """
    lines = [f"# Retrain `{name}`", "", f"MLflow run: {run_link}", "", *stage_table(stages)]
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
