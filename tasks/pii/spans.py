"""Span rules after Presidio: which detections to drop, how overlaps merge, how addresses and names extend.

Presidio's own de-duplication only drops a result contained in another of the same type; chat data needs the
union of overlapping detections with the most specific type (:func:`resolve`), pattern spans kept exact
inside a sprawling NER span (:func:`trim_ner`), and address blocks grown over their following lines.
"""

import re
from typing import Any

from . import patterns as P
from .config import DEFAULT_SCORE_THRESHOLDS, PiiConfig, PiiSpan

# Which type wins when two detections overlap: validated patterns, then other patterns, then NER guesses;
# within a tier the longer detection (an address beats the phone-like digits at its start).
TIER = {
    "EMAIL_ADDRESS": 3, "CREDIT_CARD": 3, "IBAN_CODE": 3, "US_SSN": 3, "IP_ADDRESS": 3, "URL": 3,
    "PHONE_NUMBER": 2, "DATE_OF_BIRTH": 2, "STREET_ADDRESS": 2, "ZIP_CODE": 2, "AGE": 2,
}  # fmt: skip

# An NER organisation's score after Presidio's context boost (0.85 x 0.4 + 0.35, see ``engine.nlp_configuration``).
ORG_CUED_SCORE = 0.69

# Words that, next to an allow-listed brand, still make a product name ("Fernbank Savings Pot").
_GENERIC_WORDS = {
    "business", "plus", "premium", "metal", "savings", "saving", "pot", "app", "card", "account", "bank",
    "pay", "support", "team", "pro", "basic", "standard", "gold", "platinum", "credit", "debit", "loan", "online",
    "mobile", "web", "cloud", "service", "services", "customer", "care", "the", "my", "our", "your", "of", "s",
}  # fmt: skip

# An address continues over following lines / comma-separated parts that look like address parts: capitalised
# or upper-case words, postcodes, state codes, "Suite 12", "(Greek)". It stops at a sentence end or a part
# holding ordinary lower-case words ("... 72399 after the concert" keeps "72399", not the rest).
_ADDR_PART_WORD = re.compile(
    r"(?:[A-ZÀ-ÞΑ-Ω∆][\w'’.∆-]*|\d{1,6}(?:[ -]\d{2,3})?|[A-Z]\d[A-Z]|\d[A-Z]\d|\([\w ]+\)|nan|de|del|di|da|la|le|"
    r"du|van|von|der|den|nad|sur|am|an|im|upon|on|(?i:apt\.?|suite|unit|floor|box))$"
)
_ADDR_STOP = re.compile(r"[?!;]|\.(?=\s)(?<!\bApt\.)(?<!\bSt\.)(?<!\bSte\.)(?<!\bAve\.)(?<!\bRd\.)(?<!\bNo\.)|\n\s*\n")
_ADDR_SEP = re.compile(r"[ \t]*(?:,[ \t]*)?(?:\n[ \t>?*-]*)?(?:,[ \t]*)?")
_ADDR_PART = re.compile(r"[^,\n]*")
_NAME_PART = re.compile(r"[^\W\d_][\w'-]+")


class SpanFilter:
    """Drops the detections that are not personal data in chat text (one per engine: sets built once)."""

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self.allow_words = {w for a in cfg.allow_list for w in a.casefold().split()}
        self.thresholds = {**DEFAULT_SCORE_THRESHOLDS, **cfg.score_thresholds}

    def keep(self, text: str, start: int, end: int, etype: str, score: float) -> bool:
        """False for relative dates, low scores, acronyms, ids, dates taken for phones and brand names."""
        cfg = self.cfg
        value = text[start:end]
        if etype == "DATE_TIME" and (P.RELATIVE_DATE.match(value) or not any(c.isdigit() for c in value)):
            return False
        if etype == "ORGANIZATION" and cfg.org_needs_context and P.CORPORATE_SUFFIX.search(value):
            score = max(score, ORG_CUED_SCORE)  # a legal-form word is as good a cue as one before the name
        if score < self.thresholds.get(etype, cfg.default_score_threshold):
            return False
        if etype == "URL" and cfg.url_scope == "personal" and not P.PERSONAL_URL.search(value):
            return False
        low = value.casefold().strip(" .,;:!?'\"")
        if low in P.NOT_PII:
            return False
        if etype in P.ID_SENSITIVE and ("_" in value or (P.HAS_DIGIT.search(value) and not P.HAS_SPACE.search(value))):
            return False  # snake_case labels, order / ticket ids ("ORD-12345", "TRX-1234-AB") the NER mistakes
        if etype == "PHONE_NUMBER" and (
            P.DATE.fullmatch(value) or (value.isdigit() and score < 0.5 and not value.startswith("0"))
        ):
            return False  # a date, or a bare digit run (order id, amount) with no phone context nearby
        return not (self.allow_words and self._brand_product(low))

    def _brand_product(self, low: str) -> bool:
        """An allow-listed brand word with only greetings / product words around it ("Fernbank Savings Pot").

        Presidio's allow list (applied in ``analyze``) matches whole spans only; this covers the product names.
        """
        words = re.findall(r"[\w&+-]+", low)
        if not any(w in self.allow_words for w in words):
            return False
        return all(w in self.allow_words or w in P.NOT_PII or w in _GENERIC_WORDS for w in words)


def merge_overlaps(spans: list[PiiSpan], by_tier: bool = False) -> list[PiiSpan]:
    """Merge overlapping spans into their union, in reading order.

    Args:
        spans: spans in any order.
        by_tier: the merged span takes the type of the most specific member (``TIER``, then length, then
            score) and the highest score; otherwise the first member's type and score.
    """
    out: list[PiiSpan] = []
    for s in sorted(spans, key=lambda x: (x.start, -x.end)):
        if not out or s.start >= out[-1].end:
            out.append(s)
            continue
        m = out[-1]
        if by_tier:
            # Same tier and length: a PERSON wins (a cued name the NER also called an organisation).
            best = max(
                (m, s), key=lambda x: (TIER.get(x.entity_type, 1), x.end - x.start, x.entity_type == "PERSON", x.score)
            )
            out[-1] = PiiSpan(m.start, max(m.end, s.end), best.entity_type, max(m.score, s.score))
        elif s.end > m.end:
            out[-1] = PiiSpan(m.start, s.end, m.entity_type, m.score)
    return out


def resolve(text: str, spans: list[PiiSpan], entities: list[str]) -> list[PiiSpan]:
    """Overlaps merged (NER spans trimmed around exact pattern spans first), then addresses and postcodes grown."""
    if not spans:
        return []
    merged = merge_overlaps(trim_ner(text, spans), by_tier=True)
    if "STREET_ADDRESS" in entities:
        merged = merge_overlaps([_extend_address(text, s) for s in merged])
    if "ZIP_CODE" in entities:
        merged = merge_overlaps(merged + _adjacent_postcodes(text, merged))
    return merged


def _cut(a: int, b: int, exact: list[PiiSpan]) -> list[tuple[int, int]]:
    """The parts of [a, b) outside every exact span."""
    pieces = [(a, b)]
    for e in exact:
        nxt = []
        for x, y in pieces:
            if e.start < y and x < e.end:
                nxt += [p for p in ((x, e.start), (e.end, y)) if p[1] > p[0]]
            else:
                nxt.append((x, y))
        pieces = nxt
    return pieces


def trim_ner(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    """Cut pattern detections (emails, cards, addresses...) out of the NER spans that overlap them.

    spaCy sometimes runs a name over an e-mail address and the words after it; the pattern span is exact, so
    the NER span keeps only its own words (dropped when nothing word-like is left).
    """
    exact = [s for s in spans if TIER.get(s.entity_type, 1) >= 2]
    if not exact:
        return spans
    out = list(exact)
    for s in spans:
        if TIER.get(s.entity_type, 1) >= 2:
            continue
        for a, b in _cut(s.start, s.end, exact):
            seg = text[a:b]
            a, b = a + len(seg) - len(seg.lstrip(" \t\n,.;:-")), b - (len(seg) - len(seg.rstrip(" \t\n,.;:-")))
            if b - a >= 2 and re.search(r"\w\w", text[a:b]) and text[a:b].casefold() not in P.NOT_PII:
                out.append(PiiSpan(a, b, s.entity_type, s.score))
    return out


def _address_part_end(text: str, part_start: int, limit: int) -> tuple[int, bool]:
    """End of the address-like words at ``part_start`` (== part_start: none) and whether the whole part was."""
    m = _ADDR_PART.match(text, part_start, limit)
    words = m.group(0).split() if m else []
    good = 0
    for w in words:
        if not _ADDR_PART_WORD.match(w.rstrip(",.")):
            break
        good += 1
    if good == 0:
        return part_start, False
    end = part_start
    for k, mw in enumerate(re.finditer(r"\S+", text[part_start:limit]), start=1):
        end = part_start + mw.end()
        if k == good:
            break
    return end, good == len(words)


def _extend_address(text: str, s: PiiSpan) -> PiiSpan:
    """A street address grown over up to six following address-like parts (lines or comma-separated)."""
    if s.entity_type != "STREET_ADDRESS":
        return s
    stop = _ADDR_STOP.search(text, s.end, min(len(text), s.end + 160))
    limit = stop.start() if stop else min(len(text), s.end + 160)
    end = pos = s.end
    for _ in range(6):
        sep = _ADDR_SEP.match(text, pos, limit)
        if sep is None or (sep.end() == pos and pos != s.end and text[pos : pos + 1] not in (" ", "\t")):
            break
        part_end, whole = _address_part_end(text, sep.end(), limit)
        if part_end == sep.end():
            break
        end = pos = part_end
        if not whole:
            break
    return PiiSpan(s.start, end, s.entity_type, s.score) if end > s.end else s


def _adjacent_postcodes(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    """Postal codes / bare numbers within a few separator characters of an address or a place."""
    extra: list[PiiSpan] = []
    for s in spans:
        if s.entity_type not in ("STREET_ADDRESS", "LOCATION"):
            continue
        for m in P.ZIP.finditer(text, max(0, s.start - 12), min(len(text), s.end + 14)):
            if m.start() >= s.end:
                gap = text[s.end : m.start()]
            elif m.end() <= s.start:
                gap = text[m.end() : s.start]
            else:
                continue
            if re.fullmatch(r"[\s,]{0,4}(?:[A-Z]{2}\s+)?", gap):
                extra.append(PiiSpan(m.start(), m.end(), "ZIP_CODE", 0.5))
    return extra


def propagate_names(msgs: list[dict[str, Any]], found: dict[int, list[PiiSpan]]) -> None:
    """Once a record names someone, their first or last name alone is a PERSON in every scanned message.

    The NER misses a lone "Eleanor," far more often than "Eleanor Whitfield"; within one conversation the
    full name tells us the lone one is the same person (and it gets the same pseudonym).
    """
    parts = set()
    for j, sp in found.items():
        text = msgs[j]["content"]
        for s in sp:
            if s.entity_type == "PERSON":
                for w in _NAME_PART.findall(text[s.start : s.end]):
                    if len(w) >= 3 and w[0].isupper() and w.casefold() not in P.NOT_PII:
                        parts.add(w)
    if not parts:
        return
    rx = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True)) + r")(?!\w)")
    for j, sp in found.items():
        extra = [
            PiiSpan(m.start(), m.end(), "PERSON", 0.5)
            for m in rx.finditer(msgs[j]["content"])
            if not any(s.start < m.end() and m.start() < s.end for s in sp)
        ]
        if extra:
            found[j] = sorted(sp + extra, key=lambda s: s.start)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def replaced_tokens(text: str, spans: list[PiiSpan]) -> tuple[int, int]:
    """(tokens in ``text``, tokens overlapping a span): the "data destroyed" count, tokenised as the bench does.

    A token is a maximal ``\\w+`` run or one other non-space character; ``spans`` are in reading order.
    """
    n = hit = k = 0
    for m in _TOKEN.finditer(text):
        n += 1
        while k < len(spans) and spans[k].end <= m.start():
            k += 1
        hit += k < len(spans) and spans[k].start < m.end()
    return n, hit
