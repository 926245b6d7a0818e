"""The PII stage: scan every message of every record, replace what is found, quarantine what cannot be scanned.

Nothing here logs or reports a raw value: reports hold counts per entity type and role only, and quarantine
details say where a problem is (message index, content type, whether the role is a standard one), never text.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from prefect import task

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StageOutcome,
    StageResult,
    empty_quarantine,
    empty_records,
    quarantine_rows,
    run_stage,
)
from tasks.messages import ROLES, messages_problem
from tasks.runner import DaskConfig, map_shards, row_ranges

from .anonymize import Pseudonyms, replace, salt
from .config import PiiConfig, PiiSpan
from .engine import detect_spans
from .spans import propagate_names, replaced_tokens

STAGE = "pii"

# tasks.messages reason codes that this stage has always reported as one "malformed_messages".
_MALFORMED = {"messages_not_json", "messages_not_a_list", "no_messages", "message_not_an_object",
              "role_missing_or_not_text", "content_missing"}  # fmt: skip


def _messages_problem(msgs: Any) -> tuple[str, dict[str, Any]] | None:
    """The quarantine reason and a detail that quotes no text (the record is not scrubbed yet)."""
    if not isinstance(msgs, list):
        return "malformed_messages", {"type": type(msgs).__name__}
    problem = messages_problem(msgs, roles=None)
    if problem is None:
        return None
    detail: dict[str, Any] = {"message": problem.index} if problem.index is not None else {"type": "list"}
    if problem.index is not None:
        m = msgs[problem.index]
        if isinstance(m, dict) and "content" in m:
            role = m.get("role")
            detail.update(standard_role=role in ROLES, type=type(m["content"]).__name__)
        else:
            detail["type"] = type(m).__name__
    reason = "malformed_messages" if problem.reason in _MALFORMED else problem.reason
    return reason, detail


@dataclass
class _Tally:
    """Counts for the stage report (types and roles only, never values)."""

    per_type: Counter = field(default_factory=Counter)
    per_role: Counter = field(default_factory=Counter)
    per_role_type: Counter = field(default_factory=Counter)
    touched: int = 0
    tokens: int = 0
    tokens_replaced: int = 0

    def add(self, role: str, spans: list[PiiSpan]) -> None:
        for s in spans:
            self.per_type[s.entity_type] += 1
            self.per_role[role] += 1
            self.per_role_type[f"{role}.{s.entity_type}"] += 1

    def merge(self, other: "_Tally") -> None:
        self.per_type += other.per_type
        self.per_role += other.per_role
        self.per_role_type += other.per_role_type
        self.touched += other.touched
        self.tokens += other.tokens
        self.tokens_replaced += other.tokens_replaced


def _detect_by_row(records: pd.DataFrame, rows: list[int], cfg: PiiConfig) -> dict[int, dict[int, list[PiiSpan]]]:
    """Spans by row and message index for every scanned message of ``rows`` (one batched detection call)."""
    roles = set(cfg.roles) if cfg.roles is not None else None
    where = [
        (row, j)
        for row in rows
        for j, m in enumerate(records.iloc[row]["messages"])
        if roles is None or m.get("role") in roles
    ]
    texts = [records.iloc[row]["messages"][j]["content"] for row, j in where]
    by_row: dict[int, dict[int, list[PiiSpan]]] = {}
    for (row, j), sp in zip(where, detect_spans(texts, cfg, desc=STAGE) if texts else [], strict=True):
        by_row.setdefault(row, {})[j] = sp
    if "PERSON" in cfg.entities:
        for row, found in by_row.items():
            propagate_names(records.iloc[row]["messages"], found)
    return by_row


def _scrub_record(rec: pd.Series, found: dict[int, list[PiiSpan]], cfg: PiiConfig, key: bytes | None, tally: _Tally):
    """The scrubbed record and the entity types whose operator is drop_row (empty: keep it)."""
    pseudo = Pseudonyms()
    drop_types: Counter[str] = Counter()
    new_msgs = []
    for j, m in enumerate(rec["messages"]):
        sp = found.get(j, [])
        tally.add(str(m.get("role")), sp)
        if j in found:  # a scanned message: its tokens count towards the data-destroyed share
            n, hit = replaced_tokens(m["content"], sp)
            tally.tokens += n
            tally.tokens_replaced += hit
        drop_types.update(
            s.entity_type for s in sp if cfg.operators.get(s.entity_type, cfg.default_operator) == "drop_row"
        )
        new_msgs.append({**m, "content": replace(m["content"], sp, cfg, pseudo, key)})
    tally.touched += any(found.get(j) for j in range(len(new_msgs)))
    if drop_types:  # stored scrubbed with plain placeholders, never raw
        ph = cfg.model_copy(update={"operators": {}, "default_operator": "placeholder"})
        new_msgs = [
            {**m, "content": replace(m["content"], found.get(j, []), ph, Pseudonyms(), None)}
            for j, m in enumerate(rec["messages"])
        ]
    new = {"id": rec["id"], "messages": new_msgs, "source": rec.get("source"),
           "created_at": rec.get("created_at"), "meta": rec.get("meta")}  # fmt: skip
    return new, drop_types


def _report(cfg: PiiConfig, tally: _Tally, n_dropped: int, n_bad: int, n_scanned: int) -> dict[str, Any]:
    return {
        "entities_found": int(sum(tally.per_type.values())),
        "entities_by_type": dict(sorted(tally.per_type.items())),
        "entities_by_role": dict(sorted(tally.per_role.items())),
        "entities_by_role_and_type": dict(sorted(tally.per_role_type.items())),
        "records_touched": int(tally.touched),
        "tokens_scanned": tally.tokens,
        "tokens_replaced": tally.tokens_replaced,
        "data_destroyed_share": round(tally.tokens_replaced / tally.tokens, 4) if tally.tokens else 0.0,
        "records_dropped_by_policy": n_dropped,
        "records_quarantined_bad_content": n_bad,
        "messages_scanned": n_scanned,
        "roles_scanned": sorted(cfg.roles) if cfg.roles is not None else "all",
        "operators": {e: cfg.operators.get(e, cfg.default_operator) for e in cfg.entities},
        "spacy_model": cfg.spacy_model,
    }


def _empty_report(cfg: PiiConfig) -> dict[str, Any]:
    return {"entities_found": 0, "entities_by_type": {}, "entities_by_role": {}, "records_touched": 0,
            "tokens_scanned": 0, "tokens_replaced": 0, "data_destroyed_share": 0.0,
            "records_dropped_by_policy": 0, "records_quarantined_bad_content": 0, "messages_scanned": 0}  # fmt: skip


def scrub(records: pd.DataFrame, cfg: PiiConfig) -> StageOutcome:
    """Detect and replace PII in every scanned message of every record (see :func:`scrub_with_spans`)."""
    return scrub_with_spans(records, cfg)[0]


def scrub_with_spans(
    records: pd.DataFrame, cfg: PiiConfig
) -> tuple[StageOutcome, dict[tuple[int, int], list[PiiSpan]]]:
    """Detect and replace PII in every scanned message of every record.

    Quarantined: records whose messages are not a list of {role, content} with string, valid-UTF-8 text
    (reasons ``malformed_messages``, ``non_string_content``, ``invalid_utf8``, ``binary_content``; the record is
    not stored, only where the problem is), and records holding an entity whose operator is ``drop_row``
    (reason ``pii_drop_row``; stored scrubbed with placeholders). Every record keeps the id ingest gave it
    from its raw text, so PII settings never change an id or a split.

    Returns the outcome and the detected spans by (row position in ``records``, message index), offsets into
    the original message text (for ``loraflow scrub --spans``).
    """
    if len(records) == 0:
        return StageOutcome(kept=empty_records(), quarantined=empty_quarantine(), report=_empty_report(cfg)), {}
    part = scrub_part(records, cfg)
    return merge_parts([part], cfg), part.spans


@dataclass
class ScrubPart:
    """One shard's scrub, in its rows' order: what :func:`merge_parts` needs (scrubbed rows only, no raw text)."""

    kept: list[dict[str, Any]]
    q_bad: pd.DataFrame
    q_drop: pd.DataFrame
    tally: _Tally
    n_scanned: int
    spans: dict[tuple[int, int], list[PiiSpan]]


def scrub_part(records: pd.DataFrame, cfg: PiiConfig) -> ScrubPart:
    """Scrub one shard of records (every record is scrubbed on its own, so shards are independent)."""
    records = records.reset_index(drop=True)
    problems = {row: p for row, msgs in enumerate(records["messages"]) if (p := _messages_problem(msgs))}
    good = [row for row in range(len(records)) if row not in problems]
    by_row = _detect_by_row(records, good, cfg)
    key = salt(cfg) if "hash" in {cfg.default_operator, *cfg.operators.values()} else None
    tally = _Tally()
    kept_rows, drop_details, drop_records = [], [], []
    for row in good:
        new, drop_types = _scrub_record(records.iloc[row], by_row.get(row, {}), cfg, key, tally)
        if drop_types:
            drop_details.append({"entity_types": dict(sorted(drop_types.items()))})
            drop_records.append(new)
        else:
            kept_rows.append(new)

    bad_idx = sorted(problems)
    q_bad = quarantine_rows(STAGE, records.iloc[bad_idx], [problems[r][0] for r in bad_idx],
                            [problems[r][1] for r in bad_idx], include_record=False)  # fmt: skip
    q_drop = quarantine_rows(STAGE, pd.DataFrame(drop_records), "pii_drop_row", drop_details)
    n_scanned = sum(len(found) for found in by_row.values())
    spans = {(row, j): sp for row, found in sorted(by_row.items()) for j, sp in sorted(found.items())}
    return ScrubPart(kept_rows, q_bad, q_drop, tally, n_scanned, spans)


def merge_parts(parts: list[ScrubPart], cfg: PiiConfig) -> StageOutcome:
    """The stage's outcome from its shards, in shard order: kept rows, then every malformed row, then every
    policy drop (the order one shard over all rows gives), counts summed."""
    kept_rows = [r for p in parts for r in p.kept]
    kept = pd.DataFrame(kept_rows, columns=empty_records().columns) if kept_rows else empty_records()
    frames = [q for q in [p.q_bad for p in parts] + [p.q_drop for p in parts] if len(q)]
    quarantined = pd.concat(frames, ignore_index=True) if frames else empty_quarantine()
    tally = _Tally()
    for p in parts:
        tally.merge(p.tally)
    n_dropped, n_bad = sum(len(p.q_drop) for p in parts), sum(len(p.q_bad) for p in parts)
    report = _report(cfg, tally, n_dropped, n_bad, sum(p.n_scanned for p in parts))
    metrics = {
        "pii.entities_found": float(report["entities_found"]),
        "pii.records_touched": float(tally.touched),
        "pii.records_dropped_by_policy": float(n_dropped),
        "pii.data_destroyed_share": float(report["data_destroyed_share"]),
        **{f"pii.entities.{t}": float(n) for t, n in sorted(tally.per_type.items())},
    }
    return StageOutcome(kept=kept, quarantined=quarantined, report=report, metrics=metrics)


def scrub_sharded(records: pd.DataFrame, cfg: PiiConfig, runner: DaskConfig | None = None) -> StageOutcome:
    """:func:`scrub` in shards of ``runner.shard_rows`` records on Dask (None: in this process, one shard).

    Each shard is scrubbed by :func:`scrub_part` on a worker and the parts merged here in input order, so the
    outcome equals :func:`scrub`'s; a worker builds the engine on its first shard and keeps it for the rest.
    """
    if runner is None or len(records) == 0:
        return scrub(records, cfg)
    records = records.reset_index(drop=True)
    shards = ({"records": records.iloc[a:b], "cfg": cfg} for a, b in row_ranges(len(records), runner.shard_rows))
    return merge_parts(list(map_shards(scrub_part, shards, runner, name="scrub_pii_shard")), cfg)


# `runner` says where the work runs, never what comes out: DATA_STAGE_CACHE leaves it out of the key.
@task(name="scrub_pii", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def scrub_pii_task(ref: DatasetRef, cfg: PiiConfig, out_dir: str, runner: DaskConfig | None = None) -> StageResult:
    """Prefect wrapper: scrub ``ref`` (in shards on Dask when ``runner`` is given) and write
    ``<out_dir>/pii/pii-<digest>.parquet`` plus report."""
    return run_stage(STAGE, scrub_sharded, ref, cfg, out_dir, runner=runner)
