"""The shared record / reference / quarantine mechanism every stage uses.

A stage is a plain function ``(DataFrame of records, StageConfig) -> StageOutcome``. The outcome says which
records were kept and which were quarantined with a reason; :func:`finish_stage` checks
``rows_in == kept + quarantined`` (asserted, never assumed), writes the kept records and the quarantine file as
Parquet, writes the stage's JSON report, and returns a small :class:`StageResult` that travels between Prefect
tasks. Rows never travel between tasks, only :class:`DatasetRef` values.

Record schema (one row per training example, OpenAI chat format)::

    id          str   stable hash of the normalised messages (see record_id)
    messages    list[{"role": str, "content": str}]   (JSON text on disk)
    source      str   name of the source it came from
    created_at  str   ISO timestamp ("" when the source has none)
    meta        dict  free-form (JSON text on disk)

A quarantine row is ``id, stage, reason, detail (JSON), record (JSON or null)``. ``record`` is the record as
the stage saw it (already scrubbed after the PII stage) or null when the stage runs before scrubbing, where
``detail`` then holds only where the row came from (file and line), never its text.
"""

import hashlib
import json
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

RECORD_COLUMNS = ["id", "messages", "source", "created_at", "meta"]
QUARANTINE_COLUMNS = ["id", "stage", "reason", "detail", "record"]
_JSON_COLUMNS = ("messages", "meta")


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetRef(BaseModel):
    """A pointer to a Parquet file of records: what travels between tasks instead of rows."""

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str
    rows: int


class StageResult(BaseModel):
    """What a stage task returns: the kept data, the quarantine file and the counts."""

    model_config = ConfigDict(frozen=True)

    stage: str
    data: DatasetRef
    quarantine: DatasetRef
    report_uri: str
    counts: dict[str, int]


@dataclass
class StageOutcome:
    """What a stage's plain function decides: kept records, quarantined rows and extra report fields.

    Build ``quarantined`` with :func:`quarantine_rows`. ``report`` holds stage-specific numbers (entity
    counts, cluster sizes...); it must never quote raw text. A stage streaming data too large for memory may
    give ``kept`` as an iterable of DataFrame batches (see :func:`finish_stage`).
    """

    kept: pd.DataFrame | Iterable[pd.DataFrame]
    quarantined: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class StageError(Exception):
    """A problem the user must fix (unreadable source, blocking contract rule...).

    The message is one readable paragraph naming the file / rule / rows; the CLI prints it without a
    traceback and exits non-zero.
    """


# --------------------------------------------------------------------------------------------- records


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: the form ids and exact dedup hash."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def record_id(messages: list[dict[str, str]]) -> str:
    """Stable content hash of a conversation (16 hex chars = 64 bits; collisions need ~4e9 records)."""
    canon = json.dumps(
        [[m.get("role", ""), normalise_text(str(m.get("content", "")))] for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def empty_records() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in RECORD_COLUMNS})


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in QUARANTINE_COLUMNS})


def quarantine_rows(
    stage: str,
    records: pd.DataFrame,
    reason: str | Iterable[str],
    details: Iterable[dict[str, Any]] | None = None,
    include_record: bool = True,
) -> pd.DataFrame:
    """Quarantine rows for ``records`` (a slice of the stage's input) with one reason or one per row."""
    n = len(records)
    if n == 0:
        return empty_quarantine()
    reasons = [reason] * n if isinstance(reason, str) else list(reason)
    dets = list(details) if details is not None else [{}] * n
    if len(reasons) != n or len(dets) != n:
        raise ValueError(f"{stage}: {n} records but {len(reasons)} reasons and {len(dets)} details")
    rows = []
    for (_, rec), why, det in zip(records.iterrows(), reasons, dets, strict=True):
        rows.append(
            {
                "id": rec["id"],
                "stage": stage,
                "reason": why,
                "detail": json.dumps(det, ensure_ascii=False, default=str),
                "record": _record_json(rec) if include_record else None,
            }
        )
    return pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)


def _record_json(rec: pd.Series) -> str:
    return json.dumps({c: rec[c] for c in RECORD_COLUMNS if c in rec}, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------------- parquet io


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def frame_sha256(df: pd.DataFrame) -> str:
    """Content hash of a records frame, independent of the Parquet writer's bytes."""
    h = hashlib.sha256()
    for col in df.columns:
        h.update(col.encode())
    _hash_rows(h, df)
    return h.hexdigest()


def _hash_rows(h: Any, df: pd.DataFrame) -> None:
    for row in df.itertuples(index=False):
        h.update(json.dumps(list(row), ensure_ascii=False, default=str, sort_keys=True).encode("utf-8"))
        h.update(b"\n")


def _to_disk(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in _JSON_COLUMNS:
        if col in out.columns:
            out[col] = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) for v in out[col]]
    return out


def atomic_write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write to a temporary file beside ``path`` and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        df.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_records(df: pd.DataFrame, path: str | Path) -> DatasetRef:
    """Write a records (or quarantine) frame to Parquet and return its reference."""
    disk = _to_disk(df)
    atomic_write_parquet(disk, path)
    return DatasetRef(uri=str(path), sha256=frame_sha256(disk), rows=len(disk))


def read_records(ref: DatasetRef | str | Path) -> pd.DataFrame:
    """Read a records frame written by :func:`write_records`, JSON columns decoded."""
    path = ref.uri if isinstance(ref, DatasetRef) else str(ref)
    df = pd.read_parquet(path)
    for col in _JSON_COLUMNS:
        if col in df.columns:
            df[col] = [json.loads(v) if isinstance(v, str) else v for v in df[col]]
    return df


def discard(ref: DatasetRef | None) -> None:
    """Remove an intermediate file (the raw, unscrubbed ingest output once it has been scrubbed)."""
    if ref is not None and os.path.exists(ref.uri):
        os.unlink(ref.uri)


# --------------------------------------------------------------------------------------------- stages


#: Fault injection for the crash tests (tests/test_crash.py): the stage named here stops before it writes its
#: outputs, touches ``<LORAFLOW_HOME>/paused-<stage>`` and waits to be killed. Unset in normal use.
PAUSE_ENV = "LORAFLOW_TEST_PAUSE_AT"


def pause_point(stage: str) -> None:
    """Wait forever here when ``LORAFLOW_TEST_PAUSE_AT`` names ``stage`` (a no-op otherwise)."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    import time

    from tasks.home import loraflow_home

    (loraflow_home() / f"paused-{stage}").touch()
    while True:
        time.sleep(1)


def finish_stage(
    stage: str,
    rows_in: int,
    outcome: StageOutcome,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    data_tag: str | None = None,
) -> StageResult:
    """Check the stage's ledger, write its outputs and JSON report, and return the reference.

    Output names carry the content hash of what each file holds, so two runs on the same data write the same
    files and a cached result always points at the file it made. ``data_dir`` (default ``out_dir``) is where the kept records go.
    ``data_tag`` makes the kept records' name private to one run (``<stage>-<digest>.<tag>.parquet``): for a file
    the run deletes itself (the raw ingest output), which another run on the same data must not share.
    ``outcome.kept`` is a DataFrame, or an iterable of DataFrame batches from a stage that streams data too
    large for memory: those are written one by one (same content hash), and the ledger checked at the end.
    """
    pause_point(stage)
    kept, quarantined = outcome.kept, outcome.quarantined
    dest = Path(data_dir or out_dir)
    if isinstance(kept, pd.DataFrame):
        _check_ledger(stage, rows_in, len(kept), len(quarantined))
        disk = _to_disk(kept[RECORD_COLUMNS] if len(kept) else empty_records())
        data = write_records(disk, dest / _data_name(stage, frame_sha256(disk), data_tag))
    else:
        data = _write_batches(stage, kept, dest, data_tag)
        try:
            _check_ledger(stage, rows_in, data.rows, len(quarantined))
        except AssertionError:
            os.unlink(data.uri)
            raise
    counts: dict[str, int] = {"rows_in": rows_in, "kept": data.rows, "quarantined": len(quarantined)}
    by_reason = Counter(quarantined["reason"]) if len(quarantined) else Counter()
    for reason, n in sorted(by_reason.items()):
        counts[f"quarantined_{reason}"] = int(n)

    # Each file is named by the digest of its own content: two runs that keep the same rows but quarantine
    # different ones (or report differently) never overwrite each other's files.
    out_dir = Path(out_dir)
    qdisk = _to_disk(quarantined[QUARANTINE_COLUMNS] if len(quarantined) else empty_quarantine())
    quarantine = write_records(qdisk, out_dir / f"{stage}-{frame_sha256(qdisk)[:12]}.quarantine.parquet")

    report = {"stage": stage, "counts": counts, **outcome.report}
    if outcome.metrics:
        report["metrics"] = outcome.metrics
    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    report_path = out_dir / f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.report.json"
    atomic_write_text(report_path, text)
    return StageResult(stage=stage, data=data, quarantine=quarantine, report_uri=str(report_path), counts=counts)


def _data_name(stage: str, sha: str, tag: str | None) -> str:
    return f"{stage}-{sha[:12]}.{tag}.parquet" if tag else f"{stage}-{sha[:12]}.parquet"


def _check_ledger(stage: str, rows_in: int, kept: int, quarantined: int) -> None:
    if rows_in != kept + quarantined:
        raise AssertionError(
            f"stage {stage!r} lost rows: rows_in={rows_in} but kept={kept} + "
            f"quarantined={quarantined} = {kept + quarantined}"
        )


def _write_batches(stage: str, batches: Iterable[pd.DataFrame], data_dir: Path, tag: str | None = None) -> DatasetRef:
    """Write record batches to one Parquet file, named and hashed as :func:`write_records` would the whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(c, pa.string()) for c in RECORD_COLUMNS])
    h = hashlib.sha256()
    for col in RECORD_COLUMNS:
        h.update(col.encode())
    fd, tmp = tempfile.mkstemp(prefix=f".{stage}.", dir=data_dir)
    os.close(fd)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in batches:
                disk = _to_disk(batch[RECORD_COLUMNS]).reset_index(drop=True)
                _hash_rows(h, disk)
                rows += len(disk)
                writer.write_table(pa.Table.from_pandas(disk, schema=schema, preserve_index=False))
        sha = h.hexdigest()
        path = data_dir / _data_name(stage, sha, tag)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return DatasetRef(uri=str(path), sha256=sha, rows=rows)


def format_counts(result: StageResult) -> str:
    """One log line: ``dedup: rows_in=120 kept=104 quarantined=16 (exact_duplicate=9, near_duplicate=7)``."""
    c = result.counts
    reasons = ", ".join(f"{k.removeprefix('quarantined_')}={v}" for k, v in c.items() if k.startswith("quarantined_"))
    line = f"{result.stage}: rows_in={c['rows_in']} kept={c['kept']} quarantined={c['quarantined']}"
    return f"{line} ({reasons})" if reasons else line


def run_stage(stage: str, fn, ref: DatasetRef, cfg: BaseModel, out_dir: str | Path, **kwargs) -> StageResult:
    """Read ``ref``, apply the stage's plain function ``fn(records, cfg, **kwargs)``, finish the stage."""
    records = read_records(ref)
    outcome = fn(records, cfg, **kwargs)
    return finish_stage(stage, len(records), outcome, Path(out_dir) / stage)
