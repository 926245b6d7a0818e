"""The verified similarity of two normalised texts: what ``DedupConfig.threshold`` applies to.

LSH only proposes candidate pairs; a pair is a near duplicate only when this similarity, computed on the texts
themselves, reaches the threshold, so an LSH false positive never costs a row.
"""

import re
from collections import Counter

from .config import DedupConfig
from .minhash import padded, shingle_kind

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {
    w: str(10 * i) for i, w in enumerate(["thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], start=3)
}
_NUMBER = re.compile(r"\d+|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")


def numbers(text: str) -> Counter:
    """The numbers a normalised text mentions, as values ("5", "05" and "five" are all 5)."""
    return Counter(_NUMBER_WORDS.get(m, m.lstrip("0") or "0") for m in _NUMBER.findall(text))


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


def numbers_replaced(a: str, b: str) -> bool:
    """Whether each text mentions a number the other does not: a number was *changed*, not dropped or added."""
    na, nb = numbers(a), numbers(b)
    return bool(na - nb) and bool(nb - na)


def similarity(a: str, b: str, cfg: DedupConfig) -> float:
    """The verified similarity of two normalised texts, on one scale for short and long texts.

    Short texts: the mean of the true character-shingle Jaccard and rapidfuzz's Indel ratio. Jaccard alone
    punishes one typo in a short text hard (it breaks ``char_ngram`` shingles); the edit ratio alone cannot
    tell a rephrased question from a copy. Pairs with a text of ``long_text_min_words`` words or more: the mean
    of the Jaccard and the containment (shared shingles over the smaller set's), both blind to sentence order:
    the Indel ratio would count a moved sentence as deleted and inserted, and the containment keeps a reply that
    lost or gained one sentence close to its source. Texts on word shingles: the word-shingle Jaccard. Short
    texts in which a number was changed ("a timer for 5 minutes" / "... 7 minutes") are scaled by
    ``number_mismatch_factor``: two requests, not one.
    """
    if shingle_kind(a, cfg) == "word" and shingle_kind(b, cfg) == "word":
        return jaccard(shingle_set(a, "word", cfg), shingle_set(b, "word", cfg))
    words = max(a.count(" "), b.count(" ")) + 1
    if words >= cfg.long_text_min_words:
        sa, sb = shingle_set(a, "char", cfg), shingle_set(b, "char", cfg)
        shared = len(sa & sb)
        raw = 0.5 * (shared / len(sa | sb) + shared / min(len(sa), len(sb)))
        # Calibrated onto the short-text scale: `long_threshold` on this measure means `threshold`.
        return min(1.0, raw * cfg.threshold / cfg.long_threshold)
    from rapidfuzz import fuzz

    factor = cfg.number_mismatch_factor if words < cfg.number_guard_max_words and numbers_replaced(a, b) else 1.0
    ratio = fuzz.ratio(a, b) / 100.0
    if factor * 0.5 * (1.0 + ratio) < cfg.threshold:
        return factor * 0.5 * ratio  # cannot reach the threshold whatever the Jaccard: skip the shingle sets
    return factor * 0.5 * (jaccard(shingle_set(a, "char", cfg), shingle_set(b, "char", cfg)) + ratio)
