"""Replacing detected spans with presidio-anonymizer: placeholders, per-record pseudonyms, salted hashes, masks."""

import functools
import hashlib
import os
import secrets
from collections import Counter

from .config import PiiConfig, PiiSpan


def salt(cfg: PiiConfig) -> bytes:
    """The hash operator's salt: the configured environment variable, else a random one kept under the home."""
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


class Pseudonyms:
    """``<TYPE_n>`` numbered in reading order per record.

    The same value gets the same tag wherever it appears in the record, even when the NER typed it
    differently in another turn (PERSON in the user turn, ORGANIZATION in the assistant's); a lone first or
    last name reuses the tag of the full name it belongs to.
    """

    def __init__(self):
        self.by_value: dict[str, tuple[str, str]] = {}  # normalised value -> (type, tag)
        self.count: Counter[str] = Counter()

    def get(self, etype: str, value: str) -> str:
        """The tag of ``value`` in this record (a new one, numbered per type, the first time it is seen)."""
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


@functools.lru_cache(maxsize=1)
def _anonymizer():
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def replace(text: str, spans: list[PiiSpan], cfg: PiiConfig, pseudo: Pseudonyms, salt: bytes | None) -> str:
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
        key = f"{s.entity_type}__{i}" if op in ("pseudonym", "hash") else s.entity_type
        if op == "pseudonym":  # a per-span type carries its pseudonym through the anonymizer
            ops[key] = OperatorConfig("replace", {"new_value": pseudo.get(s.entity_type, value)})
        elif op == "hash":
            digest = hashlib.sha256(salt + _norm_value(value).encode()).hexdigest()[:12]
            ops[key] = OperatorConfig("replace", {"new_value": f"<{s.entity_type}_{digest}>"})
        elif op == "mask":
            ops[key] = OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": s.end - s.start + 1,
                                               "from_end": False})  # fmt: skip
        else:  # placeholder (drop_row records are still scrubbed with placeholders for the quarantine file)
            ops[key] = OperatorConfig("replace", {"new_value": f"<{s.entity_type}>"})
        results.append(RecognizerResult(key, s.start, s.end, s.score))
    return _anonymizer().anonymize(text=text, analyzer_results=results, operators=ops).text
