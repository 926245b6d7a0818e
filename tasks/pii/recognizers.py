"""The recognizers loraflow adds to Presidio's, built lazily (``presidio_analyzer`` imports torch).

Plain regexes are Presidio ``PatternRecognizer`` / ``Pattern`` objects and deny lists its ``deny_list``. One
small class stays custom: :class:`CueRecognizer` reports a regex's capture group (the value after a cue such as
"my name is" or "card"), which a ``Pattern`` cannot: it always reports the whole match.
"""

import re
from pathlib import Path
from typing import Any

from . import patterns as P
from .config import PiiConfig


def deny_terms(cfg: PiiConfig) -> dict[str, list[str]]:
    """deny_list merged with deny_list_file's terms (a user error names the file, never its content)."""
    terms = {k: list(v) for k, v in cfg.deny_list.items()}
    if cfg.deny_list_file:
        import yaml

        from tasks.core import StageError

        try:
            extra = yaml.safe_load(Path(cfg.deny_list_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise StageError(f"PII deny_list_file {cfg.deny_list_file} cannot be read ({type(e).__name__}).") from e
        if not isinstance(extra, dict) or not all(isinstance(v, list) for v in extra.values()):
            raise StageError(
                f"PII deny_list_file {cfg.deny_list_file} must map entity types to lists of terms, e.g. PERSON: [...]."
            )
        for k, v in extra.items():
            terms.setdefault(str(k), []).extend(str(t) for t in v)
    return terms


def _pattern_recognizer(entity: str, name: str, regexes, **kw):
    """A case-sensitive PatternRecognizer (each regex carries its own inline flags) for ``(regex, score)``."""
    from presidio_analyzer import Pattern, PatternRecognizer

    pats = [Pattern(f"{name}_{i}", getattr(rx, "pattern", rx), score) for i, (rx, score) in enumerate(regexes)]
    return PatternRecognizer(supported_entity=entity, name=name, patterns=pats, global_regex_flags=0, **kw)


def _cue_recognizer_class():
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    class CueRecognizer(LocalRecognizer):
        """Regexes with a score each; reports capture group 1 (the value after its cue) when the regex has one."""

        def __init__(self, entity: str, regexes, name: str):
            self.regexes = [(re.compile(p) if isinstance(p, str) else p, s) for p, s in regexes]
            super().__init__(supported_entities=[entity], name=name)

        def load(self) -> None:
            """Nothing to load: the regexes are compiled in the constructor."""

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for rx, score in self.regexes:
                for m in rx.finditer(text):
                    s, e = m.span(1 if m.lastindex else 0)
                    if e > s:
                        out.append(RecognizerResult(self.supported_entities[0], s, e, score))
            return out

    class DateOfBirthRecognizer(LocalRecognizer):
        """Dates within 40 characters after 'born' / 'birthday' / 'DOB' are dates of birth."""

        def __init__(self):
            super().__init__(supported_entities=["DATE_OF_BIRTH"], name="loraflow_date_of_birth")

        def load(self) -> None:
            """Nothing to load."""

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for c in P.DOB_CONTEXT.finditer(text):
                for m in P.DATE.finditer(text, c.end(), min(len(text), c.end() + 40)):
                    out.append(RecognizerResult("DATE_OF_BIRTH", m.start(), m.end(), 0.6))
            return out

    return CueRecognizer, DateOfBirthRecognizer


def _iban_any_case():
    """IBANs in any case or spacing ("gb14 loyd 7303 ..."): Presidio's IbanRecognizer wants upper case."""
    from presidio_analyzer import Pattern, PatternRecognizer

    class AnyCaseIban(PatternRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            return not P.iban_ok(pattern_text)

    return AnyCaseIban(
        supported_entity="IBAN_CODE",
        name="loraflow_iban_any_case",
        patterns=[Pattern("iban_any_case", P.IBAN_ANY.pattern, 0.8)],
        global_regex_flags=0,
    )


def custom_recognizers(cfg: PiiConfig) -> list[Any]:
    """loraflow's recognizers for what Presidio's defaults miss, plus one deny-list recognizer per type."""
    from presidio_analyzer import PatternRecognizer

    cue, dob = _cue_recognizer_class()
    recs = [
        _pattern_recognizer("STREET_ADDRESS", "loraflow_street_address", P.ADDRESS_PATTERNS),
        cue("STREET_ADDRESS", [(P.ADDRESS_TAIL, 0.6)], "loraflow_address_tail"),
        cue("AGE", P.AGE, "loraflow_age"),
        _pattern_recognizer("TITLE", "loraflow_title", [(P.TITLE, 0.5)]),
        cue("TITLE", [(P.JOB_LINE, 0.4)], "loraflow_job_title"),
        cue("ZIP_CODE", [(P.ZIP_CONTEXT, 0.6)], "loraflow_zip_code"),
        cue("CREDIT_CARD", [(P.CARD_CONTEXT, 0.5)], "loraflow_card_context"),
        _pattern_recognizer("PHONE_NUMBER", "loraflow_phone_shape", P.PHONE_SHAPES),
        _iban_any_case(),
        cue("PERSON", P.NAME_CONTEXT[:2], "loraflow_name_greeting"),  # "Hi Anna", "Anna here": capitals needed
        cue("PERSON", P.NAME_CONTEXT[2:], "loraflow_name_context"),  # "contact: anna", "my name is ANNA"
        dob(),
    ]
    for ent, terms in deny_terms(cfg).items():
        if terms:
            recs.append(
                PatternRecognizer(
                    supported_entity=ent,
                    name=f"deny_{ent.lower()}",
                    deny_list=sorted(terms, key=len, reverse=True),
                    global_regex_flags=re.IGNORECASE,
                )
            )
    return recs


def phone_recognizer(regions: list[str]):
    """Presidio's PhoneRecognizer run only on phone-like windows of the text.

    phonenumbers' matcher scans the whole text once per region (22 regions: ~2.4 s per 100 kB of digit-rich
    text); the windows (plus one character each side, so its word-boundary checks still see the neighbours)
    give the same matches at a fraction of the cost.
    """
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class WindowedPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for m in P.PHONE_CANDIDATE.finditer(text):
                digits = sum(c.isdigit() for c in m.group(0))
                if not 7 <= digits <= 15 or P.DATE.fullmatch(m.group(0)):
                    continue  # phone numbers have 7-15 digits (E.164); dates are not phones
                a, b = max(0, m.start() - 1), min(len(text), m.end() + 1)
                # "+CC ..." parses the same whatever the default region: one pass instead of one per region.
                rec = international if m.group(0).startswith("+") else super()
                for r in rec.analyze(text[a:b], entities, None) or []:
                    r.start += a
                    r.end += a
                    out.append(r)
            return out

    international = PhoneRecognizer(supported_regions=(regions[0] if regions else "US",))
    return WindowedPhoneRecognizer(supported_regions=tuple(regions))


def email_recognizer():
    """EmailRecognizer whose TLD check uses the bundled suffix list (no download, no offline traceback)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=())

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()
