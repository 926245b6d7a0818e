"""Shingles, MinHash signatures and LSH band keys, computed in bulk with numpy.

Signatures are bit-for-bit ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` signatures (datasketch's
``affine32`` scheme; a test checks it), computed for a whole batch of texts at once instead of one Python
object per row. Band keys are one 64-bit hash per LSH band: rows sharing a key in any band are candidates.
"""

import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from tasks.progress import progress

from .config import DedupConfig
from .keys import h64

_P64 = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: the polynomial base of the rolling shingle hash
_M64 = np.uint64(0x9E3779B97F4A7C15)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (public domain, Austin Appleby): an avalanching bijection on uint64."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on uint32, exactly as datasketch applies it before its permutations.

    Vendored from datasketch 2.0, ``datasketch/minhash.py`` (its private finalizer at width 32; MIT licence,
    Copyright (c) Eric Zhu), because datasketch does not export it; the signature test pins the equality.
    """
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


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


def padded(text: str, n: int) -> str:
    """The text the character shingles are cut from.

    Padded with a space at both ends (word boundaries become part of the first/last shingles), and to at least
    n characters so that a very short text still has one shingle.
    """
    t = f" {text} "
    return t if len(t) >= n else t.ljust(n)


def char_shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of a normalised text's character n-grams (one text; see :func:`char_batch`)."""
    return char_batch([text], n)[0]


def char_batch(texts: list[str], n: int) -> list[np.ndarray]:
    """Rolling polynomial hash of every character n-gram, vectorised over a whole batch of texts."""
    pads = [padded(t, n) for t in texts]
    lens = np.fromiter((len(t) for t in pads), dtype=np.int64, count=len(pads))
    cp = np.frombuffer("".join(pads).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(cp) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        h = h * _P64 + cp[k : k + m]
    h = (fmix64(h) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return [h[s : s + ln - n + 1] for s, ln in zip(starts, lens, strict=True)]


def word_shingle_hashes(text: str, n: int) -> np.ndarray:
    """32-bit hashes of a normalised text's word n-grams (texts shorter than n give one shingle)."""
    words = text.split()
    tok = np.fromiter((h64(w) for w in words), dtype=np.uint64, count=len(words))
    m = max(1, len(tok) - n + 1)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(min(n, len(tok))):
        h = h * _P64 + tok[k : k + m]
    return (fmix64(h) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own ``affine32`` permutation parameters, so signatures equal ``datasketch.MinHash``'s."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _chunks(hash_lists: list[np.ndarray], max_shingles: int) -> Iterable[tuple[int, int]]:
    """(start, end) row ranges holding at most ``max_shingles`` shingles each (at least one row)."""
    i = 0
    while i < len(hash_lists):
        j, total = i, 0
        while j < len(hash_lists) and (total == 0 or total + len(hash_lists[j]) <= max_shingles):
            total += len(hash_lists[j])
            j += 1
        yield i, j
        i = j


def minhash_signatures(hash_lists: list[np.ndarray], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (rows x num_perm, uint32) of many shingle-hash arrays at once.

    Bit-for-bit what ``datasketch.MinHash(num_perm, seed, hashfunc=identity).update_batch(hashes)`` gives:
    the MurmurHash3 32-bit finalizer, then ``a * h + b`` mod 2^32, then the minimum per permutation.
    """
    a, b = perms
    sig = np.empty((len(hash_lists), len(a)), dtype=np.uint32)
    # Chunks of ~64k shingles keep the (shingles x num_perm) intermediate at ~32 MB.
    for i, j in _chunks(hash_lists, 65_536):
        chunk = hash_lists[i:j]
        lens = np.fromiter((len(x) for x in chunk), dtype=np.int64, count=len(chunk))
        hv = fmix32(np.concatenate(chunk).astype(np.uint32))
        # (num_perm x shingles) layout: the min-reduction then runs along contiguous memory (~20x faster).
        phv = a[:, None] * hv[None, :]
        phv += b[:, None]
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
        sig[i:j] = np.minimum.reduceat(phv, offsets, axis=1).T
    return sig


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's ``MinHashLSH`` picks for ``lsh_threshold`` (equal FP / FN weights)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.lsh_threshold, num_perm=cfg.num_perm, weights=(0.5, 0.5))
    return lsh.b, lsh.r


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band (rows x bands, uint64): rows that share a key in any band are candidates."""
    n = sig.shape[0]
    s = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    h = np.zeros((n, bands), dtype=np.uint64)
    for k in range(rows):
        h = (h ^ s[:, :, k]) * _M64
    return fmix64(h)


def shingle_hash_lists(texts: list[str], kinds: list[str], cfg: DedupConfig) -> list[np.ndarray]:
    """Each text's shingle hashes, by its kind (character batches vectorised together)."""
    hashes: list[np.ndarray | None] = [None] * len(texts)
    char_idx = [i for i, k in enumerate(kinds) if k == "char"]
    if char_idx:
        for i, h in zip(char_idx, char_batch([texts[i] for i in char_idx], cfg.char_ngram), strict=True):
            hashes[i] = h
    for i, k in enumerate(kinds):
        if k == "word":
            hashes[i] = word_shingle_hashes(texts[i], cfg.word_ngram)
    return hashes  # type: ignore[return-value]


def bands_for_texts(args: tuple[list[str], list[str], dict[str, Any]]) -> np.ndarray:
    """Worker: LSH band keys for a batch of normalised texts (runs in a process pool)."""
    texts, kinds, cfg_dict = args
    cfg = DedupConfig(**cfg_dict)
    sig = minhash_signatures(shingle_hash_lists(texts, kinds, cfg), permutations(cfg.num_perm, cfg.seed))
    return band_keys(sig, *lsh_params(cfg))


def _n_workers(cfg: DedupConfig, n_rows: int) -> int:
    if cfg.workers == 1 or n_rows < cfg.parallel_min_rows:
        return 1
    return cfg.workers or min(8, os.cpu_count() or 1)


class Bander:
    """Computes band keys batch by batch: in-process, in a process pool (forkserver: safe under Prefect), or one
    Prefect task per batch on Dask when given ``runner`` (a :class:`tasks.runner.DaskConfig`)."""

    def __init__(self, cfg: DedupConfig, n_rows: int, runner=None):
        self.cfg_dict = cfg.model_dump()
        self.runner = runner
        self.n_rows = n_rows
        self.workers = 1 if runner is not None else _n_workers(cfg, n_rows)
        self.pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            import multiprocessing as mp

            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"))

    def map(self, batches: Iterable[tuple[list[str], list[str]]]) -> Iterable[np.ndarray]:
        """Band keys of each batch, in order, with a ``dedup.minhash`` progress bar over the rows."""
        with progress(total=self.n_rows, desc="dedup.minhash", unit="row") as bar:
            for keys in self._map(batches):
                bar.update(len(keys))
                yield keys

    def _map(self, batches: Iterable[tuple[list[str], list[str]]]) -> Iterable[np.ndarray]:
        args = ((t, k, self.cfg_dict) for t, k in batches)
        if self.runner is not None:
            from tasks.runner import map_shards

            yield from map_shards(bands_for_texts, ({"args": a} for a in args), self.runner, name="dedup_bands_shard")
            return
        if self.pool is None:
            yield from map(bands_for_texts, args)
            return
        # Keep at most 2 batches per worker in flight: memory stays bounded while streaming.
        pending: list = []
        for a in args:
            pending.append(self.pool.submit(bands_for_texts, a))
            if len(pending) >= 2 * self.workers:
                yield pending.pop(0).result()
        for f in pending:
            yield f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
