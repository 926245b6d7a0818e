"""The streaming path: dedup a records Parquet file too large to hold as a DataFrame.

Passes over the file in ``cfg.batch_rows`` batches: (1) keys, ranks and LSH band keys (signatures in a process
pool); (2) the texts of the candidate rows only, for verification; (3) the dropped rows, for the quarantine
file; (4) the kept rows, handed batch by batch to :func:`tasks.core.finish_stage`, which writes them. Resident
memory is the per-row arrays (~``8 x bands + 60`` bytes a row) plus one batch, never the whole text.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core import RECORD_COLUMNS, StageOutcome, StageResult, empty_quarantine, finish_stage, quarantine_rows
from tasks.split import SplitConfig, test_mask

from .config import DedupConfig
from .engine import Decisions, Rows, keep_rank, newest_order, run_engine
from .keys import row_keys
from .minhash import Bander, shingle_kind
from .stage import STAGE, detail, long_text


def _batches(path: str, columns: list[str], batch_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns):
        yield batch.to_pandas()


def _decode(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _test_rows(src: str, n: int, cfg: DedupConfig, split_cfg: SplitConfig | None) -> np.ndarray:
    """The frozen test rows, from the ids and meta columns only."""
    import pyarrow.parquet as pq

    if split_cfg is None or not cfg.decontaminate or not n:
        return np.zeros(n, dtype=bool)
    light = pq.read_table(src, columns=["id", "meta"]).to_pandas()
    light["meta"] = [_decode(m) for m in light["meta"]]
    return test_mask(light, split_cfg).to_numpy(dtype=bool)


@dataclass
class _Scan:
    """Per-row arrays of the first pass."""

    n: int
    exact: np.ndarray = field(init=False)
    prompt: np.ndarray = field(init=False)
    target: np.ndarray = field(init=False)
    raw: np.ndarray = field(init=False)
    empty: np.ndarray = field(init=False)
    ids: np.ndarray = field(init=False)
    sources: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    long_rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exact, self.prompt, self.target, self.raw = (np.zeros(self.n, dtype=np.uint64) for _ in range(4))
        self.empty = np.zeros(self.n, dtype=bool)
        self.ids = np.empty(self.n, dtype=object)

    def batches(self, src: str, cfg: DedupConfig) -> Iterator[tuple[list[str], list[str]]]:
        """Fill the arrays batch by batch; yield each batch's (texts, shingle kinds) for the band keys."""
        pos = 0
        for df in _batches(src, ["id", "messages", "source", "created_at"], cfg.batch_rows):
            texts = []
            for j, msgs in enumerate(df["messages"]):
                k, i = row_keys(_decode(msgs), cfg.key), pos + j
                self.exact[i], self.prompt[i], self.target[i], self.raw[i] = k.exact, k.prompt, k.target, k.raw
                self.empty[i] = k.empty
                texts.append(k.text)
                if long_text(k.text, cfg):
                    self.long_rows.append(i)
            self.ids[pos : pos + len(df)] = [str(x) for x in df["id"]]
            self.sources.extend("" if x is None else str(x) for x in df["source"])
            self.created.extend("" if x is None else str(x) for x in df["created_at"])
            pos += len(df)
            yield texts, [shingle_kind(t, cfg) for t in texts]


def _scan(src: str, cfg: DedupConfig, n: int, runner=None) -> tuple[_Scan, np.ndarray | None]:
    """Pass 1: keys of every row and, when near duplicates are on, their LSH band keys."""
    scan = _Scan(n)
    if not cfg.near_duplicates:
        for _ in scan.batches(src, cfg):
            pass
        return scan, None
    bander = Bander(cfg, n, runner)
    try:
        parts = list(bander.map(scan.batches(src, cfg)))
    finally:
        bander.close()
    return scan, (np.concatenate(parts) if parts and n > 1 else None)


def _texts_reader(src: str, cfg: DedupConfig, n: int):
    """Pass 2 (as often as the engine asks): the normalised texts of the rows wanted, re-read from disk."""

    def texts_for(rows: np.ndarray) -> dict[int, str]:
        want = np.zeros(n, dtype=bool)
        want[rows] = True
        out: dict[int, str] = {}
        pos = 0
        for df in _batches(src, ["messages"], cfg.batch_rows):
            col = df["messages"].to_numpy()
            for j in np.flatnonzero(want[pos : pos + len(df)]):
                out[pos + int(j)] = row_keys(_decode(col[j]), cfg.key).text
            pos += len(df)
        return out

    return texts_for


def _quarantined(src: str, dec: Decisions, ids: np.ndarray, batch_rows: int) -> pd.DataFrame:
    """Pass 3: quarantine rows for the dropped records (decoded, as the in-memory path quarantines them)."""
    parts, pos = [], 0
    for df in _batches(src, RECORD_COLUMNS, batch_rows):
        drop = np.flatnonzero(dec.reason[pos : pos + len(df)] != "")
        if len(drop):
            rec = df.iloc[drop].copy()
            for c in ("messages", "meta"):
                rec[c] = [_decode(v) for v in rec[c]]
            rows = drop + pos
            parts.append(
                quarantine_rows(
                    STAGE, rec, [str(r) for r in dec.reason[rows]], [detail(dec, int(i), ids) for i in rows]
                )
            )
        pos += len(df)
    return pd.concat(parts, ignore_index=True) if parts else empty_quarantine()


def _kept(src: str, dec: Decisions, batch_rows: int) -> Iterator[pd.DataFrame]:
    """Pass 4: the kept rows, batch by batch, as stored (JSON columns stay encoded)."""
    pos = 0
    for df in _batches(src, RECORD_COLUMNS, batch_rows):
        keep = dec.reason[pos : pos + len(df)] == ""
        pos += len(df)
        yield df[keep]


def dedup_parquet(
    src: str | Path, cfg: DedupConfig, out_dir: str | Path, split_cfg: SplitConfig | None = None, runner=None
) -> StageResult:
    """Dedup a records Parquet file without holding its texts in memory; same decisions as :func:`deduplicate`.

    Outputs, counts and report are :func:`tasks.core.finish_stage`'s (``dedup-<digest>.parquet``,
    ``.quarantine.parquet``, ``.report.json``). ``runner`` (a :class:`tasks.runner.DaskConfig`) computes the
    MinHash signatures batch by batch on Dask.
    """
    import pyarrow.parquet as pq

    src = str(src)
    n = pq.ParquetFile(src).metadata.num_rows
    test = _test_rows(src, n, cfg, split_cfg)
    scan, bands = _scan(src, cfg, n, runner)
    rows = Rows(
        exact=scan.exact,
        prompt=scan.prompt,
        target=scan.target,
        empty=scan.empty,
        bands=bands,
        rank=keep_rank(test, scan.sources, scan.created, list(scan.ids), scan.raw, cfg),
        is_test=test,
        created_ns_order=newest_order(scan.created),
        ids=scan.ids,
        texts_for=_texts_reader(src, cfg, n),
        long_text_rows=np.array(scan.long_rows, dtype=np.int64),
    )
    del bands
    scan.sources.clear()  # the per-row strings are no longer needed: ranks hold the keep order
    scan.created.clear()
    dec = run_engine(rows, cfg)
    rows.bands = None
    outcome = StageOutcome(
        kept=_kept(src, dec, cfg.batch_rows),
        quarantined=_quarantined(src, dec, scan.ids, cfg.batch_rows),
        report={**dec.report, "config": cfg.model_dump()},
        metrics=dec.metrics,
    )
    return finish_stage(STAGE, n, outcome, out_dir)
