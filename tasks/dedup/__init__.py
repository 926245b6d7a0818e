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

The in-memory path (:func:`deduplicate`) and the streaming Parquet path (:func:`dedup_parquet`, which the flow's
task takes from ``stream_min_rows`` rows on) share one engine that works on per-row arrays (hashes, LSH band
keys, ranks): memory grows with the LSH index (about ``bands * 8`` bytes per row), not with the text.

Modules: ``config`` (the stage config), ``keys`` (normalisation and exact keys; :func:`exact_key` is the one
definition of an exact duplicate, which the data contract's ``duplicate_rate`` rule shares), ``minhash``
(shingles, signatures, LSH band keys), ``similarity`` (the verification of candidate pairs), ``engine`` (the
decisions), ``stage`` (the in-memory stage and the Prefect task), ``stream`` (the streaming path).
"""

from .config import DedupConfig
from .engine import Decisions, Rows, candidate_pairs, cluster_report, keep_rank, newest_order, run_engine
from .keys import RowKeys, dedup_normalise, exact_key, row_keys
from .minhash import (
    band_keys,
    char_shingle_hashes,
    lsh_params,
    minhash_signatures,
    permutations,
    shingle_kind,
    word_shingle_hashes,
)
from .similarity import similarity
from .stage import STAGE, dedup_task, deduplicate
from .stream import dedup_parquet

__all__ = [
    "STAGE",
    "Decisions",
    "DedupConfig",
    "RowKeys",
    "Rows",
    "band_keys",
    "candidate_pairs",
    "char_shingle_hashes",
    "cluster_report",
    "dedup_normalise",
    "dedup_parquet",
    "dedup_task",
    "deduplicate",
    "exact_key",
    "keep_rank",
    "lsh_params",
    "minhash_signatures",
    "newest_order",
    "permutations",
    "row_keys",
    "run_engine",
    "shingle_kind",
    "similarity",
    "word_shingle_hashes",
]
