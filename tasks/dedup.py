"""Dedup and test-set decontamination: exact, then near-duplicate (MinHash + LSH, verified), then leaks.

What happens to a batch of records, in order:

1. **Empty keys.** A record whose dedup text is empty after normalisation (only whitespace or punctuation) is
   quarantined with reason ``empty_key``: it cannot be compared with anything.
2. **Conflicts.** Records with the same normalised prompt but different normalised targets are not duplicates
   but a *conflict*: by default the whole group is quarantined (``conflicting_target``); ``newest`` or
   ``source_priority`` instead keeps the winning target and quarantines the others.
3. **Exact duplicates** on the normalised key (NFKC, case-folded, punctuation and whitespace collapsed; the
   whole conversation or only the prompt side): one record per group is kept (``exact_duplicate``).
4. **Near duplicates.** MinHash signatures (datasketch's ``affine32`` permutation scheme, computed in bulk with
   numpy) are banded for LSH; every candidate pair is then *verified* on the texts themselves before anything is
   dropped, so an LSH false positive never costs a row (``near_duplicate``).
5. **Decontamination.** Train / validation rows that are exact or near duplicates of a frozen test row, or share
   a prompt with one, are quarantined with reason ``test_leak``; long texts are also checked for word n-gram
   overlap with the test set. Test rows are never dropped in favour of train rows.

Keep policy (deterministic and independent of input order): test rows first, then the configured source priority,
then the newest ``created_at``, then the smallest id, then a hash of the raw record. Each dropped row is compared
with rows that are *kept* (greedy, in that order), so every quarantined row names a kept row it is similar to
(``detail.kept_id``) and the verified similarity (``detail.similarity``). No text is ever written to the report.

The in-memory path (:func:`deduplicate`) and the streaming Parquet path (:func:`dedup_parquet`) share one
engine that works on per-row arrays (hashes, LSH band keys, ranks): memory grows with the LSH index (about
``bands * 8`` bytes per row), not with the text.
"""

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import task
from pydantic import Field

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StageOutcome,
    StageResult,
    StrictModel,
    finish_stage,
    quarantine_rows,
    read_records,
)
from tasks.split import SplitConfig, test_mask

STAGE = "dedup"


class DedupConfig(StrictModel):
    key: Literal["conversation", "prompt"] = Field(
        "conversation",
        description="What two records must share to be duplicates: the whole conversation, or the prompt side "
        "only (then near-duplicate prompts count only when their targets are equal).",
    )
    conflict_policy: Literal["quarantine", "newest", "source_priority"] = Field(
        "quarantine",
        description="Same prompt, different target: quarantine the whole group (`conflicting_target`), or keep "
        "the newest record's target, or keep the most trusted source's target.",
    )
    source_priority: list[str] = Field(
        default_factory=list,
        description="Source names, most trusted first (curated before scraped). Unlisted sources rank last.",
    )
    near_duplicates: bool = Field(True, description="Also remove near duplicates (MinHash + LSH, verified).")
    threshold: float = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="Verified similarity at or above which a candidate pair is a near duplicate. Short texts: "
        "mean of character-shingle Jaccard and Indel ratio; long texts: word-shingle Jaccard.",
    )
    lsh_threshold: float = Field(
        0.45,
        gt=0.0,
        lt=1.0,
        description="Estimated shingle Jaccard the LSH bands are tuned for. Lower than `threshold` on purpose: "
        "LSH only proposes candidates (cheap to verify), so it should miss as few true pairs as possible.",
    )
    num_perm: int = Field(128, ge=16, le=512, description="MinHash permutations (more: better LSH recall, more RAM).")
    seed: int = Field(1, description="Seed of the MinHash permutations (datasketch `seed`).")
    shingle: Literal["auto", "char", "word"] = Field(
        "auto", description="Shingle kind: `auto` picks characters for short texts and words for long ones."
    )
    char_ngram: int = Field(4, ge=1, le=16, description="Character shingle size (on the normalised text).")
    word_ngram: int = Field(5, ge=1, le=32, description="Word shingle size for long texts.")
    word_shingle_min_words: int = Field(
        40, ge=1, description="`auto`: texts with at least this many space-separated words use word shingles."
    )
    max_bucket_pairs: int = Field(
        64,
        ge=1,
        description="Within one LSH bucket, compare each row with at most this many higher-ranked rows (caps "
        "the quadratic blow-up of a huge bucket; buckets that large hold near-copies of one another anyway).",
    )
    decontaminate: bool = Field(
        True, description="Quarantine train/val rows that duplicate or overlap a frozen test row (`test_leak`)."
    )
    ngram_overlap_n: int = Field(13, ge=3, description="Word n-gram size of the long-text overlap check.")
    ngram_overlap_min_words: int = Field(
        50, ge=1, description="Texts with at least this many words get the n-gram overlap check against test."
    )
    ngram_overlap_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="A long train text sharing at least this share of its word n-grams with one test text leaks.",
    )
    workers: int = Field(
        0, ge=0, description="Processes computing signatures (0: one per CPU core, at most 8; 1: in-process)."
    )
    parallel_min_rows: int = Field(
        20_000, ge=1, description="Below this many rows signatures are computed in-process (no pool start-up)."
    )
    batch_rows: int = Field(20_000, ge=100, description="Rows per batch when streaming and per worker task.")
    top_clusters: int = Field(10, ge=0, description="Largest clusters listed in the report (ids only).")


# --------------------------------------------------------------------------------------------- text

_NON_WORD = re.compile(r"[\W_]+")
# Scripts written without spaces (CJK ideographs, kana): a space that punctuation left between two of their
# characters is not a word boundary, so "我的卡，到了" and "我的卡到了" normalise alike.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNSPACED_GAP = re.compile(f"(?<=[{_UNSPACED}]) (?=[{_UNSPACED}])")


def dedup_normalise(text: str) -> str:
    """NFKC, case-folded, every run of punctuation / symbols / whitespace collapsed to one space.

    NFKC folds look-alike compatibility forms (full-width letters, ligatures, non-breaking spaces) onto the
    plain form, so ``ＨＥＬＬＯ`` and ``hello`` compare equal. Letters and digits of every script survive.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _UNSPACED_GAP.sub("", _NON_WORD.sub(" ", text)).strip()


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _split_turns(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(prompt messages, target text): the target is the final assistant turn ('' when there is none)."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content", ""))
    return messages, ""


@dataclass
class RowKeys:
    """Everything the engine needs from one record; texts are only kept where the caller wants them."""

    exact: int  # hash of the normalised, role-tagged key (conversation or prompt)
    prompt: int  # hash of the normalised prompt side
    target: int  # hash of the normalised target
    text: str  # normalised dedup text (user/assistant turns; system prompts excluded)
    raw: int  # hash of the record as stored (last tie-breaker)
    empty: bool  # no user text left after normalisation: nothing to compare (quarantined as empty_key)


def row_keys(messages: list[dict[str, str]], key: str) -> RowKeys:
    """Compute a record's keys.

    System messages take part in the exact key but not in the near-duplicate text: a system prompt shared by
    every row would otherwise make all short queries look alike.
    """
    prompt_msgs, target = _split_turns(messages)
    norm_prompt = [(m.get("role", ""), dedup_normalise(str(m.get("content", "")))) for m in prompt_msgs]
    norm_target = dedup_normalise(target)
    prompt_key = "\x1f".join(f"{r}\x1e{c}" for r, c in norm_prompt)
    if key == "prompt":
        exact_key = prompt_key
        text_parts = [c for r, c in norm_prompt if r != "system"]
    else:
        exact_key = prompt_key + "\x1fassistant\x1e" + norm_target if target else prompt_key
        text_parts = [c for r, c in norm_prompt if r != "system"] + ([norm_target] if target else [])
    text = " ".join(p for p in text_parts if p)
    raw = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    empty = not any(c for r, c in norm_prompt if r != "system")
    return RowKeys(_h64(exact_key), _h64(prompt_key), _h64(norm_target), text, _h64(raw), empty)


# --------------------------------------------------------------------------------------------- minhash

_P64 = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: the polynomial base of the rolling shingle hash
_M64 = np.uint64(0x9E3779B97F4A7C15)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def shingle_kind(text: str, cfg: DedupConfig) -> str:
    """Characters for short texts, words for long ones.

    A ten-word customer query has only six word 5-grams, and one typo destroys five of them: word shingles
    cannot see that such texts are near-identical, character shingles can (and CJK text has no spaces to split
    on at all). A long document has thousands of character shingles, most of them common to any two texts in
    the same language (" the ", "tion "), which blurs the Jaccard signal and costs time; word n-grams are far
    more specific there. So ``auto`` switches on the number of space-separated words, which also keeps long
    CJK texts (few "words") on character shingles.
    """
    if cfg.shingle != "auto":
        return cfg.shingle
    return "word" if text.count(" ") + 1 >= cfg.word_shingle_min_words else "char"


def _padded(text: str, n: int) -> str:
    # Pad with a space at both ends (word boundaries become part of the first/last shingles), and to at
    # least n characters so that a very short text still has one shingle.
    t = f" {text} "
    return t if len(t) >= n else t.ljust(n)


def char_shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of a normalised text's character n-grams (one text; see :func:`_char_batch`)."""
    return _char_batch([text], n)[0][0]


def _char_batch(texts: list[str], n: int) -> tuple[list[np.ndarray], None]:
    """Rolling polynomial hash of every character n-gram, vectorised over a whole batch of texts."""
    padded = [_padded(t, n) for t in texts]
    lens = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    cp = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(cp) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        h = h * _P64 + cp[k : k + m]
    h = (_fmix64(h) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return [h[s : s + ln - n + 1] for s, ln in zip(starts, lens, strict=True)], None


def word_shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of a normalised text's word n-grams (texts shorter than n give one shingle)."""
    words = text.split()
    tok = np.fromiter((_h64(w) for w in words), dtype=np.uint64, count=len(words))
    m = max(1, len(tok) - n + 1)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(min(n, len(tok))):
        h = h * _P64 + tok[k : k + m]
    return (_fmix64(h) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def shingle_hashes(text: str, kind: str, cfg: DedupConfig) -> np.ndarray:
    if kind == "word":
        return word_shingle_hashes(text, cfg.word_ngram)
    return char_shingle_hashes(text, cfg.char_ngram)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own ``affine32`` permutation parameters, so signatures equal ``datasketch.MinHash``'s."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def minhash_signatures(hash_lists: list[np.ndarray], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (rows x num_perm, uint32) of many shingle-hash arrays at once.

    Bit-for-bit what ``datasketch.MinHash(num_perm, seed, hashfunc=identity).update_batch(hashes)`` gives:
    the MurmurHash3 32-bit finalizer, then ``a * h + b`` mod 2^32, then the minimum per permutation.
    """
    from datasketch.minhash import _fmix

    a, b = perms
    sig = np.empty((len(hash_lists), len(a)), dtype=np.uint32)
    # Chunks of ~64k shingles keep the (shingles x num_perm) intermediate at ~32 MB.
    i = 0
    while i < len(hash_lists):
        j, total = i, 0
        while j < len(hash_lists) and (total == 0 or total + len(hash_lists[j]) <= 65_536):
            total += len(hash_lists[j])
            j += 1
        chunk = hash_lists[i:j]
        lens = np.fromiter((len(x) for x in chunk), dtype=np.int64, count=len(chunk))
        hv = _fmix(np.concatenate(chunk).astype(np.uint32), 32)
        # (num_perm x shingles) layout: the min-reduction then runs along contiguous memory (~20x faster).
        phv = a[:, None] * hv[None, :]
        phv += b[:, None]
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        sig[i:j] = np.minimum.reduceat(phv, offsets, axis=1).T
        i = j
    return sig


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's optimiser for ``lsh_threshold`` (equal FP / FN weights)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(cfg.lsh_threshold, cfg.num_perm, 0.5, 0.5)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (rows x bands, uint64): rows that share a key in any band are candidates."""
    n = sig.shape[0]
    s = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    h = np.zeros((n, bands), dtype=np.uint64)
    for k in range(rows):
        h = (h ^ s[:, :, k]) * _M64
    return _fmix64(h)


def _bands_for_texts(args: tuple[list[str], list[str], dict[str, Any]]) -> np.ndarray:
    """Worker: LSH band keys for a batch of normalised texts (runs in a process pool)."""
    texts, kinds, cfg_dict = args
    cfg = DedupConfig(**cfg_dict)
    perms = permutations(cfg.num_perm, cfg.seed)
    bands, rows = lsh_params(cfg)
    hashes: list[np.ndarray | None] = [None] * len(texts)
    char_idx = [i for i, k in enumerate(kinds) if k == "char"]
    if char_idx:
        got, _ = _char_batch([texts[i] for i in char_idx], cfg.char_ngram)
        for i, h in zip(char_idx, got, strict=True):
            hashes[i] = h
    for i, k in enumerate(kinds):
        if k == "word":
            hashes[i] = word_shingle_hashes(texts[i], cfg.word_ngram)
    sig = minhash_signatures(hashes, perms)  # type: ignore[arg-type]
    return band_keys(sig, bands, rows)


def _n_workers(cfg: DedupConfig, n_rows: int) -> int:
    if cfg.workers == 1 or n_rows < cfg.parallel_min_rows:
        return 1
    return cfg.workers or min(8, os.cpu_count() or 1)


class _Bander:
    """Computes band keys batch by batch, in-process or in a process pool (forkserver: safe under Prefect)."""

    def __init__(self, cfg: DedupConfig, n_rows: int):
        self.cfg = cfg
        self.cfg_dict = cfg.model_dump()
        self.workers = _n_workers(cfg, n_rows)
        self.pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"))

    def map(self, batches: Iterable[tuple[list[str], list[str]]]) -> Iterable[np.ndarray]:
        args = ((t, k, self.cfg_dict) for t, k in batches)
        if self.pool is None:
            yield from map(_bands_for_texts, args)
            return
        # Keep at most 2 batches per worker in flight: memory stays bounded while streaming.
        pending: list = []
        for a in args:
            pending.append(self.pool.submit(_bands_for_texts, a))
            if len(pending) >= 2 * self.workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# --------------------------------------------------------------------------------------------- similarity


def _shingle_set(text: str, kind: str, cfg: DedupConfig) -> set:
    if kind == "word":
        w = text.split()
        n = cfg.word_ngram
        return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}
    t = _padded(text, cfg.char_ngram)
    n = cfg.char_ngram
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def similarity(a: str, b: str, cfg: DedupConfig) -> float:
    """The verified similarity of two normalised texts (what ``threshold`` applies to).

    Short texts: the mean of the true character-shingle Jaccard and rapidfuzz's Indel ratio. Jaccard alone
    punishes one typo in a short text hard (it breaks ``char_ngram`` shingles); the edit ratio alone cannot
    tell a rephrased question from a copy. Long texts (word shingles): the true word-shingle Jaccard.
    """
    kind_a, kind_b = shingle_kind(a, cfg), shingle_kind(b, cfg)
    if kind_a == "word" and kind_b == "word":
        sa, sb = _shingle_set(a, "word", cfg), _shingle_set(b, "word", cfg)
        return len(sa & sb) / len(sa | sb)
    from rapidfuzz import fuzz

    ratio = fuzz.ratio(a, b) / 100.0
    if 0.5 * (1.0 + ratio) < cfg.threshold:
        return 0.5 * ratio  # cannot reach the threshold whatever the Jaccard: skip building shingle sets
    sa, sb = _shingle_set(a, "char", cfg), _shingle_set(b, "char", cfg)
    jac = len(sa & sb) / len(sa | sb)
    return 0.5 * (jac + ratio)


# --------------------------------------------------------------------------------------------- engine


@dataclass
class Decisions:
    """Per-row outcome of the engine: reason '' means kept."""

    reason: np.ndarray  # object: '' | exact_duplicate | near_duplicate | conflicting_target | test_leak | ...
    kept_idx: np.ndarray  # int64: the kept row each dropped row was matched with (-1: none)
    sim: np.ndarray  # float32
    method: np.ndarray  # object: exact | minhash | prompt | ngram | ''
    extra: dict[int, dict[str, Any]]  # more detail for some rows (conflict group size and distinct targets)
    report: dict[str, Any]
    metrics: dict[str, float]


def _rank(
    is_test: np.ndarray, sources: list[str], created: list[str], ids: list[str], raw: np.ndarray, cfg: DedupConfig
) -> np.ndarray:
    """Position of each row in the keep order (0 = kept first): test, source priority, newest, id, raw hash."""
    prio = {s: i for i, s in enumerate(cfg.source_priority)}
    src_rank = np.fromiter((prio.get(s, len(prio)) for s in sources), dtype=np.int64, count=len(sources))
    ts = pd.to_datetime(pd.Series(created, dtype=object).replace("", None), utc=True, errors="coerce", format="ISO8601")
    ns = ts.astype("int64").to_numpy() if len(ts) else np.zeros(0, dtype=np.int64)
    ns = np.where(ts.isna().to_numpy(), np.iinfo(np.int64).min + 1, ns)  # no timestamp: oldest
    _, id_rank = np.unique(np.asarray(ids, dtype=object).astype(str), return_inverse=True)
    order = np.lexsort((raw, id_rank, -ns, src_rank, ~is_test))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def _candidate_pairs(bands: np.ndarray, rank: np.ndarray, active: np.ndarray, cap: int) -> np.ndarray:
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


def run_engine(
    *,
    exact: np.ndarray,
    prompt: np.ndarray,
    target: np.ndarray,
    empty: np.ndarray,
    bands: np.ndarray | None,
    rank: np.ndarray,
    is_test: np.ndarray,
    created_ns_order: np.ndarray,
    ids: np.ndarray,
    texts_for: Callable[[np.ndarray], dict[int, str]],
    long_text_rows: np.ndarray,
    cfg: DedupConfig,
) -> Decisions:
    """Decide every row. All inputs are per-row arrays aligned with the records.

    ``created_ns_order`` ranks rows newest-first (0 = newest) for the ``newest`` conflict policy; ``texts_for``
    returns the normalised dedup texts of the rows asked for (the streaming path re-reads them from disk).
    """
    n = len(exact)
    reason = np.full(n, "", dtype=object)
    kept_idx = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    method = np.full(n, "", dtype=object)
    metrics: Counter = Counter()

    reason[empty] = "empty_key"
    alive = ~empty

    # ---- conflicts: same normalised prompt, different normalised target
    conflict_groups = 0
    extra: dict[int, dict[str, Any]] = {}
    if alive.any():
        df = pd.DataFrame({"p": prompt[alive], "t": target[alive], "i": np.flatnonzero(alive)})
        nt = df.groupby("p")["t"].transform("nunique")
        for _, g in df[nt > 1].groupby("p"):
            conflict_groups += 1
            rows = g["i"].to_numpy()
            info = {"conflict_group_size": len(rows), "distinct_targets": int(g["t"].nunique())}
            for i in rows:
                extra[int(i)] = info
            tests = rows[is_test[rows]]
            if len(tests):
                head = tests[np.argmin(rank[tests])]
                for i in rows[~is_test[rows]]:
                    reason[i], kept_idx[i], sim[i], method[i] = "test_leak", head, 1.0, "prompt"
                continue
            if cfg.conflict_policy == "quarantine":
                for i in rows:
                    reason[i], method[i] = "conflicting_target", "prompt"
                continue
            win = (
                rows[np.argmin(created_ns_order[rows])]
                if cfg.conflict_policy == "newest"
                else rows[np.argmin(rank[rows])]
            )
            for i in rows:
                if target[i] != target[win]:
                    reason[i], kept_idx[i], sim[i], method[i] = "conflicting_target", win, 1.0, "prompt"
    alive = reason == ""

    # ---- exact duplicates on the normalised key
    idx = np.flatnonzero(alive)
    if len(idx):
        order = idx[np.lexsort((rank[idx], exact[idx]))]
        e = exact[order]
        head_pos = np.concatenate([[True], e[1:] != e[:-1]])
        heads = order[np.maximum.accumulate(np.where(head_pos, np.arange(len(order)), 0))]
        for i, h in zip(order[~head_pos], heads[~head_pos], strict=True):
            leak = is_test[h] and not is_test[i]
            reason[i] = "test_leak" if leak else "exact_duplicate"
            kept_idx[i], sim[i], method[i] = h, 1.0, "exact"
    alive = reason == ""

    # ---- long-text n-gram overlap with the test set
    ngram_leaks = 0
    if is_test.any() and len(long_text_rows):
        long_mask = np.zeros(n, dtype=bool)
        long_mask[long_text_rows] = True
        test_long = np.flatnonzero(long_mask & is_test & (reason == ""))
        train_long = np.flatnonzero(long_mask & ~is_test & (reason == ""))
        if len(test_long) and len(train_long):
            texts = texts_for(np.concatenate([test_long, train_long]))
            index: dict[int, int] = {}
            for t in test_long:
                for g in _ngram_hashes(texts[t], cfg.ngram_overlap_n):
                    index.setdefault(g, t)
            for i in train_long:
                grams = _ngram_hashes(texts[i], cfg.ngram_overlap_n)
                if not grams:
                    continue
                hits = Counter(index[g] for g in grams if g in index)
                if hits:
                    t, c = max(hits.items(), key=lambda x: (x[1], -rank[x[0]]))
                    frac = c / len(grams)
                    if frac >= cfg.ngram_overlap_fraction:
                        reason[i], kept_idx[i], sim[i], method[i] = "test_leak", t, frac, "ngram"
                        ngram_leaks += 1

    # ---- near duplicates: LSH candidates, verified, greedy in keep order
    verified_pairs = 0
    candidate_pairs = 0
    test_near_pairs = 0
    if cfg.near_duplicates and bands is not None and alive.sum() > 1:
        pairs = _candidate_pairs(bands, rank, alive, cfg.max_bucket_pairs)
        if cfg.key == "prompt" and len(pairs):
            pairs = pairs[target[pairs[:, 0]] == target[pairs[:, 1]]]
        candidate_pairs = len(pairs)
        if len(pairs):
            need = np.unique(pairs.ravel())
            texts = texts_for(need)
            sims = np.fromiter(
                (similarity(texts[a], texts[b], cfg) for a, b in pairs), dtype=np.float32, count=len(pairs)
            )
            good = sims >= cfg.threshold
            pairs, sims = pairs[good], sims[good]
            verified_pairs = len(pairs)
            # earlier = lower rank; process the later rows in keep order.
            swap = rank[pairs[:, 0]] > rank[pairs[:, 1]]
            pairs[swap] = pairs[swap][:, ::-1]
            by_later: dict[int, list[tuple[int, float]]] = defaultdict(list)
            for (a, b), s in zip(pairs.tolist(), sims.tolist(), strict=True):
                by_later[b].append((a, s))
            for v in sorted(by_later, key=lambda x: rank[x]):
                partners = [(u, s) for u, s in by_later[v] if reason[u] == ""]
                if not partners:
                    continue
                if is_test[v]:
                    test_near_pairs += 1  # test rows are never dropped: counted, kept
                    continue
                tests = [(u, s) for u, s in partners if is_test[u]]
                pool = tests or partners
                u, s = max(pool, key=lambda x: (x[1], -rank[x[0]]))
                reason[v] = "test_leak" if tests else "near_duplicate"
                kept_idx[v], sim[v], method[v] = u, s, "minhash"

    # ---- an exact duplicate whose kept row was dropped afterwards follows it: identical normalised text,
    # so the same kept row, reason and similarity apply.
    for i in np.flatnonzero(method == "exact"):
        h = kept_idx[i]
        if reason[h] != "":
            reason[i], kept_idx[i], sim[i], method[i] = reason[h], kept_idx[h], sim[h], method[h]

    counts = Counter(reason[reason != ""])
    metrics.update(
        {
            "dedup.exact_removed": int((reason == "exact_duplicate").sum()),
            "dedup.near_dups_removed": int((reason == "near_duplicate").sum()),
            "dedup.test_leaks": int(counts.get("test_leak", 0)),
            "dedup.conflicting_targets": int(counts.get("conflicting_target", 0)),
            "dedup.conflict_groups": conflict_groups,
            "dedup.empty_keys": int(counts.get("empty_key", 0)),
            "dedup.candidate_pairs": candidate_pairs,
            "dedup.verified_pairs": verified_pairs,
            "dedup.lsh_false_candidates": candidate_pairs - verified_pairs,
            "dedup.test_near_pairs_kept": test_near_pairs,
            "dedup.test_rows": int(is_test.sum()),
        }
    )
    report = _cluster_report(reason, kept_idx, ids, cfg.top_clusters)
    report["leaks_by_method"] = dict(Counter(method[reason == "test_leak"]))
    report["ngram_leaks"] = ngram_leaks
    return Decisions(reason, kept_idx, sim, method, extra, report, {k: float(v) for k, v in metrics.items()})


def _ngram_hashes(text: str, n: int) -> list[int]:
    w = text.split()
    return [_h64(" ".join(w[i : i + n])) for i in range(len(w) - n + 1)]


def _cluster_report(reason: np.ndarray, kept_idx: np.ndarray, ids: np.ndarray, top: int) -> dict[str, Any]:
    """Clusters = a kept row and the rows dropped in its favour. Sizes and ids only, never text."""
    dropped = np.flatnonzero(kept_idx >= 0)
    members: dict[int, list[int]] = defaultdict(list)
    for i in dropped:
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


# --------------------------------------------------------------------------------------------- in memory


def _features(
    messages: Iterable[list[dict[str, str]]], cfg: DedupConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    ex, pr, tg, raw, texts, empty = [], [], [], [], [], []
    for msgs in messages:
        k = row_keys(list(msgs), cfg.key)
        ex.append(k.exact)
        pr.append(k.prompt)
        tg.append(k.target)
        raw.append(k.raw)
        texts.append(k.text)
        empty.append(k.empty)
    u = np.uint64
    return (
        np.array(ex, dtype=u),
        np.array(pr, dtype=u),
        np.array(tg, dtype=u),
        np.array(raw, dtype=u),
        texts,
        np.array(empty, dtype=bool),
    )


def _newest_order(created: list[str]) -> np.ndarray:
    ts = pd.to_datetime(pd.Series(created, dtype=object).replace("", None), utc=True, errors="coerce", format="ISO8601")
    ns = np.where(ts.isna().to_numpy(), np.iinfo(np.int64).min + 1, ts.astype("int64").to_numpy() if len(ts) else 0)
    order = np.argsort(-ns, kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


def deduplicate(records: pd.DataFrame, cfg: DedupConfig, is_test: pd.Series | None = None) -> StageOutcome:
    """Remove exact and near duplicates and test leaks from a records frame.

    Args:
        records: canonical records (id, messages, source, created_at, meta).
        cfg: the stage config.
        is_test: index-aligned booleans marking the frozen test rows (``tasks.split.test_mask``); None: no test
            set, so no decontamination.

    Returns:
        The kept records (input order) and one quarantine row per dropped record, whose ``detail`` holds the
        kept row's id (``kept_id``), the similarity and the method; ``rows_in == kept + quarantined``.
    """
    n = len(records)
    test = np.zeros(n, dtype=bool)
    if is_test is not None and cfg.decontaminate:
        test = is_test.reindex(records.index).fillna(False).to_numpy(dtype=bool)
    ex, pr, tg, raw, texts, empty = _features(records["messages"], cfg)
    sources = [str(s) for s in records["source"]]
    created = ["" if c is None else str(c) for c in records["created_at"]]
    ids = records["id"].astype(str).to_numpy()
    rank = _rank(test, sources, created, list(ids), raw, cfg)
    kinds = [shingle_kind(t, cfg) for t in texts]
    bands = None
    if cfg.near_duplicates and n > 1:
        bander = _Bander(cfg, n)
        try:
            step = cfg.batch_rows
            parts = list(bander.map((texts[i : i + step], kinds[i : i + step]) for i in range(0, n, step)))
        finally:
            bander.close()
        bands = np.concatenate(parts) if parts else None
    long_rows = np.array(
        [i for i, t in enumerate(texts) if t.count(" ") + 1 >= cfg.ngram_overlap_min_words], dtype=np.int64
    )
    dec = run_engine(
        exact=ex,
        prompt=pr,
        target=tg,
        empty=empty,
        bands=bands,
        rank=rank,
        is_test=test,
        created_ns_order=_newest_order(created),
        ids=ids,
        texts_for=lambda rows: {int(i): texts[i] for i in rows},
        long_text_rows=long_rows,
        cfg=cfg,
    )
    return _outcome(records, dec, ids, cfg)


def _detail(dec: Decisions, i: int, ids: np.ndarray) -> dict[str, Any]:
    k = int(dec.kept_idx[i])
    d: dict[str, Any] = {"kept_id": str(ids[k]) if k >= 0 else None, "method": dec.method[i] or None}
    if k >= 0:
        d["similarity"] = round(float(dec.sim[i]), 4)
    if dec.reason[i] == "conflicting_target":
        d.update(dec.extra.get(i, {}))
    return d


def _outcome(records: pd.DataFrame, dec: Decisions, ids: np.ndarray, cfg: DedupConfig) -> StageOutcome:
    drop = dec.reason != ""
    qidx = np.flatnonzero(drop)
    quarantined = quarantine_rows(
        STAGE,
        records.iloc[qidx],
        [str(r) for r in dec.reason[qidx]],
        [_detail(dec, int(i), ids) for i in qidx],
    )
    report = {**dec.report, "config": cfg.model_dump()}
    return StageOutcome(
        kept=records.iloc[np.flatnonzero(~drop)], quarantined=quarantined, report=report, metrics=dec.metrics
    )


# --------------------------------------------------------------------------------------------- streaming


def _iter_batches(path: str, columns: list[str], batch_rows: int):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def _decode(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def dedup_parquet(
    src: str | Path,
    cfg: DedupConfig,
    out_dir: str | Path,
    split_cfg: SplitConfig | None = None,
) -> StageResult:
    """The streaming path: dedup a records Parquet file too large to hold as a DataFrame.

    Three passes over the file in ``cfg.batch_rows`` batches: (1) keys, ranks and LSH band keys (signatures in
    a process pool); (2) the texts of the candidate rows only, for verification; (3) the kept rows copied batch by
    batch to the output and the dropped ones to the quarantine file. Resident memory is the per-row arrays
    (~``8 x bands + 60`` bytes a row) plus one batch, never the whole text. Outputs, counts and report match
    :func:`tasks.core.finish_stage` (``dedup-<digest>.parquet``, ``.quarantine.parquet``, ``.report.json``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.core import QUARANTINE_COLUMNS, RECORD_COLUMNS, atomic_write_parquet, file_sha256

    src = str(src)
    n = pq.ParquetFile(src).metadata.num_rows
    test = np.zeros(n, dtype=bool)
    if split_cfg is not None and cfg.decontaminate and n:
        light = pq.read_table(src, columns=["id", "meta"]).to_pandas()
        light["meta"] = [_decode(m) for m in light["meta"]]
        test = test_mask(light, split_cfg).to_numpy(dtype=bool)
        del light

    u = np.uint64
    ex, pr, tg, raw = (np.zeros(n, dtype=u) for _ in range(4))
    empty = np.zeros(n, dtype=bool)
    ids = np.empty(n, dtype=object)
    created: list[str] = []
    sources: list[str] = []
    long_rows: list[int] = []
    bands_parts: list[np.ndarray] = []
    bander = _Bander(cfg, n) if cfg.near_duplicates else None

    def pass1():
        pos = 0
        for batch in _iter_batches(src, ["id", "messages", "source", "created_at"], cfg.batch_rows):
            d = batch.to_pydict()
            texts, kinds = [], []
            for j, msgs in enumerate(d["messages"]):
                k = row_keys(_decode(msgs), cfg.key)
                i = pos + j
                ex[i], pr[i], tg[i], raw[i], empty[i] = k.exact, k.prompt, k.target, k.raw, k.empty
                texts.append(k.text)
                kinds.append(shingle_kind(k.text, cfg))
                if k.text.count(" ") + 1 >= cfg.ngram_overlap_min_words:
                    long_rows.append(i)
            ids[pos : pos + len(texts)] = [str(x) for x in d["id"]]
            sources.extend("" if x is None else str(x) for x in d["source"])
            created.extend("" if x is None else str(x) for x in d["created_at"])
            pos += len(texts)
            yield texts, kinds

    try:
        if bander is not None:
            bands_parts.extend(bander.map(pass1()))
        else:
            for _ in pass1():
                pass
    finally:
        if bander is not None:
            bander.close()
    bands = np.concatenate(bands_parts) if bands_parts and n > 1 else None
    del bands_parts
    rank = _rank(test, sources, created, list(ids), raw, cfg)
    newest = _newest_order(created)
    sources.clear()  # the per-row strings are no longer needed: ranks hold the keep order
    created.clear()

    def texts_for(rows: np.ndarray) -> dict[int, str]:
        want = np.zeros(n, dtype=bool)
        want[rows] = True
        out: dict[int, str] = {}
        pos = 0
        for batch in _iter_batches(src, ["messages"], cfg.batch_rows):
            sel = np.flatnonzero(want[pos : pos + batch.num_rows])
            if len(sel):
                col = batch.column(0).to_pylist()
                for j in sel:
                    out[pos + int(j)] = row_keys(_decode(col[j]), cfg.key).text
            pos += batch.num_rows
        return out

    dec = run_engine(
        exact=ex,
        prompt=pr,
        target=tg,
        empty=empty,
        bands=bands,
        rank=rank,
        is_test=test,
        created_ns_order=newest,
        ids=ids,
        texts_for=texts_for,
        long_text_rows=np.array(long_rows, dtype=np.int64),
        cfg=cfg,
    )
    del bands

    # pass 3: copy kept rows, quarantine the rest.
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_data = out_dir / f".{STAGE}-streaming.parquet"
    qrows: list[dict[str, Any]] = []
    writer = None
    kept_n = 0
    pos = 0
    try:
        for batch in _iter_batches(src, RECORD_COLUMNS, cfg.batch_rows):
            m = dec.reason[pos : pos + batch.num_rows] == ""
            kept = batch.filter(pa.array(m))
            if writer is None:
                writer = pq.ParquetWriter(tmp_data, kept.schema)
            writer.write_batch(kept)
            kept_n += kept.num_rows
            drop = np.flatnonzero(~m)
            if len(drop):
                d = batch.take(pa.array(drop)).to_pydict()
                for j, i in enumerate(drop + pos):
                    rec = {c: _decode(d[c][j]) if c in ("messages", "meta") else d[c][j] for c in RECORD_COLUMNS}
                    qrows.append(
                        {
                            "id": rec["id"],
                            "stage": STAGE,
                            "reason": str(dec.reason[i]),
                            "detail": json.dumps(_detail(dec, int(i), ids), default=str),
                            "record": json.dumps(rec, ensure_ascii=False, default=str),
                        }
                    )
            pos += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # empty input
        from tasks.core import _to_disk, empty_records

        atomic_write_parquet(_to_disk(empty_records()), tmp_data)
    if n != kept_n + len(qrows):
        raise AssertionError(f"stage {STAGE!r} lost rows: rows_in={n} kept={kept_n} quarantined={len(qrows)}")
    sha = file_sha256(tmp_data)
    data_path = out_dir / f"{STAGE}-{sha[:12]}.parquet"
    os.replace(tmp_data, data_path)
    qframe = pd.DataFrame(qrows, columns=QUARANTINE_COLUMNS)
    from tasks.core import write_records

    quarantine = write_records(qframe, out_dir / f"{STAGE}-{sha[:12]}.quarantine.parquet")
    counts: dict[str, int] = {"rows_in": n, "kept": kept_n, "quarantined": len(qrows)}
    for reason, c in sorted(Counter(r["reason"] for r in qrows).items()):
        counts[f"quarantined_{reason}"] = int(c)
    report = {"stage": STAGE, "counts": counts, **dec.report, "config": cfg.model_dump(), "metrics": dec.metrics}
    report_path = out_dir / f"{STAGE}-{sha[:12]}.report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return StageResult(
        stage=STAGE,
        data=DatasetRef(uri=str(data_path), sha256=sha, rows=kept_n),
        quarantine=quarantine,
        report_uri=str(report_path),
        counts=counts,
    )


@task(name="dedup", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def dedup_task(ref: DatasetRef, cfg: DedupConfig, split_cfg: SplitConfig, out_dir: str) -> StageResult:
    """Dedup + decontaminate ``ref``; the frozen test rows come from the split config (stable id hash)."""
    records = read_records(ref)
    is_test = test_mask(records, split_cfg) if len(records) else None
    outcome = deduplicate(records, cfg, is_test=is_test)
    return finish_stage(STAGE, len(records), outcome, Path(out_dir) / STAGE)
