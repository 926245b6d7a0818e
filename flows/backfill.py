"""The backfill flow: production feedback for a date window → one scrubbed partition per day.

The day's work (extract, scrub, lock, write) is :func:`tasks.backfill.backfill_day`; this module only wires it
into Prefect (one task run per day, retries) and MLflow (one run per window).
"""

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.config import load_stage_config
from tasks import backfill as bf
from tasks.feedback import FeedbackStoreConfig, safe_url


@task(name="backfill-day", task_run_name="backfill-{day}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10])  # fmt: skip
def backfill_day_task(day: dt.date, store: FeedbackStoreConfig, root: str, dry_run: bool, pii_cfg: Any) -> dict:
    scrubber = None
    if not dry_run:
        from tasks.pii import scrub as scrubber
    return bf.backfill_day(day, store, root, dry_run, scrubber, pii_cfg)


@flow(name="backfill-feedback")
def backfill_feedback(
    start: dt.date, end: dt.date, source: str | None = None, dry_run: bool = False, config: str | None = None
) -> dict[str, Any]:
    """Turn production feedback for the days in [start, end) into one scrubbed partition per day.

    Stages per day: extract (feedback store → records, bad rows quarantined) → scrub_pii → write
    ``feedback/date=YYYY-MM-DD/part.parquet`` atomically. Re-running a window rewrites identical files.

    Args:
        start: First day to backfill (UTC, inclusive).
        end: Day after the last one (exclusive): start=2026-07-01, end=2026-10-01 covers the third quarter.
        source: Feedback store URL (sqlite:///... or postgresql+psycopg://...). Empty: ``$LORAFLOW_FEEDBACK_URL``,
            else the store under the loraflow home. Prefect stores flow parameters: keep a password out of this
            one and in ``LORAFLOW_FEEDBACK_URL`` (what ``loraflow backfill --source`` does).
        dry_run: Only count what each day would write; nothing is scrubbed or written, nothing logged to MLflow.
        config: A retrain config file whose `pii` section to use. Empty: the PII stage's defaults.
    """
    logger = get_run_logger()
    store = FeedbackStoreConfig(url=source or None)
    root = bf.feedback_root()
    pii_cfg = load_stage_config(config, "pii")
    window = bf.days(start, end)
    logger.info("backfill %s → %s (%d days) from %s%s", start, end, len(window), safe_url(store.resolved_url()),
                " [dry run]" if dry_run else "")  # fmt: skip
    run_id = None
    if not dry_run:
        from tasks.tracking import flow_run_tags

        tags = flow_run_tags(str(runtime.flow_run.id or "local"), str(runtime.flow_run.name or ""),
                             runtime.flow_run.ui_url)  # fmt: skip
        run_id = bf.start_mlflow_run(start, end, store, config, tags)
    status = "FAILED"
    results: list[dict[str, Any]] = []
    try:
        for i, day in enumerate(window):
            r = backfill_day_task(day, store, str(root), dry_run, pii_cfg)
            results.append(r)
            logger.info(bf.day_line(r))
            if run_id:
                bf.log_day(run_id, i, r)
        totals = bf.window_totals(results)
        logger.info("backfill totals: %s", ", ".join(f"{k}={v}" for k, v in totals.items()))
        if run_id:
            from prefect.artifacts import create_markdown_artifact

            bf.log_window(run_id, results, totals)
            create_markdown_artifact(bf.summary_markdown(start, end, results, totals, run_id),
                                     key="backfill-feedback", description="loraflow feedback backfill")  # fmt: skip
        status = "FINISHED"
        return {"start": start.isoformat(), "end": end.isoformat(), "dry_run": dry_run, "mlflow_run_id": run_id,
                "totals": totals, "days": results}  # fmt: skip
    finally:
        if run_id:
            from tasks import tracking

            tracking.end_run(run_id, status)
