"""The verified similarity of two normalised texts: what ``DedupConfig.threshold`` applies to.

LSH only proposes candidate pairs; a pair is a near duplicate only when this similarity, computed on the texts
themselves, reaches the threshold, so an LSH false positive never costs a row.
"""

from .config import DedupConfig
from .minhash import padded, shingle_kind


def shingle_set(text: str, kind: str, cfg: DedupConfig) -> set:
    """The exact set of a text's word or character shingles (the ones MinHash estimates the Jaccard of)."""
    if kind == "word":
        w = text.split()
        n = cfg.word_ngram
        return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}
    n = cfg.char_ngram
    t = padded(text, n)
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def similarity(a: str, b: str, cfg: DedupConfig) -> float:
    """The verified similarity of two normalised texts.

    Short texts: the mean of the true character-shingle Jaccard and rapidfuzz's Indel ratio. Jaccard alone
    punishes one typo in a short text hard (it breaks ``char_ngram`` shingles); the edit ratio alone cannot
    tell a rephrased question from a copy. Long texts (word shingles): the true word-shingle Jaccard.
    """
    if shingle_kind(a, cfg) == "word" and shingle_kind(b, cfg) == "word":
        return jaccard(shingle_set(a, "word", cfg), shingle_set(b, "word", cfg))
    from rapidfuzz import fuzz

    ratio = fuzz.ratio(a, b) / 100.0
    if 0.5 * (1.0 + ratio) < cfg.threshold:
        return 0.5 * ratio  # cannot reach the threshold whatever the Jaccard: skip building shingle sets
    return 0.5 * (jaccard(shingle_set(a, "char", cfg), shingle_set(b, "char", cfg)) + ratio)
