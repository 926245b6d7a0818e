"""The scheduled quarterly retrain: backfill production feedback up to the run date, then retrain.

The ``quarterly-retrain`` deployment (``deployments/deploy.py``) runs this at 03:00 on the first day of each
quarter. The backfill window is the previous quarter up to the run date (end exclusive); older partitions are
already on disk from earlier runs, and re-backfilling a day rewrites identical files, so the window may overlap
anything that ran before. The retrain then reads every partition as one more source.
"""

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow, get_run_logger, runtime

from flows.backfill import backfill_feedback
from flows.params import RetrainParams
from flows.retrain import retrain


def quarter_start(day: dt.date) -> dt.date:
    return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


def previous_quarter_start(day: dt.date) -> dt.date:
    """First day of the quarter before ``day``'s: 2026-10-01 → 2026-07-01, 2026-01-15 → 2025-10-01."""
    q = quarter_start(day)
    return quarter_start(q - dt.timedelta(days=1))


def run_date(timezone: str, explicit: dt.date | None = None) -> dt.date:
    """The day this run stands for: the explicit one, else the scheduled start (in ``timezone``), else today."""
    if explicit is not None:
        return explicit
    scheduled = runtime.flow_run.scheduled_start_time
    when = scheduled if scheduled is not None else dt.datetime.now(dt.UTC)
    return when.astimezone(ZoneInfo(timezone)).date()


@flow(name="quarterly-retrain")
def quarterly_retrain(
    config: str = "configs/production.yaml",
    day: dt.date | None = None,
    feedback_since: dt.date | None = None,
    feedback_source: str | None = None,
    timezone: str = "UTC",
    dry_run: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Backfill feedback for [feedback_since, day), then retrain with ``config``.

    Args:
        config: Production config file (YAML), relative to the project folder.
        day: The run date (end of the feedback window, exclusive). Empty: the scheduled date in `timezone`.
        feedback_since: First day of feedback to (re)backfill. Empty: the first day of the previous quarter.
        feedback_source: Feedback store URL. Empty: the store under the loraflow home.
        timezone: IANA timezone the run date is read in (the schedule's own timezone).
        dry_run: Backfill, then run the data stages only (no training, no registration).
        overrides: Config values to change for this run, as key.path=value (e.g. train.max_steps=200).
    """
    logger = get_run_logger()
    end = run_date(timezone, day)
    start = feedback_since or previous_quarter_start(end)
    logger.info("quarterly retrain for %s: backfill feedback %s → %s, then retrain with %s", end, start, end, config)
    backfill = backfill_feedback(start, end, source=feedback_source, config=config)
    result = retrain(RetrainParams(config=config, dry_run=dry_run, overrides=list(overrides or [])))
    return {"day": end.isoformat(), "backfill": backfill["totals"], "retrain": result}
