"""The stage: :func:`deduplicate` on a records frame, and the Prefect task the flow calls."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import DatasetRef, StageOutcome, StageResult, finish_stage, quarantine_rows, read_records
from tasks.runner import DaskConfig
from tasks.split import SplitConfig, test_mask

from .config import DedupConfig
from .engine import Decisions, Rows, keep_rank, newest_order, run_engine
from .keys import features
from .minhash import Bander, shingle_kind

STAGE = "dedup"


def long_text(text: str, cfg: DedupConfig) -> bool:
    """Whether a normalised text is long enough for the n-gram overlap check against the test set."""
    return text.count(" ") + 1 >= cfg.ngram_overlap_min_words


def band_keys_of(texts: list[str], cfg: DedupConfig, runner: DaskConfig | None = None) -> np.ndarray | None:
    """LSH band keys of every text (None when near-dup detection is off or there is nothing to compare); with
    ``runner`` each batch of ``cfg.batch_rows`` texts is one Prefect task on Dask."""
    n = len(texts)
    if not cfg.near_duplicates or n <= 1:
        return None
    bander = Bander(cfg, n, runner)
    try:
        step = cfg.batch_rows
        batches = (
            (texts[i : i + step], [shingle_kind(t, cfg) for t in texts[i : i + step]]) for i in range(0, n, step)
        )
        parts = list(bander.map(batches))
    finally:
        bander.close()
    return np.concatenate(parts) if parts else None


def deduplicate(
    records: pd.DataFrame, cfg: DedupConfig, is_test: pd.Series | None = None, runner: DaskConfig | None = None
) -> StageOutcome:
    """Remove exact and near duplicates and test leaks from a records frame.

    Args:
        records: canonical records (id, messages, source, created_at, meta).
        cfg: the stage config.
        is_test: index-aligned booleans marking the frozen test rows (``tasks.split.test_mask``); None: no test
            set, so no decontamination.
        runner: where the MinHash signatures are computed (None: here; see :mod:`tasks.runner`).

    Returns:
        The kept records (input order) and one quarantine row per dropped record, whose ``detail`` holds the
        kept row's id (``kept_id``), the similarity and the method; ``rows_in == kept + quarantined``.
    """
    n = len(records)
    test = np.zeros(n, dtype=bool)
    if is_test is not None and cfg.decontaminate:
        test = is_test.reindex(records.index).fillna(False).to_numpy(dtype=bool)
    f = features(records["messages"], cfg.key)
    created = ["" if c is None else str(c) for c in records["created_at"]]
    ids = records["id"].astype(str).to_numpy()
    rows = Rows(
        exact=f.exact,
        prompt=f.prompt,
        target=f.target,
        empty=f.empty,
        bands=band_keys_of(f.texts, cfg, runner),
        rank=keep_rank(test, [str(s) for s in records["source"]], created, list(ids), f.raw, cfg),
        is_test=test,
        created_ns_order=newest_order(created),
        ids=ids,
        texts_for=lambda want: {int(i): f.texts[i] for i in want},
        long_text_rows=np.array([i for i, t in enumerate(f.texts) if long_text(t, cfg)], dtype=np.int64),
    )
    dec = run_engine(rows, cfg)
    drop = dec.reason != ""
    qidx = np.flatnonzero(drop)
    quarantined = quarantine_rows(
        STAGE, records.iloc[qidx], [str(r) for r in dec.reason[qidx]], [detail(dec, int(i), ids) for i in qidx]
    )
    return StageOutcome(
        kept=records.iloc[np.flatnonzero(~drop)],
        quarantined=quarantined,
        report={**dec.report, "config": cfg.model_dump()},
        metrics=dec.metrics,
    )


def detail(dec: Decisions, i: int, ids: np.ndarray) -> dict[str, Any]:
    """A dropped row's quarantine detail: the kept row's id, the method and the verified similarity."""
    k = int(dec.kept_idx[i])
    d: dict[str, Any] = {"kept_id": str(ids[k]) if k >= 0 else None, "method": dec.method[i] or None}
    if k >= 0:
        d["similarity"] = round(float(dec.sim[i]), 4)
    if dec.reason[i] == "conflicting_target":
        d.update(dec.extra.get(i, {}))
    return d


# `runner` says where signatures are computed, never the result: DATA_STAGE_CACHE leaves it out of the key.
@task(name="dedup", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def dedup_task(
    ref: DatasetRef, cfg: DedupConfig, split_cfg: SplitConfig, out_dir: str, runner: DaskConfig | None = None
) -> StageResult:
    """Dedup + decontaminate ``ref``; the frozen test rows come from the split config (stable id hash).

    From ``cfg.stream_min_rows`` rows on, the Parquet file is streamed (:func:`tasks.dedup.dedup_parquet`)
    instead of read whole; both paths decide the same.
    """
    if ref.rows >= cfg.stream_min_rows:
        from .stream import dedup_parquet

        return dedup_parquet(ref.uri, cfg, Path(out_dir) / STAGE, split_cfg, runner)
    records = read_records(ref)
    is_test = test_mask(records, split_cfg) if len(records) else None
    outcome = deduplicate(records, cfg, is_test=is_test, runner=runner)
    return finish_stage(STAGE, len(records), outcome, Path(out_dir) / STAGE)
