"""Stable train / validation / test split.

A record's split is a pure function of its id (a content hash), so adding data next quarter never moves an
existing example between splits: this quarter's test examples are still in next quarter's test set. A source
marked ``split: test`` in the data config (``meta.split == "test"``, e.g. BANKING77's own test file) is the
frozen test set instead, and the hash then only divides the rest into train and validation.
"""

import hashlib
from pathlib import Path

import pandas as pd
from prefect import task
from pydantic import Field

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StrictModel,
    read_records,
    write_records,
)

SPLITS = ("train", "val", "test")


class SplitConfig(StrictModel):
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of records hashed into validation.")
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share hashed into test when no source is marked `split: test`."
    )
    salt: str = Field(
        "loraflow-v1",
        description="Mixed into the hash. Changing it reshuffles every split and unfreezes the test set.",
    )
    max_test_rows: int | None = Field(
        None,
        ge=1,
        description="Evaluate on a fixed, seeded sample of at most this many test rows (None: all).",
    )
    max_train_rows: int | None = Field(
        None, ge=1, description="Cap on training rows (stratified by assistant target; None: all)."
    )
    seed: int = Field(0, description="Seed for the test / train samples above.")


def _unit(record_id: str, salt: str) -> float:
    """Map an id to [0, 1) with a salted SHA-256 (uniform, stable across machines and Python versions)."""
    digest = hashlib.sha256(f"{salt}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(records: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """Return the split name of every record (index-aligned)."""
    hinted = [(m or {}).get("split") for m in records["meta"]]
    has_test_source = any(h == "test" for h in hinted)
    out = []
    for rid, hint in zip(records["id"], hinted, strict=True):
        if hint in SPLITS:
            out.append(hint)
            continue
        u = _unit(rid, cfg.salt)
        if not has_test_source and u < cfg.test_fraction:
            out.append("test")
        elif u < (0 if has_test_source else cfg.test_fraction) + cfg.val_fraction:
            out.append("val")
        else:
            out.append("train")
    return pd.Series(out, index=records.index, dtype=object)


def test_mask(records: pd.DataFrame, cfg: SplitConfig) -> pd.Series:
    """Boolean mask of the rows that belong to the frozen test set."""
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


def split_records(records: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Partition records into train / val / test frames (sampled to the configured caps)."""
    names = assign_splits(records, cfg)
    parts = {s: records[names == s] for s in SPLITS}
    if cfg.max_train_rows:
        parts["train"] = _stratified_sample(parts["train"], cfg.max_train_rows, cfg.seed)
    if cfg.max_test_rows and len(parts["test"]) > cfg.max_test_rows:
        parts["test"] = parts["test"].sample(n=cfg.max_test_rows, random_state=cfg.seed)
    return {s: df.sort_values("id", kind="stable") for s, df in parts.items()}


class Splits(StrictModel):
    train: DatasetRef
    val: DatasetRef
    test: DatasetRef
    report_uri: str
    counts: dict[str, int]


def run_split(ref: DatasetRef, cfg: SplitConfig, out_dir: str | Path) -> Splits:
    """Write the three splits. Rows left out by a sampling cap are counted, not silently lost."""
    records = read_records(ref)
    parts = split_records(records, cfg)
    out = Path(out_dir) / "split"
    refs = {s: write_records(df, out / f"{s}-{ref.sha256[:12]}.parquet") for s, df in parts.items()}
    sampled_out = len(records) - sum(len(df) for df in parts.values())
    counts = {"rows_in": len(records), **{s: len(df) for s, df in parts.items()}, "sampled_out": sampled_out}
    assert counts["rows_in"] == counts["train"] + counts["val"] + counts["test"] + sampled_out
    report = out / f"split-{ref.sha256[:12]}.report.json"
    import json

    report.write_text(json.dumps({"stage": "split", "counts": counts, "config": cfg.model_dump()}, indent=2))
    return Splits(**refs, report_uri=str(report), counts=counts)


@task(name="split", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def split_task(ref: DatasetRef, cfg: SplitConfig, out_dir: str) -> Splits:
    return run_split(ref, cfg, out_dir)
