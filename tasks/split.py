"""Stable train / validation / test split, with the project's frozen test set.

A record's split is a pure function of its id (a keyed hash of its raw content, fixed at ingest), so adding
data next quarter never moves an existing example between splits. A source marked ``split: test`` in the data
config (``meta.split == "test"``, e.g. BANKING77's own test file) is the test set instead, and the hash then only
divides the rest into train and validation. Within a project, the test set is frozen across retrains
(:mod:`tasks.testset`): the flow passes the plan it made from the recorded state as ``plan``.

Every input row ends in exactly one of train / val / test / sampled_out; the ``assignment`` file lists each id
with its split and, for sampled-out rows, why (``train_cap``, ``test_cap``). Output files are named by the
digest of what they hold.
"""

import json
from pathlib import Path

import pandas as pd
from prefect import task
from pydantic import Field

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StrictModel,
    atomic_write_text,
    frame_sha256,
    pause_point,
    read_records,
    write_records,
)
from tasks.testset import SplitRule, read_plan, rule_split, test_order

SPLITS = ("train", "val", "test")


class SplitConfig(StrictModel):
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of new records hashed into validation.")
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of new records hashed into test when no source is marked `split: test`."
    )
    salt: str = Field(
        "loraflow-v1",
        description="Mixed into the hash of new records. Records split by an earlier retrain keep their split.",
    )
    max_test_rows: int | None = Field(
        None,
        ge=1,
        description="Evaluate on at most this many test rows: every frozen one, then new ones by a fixed hash "
        "order (None: all). Below the frozen rows present it is an error.",
    )
    max_train_rows: int | None = Field(
        None, ge=1, description="Cap on training rows (stratified by assistant target; None: all)."
    )
    seed: int = Field(0, description="Seed for the stratified train sample.")
    plan: str | None = Field(
        None,
        description="Set by the flow: the frozen-test-set plan of this run (tasks/testset.py). None: the hash rule "
        "alone, with no frozen set.",
    )


def _rule(records: pd.DataFrame, cfg: SplitConfig) -> SplitRule:
    hinted = any((m or {}).get("split") == "test" for m in records["meta"])
    return SplitRule(salt=cfg.salt, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                     has_test_source=hinted)  # fmt: skip


def assign_splits(records: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """Return the split name of every record (index-aligned): the plan's, else the hash rule's."""
    planned = read_plan(cfg.plan)["splits"] if cfg.plan else {}
    rule = _rule(records, cfg)
    out = []
    for rid, meta in zip(records["id"], records["meta"], strict=True):
        if rid in planned:
            out.append(planned[rid])
        elif (meta or {}).get("split") == "test":
            out.append("test")
        else:
            out.append(rule_split(rid, rule))
    return pd.Series(out, index=records.index, dtype=object)


def test_mask(records: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """Boolean mask of the rows that belong to the (frozen) test set."""
    return assign_splits(records, cfg) == "test"


def _target(messages) -> str:
    return messages[-1]["content"] if messages else ""


def _stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, as even across assistant targets (labels) as the data allows, deterministic."""
    if len(df) <= n:
        return df
    shuffled = df.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby(shuffled["messages"].map(_target)).cumcount()
    return shuffled.assign(_rank=rank.values).sort_values(["_rank", "id"], kind="stable").head(n).drop(columns="_rank")


def _test_sample(test: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """At most ``max_test_rows`` test rows in the plan's fixed order (frozen rows first): the same rows for every
    model and every quarter."""
    if cfg.max_test_rows is None or len(test) <= cfg.max_test_rows:
        return test
    order = read_plan(cfg.plan)["test_order"] if cfg.plan else test_order(list(test["id"]), set(), cfg.salt)
    rank = {rid: i for i, rid in enumerate(order)}
    ranked = test.assign(_rank=[rank.get(rid, len(rank)) for rid in test["id"]])
    return ranked.sort_values(["_rank", "id"], kind="stable").head(cfg.max_test_rows).drop(columns="_rank")


def split_records(records: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Partition records into train / val / test frames (sampled to the configured caps)."""
    names = assign_splits(records, cfg)
    parts = {s: records[names == s] for s in SPLITS}
    if cfg.max_train_rows:
        parts["train"] = _stratified_sample(parts["train"], cfg.max_train_rows, cfg.seed)
    parts["test"] = _test_sample(parts["test"], cfg)
    return {s: df.sort_values("id", kind="stable") for s, df in parts.items()}


def assignment_frame(records: pd.DataFrame, parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per input row: ``id, split, reason`` (reason says why a sampled-out row was left out)."""
    where = {rid: s for s, df in parts.items() for rid in df["id"]}
    rows = []
    for rid, hashed in zip(records["id"], records["_hashed"], strict=True):
        split = where.get(rid, "sampled_out")
        reason = "" if split != "sampled_out" else ("test_cap" if hashed == "test" else "train_cap")
        rows.append({"id": rid, "split": split, "reason": reason})
    return pd.DataFrame(rows, columns=["id", "split", "reason"]).sort_values("id", kind="stable")


class Splits(StrictModel):
    train: DatasetRef
    val: DatasetRef
    test: DatasetRef
    assignment: DatasetRef | None = None
    report_uri: str
    counts: dict[str, int]


def run_split(ref: DatasetRef, cfg: SplitConfig, out_dir: str | Path) -> Splits:
    """Write the three splits and the assignment; the ledger is checked against the input's row count."""
    records = read_records(ref)
    parts = split_records(records, cfg)
    pause_point("split")
    out = Path(out_dir) / "split"
    refs = {}
    for s, df in parts.items():
        refs[s] = write_records(df, out / f"{s}-{frame_sha256(df.reset_index(drop=True))[:12]}.parquet")
    assignment = assignment_frame(records.assign(_hashed=assign_splits(records, cfg)), parts)
    refs["assignment"] = write_records(assignment, out / f"assignment-{frame_sha256(assignment)[:12]}.parquet")
    sampled = assignment[assignment["split"] == "sampled_out"]
    counts = {"rows_in": len(records), **{s: refs[s].rows for s in SPLITS}, "sampled_out": len(sampled)}
    for reason, n in sorted(sampled["reason"].value_counts().items()):
        counts[f"sampled_out_{reason}"] = int(n)
    if counts["rows_in"] != sum(counts[s] for s in SPLITS) + counts["sampled_out"]:
        raise AssertionError(f"split lost rows: {counts}")
    text = json.dumps({"stage": "split", "counts": counts, "config": cfg.model_dump()}, indent=2, sort_keys=True)
    report = out / f"split-{frame_sha256(pd.DataFrame({'r': [text]}))[:12]}.report.json"
    atomic_write_text(report, text)
    return Splits(**refs, report_uri=str(report), counts=counts)


@task(name="split", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def split_task(ref: DatasetRef, cfg: SplitConfig, out_dir: str) -> Splits:
    return run_split(ref, cfg, out_dir)
