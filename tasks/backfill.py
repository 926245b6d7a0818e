"""Backfill: production feedback for a date window → one scrubbed, idempotent partition per day.

For each UTC day in ``[start, end)``: extract the day's feedback (:func:`tasks.feedback.extract_day`) → PII scrub
(:func:`tasks.pii.scrub`, the retrain's own stage) → write, under ``<loraflow home>/feedback/``::

    date=YYYY-MM-DD/part.parquet        the day's SFT records (id, messages, source, created_at, meta)
    date=YYYY-MM-DD/quarantine.parquet  every excluded row with its reason (scrubbed record or store id only)
    date=YYYY-MM-DD/report.json         the day's counts (rows_in == kept + quarantined)

Idempotent and safe to overlap: each file is written to a temporary name and renamed; the content and order
are a pure function of the store's rows (sorted by store id, no timestamps of the run), so re-running a window
gives byte-identical files; a per-day lock file (``filelock``, across processes on one host) serialises two
backfills writing the same day, so the three files of a partition always come from the same read of the store.
A day without feedback still gets a valid, empty ``part.parquet``: its presence means "done". ``part.parquet``
is written last.

The retrain flow reads ``date=*/part.parquet`` as one more source (:func:`feedback_source`). The Prefect flow
that runs this per day is ``flows/backfill.py``; the MLflow and summary helpers it calls are at the end here.
"""

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from tasks.core import (
    QUARANTINE_COLUMNS,
    RECORD_COLUMNS,
    StageError,
    StageOutcome,
    atomic_write_parquet,
    atomic_write_text,
    empty_quarantine,
    empty_records,
    file_sha256,
)
from tasks.feedback import STAGE, FeedbackStoreConfig, extract_day, safe_url
from tasks.home import loraflow_home
from tasks.ingest import SourceConfig

Scrubber = Callable[[pd.DataFrame, Any], StageOutcome]
PART, QUARANTINE, REPORT = "part.parquet", "quarantine.parquet", "report.json"


def feedback_root() -> Path:
    return loraflow_home() / "feedback"


def feedback_source() -> SourceConfig:
    """The finished day partitions as one optional retrain source named ``feedback``."""
    return SourceConfig(
        path=str(feedback_root()), name="feedback", format="records", glob=f"date=*/{PART}", optional=True
    )


def partition_dir(root: str | Path, day: dt.date) -> Path:
    return Path(root) / f"date={day.isoformat()}"


def partition_paths(
    root: str | Path | None = None, start: dt.date | None = None, end: dt.date | None = None
) -> list[Path]:
    """Every finished day partition (``date=*/part.parquet``) under ``root``, oldest first, within [start, end)."""
    root = Path(root) if root is not None else feedback_root()
    out = []
    for p in sorted(root.glob(f"date=*/{PART}")):
        try:
            day = dt.date.fromisoformat(p.parent.name.removeprefix("date="))
        except ValueError:
            continue
        if (start is None or day >= start) and (end is None or day < end):
            out.append(p)
    return out


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise StageError(f"backfill: end {end} is before start {start} (the window is [start, end), end exclusive).")
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def partition_lock(root: str | Path, day: dt.date) -> FileLock:
    """An exclusive lock per day partition (``<root>/.locks/date=....lock``), across processes on one host."""
    lock_dir = Path(root) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(lock_dir / f"date={day.isoformat()}.lock")


def _disk(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``tasks.core.write_records`` encoding (JSON text for messages/meta), every column a string column, so an
    empty partition has the same schema as a full one."""
    out = pd.DataFrame({c: pd.Series(list(df[c]) if c in df else [], dtype=object) for c in columns})
    for col in ("messages", "meta"):
        if col in out:
            out[col] = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) for v in out[col]]
    return out.astype("str") if len(out) else pd.DataFrame({c: pd.Series([], dtype="str") for c in columns})


def _real_scrubber() -> tuple[Scrubber, Any]:
    from tasks.pii import PiiConfig, scrub

    return scrub, PiiConfig()


def _scrub_day(extracted: StageOutcome, scrubber: Scrubber, pii_cfg: Any) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Scrub the SFT records and the excluded-but-kept records together; return (kept, quarantine, pii report).

    Rows are matched back through ``meta.feedback_id`` (scrubbing changes record ids).
    """
    q = extracted.quarantined
    with_record = q[q["record"].notna()] if len(q) else q
    broken = q[q["record"].isna()] if len(q) else q
    excluded = [json.loads(r) for r in with_record["record"]] if len(with_record) else []
    reason_of = {
        rec["meta"]["feedback_id"]: why for rec, why in zip(excluded, list(with_record["reason"]), strict=True)
    }
    frame = pd.concat([extracted.kept, pd.DataFrame(excluded, columns=RECORD_COLUMNS)], ignore_index=True)
    if not len(frame):
        return empty_records(), broken.reset_index(drop=True), {}
    scrubbed = scrubber(frame, pii_cfg)
    kept_rows, q_rows = [], []
    for rec in scrubbed.kept.to_dict("records"):
        why = reason_of.get(rec["meta"]["feedback_id"])
        if why is None:
            kept_rows.append(rec)
        else:
            record = json.dumps({c: rec[c] for c in RECORD_COLUMNS}, ensure_ascii=False, default=str)
            detail = json.dumps({"feedback_id": rec["meta"]["feedback_id"]})
            q_rows.append({"id": rec["id"], "stage": STAGE, "reason": why, "detail": detail, "record": record})
    parts = [broken, pd.DataFrame(q_rows, columns=QUARANTINE_COLUMNS), scrubbed.quarantined]
    quarantine = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    kept = pd.DataFrame(kept_rows, columns=RECORD_COLUMNS) if kept_rows else empty_records()
    if quarantine is None:
        quarantine = empty_quarantine()
    # Deterministic order: by store id (the detail/meta carry it), whatever order the scrubber returned.
    kept = kept.iloc[sorted(range(len(kept)), key=lambda i: kept["meta"].iloc[i]["feedback_id"])]
    quarantine = quarantine.iloc[sorted(range(len(quarantine)), key=lambda i: _qkey(quarantine.iloc[i]))]
    return kept.reset_index(drop=True), quarantine.reset_index(drop=True), scrubbed.report


def _qkey(row: pd.Series) -> tuple[int, str]:
    try:
        fid = int(json.loads(row["detail"]).get("feedback_id", -1))
    except (ValueError, TypeError, AttributeError):
        fid = -1
    if fid < 0 and isinstance(row["record"], str):
        fid = int(json.loads(row["record"]).get("meta", {}).get("feedback_id", -1))
    return fid, str(row["id"])


def backfill_day(
    day: dt.date,
    store: FeedbackStoreConfig | None = None,
    root: str | Path | None = None,
    dry_run: bool = False,
    scrubber: Scrubber | None = None,
    pii_cfg: Any = None,
) -> dict[str, Any]:
    """Extract, scrub and write one day's partition; returns its counts (never any text).

    ``scrubber(records, pii_cfg) -> StageOutcome`` defaults to :func:`tasks.pii.scrub` with ``PiiConfig()``.
    In a dry run nothing is scrubbed or written: the counts are the extract's.
    """
    store = store or FeedbackStoreConfig()
    root = Path(root) if root is not None else feedback_root()
    out = partition_dir(root, day)
    summary: dict[str, Any] = {"day": day.isoformat(), "partition": str(out / PART)}
    if dry_run:
        extracted = extract_day(store.resolved_url(), day, store)
        counts = _counts(extracted.kept, extracted.quarantined)
        return {**summary, **counts, "dry_run": True, "exists": (out / PART).exists()}
    if scrubber is None:
        scrubber, default_cfg = _real_scrubber()
        pii_cfg = pii_cfg if pii_cfg is not None else default_cfg
    with partition_lock(root, day):
        extracted = extract_day(store.resolved_url(), day, store)
        kept, quarantine, pii_report = _scrub_day(extracted, scrubber, pii_cfg)
        counts = _counts(kept, quarantine)
        if counts["rows_in"] != len(extracted.kept) + len(extracted.quarantined):
            raise AssertionError(f"backfill {day}: {counts['rows_in']} rows written for {len(extracted.kept)} + "
                                 f"{len(extracted.quarantined)} extracted")  # fmt: skip
        report = {
            "day": day.isoformat(),
            "counts": counts,
            "targets": extracted.report.get("targets", {}),
            "pii": {k: v for k, v in pii_report.items() if k.startswith("entities") or k.startswith("records")},
        }
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(_disk(quarantine, QUARANTINE_COLUMNS), out / QUARANTINE)
        atomic_write_text(out / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
        atomic_write_parquet(_disk(kept, RECORD_COLUMNS), out / PART)
        return {**summary, **counts, "sha256": file_sha256(out / PART), "dry_run": False}


def _counts(kept: pd.DataFrame, quarantine: pd.DataFrame) -> dict[str, int]:
    counts = {"rows_in": len(kept) + len(quarantine), "kept": len(kept), "quarantined": len(quarantine)}
    if len(quarantine):
        for reason, n in sorted(Counter(quarantine["reason"]).items()):
            counts[f"quarantined_{reason}"] = int(n)
    return counts


def backfill_window(
    start: dt.date,
    end: dt.date,
    source: str | None = None,
    dry_run: bool = False,
    root: str | Path | None = None,
    scrubber: Scrubber | None = None,
    pii_cfg: Any = None,
    store: FeedbackStoreConfig | None = None,
) -> list[dict[str, Any]]:
    """The plain-function backfill (no Prefect, no MLflow): one :func:`backfill_day` per day in [start, end)."""
    store = (store or FeedbackStoreConfig()).model_copy(update={"url": source} if source else {})
    if scrubber is None and not dry_run:
        scrubber, default_cfg = _real_scrubber()
        pii_cfg = pii_cfg if pii_cfg is not None else default_cfg
    return [backfill_day(d, store, root, dry_run, scrubber, pii_cfg) for d in days(start, end)]


# --------------------------------------------------------------------------------------------- reporting


def day_line(r: dict[str, Any]) -> str:
    """One log line per day: ``2026-07-03: rows_in=6 kept=4 quarantined=2 (flagged=1, ...)``."""
    reasons = ", ".join(f"{k.removeprefix('quarantined_')}={v}" for k, v in r.items() if k.startswith("quarantined_"))
    line = f"{r['day']}: rows_in={r['rows_in']} kept={r['kept']} quarantined={r['quarantined']}"
    return (f"{line} ({reasons})" if reasons else line) + (" [dry run]" if r.get("dry_run") else "")


def window_totals(results: list[dict[str, Any]]) -> dict[str, int]:
    """The integer counts of every day, summed."""
    totals: Counter[str] = Counter()
    for r in results:
        totals.update({k: v for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)})
    return dict(sorted(totals.items()))


def summary_markdown(start: dt.date, end: dt.date, results: list[dict], totals: dict[str, int], run_id: str) -> str:
    """The per-day counts table (counts only, never text) for the Prefect markdown artifact."""
    reasons = sorted({k for r in results for k in r if k.startswith("quarantined_")})
    head = ["day", "rows in", "kept", "quarantined", *(k.removeprefix("quarantined_") for k in reasons)]
    lines = [f"# Feedback backfill {start} → {end} (end exclusive)", "", f"MLflow run `{run_id}`", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]  # fmt: skip
    for r in [*results, {"day": "**total**", **totals}]:
        cells = [r["day"], r.get("rows_in", 0), r.get("kept", 0), r.get("quarantined", 0)]
        cells += [r.get(k, 0) for k in reasons]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def start_mlflow_run(start: dt.date, end: dt.date, store: FeedbackStoreConfig, config: str | None, tags: dict) -> str:
    """Open the backfill's MLflow run (experiment ``loraflow-backfill``) and log the window as params."""
    from tasks import tracking

    run_id = tracking.start_run("loraflow-backfill", run_name=f"backfill-{start}-{end}", tags=tags)
    tracking.log_params(run_id, {"backfill.start": start.isoformat(), "backfill.end": end.isoformat(),
                                 "backfill.source": safe_url(store.resolved_url()),
                                 "backfill.config": config or ""})  # fmt: skip
    return run_id


def log_day(run_id: str, step: int, r: dict[str, Any]) -> None:
    """Per-day counts as step metrics (step = day index in the window; ``backfill.date`` maps it back)."""
    from tasks import tracking

    metrics = {f"backfill.{k}": v for k, v in r.items() if isinstance(v, int) and not isinstance(v, bool)}
    metrics["backfill.date"] = int(r["day"].replace("-", ""))
    tracking.log_metrics(run_id, metrics, step=step)


def log_window(run_id: str, results: list[dict[str, Any]], totals: dict[str, int]) -> None:
    """The window's totals as metrics and every day's counts as ``backfill/days.json``."""
    from tasks import tracking

    tracking.log_metrics(run_id, {f"backfill.total.{k}": v for k, v in totals.items()})
    tracking.json_artifact(run_id, results, "backfill/days.json")
