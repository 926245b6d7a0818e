"""The dedup stage's configuration (one pydantic model, every field described)."""

from typing import Literal

from pydantic import Field

from tasks.core import StrictModel


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
        description="Verified similarity at or above which a candidate pair is a near duplicate: the mean of "
        "character-shingle Jaccard and an edit ratio (see `tasks.dedup.similarity`); texts on word shingles: "
        "word-shingle Jaccard.",
    )
    lsh_threshold: float = Field(
        0.4,
        gt=0.0,
        lt=1.0,
        description="Estimated shingle Jaccard the LSH bands are tuned for. Lower than `threshold` on purpose: "
        "LSH only proposes candidates (cheap to verify), so it should miss as few true pairs as possible (0.4: 32 "
        "bands of 4 rows; a long reply that lost one sentence and gained another has a Jaccard near 0.5).",
    )
    num_perm: int = Field(128, ge=16, le=512, description="MinHash permutations (more: better LSH recall, more RAM).")
    seed: int = Field(1, description="Seed of the MinHash permutations (datasketch `seed`).")
    shingle: Literal["auto", "char", "word"] = Field(
        "auto", description="Shingle kind: `auto` picks characters for short texts and words for long ones."
    )
    char_ngram: int = Field(4, ge=1, le=16, description="Character shingle size (on the normalised text).")
    word_ngram: int = Field(5, ge=1, le=32, description="Word shingle size for long texts.")
    word_shingle_min_words: int = Field(
        300,
        ge=1,
        description="`auto`: texts with at least this many space-separated words use word shingles. Below, "
        "character shingles: a near-duplicate reply that differs by a sentence keeps most of them.",
    )
    number_guard_max_words: int = Field(
        40,
        ge=0,
        description='Texts shorter than this many words whose numbers differ ("5" and "five" are equal) are '
        'scaled by `number_mismatch_factor` before the threshold: "a timer for 5 minutes" and "... 7 minutes" '
        "are two requests. Longer texts skip the check (a filled-in order number is still the same reply). 0: off.",
    )
    long_threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="The long-text measure (mean of Jaccard and containment) at which a pair counts as a near "
        "duplicate; the reported similarity is rescaled so that this value reads as `threshold`.",
    )
    long_text_min_words: int = Field(
        40,
        ge=1,
        description="Pairs of which one text has at least this many words are verified with the mean of shingle "
        "Jaccard and containment (blind to sentence order, kind to one sentence more or less) instead of the "
        "Jaccard and Indel ratio of short texts.",
    )
    number_mismatch_factor: float = Field(
        0.5, ge=0.0, le=1.0, description="Factor on the similarity of two short texts whose numbers differ."
    )
    follow_dropped: bool = Field(
        True,
        description="A row verified-similar to no kept row but to a row dropped as a near duplicate of a kept row "
        "is dropped in favour of that kept row too (one hop; `detail.similarity` is the verified similarity to "
        "the row in between). Two copies of one source each edited differently are then both found.",
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
    stream_min_rows: int = Field(
        1_000_000,
        ge=1,
        description="The flow's dedup task streams its input Parquet file (a few passes of `batch_rows`; the "
        "texts are never all in memory) from this many rows on, and works on one DataFrame below. Both paths "
        "give the same result.",
    )
