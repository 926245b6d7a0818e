"""The decision engine: every row's fate from per-row arrays (hashes, LSH band keys, keep ranks).

It never holds more text than the candidate rows it verifies (``Rows.texts_for`` fetches those), so the
in-memory and the streaming path share it. Steps, in order: empty keys, conflicts, exact duplicates, long-text
n-gram leaks, near duplicates (LSH candidates, verified, greedy in keep order).
"""

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tasks.progress import progress

from .config import DedupConfig
from .keys import h64
from .similarity import similarity


@dataclass
class Decisions:
    """Per-row outcome of the engine: reason '' means kept."""

    reason: np.ndarray  # object: '' | exact_duplicate | near_duplicate | conflicting_target | test_leak | ...
    kept_idx: np.ndarray  # int64: the kept row each dropped row was matched with (-1: none)
    sim: np.ndarray  # float32
    method: np.ndarray  # object: exact | minhash | prompt | ngram | ''
    extra: dict[int, dict[str, Any]] = field(default_factory=dict)  # conflict group size and distinct targets
    report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int) -> "Decisions":
        return cls(
            reason=np.full(n, "", dtype=object),
            kept_idx=np.full(n, -1, dtype=np.int64),
            sim=np.zeros(n, dtype=np.float32),
            method=np.full(n, "", dtype=object),
        )

    def mark(self, i: int, reason: str, method: str, kept: int = -1, sim: float = 0.0) -> None:
        self.reason[i], self.kept_idx[i], self.sim[i], self.method[i] = reason, kept, sim, method

    @property
    def alive(self) -> np.ndarray:
        return self.reason == ""


@dataclass
class Rows:
    """The engine's input: per-row arrays aligned with the records.

    ``created_ns_order`` ranks rows newest-first (0 = newest) for the ``newest`` conflict policy; ``texts_for``
    returns the normalised dedup texts of the rows asked for (the streaming path re-reads them from disk).
    """

    exact: np.ndarray
    prompt: np.ndarray
    target: np.ndarray
    empty: np.ndarray
    bands: np.ndarray | None
    rank: np.ndarray
    is_test: np.ndarray
    created_ns_order: np.ndarray
    ids: np.ndarray
    texts_for: Callable[[np.ndarray], dict[int, str]]
    long_text_rows: np.ndarray


def _timestamps_ns(created: list[str]) -> np.ndarray:
    """ISO timestamps as ns since the epoch; missing or unreadable ones as the oldest possible."""
    ts = pd.to_datetime(pd.Series(created, dtype=object).replace("", None), utc=True, errors="coerce", format="ISO8601")
    ns = ts.astype("int64").to_numpy() if len(ts) else np.zeros(0, dtype=np.int64)
    return np.where(ts.isna().to_numpy(), np.iinfo(np.int64).min + 1, ns)


def _positions(order: np.ndarray) -> np.ndarray:
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


def newest_order(created: list[str]) -> np.ndarray:
    """Each row's position newest-first (0 = newest; rows without a timestamp last, stable)."""
    return _positions(np.argsort(-_timestamps_ns(created), kind="stable"))


def keep_rank(
    is_test: np.ndarray, sources: list[str], created: list[str], ids: list[str], raw: np.ndarray, cfg: DedupConfig
) -> np.ndarray:
    """Position of each row in the keep order (0 = kept first): test, source priority, newest, id, raw hash."""
    prio = {s: i for i, s in enumerate(cfg.source_priority)}
    src_rank = np.fromiter((prio.get(s, len(prio)) for s in sources), dtype=np.int64, count=len(sources))
    _, id_rank = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    return _positions(np.lexsort((raw, id_rank, -_timestamps_ns(created), src_rank, ~is_test)))


def candidate_pairs(bands: np.ndarray, rank: np.ndarray, active: np.ndarray, cap: int) -> np.ndarray:
    """(earlier, later) row pairs sharing an LSH bucket in any band, by keep rank; unique, as int64 (k, 2)."""
    idx = np.flatnonzero(active)
    out = []
    r = rank[idx]
    for j in range(bands.shape[1]):
        key = bands[idx, j]
        order = np.lexsort((r, key))
        k = key[order]
        rows = idx[order]
        same = k[1:] == k[:-1]
        if not same.any():
            continue
        # Position of each row inside its run of equal keys.
        run_start = np.flatnonzero(np.concatenate([[True], ~same]))
        run_id = np.cumsum(np.concatenate([[True], ~same])) - 1
        pos = np.arange(len(k)) - run_start[run_id]
        # Pair every row with (up to) the first `cap` rows of its run: the highest-ranked, most likely kept.
        for d in range(cap):
            later = np.flatnonzero(pos > d)
            if not len(later):
                break
            out.append(np.stack([rows[run_start[run_id[later]] + d], rows[later]], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(out)
    code = np.unique(pairs[:, 0] * np.int64(len(rank)) + pairs[:, 1])
    return np.stack([code // len(rank), code % len(rank)], axis=1)


def _conflicts(dec: Decisions, rows: Rows, cfg: DedupConfig) -> int:
    """Same normalised prompt, different normalised target: quarantine or pick a winner. Returns the groups."""
    alive = dec.alive
    if not alive.any():
        return 0
    df = pd.DataFrame({"p": rows.prompt[alive], "t": rows.target[alive], "i": np.flatnonzero(alive)})
    nt = df.groupby("p")["t"].transform("nunique")
    groups = 0
    for _, g in df[nt > 1].groupby("p"):
        groups += 1
        members = g["i"].to_numpy()
        info = {"conflict_group_size": len(members), "distinct_targets": int(g["t"].nunique())}
        for i in members:
            dec.extra[int(i)] = info
        tests = members[rows.is_test[members]]
        if len(tests):
            head = tests[np.argmin(rows.rank[tests])]
            for i in members[~rows.is_test[members]]:
                dec.mark(i, "test_leak", "prompt", head, 1.0)
        elif cfg.conflict_policy == "quarantine":
            for i in members:
                dec.mark(i, "conflicting_target", "prompt")
        else:
            order = rows.created_ns_order if cfg.conflict_policy == "newest" else rows.rank
            win = members[np.argmin(order[members])]
            for i in members:
                if rows.target[i] != rows.target[win]:
                    dec.mark(i, "conflicting_target", "prompt", win, 1.0)
    return groups


def _exact_duplicates(dec: Decisions, rows: Rows) -> None:
    """One row per normalised key survives: the best-ranked; a test row's copies are leaks."""
    idx = np.flatnonzero(dec.alive)
    if not len(idx):
        return
    order = idx[np.lexsort((rows.rank[idx], rows.exact[idx]))]
    e = rows.exact[order]
    head_pos = np.concatenate([[True], e[1:] != e[:-1]])
    heads = order[np.maximum.accumulate(np.where(head_pos, np.arange(len(order)), 0))]
    for i, h in zip(order[~head_pos], heads[~head_pos], strict=True):
        leak = rows.is_test[h] and not rows.is_test[i]
        dec.mark(i, "test_leak" if leak else "exact_duplicate", "exact", h, 1.0)


def _ngram_hashes(text: str, n: int) -> list[int]:
    w = text.split()
    return [h64(" ".join(w[i : i + n])) for i in range(len(w) - n + 1)]


def _ngram_leaks(dec: Decisions, rows: Rows, cfg: DedupConfig) -> int:
    """Long train texts sharing at least ``ngram_overlap_fraction`` of their word n-grams with one test text."""
    if not rows.is_test.any() or not len(rows.long_text_rows):
        return 0
    long_mask = np.zeros(len(rows.exact), dtype=bool)
    long_mask[rows.long_text_rows] = True
    test_long = np.flatnonzero(long_mask & rows.is_test & dec.alive)
    train_long = np.flatnonzero(long_mask & ~rows.is_test & dec.alive)
    if not len(test_long) or not len(train_long):
        return 0
    texts = rows.texts_for(np.concatenate([test_long, train_long]))
    index: dict[int, int] = {}
    for t in test_long:
        for g in _ngram_hashes(texts[t], cfg.ngram_overlap_n):
            index.setdefault(g, t)
    leaks = 0
    for i in train_long:
        grams = _ngram_hashes(texts[i], cfg.ngram_overlap_n)
        hits = Counter(index[g] for g in grams if g in index)
        if not hits:
            continue
        t, c = max(hits.items(), key=lambda x: (x[1], -rows.rank[x[0]]))
        if c / len(grams) >= cfg.ngram_overlap_fraction:
            dec.mark(i, "test_leak", "ngram", t, c / len(grams))
            leaks += 1
    return leaks


def _verified_pairs(dec: Decisions, rows: Rows, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """(pairs earlier-first by rank, their similarities, number of LSH candidates) of the verified pairs."""
    pairs = candidate_pairs(rows.bands, rows.rank, dec.alive, cfg.max_bucket_pairs)
    if cfg.key == "prompt" and len(pairs):
        pairs = pairs[rows.target[pairs[:, 0]] == rows.target[pairs[:, 1]]]
    n_candidates = len(pairs)
    if not len(pairs):
        return pairs, np.zeros(0, dtype=np.float32), 0
    texts = rows.texts_for(np.unique(pairs.ravel()))
    # Decontamination is stricter than dedup: a train row that differs from a test row only in a number still
    # carries the test row's template and answer, so pairs with a test row skip the number guard.
    strict = cfg.model_copy(update={"number_guard_max_words": 0})
    sims = np.fromiter(
        (
            similarity(texts[a], texts[b], strict if rows.is_test[a] or rows.is_test[b] else cfg)
            for a, b in progress(pairs, desc="dedup.verify", unit="pair")
        ),
        dtype=np.float32,  # no count=: fromiter would stop before the bar's end and leave it short of 100 %
    )
    good = sims >= cfg.threshold
    pairs, sims = pairs[good], sims[good]
    swap = rows.rank[pairs[:, 0]] > rows.rank[pairs[:, 1]]
    pairs[swap] = pairs[swap][:, ::-1]
    return pairs, sims, n_candidates


def _near_duplicates(dec: Decisions, rows: Rows, cfg: DedupConfig) -> dict[str, int]:
    """Drop each row verified-similar to a row still kept, in keep order (test rows are never dropped)."""
    counts = {"candidate_pairs": 0, "verified_pairs": 0, "test_near_pairs_kept": 0}
    if not cfg.near_duplicates or rows.bands is None or dec.alive.sum() <= 1:
        return counts
    pairs, sims, counts["candidate_pairs"] = _verified_pairs(dec, rows, cfg)
    counts["verified_pairs"] = len(pairs)
    by_later: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (a, b), s in zip(pairs.tolist(), sims.tolist(), strict=True):
        by_later[b].append((a, s))
    for v in sorted(by_later, key=lambda x: rows.rank[x]):
        partners = [(u, s) for u, s in by_later[v] if dec.reason[u] == ""]
        if not partners and cfg.follow_dropped:
            partners = [(int(dec.kept_idx[u]), s) for u, s in by_later[v] if _dropped_for_kept(dec, u)]
        if not partners:
            continue
        if rows.is_test[v]:
            counts["test_near_pairs_kept"] += 1  # test rows are never dropped: counted, kept
            continue
        tests = [(u, s) for u, s in partners if rows.is_test[u]]
        u, s = max(tests or partners, key=lambda x: (x[1], -rows.rank[x[0]]))
        dec.mark(v, "test_leak" if tests else "near_duplicate", "minhash", u, s)
    return counts


def _dropped_for_kept(dec: Decisions, u: int) -> bool:
    """Whether row ``u`` was dropped as a near duplicate of a row that is kept."""
    return dec.reason[u] == "near_duplicate" and dec.reason[dec.kept_idx[u]] == ""


def _follow_dropped_heads(dec: Decisions) -> None:
    """An exact duplicate whose kept row was dropped afterwards follows it.

    Identical normalised text, so the same kept row, reason and similarity apply.
    """
    for i in np.flatnonzero(dec.method == "exact"):
        h = dec.kept_idx[i]
        if dec.reason[h] != "":
            dec.mark(i, dec.reason[h], dec.method[h], dec.kept_idx[h], dec.sim[h])


def cluster_report(reason: np.ndarray, kept_idx: np.ndarray, ids: np.ndarray, top: int) -> dict[str, Any]:
    """Clusters = a kept row and the rows dropped in its favour. Sizes and ids only, never text."""
    members: dict[int, list[int]] = defaultdict(list)
    for i in np.flatnonzero(kept_idx >= 0):
        members[int(kept_idx[i])].append(int(i))
    sizes = Counter(len(v) + 1 for v in members.values())
    largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), str(ids[kv[0]])))[:top]
    return {
        "clusters": len(members),
        "cluster_size_histogram": {str(k): v for k, v in sorted(sizes.items())},
        "top_clusters": [
            {"kept_id": str(ids[k]), "size": len(v) + 1, "dropped_ids": sorted(str(ids[i]) for i in v)[:50]}
            for k, v in largest
        ],
    }


def run_engine(rows: Rows, cfg: DedupConfig) -> Decisions:
    """Decide every row: empty keys, conflicts, exact duplicates, n-gram leaks, near duplicates, in that order."""
    dec = Decisions.empty(len(rows.exact))
    dec.reason[rows.empty] = "empty_key"
    conflict_groups = _conflicts(dec, rows, cfg)
    _exact_duplicates(dec, rows)
    ngram_leaks = _ngram_leaks(dec, rows, cfg)
    near = _near_duplicates(dec, rows, cfg)
    _follow_dropped_heads(dec)

    counts = Counter(dec.reason[dec.reason != ""])
    metrics = {
        "dedup.exact_removed": int(counts.get("exact_duplicate", 0)),
        "dedup.near_dups_removed": int(counts.get("near_duplicate", 0)),
        "dedup.test_leaks": int(counts.get("test_leak", 0)),
        "dedup.conflicting_targets": int(counts.get("conflicting_target", 0)),
        "dedup.conflict_groups": conflict_groups,
        "dedup.empty_keys": int(counts.get("empty_key", 0)),
        "dedup.candidate_pairs": near["candidate_pairs"],
        "dedup.verified_pairs": near["verified_pairs"],
        "dedup.lsh_false_candidates": near["candidate_pairs"] - near["verified_pairs"],
        "dedup.test_near_pairs_kept": near["test_near_pairs_kept"],
        "dedup.test_rows": int(rows.is_test.sum()),
    }
    dec.metrics = {k: float(v) for k, v in metrics.items()}
    dec.report = cluster_report(dec.reason, dec.kept_idx, rows.ids, cfg.top_clusters)
    dec.report["leaks_by_method"] = dict(Counter(dec.method[dec.reason == "test_leak"]))
    dec.report["ngram_leaks"] = ngram_leaks
    return dec
