"""Case-robust detection: ALL-CAPS and all-lower-case text re-cased for the NER, offsets unchanged.

spaCy's small model finds names by their capital letters: on ALL-CAPS text it calls most words organisations,
on lower-case text it finds almost nobody. Such a text is analysed as "sentence case, rare words
capitalised": lower-cased, each sentence's first letter raised, and every word rarer than ``COMMON_ZIPF`` on
wordfreq's English Zipf scale (the 4.5 line lies between "paris" 4.8 / "kevin" 4.6 and "avalanche" 3.5)
capitalised, so names stand out the way they do in ordinary text. Re-casing works character by character and
keeps every offset. The threshold was chosen on the WNUT-17 dev split alone (3.5 / 4.5 / 5.5 tried; 4.5 best
on its ALL-CAPS view, F2 0.52 against 0.16 without re-casing) and is reported on the held-out sets.

Two guards cost some of that recall on purpose (dev ALL-CAPS F2 0.51 -> 0.46, precision 0.39 -> 0.40): a
one-word PERSON / ORGANIZATION find on a word re-casing raised although it is fairly common
(``NER_RARE_ZIPF``: "my wallet was stolen" must not become two people, which ``tests/test_pii.py`` holds the
stage to), and the greeting name cues ("I'm Anna") that read capitals are ignored in re-cased text (see
``engine._recasing_artefact``).
"""

import functools
import re

COMMON_ZIPF = 4.5
# A text is caseless when almost all its cased letters are upper (>= 85 %) or lower (<= 1 %), and it has
# enough of them for the share to mean something.
_MIN_LETTERS = 12
_WORD = re.compile(r"[^\W\d_]+")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+|\n\s*)([^\W\d_])")


def caseless(text: str) -> bool:
    """True for ALL-CAPS or all-lower-case text (the shapes spaCy's NER cannot read names in)."""
    upper = lower = 0
    for c in text:
        if c.isupper():
            upper += 1
        elif c.islower():
            lower += 1
    n = upper + lower
    return n >= _MIN_LETTERS and (upper >= 0.85 * n or upper <= 0.01 * n)


@functools.lru_cache(maxsize=200_000)
def _rare(word: str) -> bool:
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en") < COMMON_ZIPF


def _same_length(a: str, b: str) -> str:
    """``b`` where each of its characters maps one to one onto ``a``'s (else ``a``: offsets must not move)."""
    return b if len(b) == len(a) else a


def recase(text: str) -> str:
    """``text`` in sentence case with rare words capitalised, when it is caseless; else ``text`` itself."""
    if not caseless(text):
        return text
    low = _same_length(text, "".join(c if len(c.lower()) != 1 else c.lower() for c in text))
    out = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), low)

    def word(m: re.Match) -> str:
        w = m.group(0)
        return w[0].upper() + w[1:] if len(w) > 1 and _rare(w) else w

    return _same_length(text, _WORD.sub(word, out))


# In re-cased text a one-word NER guess on a word that re-casing capitalised although it is fairly common
# ("wallet" 3.9, "stolen" 4.2: between this and COMMON_ZIPF) is dropped; rarer words and the NER's own finds
# on words left in lower case ("london") stay.
NER_RARE_ZIPF = 3.8


def only_common_words(value: str, zipf: float = NER_RARE_ZIPF) -> bool:
    """True when ``value`` is one word re-cased into a capital although its frequency is at least ``zipf``."""
    from wordfreq import zipf_frequency

    words = _WORD.findall(value.casefold())
    return len(words) == 1 and zipf <= zipf_frequency(words[0], "en") < COMMON_ZIPF
