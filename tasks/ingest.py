"""Ingest: read sources in the formats people actually have into canonical chat records.

Accepted, detected per line (``format: auto``) or forced per source:

* chat              ``{"messages": [{"role": ..., "content": ...}, ...]}``
* alpaca            ``{"instruction": ..., "input": ..., "output": ...}`` → system = instruction, user = input
* prompt_completion ``{"prompt": ..., "completion": ...}``
* csv / parquet     one row per example, with a column map (``text`` → user turn, ``label`` → assistant turn,
                    optional ``system``, ``created_at``)
* records           Parquet written by loraflow itself (e.g. the feedback partitions), a file or a folder

A line that cannot be read (truncated JSON, not an object, invalid UTF-8, a missing field, a non-string content)
is quarantined with its reason and *only its file and line number*: ingest runs before PII scrubbing, so nothing
from the raw text is kept. A source that cannot be read at all (missing, empty, wrong columns) stops the run
with a :class:`~tasks.core.StageError` naming the file.
"""

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from prefect import task
from pydantic import Field, field_validator

from tasks.core import (
    RECORD_COLUMNS,
    StageError,
    StageOutcome,
    StageResult,
    StrictModel,
    empty_quarantine,
    empty_records,
    file_sha256,
    finish_stage,
)
from tasks.identity import keyed_record_id, project_key
from tasks.messages import ROLES, coerce_messages, messages_problem, text_problem
from tasks.prompting import PROMPT_TEMPLATE_HELP, check_template
from tasks.runner import DaskConfig, TaskRunnerKind

Format = Literal["auto", "chat", "alpaca", "prompt_completion", "csv", "parquet", "records"]


class ColumnMap(StrictModel):
    text: str = Field("text", description="Column holding the user turn.")
    label: str = Field("label", description="Column holding the assistant turn (the target).")
    system: str | None = Field(None, description="Column holding a system prompt, if any.")
    created_at: str | None = Field(None, description="Column holding the example's timestamp, if any.")


class SourceConfig(StrictModel):
    path: str = Field(
        description="File (or folder, for format `records`) to read; relative paths start at the working directory."
    )
    name: str | None = Field(None, description="Source name recorded on every row (default: the file stem).")
    format: Format = Field("auto", description="Input format; `auto` detects JSONL shapes and file suffixes.")
    columns: ColumnMap | None = Field(None, description="Column map for CSV / Parquet sources.")
    system_prompt: str | None = Field(
        None, description="System message added to records that have none (e.g. CSV rows)."
    )
    split: Literal["test"] | None = Field(
        None, description="`test` marks this source as the frozen test set (never trained on)."
    )
    max_rows: int | None = Field(None, ge=1, description="Read at most this many rows (None: all).")
    optional: bool = Field(False, description="A missing file or folder is skipped instead of an error.")
    glob: str = Field("**/*.parquet", description="Files to read when `path` is a folder of loraflow records.")


class IngestConfig(StrictModel):
    sources: list[SourceConfig] = Field(description="Where the training (and frozen test) data comes from.")
    prompt_template: str = Field("chat", description=PROMPT_TEMPLATE_HELP)
    id_secret_block: str | None = Field(
        None,
        description="Prefect Secret block holding the record-id key, for several machines retraining one project "
        "(None: the key file under the loraflow home; see tasks/identity.py).",
    )
    task_runner: TaskRunnerKind = Field(
        "local",
        description="Where the data stages' per-row work runs: `local` (this process) or `dask` (shards of rows "
        "as Prefect tasks on prefect-dask's DaskTaskRunner; same outputs, see tasks/runner.py).",
    )
    dask: DaskConfig = Field(
        default_factory=DaskConfig,
        description="The Dask cluster for `task_runner: dask` (address, workers, shard size).",
    )

    @field_validator("prompt_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        return check_template(value)


# --------------------------------------------------------------------------------------------- parsing


class _BadRow(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _check_messages(messages: Any) -> list[dict[str, str]]:
    # Text checks (binary, lone surrogates) are the PII stage's: ingest only checks the chat's shape.
    messages = coerce_messages(messages)
    problem = messages_problem(messages, roles=ROLES, check_text=False)
    if problem:
        where = "" if problem.index is None else f" (message {problem.index})"
        raise _BadRow(problem.reason, f"`messages` is unusable: {problem.reason}{where}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _str_field(obj: dict, key: str, required: bool = True) -> str:
    v = obj.get(key)
    if v is None:
        if required:
            raise _BadRow("missing_field", f"missing field `{key}`")
        return ""
    if not isinstance(v, str):
        raise _BadRow("non_string_content", f"field `{key}` is {type(v).__name__}")
    return v


def to_messages(obj: Any, fmt: Format, system_prompt: str | None) -> list[dict[str, str]]:
    """Convert one parsed JSON object into chat messages (raises _BadRow)."""
    if not isinstance(obj, dict):
        raise _BadRow("not_an_object", f"line is a JSON {type(obj).__name__}, not an object")
    if fmt == "auto":
        if "messages" in obj:
            fmt = "chat"
        elif "instruction" in obj or "output" in obj:
            fmt = "alpaca"
        elif "prompt" in obj or "completion" in obj:
            fmt = "prompt_completion"
        else:
            raise _BadRow("unknown_shape", "object has none of messages / instruction+output / prompt+completion")
    if fmt == "chat":
        messages = _check_messages(obj.get("messages"))
    elif fmt == "alpaca":
        instruction, inp = _str_field(obj, "instruction"), _str_field(obj, "input", required=False)
        output = _str_field(obj, "output")
        if inp:
            messages = [{"role": "system", "content": instruction}, {"role": "user", "content": inp}]
        else:
            messages = [{"role": "user", "content": instruction}]
        messages.append({"role": "assistant", "content": output})
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _str_field(obj, "prompt")},
            {"role": "assistant", "content": _str_field(obj, "completion")},
        ]
    else:
        raise ValueError(f"not a JSON line format: {fmt}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    for m in messages:  # a lone surrogate (a "\ud800" escape) cannot be hashed into an id or written as UTF-8
        if text_problem(m["content"]) == "invalid_utf8":
            raise _BadRow("invalid_utf8", "a message holds a lone surrogate, which is not UTF-8")
    return messages


def _record(messages, source: str, created_at: Any, meta: dict, key: bytes, rid: str | None = None) -> dict:
    return {
        "id": rid or keyed_record_id(messages, key),
        "messages": messages,
        "source": source,
        "created_at": _timestamp(created_at),
        "meta": meta,
    }


def _timestamp(value: Any) -> str:
    """``created_at`` as text, or "" for anything that is not a short scalar (the field is never PII-scrubbed)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value != value:
        return ""
    text = str(value)
    return text if len(text) <= 64 and text_problem(text) is None else ""


def _bad(path: Path, line: int, reason: str, message: str) -> dict[str, Any]:
    """A quarantine row for an unreadable input line: where it was, never what it said."""
    return {
        "id": f"{path.name}:{line}",
        "stage": "ingest",
        "reason": reason,
        "detail": json.dumps({"file": str(path), "line": line, "error": message}),
        "record": None,
    }


def count_lines(path: Path) -> int:
    """Lines in a text file as ``for line in file`` sees them (a last line without a newline counts)."""
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _read_jsonl(path: Path, src: SourceConfig, name: str, meta: dict, key: bytes) -> tuple[list, list]:
    kept, bad = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if src.max_rows and len(kept) >= src.max_rows:
                bad.append(_bad(path, lineno, "past_max_rows", f"after the first {src.max_rows} records"))
                continue
            if not raw.strip():
                bad.append(_bad(path, lineno, "blank_line", "blank line"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(_bad(path, lineno, "invalid_utf8", f"not UTF-8 at byte {e.start}"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(_bad(path, lineno, "malformed_json", f"{e.msg} at column {e.colno}"))
                continue
            except RecursionError:
                bad.append(_bad(path, lineno, "malformed_json", "nested too deeply to parse"))
                continue
            try:
                messages = to_messages(obj, src.format, src.system_prompt)
            except _BadRow as e:
                bad.append(_bad(path, lineno, e.reason, str(e)))
                continue
            created = obj.get("created_at") if isinstance(obj, dict) else None
            kept.append(_record(messages, name, created, {**meta, "line": lineno}, key))
    return kept, bad


def _read_table(path: Path, src: SourceConfig, name: str, meta: dict, key: bytes) -> tuple[list, list]:
    cols = src.columns or ColumnMap()
    try:
        if src.format == "parquet" or path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = _read_csv(path)
    except pd.errors.EmptyDataError as e:
        raise StageError(f"Source {path} is empty: no header row and no data.") from e
    except pd.errors.ParserWarning:
        raise StageError(f"Source {path}: a row has more fields than the header; fix its quoting.") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError) as e:
        raise StageError(f"Source {path} cannot be read as a table: {e}.") from e
    wanted = [c for c in (cols.text, cols.label, cols.system, cols.created_at) if c]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise StageError(
            f"Source {path} has no column {', '.join(repr(c) for c in missing)} (its columns are "
            f"{', '.join(repr(c) for c in df.columns)}). Fix the header or set `columns:` for this source in "
            f"the config (text={cols.text!r}, label={cols.label!r})."
        )
    kept, bad = [], []
    for n, row in enumerate(df.itertuples(index=False)):
        i = n + 2  # line 1 is the header (for CSV without multi-line cells, the file's line number)
        r = dict(zip(df.columns, row, strict=True))
        if src.max_rows and n >= src.max_rows:
            bad.append(_bad(path, i, "past_max_rows", f"after the first {src.max_rows} rows"))
            continue
        if all(v == "" for v in r.values()):
            bad.append(_bad(path, i, "blank_line", "blank row"))
            continue
        text, label = r[cols.text], r[cols.label]
        if not isinstance(text, str) or not isinstance(label, str):
            bad.append(_bad(path, i, "non_string_content", "text or label is not a string"))
            continue
        messages = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
        system = r[cols.system] if cols.system else src.system_prompt
        if system:
            messages.insert(0, {"role": "system", "content": str(system)})
        created = r[cols.created_at] if cols.created_at else None
        kept.append(_record(messages, name, created, {**meta, "line": i}, key))
    return kept, bad


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """The one CSV reading (for rows and for the count): a row with more fields than the header raises
    ParserWarning instead of silently turning the first column into the index or dropping cells."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=False, index_col=False,
            **kwargs,
        )  # fmt: skip


def _read_records(path: Path, src: SourceConfig, name: str, meta: dict, key: bytes) -> tuple[list, list]:
    """loraflow's own records keep the id they were given (from their raw text, before scrubbing)."""
    files = sorted(path.glob(src.glob)) if path.is_dir() else [path]
    try:
        frames = [pd.read_parquet(f) for f in files if not f.name.startswith(".")]
    except (OSError, ValueError) as e:
        raise StageError(f"Source {path}: a Parquet file cannot be read ({type(e).__name__}).") from None
    if any("messages" not in f.columns for f in frames):
        raise StageError(f"Source {path} holds Parquet files that are not loraflow records (no `messages` column).")
    frames = [f for f in frames if len(f)]
    if not frames:
        return [], []
    df = pd.concat(frames, ignore_index=True)
    kept = []
    for r in df.to_dict("records"):
        messages = json.loads(r["messages"]) if isinstance(r["messages"], str) else list(r["messages"])
        old_meta = json.loads(r["meta"]) if isinstance(r.get("meta"), str) else (r.get("meta") or {})
        rid = r.get("id") if isinstance(r.get("id"), str) and r.get("id") else None
        kept.append(_record(messages, r.get("source") or name, r.get("created_at"), {**old_meta, **meta}, key, rid))
    return kept, []


def _rows_in_file(path: Path, fmt: str, src: SourceConfig) -> int:
    """Rows in the source counted from the file itself, apart from the parse that keeps or quarantines them."""
    if fmt == "records":
        files = sorted(path.glob(src.glob)) if path.is_dir() else [path]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files if not f.name.startswith("."))
    if fmt == "parquet" or path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        return len(_read_csv(path, usecols=[0]))
    return count_lines(path)


def _digest(path: Path, src: SourceConfig) -> str:
    """The source's content digest: the file's sha256, or for a folder of records the digest of its files'."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(path.glob(src.glob)):
        if not f.name.startswith("."):
            h.update(f"{f.relative_to(path)}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def load_source(src: SourceConfig, base_dir: str | Path = ".", key: bytes | None = None) -> StageOutcome:
    """Read one source into canonical records + quarantined lines; ``report["rows_in"]`` counts the file.

    ``key`` is the record-id key (default: the project's, see :func:`tasks.identity.project_key`).
    """
    path = Path(src.path)
    if not path.is_absolute():
        path = Path(base_dir) / path
    name = src.name or path.stem
    meta: dict[str, Any] = {"file": path.name}
    if src.split:
        meta["split"] = src.split
    if not path.exists():
        if src.optional:
            return StageOutcome(kept=empty_records(), quarantined=empty_quarantine(), report={"rows_in": 0})
        raise StageError(f"Source {path} does not exist (source {name!r} in the data config).")
    if not path.is_file() and not path.is_dir():  # a FIFO or device would block the read or never end
        raise StageError(f"Source {path} is not a regular file or folder (source {name!r} in the data config).")
    fmt = src.format
    if fmt == "auto" and path.is_file():
        fmt = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}.get(path.suffix.lower(), "auto")
    key = key if key is not None else project_key()
    if fmt == "auto" and path.is_dir():
        fmt = "records"
    if fmt == "records":
        kept, bad = _read_records(path, src, name, meta, key)
    elif path.is_file() and os.path.getsize(path) == 0:
        raise StageError(f"Source {path} is empty (0 bytes): nothing to train on from source {name!r}.")
    elif fmt in ("csv", "parquet"):
        kept, bad = _read_table(path, src, name, meta, key)
    else:
        kept, bad = _read_jsonl(path, src, name, meta, key)
        if not kept and all(b["reason"] == "blank_line" for b in bad):
            raise StageError(f"Source {path} has no records (only blank lines).")
    kept_df = pd.DataFrame(kept, columns=RECORD_COLUMNS) if kept else empty_records()
    bad_df = pd.DataFrame(bad) if bad else empty_quarantine()
    rows_in = _rows_in_file(path, fmt, src)
    source = {"rows_in": rows_in, "rows": len(kept), "sha256": _digest(path, src)}
    report = {"rows_in": rows_in, "sources": {name: source}}
    return StageOutcome(kept=kept_df, quarantined=bad_df, report=report)


def load_file(path: str | Path, fmt: Format = "auto", columns: ColumnMap | None = None, source: str | None = None):
    """Read one file in any supported format (what the CLI commands use)."""
    return load_source(SourceConfig(path=str(path), format=fmt, columns=columns, name=source))


def ingest(cfg: IngestConfig, base_dir: str | Path = ".") -> tuple[int, StageOutcome]:
    """Read every source; returns (rows_in, outcome).

    ``rows_in`` is counted from the files themselves (every line or row, blank ones and those past ``max_rows``
    included), never as kept + quarantined, so the stage's ledger check can fail.
    """
    kept, bad, per_source, rows_in = [], [], {}, 0
    key = project_key(cfg.id_secret_block)
    for src in cfg.sources:
        out = load_source(src, base_dir, key)
        kept.append(out.kept)
        bad.append(out.quarantined)
        rows_in += out.report["rows_in"]
        name = src.name or Path(src.path).stem
        per_source[name] = {
            "rows_in": out.report["rows_in"],
            "kept": len(out.kept),
            "quarantined": len(out.quarantined),
            "sha256": out.report.get("sources", {}).get(name, {}).get("sha256"),
        }
    kept_df = (
        pd.concat([k for k in kept if len(k)], ignore_index=True) if any(len(k) for k in kept) else empty_records()
    )
    bad_df = (
        pd.concat([b for b in bad if len(b)], ignore_index=True) if any(len(b) for b in bad) else empty_quarantine()
    )
    if kept_df.empty:
        raise StageError("No readable records in any source: " + ", ".join(s.path for s in cfg.sources) + ".")
    outcome = StageOutcome(kept=kept_df, quarantined=bad_df, report={"sources": per_source})
    return rows_in, outcome


# --------------------------------------------------------------------------------------------- the raw file

# The raw output's name is private to the run that writes it, ``ingest-<digest>.<host>-<pid>-<nonce>.parquet``:
# each run deletes its own as soon as it is scrubbed, and two runs on the same data must not share one. The host
# and pid say whose it is, so the next run can delete the raw text of a run that was killed before its cleanup.


_RAW_NAME = re.compile(r"ingest-[0-9a-f]+\.(?P<host>[0-9a-f]{16})-(?P<pid>\d+)-[0-9a-f]+\.parquet")


def _host() -> str:
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]


def raw_tag() -> str:
    """A name part no other run's raw file has: this host, this process and a random nonce."""
    import uuid

    return f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale_raw(raw_dir: Path) -> list[Path]:
    """Delete the raw ingest files of runs on this host whose process has ended (killed before scrubbing).

    A file of a live process, or of another host sharing the home, is left alone (a reused pid only delays the
    sweep), and so is a name this version does not write. Returns the deleted paths.
    """
    removed = []
    for path in raw_dir.glob("ingest-*.parquet"):
        m = _RAW_NAME.fullmatch(path.name)
        if m and m["host"] == _host() and not _alive(int(m["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@task(name="ingest")
def ingest_task(cfg: IngestConfig, base_dir: str, out_dir: str, raw_dir: str) -> StageResult:
    """Not cached: ingest is cheap, and its output is raw text that lives in ``raw_dir`` only until scrubbed.

    The raw file's name is this run's own (:func:`raw_tag`); a killed run's is swept first. The quarantine file
    and report (file + line numbers and counts, no text) go to ``out_dir`` like any stage's.
    """
    rows_in, outcome = ingest(cfg, base_dir)
    sweep_stale_raw(Path(raw_dir))
    return finish_stage(
        "ingest", rows_in, outcome, Path(out_dir) / "ingest", data_dir=Path(raw_dir), data_tag=raw_tag()
    )
