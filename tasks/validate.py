"""Validate: a dataset's data contract, executed by Great Expectations, before any GPU minute is spent.

A contract (``data_contracts/<name>.yaml``) is a list of rules a data owner can read: each has a ``rule`` type,
a one-sentence ``description`` and a ``severity``:

* ``quarantine``: row level. Failing rows are set aside with the rule's name as their reason; the flow goes on.
* ``block``: the flow stops before training with one paragraph naming the contract, the rule, the observed
  value, the threshold and up to five example record ids.
* ``warn``: logged and reported, nothing else.

How a run works (DESIGN.md "Contracts compile to Great Expectations"):

1. The loader (:func:`load_contract`) checks the YAML against pydantic models: an unknown rule, a wrong type or
   a missing field fails at load time with the file, the line and the key.
2. :func:`validate` computes a few *derived columns* once per record (token length with the base model's
   tokenizer, role pattern, label, JSON parse result, residual-PII flag, text problems, duplicate keys). The
   table handed to GX holds only these columns and the record id: no conversation text ever reaches a GX
   result, Data Docs or MLflow.
3. Each rule compiles to one GX 1.x expectation (ephemeral context, pandas data source, dataframe asset, one
   suite per phase, a validation definition). Where GX has no fitting expectation there is a custom one
   (chat role order, class-imbalance ratio, and a JSON-safe quantile check). GX's ``unexpected_index_list``
   keyed on ``id`` is what sends a row to quarantine; GX's verdict is the verdict.
4. Rules run in phases: per-row rules over every record, then (if a ``min_rows_per_class`` rule quarantines)
   the class-size rule over the rows that survived, then the dataset-level rules over what would be trained on.
5. The rules table (rule, severity, observed, threshold, result, rows affected) goes into the stage report; GX's
   validation results (JSON) and Data Docs (HTML) are written as files for MLflow. Only then is a failed
   ``block`` rule raised, as :class:`ContractViolation` carrying the report.

The split-size rule runs separately after the split: :func:`check_splits` / :func:`validate_splits_task`.
"""

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StageError,
    StageOutcome,
    StageResult,
    StrictModel,
    empty_quarantine,
    finish_stage,
    normalise_text,
    quarantine_rows,
    read_records,
)
from tasks.split import Splits

STAGE = "validate"
REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("loraflow.validate")

Severity = Literal["quarantine", "block", "warn"]
Measure = Literal["conversation", "prompt", "completion"]
ROLE_CODES = {"system": "s", "user": "u", "assistant": "a"}


class ContractError(StageError):
    """A contract file that cannot be used (unknown rule, wrong type, missing field, missing labels file)."""


class ContractViolation(StageError):
    """A ``block`` rule failed. ``report`` holds the stage report as far as it got (rules table, artifacts)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report
        self.report_uri: str | None = None


# --------------------------------------------------------------------------------------------- contract model


class _Rule(StrictModel):
    """Fields every rule has. Subclasses add their parameters and say how they compile to GX."""

    rule: str
    description: str = Field(min_length=1, description="One sentence a data owner can read: what and why.")
    severity: Severity = Field(description="quarantine (row set aside), block (stop the flow) or warn (report).")
    name: str | None = Field(
        None, description="Name in reports and quarantine reasons (default: the rule type). Unique per contract."
    )

    #: ``row``: judged per record (may quarantine); ``dataset``: judged on the whole table (block / warn only).
    level: ClassVar[str] = "row"

    #: A dataset-level rule that can still set rows aside (min_rows_per_class: the rows of too-small classes).
    quarantine_ok: ClassVar[bool] = False

    @field_validator("severity")
    @classmethod
    def _check_severity(cls, v: str) -> str:
        if cls.level != "row" and v == "quarantine" and not cls.quarantine_ok:
            rule = cls.model_fields["rule"].annotation.__args__[0]
            raise ValueError(
                f"rule {rule!r} judges the whole dataset, so its severity must be 'block' or 'warn', not 'quarantine'"
            )
        return v

    @property
    def key(self) -> str:
        return self.name or self.rule


class RequiredFieldsRule(_Rule):
    """Every record has a non-empty ``messages`` list of ``{role, content}`` objects with string values."""

    rule: Literal["required_fields"]


class RoleOrderRule(_Rule):
    """Roles go system? → user → assistant, alternating, and the conversation ends with the assistant."""

    rule: Literal["role_order"]
    system: Literal["optional", "required", "forbidden"] = Field(
        "optional", description="Whether the conversation may / must / must not open with a system message."
    )
    max_turns: int | None = Field(
        None, ge=1, description="At most this many user→assistant exchanges (1: single-turn). None: any."
    )


class AssistantNotEmptyRule(_Rule):
    """Every assistant message holds at least ``min_chars`` non-whitespace characters."""

    rule: Literal["assistant_not_empty"]
    min_chars: int = Field(1, ge=1, description="Characters left after stripping whitespace.")


class TokenLengthRule(_Rule):
    """Length in tokens of the configured base model's tokenizer lies within [min, max]."""

    rule: Literal["token_length"]
    min: int = Field(1, ge=0, description="Fewest tokens allowed.")
    max: int = Field(ge=1, description="Most tokens allowed (the training max_length).")
    measure: Measure = Field(
        "conversation",
        description="conversation: the chat-template rendering of all messages; prompt: system + user "
        "messages; completion: assistant messages.",
    )

    @model_validator(mode="after")
    def _bounds(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class LabelInSetRule(_Rule):
    """The label (the final assistant message, or a meta field) is one of the allowed labels."""

    rule: Literal["label_in_set"]
    labels: list[str] | Literal["from_data"] | None = Field(
        None,
        description="The allowed labels inline, or `from_data`: every label seen at least `min_label_rows` times "
        "(for when the label set is not known in advance; a one-off label is usually a typo).",
    )
    labels_file: str | None = Field(
        None, description="A JSON list (or a text file, one label per line), relative to the repository."
    )
    min_label_rows: int = Field(2, ge=1, description="With `labels: from_data`: rows a label needs to count.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.labels is None) == (self.labels_file is None):
            raise ValueError("give exactly one of `labels` (a list, or from_data) and `labels_file`")
        return self


class JsonOutputRule(_Rule):
    """The final assistant message parses as JSON and, if a schema is given, matches it."""

    rule: Literal["json_output"]
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON Schema the parsed output must match (inline)."
    )
    schema_file: str | None = Field(None, description="A JSON Schema file, relative to the repository.")

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _one_schema(self):
        if self.json_schema is not None and self.schema_file is not None:
            raise ValueError("give at most one of `schema` and `schema_file`")
        return self


PiiPattern = Literal["email", "phone", "card_number", "iban", "us_ssn", "ip_address"]


class NoResidualPiiRule(_Rule):
    """No email address, phone number, card number... survived the scrubber (placeholders like <PERSON_1> pass)."""

    rule: Literal["no_residual_pii"]
    patterns: list[PiiPattern] = Field(
        default_factory=lambda: ["email", "phone", "card_number", "iban"],
        min_length=1,
        description="Which patterns to look for.",
    )


class CleanTextRule(_Rule):
    """No control characters and no mojibake (UTF-8 decoded as Latin-1 / cp1252, U+FFFD) in any message."""

    rule: Literal["clean_text"]
    control_chars: bool = Field(True, description="Flag C0/C1 control characters other than tab and newline.")
    mojibake: bool = Field(True, description="Flag text that looks mis-decoded (ftfy's badness heuristic).")


class LabelCoverageRule(_Rule):
    """Every allowed label occurs in the data (a missing class means a source was cut or filtered wrongly)."""

    rule: Literal["label_coverage"]
    labels: list[str] | None = Field(None, description="The labels that must all occur, inline.")
    labels_file: str | None = Field(
        None, description="A JSON list (or a text file, one label per line), relative to the repository."
    )
    level: ClassVar[str] = "dataset"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.labels is None) == (self.labels_file is None):
            raise ValueError("give exactly one of `labels` and `labels_file`")
        return self


class MinRowsRule(_Rule):
    """The dataset (after row quarantine) has at least ``min`` rows."""

    rule: Literal["min_rows"]
    min: int = Field(ge=1, description="Fewest rows allowed.")
    level: ClassVar[str] = "dataset"


class MinRowsPerClassRule(_Rule):
    """Every label has at least ``min`` rows. With severity quarantine, the rows of smaller classes are set aside."""

    rule: Literal["min_rows_per_class"]
    min: int = Field(ge=1, description="Fewest rows a label needs.")
    level: ClassVar[str] = "dataset"
    quarantine_ok: ClassVar[bool] = True


class ClassBalanceRule(_Rule):
    """The largest class is at most ``max_ratio`` times the size of the smallest."""

    rule: Literal["class_balance"]
    max_ratio: float = Field(gt=1, description="Largest / smallest class size.")
    level: ClassVar[str] = "dataset"


class DuplicateRateRule(_Rule):
    """At most a ``max`` share of rows repeat an earlier row (by normalised content)."""

    rule: Literal["duplicate_rate"]
    max: float = Field(ge=0, le=1, description="Share of rows that are repeats (0.05 = 5 %).")
    compare: Literal["conversation", "prompt"] = Field(
        "conversation", description="conversation: all messages; prompt: the non-assistant messages only."
    )
    level: ClassVar[str] = "dataset"


class LengthPercentilesRule(_Rule):
    """Token-length percentiles lie within bounds, e.g. ``{50: [8, 120], 95: [16, 400]}``."""

    rule: Literal["length_percentiles"]
    percentiles: dict[int, tuple[int | None, int | None]] = Field(
        min_length=1, description="Percentile (0-100) → [low, high] tokens; null means unbounded."
    )
    measure: Measure = Field("conversation", description="What is measured, as in token_length.")
    level: ClassVar[str] = "dataset"

    @field_validator("percentiles")
    @classmethod
    def _in_range(cls, v):
        for p, (lo, hi) in v.items():
            if not 0 <= p <= 100:
                raise ValueError(f"percentile {p} is not between 0 and 100")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"percentile {p}: low bound {lo} is above high bound {hi}")
        return v


class SplitBounds(StrictModel):
    min_rows: int = Field(1, ge=0, description="Fewest rows (1: the split must not be empty).")
    max_rows: int | None = Field(None, ge=1, description="Most rows (None: no limit).")
    min_fraction: float = Field(0.0, ge=0, le=1, description="Smallest share of train + val + test.")
    max_fraction: float = Field(1.0, ge=0, le=1, description="Largest share of train + val + test.")


class SplitSizesRule(_Rule):
    """Checked after the split: validation and test splits are non-empty and within size bounds."""

    rule: Literal["split_sizes"]
    val: SplitBounds = Field(default_factory=SplitBounds, description="Bounds on the validation split.")
    test: SplitBounds = Field(default_factory=SplitBounds, description="Bounds on the test split.")
    level: ClassVar[str] = "split"


Rule = Annotated[
    RequiredFieldsRule
    | RoleOrderRule
    | AssistantNotEmptyRule
    | TokenLengthRule
    | LabelInSetRule
    | JsonOutputRule
    | NoResidualPiiRule
    | CleanTextRule
    | MinRowsRule
    | MinRowsPerClassRule
    | ClassBalanceRule
    | DuplicateRateRule
    | LengthPercentilesRule
    | LabelCoverageRule
    | SplitSizesRule,
    Field(discriminator="rule"),
]
RULE_TYPES = (
    "required_fields",
    "role_order",
    "assistant_not_empty",
    "token_length",
    "label_in_set",
    "json_output",
    "no_residual_pii",
    "clean_text",
    "min_rows",
    "min_rows_per_class",
    "class_balance",
    "duplicate_rate",
    "length_percentiles",
    "label_coverage",
    "split_sizes",
)


class Contract(StrictModel):
    """A data contract: what a dataset must satisfy before it is trained on."""

    contract: str = Field(description="The contract's name.")
    description: str = Field(min_length=1, description="What data this contract is for.")
    task: Literal["classification", "generation", "json_output"] = Field(description="The kind of task.")
    label_from: str = Field(
        "assistant",
        description="Where a record's label is: `assistant` (the final assistant message) or `meta.<key>`.",
    )
    rules: list[Rule] = Field(min_length=1, description="The rules, checked in this order.")

    _path: Path | None = PrivateAttr(None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @field_validator("label_from")
    @classmethod
    def _label_from(cls, v: str) -> str:
        if v != "assistant" and not (v.startswith("meta.") and len(v) > 5):
            raise ValueError("must be `assistant` or `meta.<key>`")
        return v

    @model_validator(mode="after")
    def _unique_names(self):
        seen = Counter(r.key for r in self.rules)
        dups = sorted(k for k, n in seen.items() if n > 1)
        if dups:
            raise ValueError(f"rule names must be unique; give these a distinct `name:`: {', '.join(dups)}")
        return self

    @property
    def path(self) -> str:
        return _display_path(self._path) if self._path else "<inline>"

    def line_of(self, rule: _Rule) -> int | None:
        return self._lines.get(rule.key)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        try:
            return str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(path)


def resolve_path(path: str | Path) -> Path:
    """A path as given, else relative to the working directory, else relative to the repository."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def contract_path(contract: str, contracts_dir: str = "data_contracts") -> Path:
    """``demo`` → ``<contracts_dir>/demo.yaml``; a value that looks like a path is used as one."""
    if contract.endswith((".yaml", ".yml")) or "/" in contract or os.sep in contract:
        return resolve_path(contract)
    return resolve_path(contracts_dir) / f"{contract}.yaml"


def _plain(node):
    """ruamel's round-trip containers → plain dicts / lists / scalars (pydantic-friendly)."""
    if isinstance(node, dict):
        return {(k if isinstance(k, int | float | bool) else str(k)): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _locate(data, loc: tuple, missing: bool) -> tuple[int | None, str]:
    """Map a pydantic error location to (1-based line, readable key path) in the ruamel tree."""
    node, line, parts = data, None, []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            line = node.lc.key(part)[0] + 1 if hasattr(node, "lc") else line
            parts.append(f".{part}" if parts else str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1 if hasattr(node, "lc") else line
            parts.append(f"[{part}]")
            node = node[part]
        elif last and missing and isinstance(part, str):
            # A missing key: point at the mapping that should hold it.
            if hasattr(node, "lc"):
                line = node.lc.line + 1
            parts.append(f".{part}" if parts else part)
        # else: a discriminator tag pydantic inserts into the path (e.g. 'token_length'): not in the file.
    return line, "".join(parts) or "(top level)"


def load_contract(contract: str | Path, contracts_dir: str = "data_contracts") -> Contract:
    """Read and check a contract file. Every problem is reported at once, each with file, line and key.

    Args:
        contract: a contract name in ``contracts_dir`` (``demo``) or a path to a YAML file.
        contracts_dir: where named contracts live (relative to the working directory or the repository).

    Raises:
        ContractError: the file is missing, is not YAML, or does not match the contract schema.
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError

    path = contract_path(str(contract), contracts_dir)
    shown = _display_path(path)
    if not path.is_file():
        known = sorted(p.stem for p in resolve_path(contracts_dir).glob("*.yaml"))
        raise ContractError(
            f"Data contract {str(contract)!r} not found: no file {shown}. Known contracts in {contracts_dir}/: "
            f"{', '.join(known) or 'none'}."
        )
    try:
        data = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ContractError(f"Data contract {shown}{where}: not valid YAML ({e.problem}).") from None
    if not isinstance(data, dict):
        raise ContractError(f"Data contract {shown}: expected a mapping with `contract`, `task` and `rules`.")
    try:
        parsed = Contract.model_validate(_plain(data))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "rule")
            line, key = _locate(data, loc, missing=err["type"] in ("missing", "union_tag_not_found"))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "union_tag_invalid":
                msg = f"unknown rule {err['ctx'].get('tag')!r}; known rules: {', '.join(RULE_TYPES)}"
            elif err["type"] == "extra_forbidden":
                msg = "unknown key"
            where = f"line {line}, " if line else ""
            problems.append(f"{shown}, {where}key {key!r}: {msg}")
        raise ContractError(
            f"Data contract {shown} has {len(problems)} problem(s): " + "; ".join(problems) + "."
        ) from None
    parsed._path = path
    for i, raw in enumerate(data.get("rules") or []):
        if isinstance(raw, dict) and i < len(parsed.rules):
            parsed._lines[parsed.rules[i].key] = data["rules"].lc.item(i)[0] + 1
    return parsed


def _rule_where(contract: Contract, rule: _Rule) -> str:
    line = contract.line_of(rule)
    return f"{contract.path}, line {line}" if line else contract.path


def load_labels(contract: Contract, rule: "LabelInSetRule | LabelCoverageRule") -> list[str] | None:
    """The allowed labels of a ``label_in_set`` / ``label_coverage`` rule (None for ``from_data``)."""
    if rule.labels == "from_data":
        return None
    if rule.labels is not None:
        return list(rule.labels)
    path = resolve_path(rule.labels_file)
    if not path.is_file():
        raise ContractError(
            f"Data contract {_rule_where(contract, rule)}, key 'labels_file': rule {rule.key!r} names labels file "
            f"{rule.labels_file!r}, which does not exist."
        )
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    if isinstance(data, dict):
        data = data.get("labels", list(data))
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise ContractError(
            f"Data contract {_rule_where(contract, rule)}: labels file {rule.labels_file!r} must hold a JSON list "
            "of strings (or one label per line)."
        )
    return data


def load_schema(contract: Contract, rule: JsonOutputRule) -> dict[str, Any] | None:
    if rule.schema_file is None:
        return rule.json_schema
    path = resolve_path(rule.schema_file)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ContractError(
            f"Data contract {_rule_where(contract, rule)}, key 'schema_file': cannot read JSON Schema "
            f"{rule.schema_file!r} ({type(e).__name__})."
        ) from None


# --------------------------------------------------------------------------------------------- stage config


class ValidateConfig(StrictModel):
    contract: str = Field(
        "demo", description="Data contract: a name in `contracts_dir` (demo, banking77...) or a path to a YAML file."
    )
    contracts_dir: str = Field(
        "data_contracts", description="Folder of named contracts (relative to the working directory or the repo)."
    )
    data_docs: bool = Field(
        True, description="Also render GX Data Docs (HTML, ~4 MB with its static assets) beside the result JSON."
    )
    max_example_ids: int = Field(5, ge=0, le=50, description="Record ids quoted per failed rule in messages.")
    token_batch_size: int = Field(
        2048, ge=1, description="Texts per tokenizer call (the fast tokenizer batches in Rust)."
    )


# --------------------------------------------------------------------------------------------- derived columns

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Phone: an optional +country code, then 3-5 groups of 2-4 digits (space / dot / dash / brackets), 9-15 digits
# in all: "+44 20 7946 0958", "(415) 555-0132", "020-7946-0958". A date (8 digits) or an amount does not match.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d{2,4}(?:[ .\-]\d{2,4}){1,4}(?![\w])")
_PHONE_PLAIN = re.compile(r"(?<![\w+])\+\d{9,15}(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_NINE_DIGITS = re.compile(r"\d(?:[ .\-()/]{0,3}\d){8}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
    except ValueError:
        return False


def pii_found(text: str, patterns: list[str]) -> list[str]:
    """Which of ``patterns`` occur in ``text`` (pattern names only, never the match)."""
    found = []
    if "email" in patterns and "@" in text and _EMAIL.search(text):
        found.append("email")
    if "ip_address" in patterns and _IPV4.search(text):
        found.append("ip_address")
    # Cards (13-19 digits), IBANs, phones (9-15) and SSNs (9) all hold a run of 9+ digits: skip the rest without.
    if _NINE_DIGITS.search(text):
        # Cards and IBANs first, and cut out of the text, so their digit groups are not also called phones.
        cards = [m for m in _CARD.finditer(text) if _luhn(_digits(m.group()))]
        if "card_number" in patterns and cards:
            found.append("card_number")
        ibans = [m for m in _IBAN.finditer(text) if _iban_ok(m.group())]
        if "iban" in patterns and ibans:
            found.append("iban")
        for m in sorted(cards + ibans, key=lambda m: -m.start()):
            text = text[: m.start()] + " " + text[m.end() :]
        if "phone" in patterns and (
            any(9 <= len(_digits(m.group())) <= 15 for m in _PHONE.finditer(text)) or _PHONE_PLAIN.search(text)
        ):
            found.append("phone")
        if "us_ssn" in patterns and _SSN.search(text):
            found.append("us_ssn")
    return found


def text_problems(text: str, control_chars: bool = True, mojibake: bool = True) -> list[str]:
    """``control_character`` / ``mojibake`` when present (ASCII text cannot be mojibake: skipped fast)."""
    out = []
    if control_chars and _CONTROL.search(text):
        out.append("control_character")
    if mojibake and not text.isascii():
        from ftfy.badness import is_bad

        if "\ufffd" in text or is_bad(text):
            out.append("mojibake")
    return out


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """The base model's tokenizer, loaded once per process (lazily: transformers is heavy to import)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise StageError(
            f"Cannot load the tokenizer {name_or_path!r} for the token-length rules ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Point --tokenizer / train.base_model at a model folder."
        ) from None


def _as_messages(value) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    return value


def _fields_problem(msgs) -> str | None:
    if not isinstance(msgs, list):
        return "messages_not_a_list"
    if not msgs:
        return "no_messages"
    for m in msgs:
        if not isinstance(m, dict):
            return "message_not_an_object"
        if not isinstance(m.get("role"), str):
            return "role_missing_or_not_text"
        if not isinstance(m.get("content"), str):
            return "content_missing_or_not_text"
    return None


class _PieceCounter:
    """Token counts of many texts, tokenising each distinct piece between special tokens once.

    A chat-template rendering repeats the same pieces in every row (the system prompt, ``assistant\nlabel``);
    special tokens are hard boundaries for a Hugging Face tokenizer, so the count of a text is the number of
    special tokens plus the counts of the pieces between them. That holds for byte-level BPE (SmolLM2, GPT-2,
    Llama 3) but not for tokenizers that normalise the whole string (a sentencepiece prefix space on the first
    piece only), so it is checked on a sample first and whole texts are tokenised when it does not hold.
    On BANKING77-shaped rows this tokenises ~40 % of the text.
    """

    def __init__(self, tok, batch_size: int):
        self.tok = tok
        self.bs = batch_size
        self.backend = getattr(tok, "_tokenizer", None)  # the Rust tokenizer: batches without per-row Python
        specials = sorted({t for t in getattr(tok, "all_special_tokens", []) if t} | self._added(), key=len)[::-1]
        self.split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.specials = set(specials)
        self.cache: dict[str, int] = {}

    def _added(self) -> set[str]:
        try:
            return {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        except AttributeError:
            return set()

    def _encode(self, texts: list[str]) -> list[int]:
        out: list[int] = []
        for start in range(0, len(texts), self.bs):
            batch = texts[start : start + self.bs]
            if self.backend is not None:
                out += [len(e.ids) for e in self.backend.encode_batch(batch, add_special_tokens=False)]
            else:
                out += [len(x) for x in self.tok(batch, add_special_tokens=False)["input_ids"]]
        return out

    def _by_pieces(self, texts: list[str]) -> list[int]:
        split = [[p for p in self.split.split(t) if p] for t in texts]
        todo = list({p for ps in split for p in ps if p not in self.specials and p not in self.cache})
        self.cache.update(zip(todo, self._encode(todo), strict=True))
        return [sum(1 if p in self.specials else self.cache[p] for p in ps) for ps in split]

    def count(self, texts: list[str]) -> list[int]:
        if self.split is None or len(texts) < 1000:
            return self._encode(texts)
        sample = texts[:: max(1, len(texts) // 200)]
        if self._by_pieces(sample) != self._encode(sample):
            return self._encode(texts)
        return self._by_pieces(texts)


class _Derived:
    """The derived columns, each computed at most once per run, only when some rule needs it."""

    def __init__(self, records: pd.DataFrame, contract: Contract, tokenizer: str | None, cfg: ValidateConfig):
        self.records = records
        self.contract = contract
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.ids = records["id"].astype(str).tolist()
        self.msgs = [_as_messages(v) for v in records["messages"]]
        self.ok = [_fields_problem(m) is None for m in self.msgs]
        self._cache: dict[str, list] = {}

    def _memo(self, key: str, fn) -> list:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def fields_problem(self) -> list:
        return self._memo("fields", lambda: [_fields_problem(m) for m in self.msgs])

    def role_pattern(self) -> list:
        def code(m):
            role = m.get("role") if isinstance(m, dict) else None
            return ROLE_CODES.get(role, "?") if isinstance(role, str) else "?"

        return self._memo(
            "roles", lambda: ["".join(code(x) for x in m) if isinstance(m, list) else "" for m in self.msgs]
        )

    def contents(self) -> list[list[str]]:
        """Every message's content as text (non-text content as an empty string)."""

        def texts(m):
            if not isinstance(m, list):
                return []
            return [x["content"] if isinstance(x, dict) and isinstance(x.get("content"), str) else "" for x in m]

        return self._memo("contents", lambda: [texts(m) for m in self.msgs])

    def full_text(self) -> list[str]:
        return self._memo("full_text", lambda: ["\n".join(c) for c in self.contents()])

    def assistant_chars(self) -> list:
        def shortest(m):
            lens = [
                len(x["content"].strip()) if isinstance(x.get("content"), str) else 0
                for x in m
                if isinstance(x, dict) and x.get("role") == "assistant"
            ]
            return min(lens) if lens else 0

        return self._memo("assistant_chars", lambda: [shortest(m) if isinstance(m, list) else 0 for m in self.msgs])

    def final_assistant(self) -> list[str | None]:
        def last(m):
            if isinstance(m, list) and m and isinstance(m[-1], dict) and m[-1].get("role") == "assistant":
                c = m[-1].get("content")
                return c if isinstance(c, str) else None
            return None

        return self._memo("final_assistant", lambda: [last(m) for m in self.msgs])

    def label(self) -> list[str]:
        def from_meta(meta, key):
            if isinstance(meta, str):
                try:
                    meta = json.loads(meta)
                except ValueError:
                    meta = None
            v = meta.get(key) if isinstance(meta, dict) else None
            return "" if v is None else str(v).strip()

        def compute():
            src = self.contract.label_from
            if src == "assistant":
                return [(c or "").strip() for c in self.final_assistant()]
            key = src.removeprefix("meta.")
            metas = self.records["meta"] if "meta" in self.records else [None] * len(self.records)
            return [from_meta(m, key) for m in metas]

        return self._memo("label", compute)

    def dup_key(self, key: str) -> list[str]:
        def compute():
            out = []
            for m, ok in zip(self.msgs, self.ok, strict=True):
                if not ok:
                    out.append(f"malformed:{len(out)}")  # malformed rows are never duplicates of each other
                    continue
                parts = [
                    f"{x['role']}\x1f{normalise_text(x['content'])}"
                    for x in m
                    if key == "conversation" or x["role"] != "assistant"
                ]
                out.append(hashlib.blake2b("\x1e".join(parts).encode("utf-8"), digest_size=8).hexdigest())
            return out

        return self._memo(f"dup_{key}", compute)

    def tokens(self, measure: str) -> list:
        return self._memo(f"tokens_{measure}", lambda: self._count_tokens(measure))

    def _texts_for(self, measure: str, tok) -> list[str | None]:
        if measure == "conversation":
            if getattr(tok, "chat_template", None):
                return self._chat_texts(tok)
            return ["\n".join(c) if ok else None for c, ok in zip(self.contents(), self.ok, strict=True)]
        want_assistant = measure == "completion"
        out = []
        for m, ok in zip(self.msgs, self.ok, strict=True):
            if not ok:
                out.append(None)
                continue
            out.append("\n".join(x["content"] for x in m if (x["role"] == "assistant") == want_assistant))
        return out

    def _chat_texts(self, tok) -> list[str | None]:
        """Render with the tokenizer's chat template: what the trainer feeds the model (special tokens included)."""
        good = [i for i, ok in enumerate(self.ok) if ok]
        out: list[str | None] = [None] * len(self.msgs)
        bs = self.cfg.token_batch_size
        for start in range(0, len(good), bs):
            idx = good[start : start + bs]
            try:
                texts = tok.apply_chat_template([self.msgs[i] for i in idx], tokenize=False)
            except Exception:  # a template may refuse some role order: render row by row, plain text on refusal
                texts = [self._render_one(tok, self.msgs[i]) for i in idx]
            for i, t in zip(idx, texts, strict=True):
                out[i] = t
        return out

    @staticmethod
    def _render_one(tok, msgs) -> str:
        try:
            return tok.apply_chat_template(msgs, tokenize=False)
        except Exception:  # the role_order rule reports the conversation itself
            return "\n".join(x["content"] for x in msgs)

    def _count_tokens(self, measure: str) -> list:
        if not self.tokenizer:
            rules = [r.key for r in self.contract.rules if isinstance(r, TokenLengthRule | LengthPercentilesRule)]
            raise StageError(
                f"Data contract {self.contract.path}: rule(s) {', '.join(rules)} count tokens with the base "
                "model's tokenizer, but no tokenizer was given (pass --tokenizer PATH, or set train.base_model)."
            )
        tok = load_tokenizer(self.tokenizer)
        texts = self._texts_for(measure, tok)
        present = [i for i, t in enumerate(texts) if t is not None]
        counts: list = [None] * len(texts)
        lens = _PieceCounter(tok, self.cfg.token_batch_size).count([texts[i] for i in present])
        for i, n in zip(present, lens, strict=True):
            counts[i] = n
        return counts

    def json_problem(self, schema: dict[str, Any] | None) -> list:
        validator = None
        if schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = cls(schema)

        def check(text):
            if text is None:
                return "no_final_assistant_message"
            try:
                value = json.loads(text)
            except ValueError:
                return "not_json"
            if validator is not None:
                err = next(iter(validator.iter_errors(value)), None)
                if err is not None:
                    # The failing keyword and where, never the offending value (it may be text).
                    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                    return f"schema:{err.validator}@{path}"
            return None

        return [check(t) for t in self.final_assistant()]

    def pii(self, patterns: list[str]) -> list:
        return [",".join(pii_found(t, patterns)) or None for t in self.full_text()]

    def text_problem(self, control_chars: bool, mojibake: bool) -> list:
        return [",".join(text_problems(t, control_chars, mojibake)) or None for t in self.full_text()]


# --------------------------------------------------------------------------------------------- GX plumbing


@functools.cache
def _gx():
    """Import GX (lazily, ~2 s) and define loraflow's custom expectations once per process."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.core.expect_column_quantile_values_to_be_between import (
        ExpectColumnQuantileValuesToBeBetween,
    )
    from great_expectations.expectations.expectation import ColumnAggregateExpectation, ColumnMapExpectation
    from great_expectations.expectations.metrics import (
        ColumnAggregateMetricProvider,
        ColumnMapMetricProvider,
        column_aggregate_value,
        column_condition_partial,
    )

    # GX logs at INFO on some of its own loggers (base.py sets INFO explicitly): keep the pipeline's log clean.
    for name in ("great_expectations", "great_expectations.data_context.types.base"):
        logging.getLogger(name).setLevel(logging.WARNING)

    class ColumnValuesChatRoleOrder(ColumnMapMetricProvider):
        """Role-pattern strings (s/u/a per message) of the form ``s? (u a)+``, with system / turn limits."""

        condition_metric_name = "column_values.loraflow_chat_role_order"
        condition_value_keys = ("system", "max_turns")

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, system="optional", max_turns=None, **kwargs):
            head = {"optional": "s?", "required": "s", "forbidden": ""}[system]
            turns = "+" if max_turns is None else f"{{1,{int(max_turns)}}}"
            return column.astype(str).str.fullmatch(f"{head}(?:ua){turns}")

    class ExpectColumnValuesToFollowChatRoleOrder(ColumnMapExpectation):
        """Expect each conversation's roles to go system? → user → assistant, alternating, ending with assistant.

        The column holds one letter per message: s(ystem), u(ser), a(ssistant), ? (anything else).
        """

        system: Literal["optional", "required", "forbidden"] = "optional"
        max_turns: int | None = None
        map_metric = "column_values.loraflow_chat_role_order"
        success_keys = ("system", "max_turns", "mostly")

    class ColumnClassImbalanceRatio(ColumnAggregateMetricProvider):
        """Size of the largest class divided by the size of the smallest (1.0 = balanced)."""

        metric_name = "column.loraflow_class_imbalance_ratio"

        @column_aggregate_value(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            counts = column.value_counts()
            return float(counts.max() / counts.min()) if len(counts) else 1.0

    class ExpectColumnClassImbalanceRatioToBeAtMost(ColumnAggregateExpectation):
        """Expect the largest class to have at most ``max_ratio`` times the rows of the smallest class."""

        max_ratio: float
        metric_dependencies = ("column.loraflow_class_imbalance_ratio",)
        success_keys = ("max_ratio",)

        def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
            ratio = float(metrics["column.loraflow_class_imbalance_ratio"])
            return {"success": bool(ratio <= self.max_ratio), "result": {"observed_value": ratio}}

    class ExpectColumnPercentilesToBeBetween(ExpectColumnQuantileValuesToBeBetween):
        """GX's quantile expectation with plain-Python results (1.24 returns numpy bools JSON cannot store)."""

        def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
            out = super()._validate(metrics, runtime_configuration, execution_engine)
            res = out["result"]
            res["details"]["success_details"] = [bool(x) for x in res["details"]["success_details"]]
            res["observed_value"]["values"] = [
                None if v is None or pd.isna(v) else float(v) for v in res["observed_value"]["values"]
            ]
            return {**out, "success": bool(out["success"])}

    return {
        "gx": gx,
        "RoleOrder": ExpectColumnValuesToFollowChatRoleOrder,
        "ClassRatio": ExpectColumnClassImbalanceRatioToBeAtMost,
        "Percentiles": ExpectColumnPercentilesToBeBetween,
    }


class _GxRun:
    """One ephemeral GX context per validation: a pandas data source, a dataframe asset, suites per phase."""

    def __init__(self, docs_dir: Path | None):
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.ns = _gx()
        gx = self.ns["gx"]
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
            analytics_enabled=False,
        )
        self.ctx = gx.get_context(mode="ephemeral", project_config=config)
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.ctx.add_data_docs_site(
                site_name="loraflow",
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        source = self.ctx.data_sources.add_pandas("loraflow")
        self.asset = source.add_dataframe_asset("records")
        self.batch = self.asset.add_batch_definition_whole_dataframe("all_rows")
        self.results: list[dict[str, Any]] = []

    def run(self, suite_name: str, expectations: list, frame: pd.DataFrame):
        gx = self.ns["gx"]
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=suite_name))
        for e in expectations:
            suite.add_expectation(e)
        vd = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=self.batch, suite=suite))
        # exclude_unexpected_values: GX reports the failing ids only, never the failing values.
        result = vd.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["id"],
                "exclude_unexpected_values": True,
            },
        )
        self.results.append(result.to_json_dict())
        return result

    def build_docs(self) -> str | None:
        if self.docs_dir is None:
            return None
        self.ctx.build_data_docs(site_names=["loraflow"])
        index = self.docs_dir / "index.html"
        return str(index) if index.exists() else None


def _failing_ids(res) -> list[str]:
    """Ids out of GX's ``unexpected_index_list`` (``[{"id": [...]}]`` with exclude_unexpected_values)."""
    out: list[str] = []
    for item in res.result.get("unexpected_index_list") or []:
        v = item.get("id")
        out.extend(v if isinstance(v, list) else [v])
    return [str(x) for x in out]


# --------------------------------------------------------------------------------------------- compile rules


def _compile(rule: _Rule, d: _Derived, frame: dict[str, list], ns: dict, contract: Contract):
    """The rule's derived column(s) into ``frame`` and its GX expectation."""
    gx = ns["gx"]
    E = gx.expectations
    kw = {"description": rule.description, "meta": {"rule": rule.key, "severity": rule.severity}}
    col = f"{rule.key}__value"
    if isinstance(rule, RequiredFieldsRule):
        frame[col] = d.fields_problem()
        return E.ExpectColumnValuesToBeNull(column=col, **kw)
    if isinstance(rule, RoleOrderRule):
        frame[col] = d.role_pattern()
        return ns["RoleOrder"](column=col, system=rule.system, max_turns=rule.max_turns, **kw)
    if isinstance(rule, AssistantNotEmptyRule):
        frame[col] = d.assistant_chars()
        return E.ExpectColumnValuesToBeBetween(column=col, min_value=rule.min_chars, **kw)
    if isinstance(rule, TokenLengthRule):
        frame[col] = d.tokens(rule.measure)
        return E.ExpectColumnValuesToBeBetween(column=col, min_value=rule.min, max_value=rule.max, **kw)
    if isinstance(rule, LabelInSetRule):
        labels = load_labels(contract, rule)
        frame[col] = d.label()
        if labels is None:
            counts = Counter(d.label())
            labels = sorted(k for k, n in counts.items() if k and n >= rule.min_label_rows)
        return E.ExpectColumnValuesToBeInSet(column=col, value_set=labels, **kw)
    if isinstance(rule, JsonOutputRule):
        frame[col] = d.json_problem(load_schema(contract, rule))
        return E.ExpectColumnValuesToBeNull(column=col, **kw)
    if isinstance(rule, NoResidualPiiRule):
        frame[col] = d.pii(rule.patterns)
        return E.ExpectColumnValuesToBeNull(column=col, **kw)
    if isinstance(rule, CleanTextRule):
        frame[col] = d.text_problem(rule.control_chars, rule.mojibake)
        return E.ExpectColumnValuesToBeNull(column=col, **kw)
    if isinstance(rule, MinRowsRule):
        return E.ExpectTableRowCountToBeBetween(min_value=rule.min, **kw)
    if isinstance(rule, LabelCoverageRule):
        frame[col] = d.label()
        return E.ExpectColumnDistinctValuesToContainSet(column=col, value_set=load_labels(contract, rule), **kw)
    if isinstance(rule, MinRowsPerClassRule):
        frame[col] = d.label()  # replaced by the class size over the rows of the phase (see _phase_frame)
        return E.ExpectColumnValuesToBeBetween(column=col, min_value=rule.min, **kw)
    if isinstance(rule, ClassBalanceRule):
        frame[col] = d.label()
        return ns["ClassRatio"](column=col, max_ratio=rule.max_ratio, **kw)
    if isinstance(rule, DuplicateRateRule):
        frame[col] = d.dup_key(rule.compare)
        # proportion of unique values = distinct / rows, so the repeat share is 1 - that.
        return E.ExpectColumnProportionOfUniqueValuesToBeBetween(column=col, min_value=1.0 - rule.max, **kw)
    if isinstance(rule, LengthPercentilesRule):
        frame[col] = d.tokens(rule.measure)
        ps = sorted(rule.percentiles)
        return ns["Percentiles"](
            column=col,
            quantile_ranges={
                "quantiles": [p / 100 for p in ps],
                "value_ranges": [list(rule.percentiles[p]) for p in ps],
            },
            **kw,
        )
    raise AssertionError(f"rule {rule.rule!r} has no compiler")  # split_sizes runs in check_splits


def _phase(rule: _Rule) -> int:
    if rule.level == "row":
        return 1
    if isinstance(rule, MinRowsPerClassRule) and rule.severity == "quarantine":
        return 2
    return 3


def _threshold(rule: _Rule, contract: Contract) -> str:
    if isinstance(rule, RequiredFieldsRule):
        return "messages: [{role, content}] text"
    if isinstance(rule, RoleOrderRule):
        head = {"optional": "system?", "required": "system", "forbidden": "no system"}[rule.system]
        turns = "" if rule.max_turns is None else f", ≤ {rule.max_turns} turn(s)"
        return f"{head} (user assistant)+{turns}"
    if isinstance(rule, AssistantNotEmptyRule):
        return f"≥ {rule.min_chars} non-space char"
    if isinstance(rule, TokenLengthRule):
        return f"{rule.min}–{rule.max} tokens ({rule.measure})"
    if isinstance(rule, LabelInSetRule):
        if rule.labels == "from_data":
            return f"labels seen ≥ {rule.min_label_rows}x"
        if rule.labels_file:
            return f"{len(load_labels(contract, rule))} labels ({Path(rule.labels_file).name})"
        return f"{len(rule.labels)} labels"
    if isinstance(rule, JsonOutputRule):
        if rule.schema_file:
            return f"JSON matching {Path(rule.schema_file).name}"
        return "JSON matching schema" if rule.json_schema else "parses as JSON"
    if isinstance(rule, NoResidualPiiRule):
        return "none of " + "/".join(rule.patterns)
    if isinstance(rule, CleanTextRule):
        return "none of " + "/".join(
            x for x, on in (("control chars", rule.control_chars), ("mojibake", rule.mojibake)) if on
        )
    if isinstance(rule, MinRowsRule):
        return f"≥ {rule.min} rows"
    if isinstance(rule, LabelCoverageRule):
        return f"all {len(load_labels(contract, rule))} labels occur"
    if isinstance(rule, MinRowsPerClassRule):
        return f"≥ {rule.min} rows/class"
    if isinstance(rule, ClassBalanceRule):
        return f"ratio ≤ {rule.max_ratio:g}"
    if isinstance(rule, DuplicateRateRule):
        return f"≤ {rule.max:.1%} ({rule.compare})"
    if isinstance(rule, LengthPercentilesRule):
        return ", ".join(
            f"p{p} in [{'-' if lo is None else lo}, {'-' if hi is None else hi}]"
            for p, (lo, hi) in sorted(rule.percentiles.items())
        )
    return ""


def _codes_summary(values: pd.Series) -> str:
    counts: Counter = Counter()
    for v in values.dropna():
        for part in str(v).split(","):
            counts[part.split("@")[0] if part.startswith("schema:") else part] += 1
    return ", ".join(f"{k} {n}" for k, n in counts.most_common(4))


def _summarise(rule: _Rule, res, col: pd.Series | None, ids: pd.Series, cfg: ValidateConfig) -> dict[str, Any]:
    """Observed value, rows affected and example ids of one rule from its GX result."""
    r = res.result
    failing = _failing_ids(res)
    n_fail = int(r.get("unexpected_count") or 0) if rule.level == "row" or isinstance(rule, MinRowsPerClassRule) else 0
    observed: str
    examples: list[str] = failing
    if isinstance(rule, RequiredFieldsRule | JsonOutputRule | NoResidualPiiRule | CleanTextRule):
        kinds = _codes_summary(col) if n_fail else ""
        observed = f"{n_fail} rows" + (f" ({kinds})" if kinds else "")
    elif isinstance(rule, RoleOrderRule):
        observed = f"{n_fail} rows out of order"
    elif isinstance(rule, AssistantNotEmptyRule):
        observed = f"{n_fail} rows empty"
    elif isinstance(rule, TokenLengthRule):
        vals = pd.to_numeric(col, errors="coerce").dropna()
        span = f"{int(vals.min())}–{int(vals.max())}" if len(vals) else "n/a"
        observed = f"{n_fail} rows outside; range {span}"
    elif isinstance(rule, LabelInSetRule):
        unknown = col[ids.isin(set(failing))].nunique() if n_fail else 0
        observed = f"{n_fail} rows, {unknown} unknown label(s)"
    elif isinstance(rule, MinRowsRule):
        observed = f"{int(r.get('observed_value', 0))} rows"
        examples = []
    elif isinstance(rule, LabelCoverageRule):
        wanted = set(res.expectation_config.kwargs["value_set"])
        missing = sorted(wanted - set(col)) if col is not None else []
        shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        observed = f"{len(missing)} of {len(wanted)} labels missing" + (f": {shown}" if missing else "")
        examples = []
    elif isinstance(rule, MinRowsPerClassRule):
        observed = (
            f"smallest class {int(col.min())} rows ({col[col < rule.min].index.size} rows in small classes)"
            if len(col)
            else "no rows"
        )
    elif isinstance(rule, ClassBalanceRule):
        counts = col.value_counts()
        ratio = float(r.get("observed_value") or 0)
        observed = f"ratio {ratio:.1f} ({counts.max()}/{counts.min()} rows)" if len(counts) else "no rows"
        if not res.success:
            smallest = counts[counts == counts.min()].index
            examples = ids[col.isin(smallest)].tolist()
            n_fail = len(examples)
    elif isinstance(rule, DuplicateRateRule):
        dup = col.duplicated()
        observed = f"{dup.mean():.1%} ({int(dup.sum())} repeat rows)" if len(col) else "no rows"
        examples = ids[dup].tolist()
        n_fail = int(dup.sum()) if not res.success else 0
    elif isinstance(rule, LengthPercentilesRule):
        obs = (r.get("observed_value") or {}).get("values") or []
        ps = sorted(rule.percentiles)
        observed = ", ".join(f"p{p} {'n/a' if v is None else f'{v:g}'}" for p, v in zip(ps, obs, strict=False))
        examples = []
        if not res.success:
            vals = pd.to_numeric(col, errors="coerce")
            mask = pd.Series(False, index=col.index)
            for p, v in zip(ps, obs, strict=False):
                lo, hi = rule.percentiles[p]
                if v is not None and hi is not None and v > hi:
                    mask |= vals > hi
                if v is not None and lo is not None and v < lo:
                    mask |= vals < lo
            examples = ids[mask].tolist()
            n_fail = int(mask.sum())
    else:
        observed = str(r.get("observed_value", ""))
    return {
        "observed": observed,
        "rows_affected": n_fail,
        "example_ids": examples[: cfg.max_example_ids],
        "_ids": failing,
    }


# --------------------------------------------------------------------------------------------- the stage


def _status(passed: bool, severity: str) -> str:
    if passed:
        return "pass"
    return {"quarantine": "fail: quarantined", "block": "FAIL: BLOCKS", "warn": "fail: warning"}[severity]


def format_rules_table(report: dict[str, Any]) -> str:
    """The rules table as fixed-width text (what the CLI prints and the flow logs)."""
    rows = report.get("rules", [])
    head = ("rule", "severity", "observed", "threshold", "result", "rows")
    body = [
        (
            r["rule"],
            r["severity"],
            r["observed"],
            r["threshold"],
            _status(r["passed"], r["severity"]),
            str(r["rows_affected"]),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    c = report.get("contract", {})
    counts = report.get("summary", {})
    title = f"data contract {c.get('name', '?')} ({c.get('path', '?')})"
    if counts:
        title += (
            f": {counts.get('rows_in', 0)} rows in, {counts.get('kept', 0)} kept, "
            f"{counts.get('quarantined', 0)} quarantined"
        )
    out = [title, line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body]
    return "\n".join(out)


def rules_markdown(report: dict[str, Any]) -> str:
    """The rules table as Markdown (for a Prefect markdown artifact or a PR comment)."""
    c = report.get("contract", {})
    lines = [
        f"**Data contract `{c.get('name', '?')}`** ({c.get('path', '?')})",
        "",
        "| rule | severity | observed | threshold | result | rows affected |",
        "|---|---|---|---|---|---:|",
    ]
    for r in report.get("rules", []):
        cells = [r["rule"], r["severity"], r["observed"], r["threshold"], _status(r["passed"], r["severity"])]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + f" | {r['rows_affected']} |")
    return "\n".join(lines)


def _block_message(contract: Contract, failed: list[dict[str, Any]]) -> str:
    parts = []
    for r in failed:
        ex = f"; example ids: {', '.join(r['example_ids'])}" if r["example_ids"] else ""
        affected = f", {r['rows_affected']} rows affected" if r["rows_affected"] else ""
        parts.append(
            f'rule {r["rule"]!r} ("{r["description"].rstrip(".")}"): observed {r["observed"]}, threshold '
            f"{r['threshold']}{affected}{ex}"
        )
    return (
        f"Data contract {contract.contract!r} ({contract.path}) blocks this dataset before training: "
        + "; ".join(parts)
        + ". Fix the data, or change the rule in the contract (severity: warn only reports it), then run again."
    )


def validate(
    records: pd.DataFrame,
    cfg: ValidateConfig,
    tokenizer: str | None = None,
    artifacts_dir: str | Path | None = None,
) -> StageOutcome:
    """Check ``records`` against the contract named in ``cfg``; quarantine, warn or block rule by rule.

    Args:
        records: canonical records (id, messages, source, created_at, meta).
        cfg: the stage config (which contract, GX options).
        tokenizer: base model folder or id whose tokenizer counts tokens (needed by token-length rules).
        artifacts_dir: where GX's validation results (JSON) and Data Docs (HTML) go; None writes no files.

    Returns:
        The outcome: kept rows, quarantined rows (reason = rule name), and a report with ``rules`` (the table
        as dicts), ``table`` (printable), ``artifacts`` (file paths) and ``contract``.

    Raises:
        ContractError: the contract cannot be loaded.
        ContractViolation: a ``block`` rule failed (after the report and GX files were written).
    """
    contract = load_contract(cfg.contract, cfg.contracts_dir)
    rules = [r for r in contract.rules if r.level != "split"]
    artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else None
    docs_dir = artifacts_dir / "data_docs" if artifacts_dir is not None and cfg.data_docs else None
    if artifacts_dir is not None:
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        if docs_dir is not None and docs_dir.exists():
            shutil.rmtree(docs_dir)  # one run's Data Docs, not every earlier run's on the same data

    clock = {"start": time.perf_counter()}
    records = records.reset_index(drop=True)
    d = _Derived(records, contract, tokenizer, cfg)
    run = _GxRun(docs_dir)
    ns = run.ns

    # Derived columns once, over every record.
    columns: dict[str, list] = {"id": d.ids}
    expectations = {r.key: _compile(r, d, columns, ns, contract) for r in rules}
    clock["derived"] = time.perf_counter()
    table = pd.DataFrame(columns)
    for r in rules:  # numeric derived columns: None (a malformed row) becomes NaN, which GX skips
        if isinstance(r, TokenLengthRule | LengthPercentilesRule | AssistantNotEmptyRule):
            table[f"{r.key}__value"] = pd.to_numeric(table[f"{r.key}__value"], errors="coerce")

    alive = pd.Series(True, index=table.index)
    reasons: dict[int, list[str]] = {}
    rows_out: list[dict[str, Any]] = []
    for phase in (1, 2, 3):
        in_phase = [r for r in rules if _phase(r) == phase]
        if not in_phase:
            continue
        frame = table[alive].reset_index(drop=False)  # 'index' keeps the position in ``records``
        if frame.empty and phase > 1:
            # Nothing left to judge: only the row count means something (a ratio or a percentile of no rows
            # does not), so the other dataset rules are reported as not checked.
            for r in [r for r in in_phase if not isinstance(r, MinRowsRule)]:
                rows_out.append(
                    {
                        "rule": r.key,
                        "type": r.rule,
                        "severity": r.severity,
                        "description": r.description,
                        "threshold": _threshold(r, contract),
                        "passed": True,
                        "phase": phase,
                        "observed": "not checked: no rows left",
                        "rows_affected": 0,
                        "example_ids": [],
                    }
                )
            in_phase = [r for r in in_phase if isinstance(r, MinRowsRule)]
            if not in_phase:
                continue
        for r in in_phase:
            if isinstance(r, MinRowsPerClassRule):  # class sizes over the rows this phase sees
                col = f"{r.key}__value"
                frame[col] = frame[col].map(frame[col].value_counts()).astype("int64")
        result = run.run(f"{contract.contract}-phase{phase}", [expectations[r.key] for r in in_phase], frame)
        by_rule = {res.expectation_config.meta["rule"]: res for res in result.results}
        for r in in_phase:
            res = by_rule[r.key]
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(
                    f"Great Expectations could not evaluate rule {r.key!r}: {res.exception_info.get('exception_message')}"
                )
            col_name = f"{r.key}__value"
            col = frame.get(col_name)
            summary = _summarise(r, res, col, frame["id"], cfg)
            passed = bool(res.success)
            failing = summary.pop("_ids")
            rows_out.append(
                {
                    "rule": r.key,
                    "type": r.rule,
                    "severity": r.severity,
                    "description": r.description,
                    "threshold": _threshold(r, contract),
                    "passed": passed,
                    "phase": phase,
                    **summary,
                }
            )
            if not passed and r.severity == "warn":
                log.warning(
                    "contract %s: rule %s failed (warn): observed %s, threshold %s",
                    contract.contract,
                    r.key,
                    summary["observed"],
                    _threshold(r, contract),
                )
            if not passed and r.severity == "quarantine" and failing:
                hit = frame.loc[frame["id"].isin(set(failing)), "index"]
                for pos in hit:
                    reasons.setdefault(int(pos), []).append(r.key)
        if phase < 3:
            for pos in reasons:
                alive.iloc[pos] = False

    # Quarantine: reason = the first failing rule (contract order); detail = every failing rule and the derived
    # values that made it fail (counts and codes only, never text). A row with residual PII is stored without
    # its record.
    order = {r.key: i for i, r in enumerate(rules)}
    positions = sorted(reasons)
    pii_rules = {r.key for r in rules if isinstance(r, NoResidualPiiRule)}
    q_parts = []
    for with_record in (True, False):
        pos = [p for p in positions if bool(pii_rules & set(reasons[p])) != with_record]
        if not pos:
            continue
        rs = [sorted(reasons[p], key=order.__getitem__) for p in pos]
        details = [
            {
                "contract": contract.contract,
                "rules": names,
                **{n: _jsonable(table.at[p, f"{n}__value"]) for n in names if f"{n}__value" in table},
            }
            for p, names in zip(pos, rs, strict=True)
        ]
        for det, names in zip(details, rs, strict=True):
            for n in names:  # a label may be free text: keep only whether it was allowed
                if isinstance(next(r for r in rules if r.key == n), LabelInSetRule | MinRowsPerClassRule):
                    det.pop(n, None)
        q_parts.append(
            quarantine_rows(STAGE, records.iloc[pos], [n[0] for n in rs], details, include_record=with_record)
        )
    quarantined = pd.concat(q_parts, ignore_index=True) if q_parts else empty_quarantine()
    kept = records.drop(index=positions)

    artifacts: dict[str, str] = {}
    if artifacts_dir is not None:
        results_path = artifacts_dir / "gx_validation_results.json"
        results_path.write_text(json.dumps(run.results, indent=1, default=str))
        artifacts["gx_validation_results"] = str(results_path)
        clock["gx"] = time.perf_counter()
        docs = run.build_docs()
        if docs:
            artifacts["data_docs"] = str(docs_dir)
            artifacts["data_docs_index"] = docs

    blocked = [r for r in rows_out if not r["passed"] and r["severity"] == "block"]
    end = time.perf_counter()
    gx_end = clock.get("gx", end)
    timings = {
        "derived_columns_s": round(clock["derived"] - clock["start"], 3),
        "great_expectations_s": round(gx_end - clock["derived"], 3),
        "data_docs_s": round(end - gx_end, 3),
    }
    report = {
        "contract": {"name": contract.contract, "path": contract.path, "task": contract.task},
        "timings": timings,
        "summary": {"rows_in": len(records), "kept": len(kept), "quarantined": len(quarantined)},
        "rules": rows_out,
        "artifacts": artifacts,
        "blocked": [r["rule"] for r in blocked],
        "warnings": [r["rule"] for r in rows_out if not r["passed"] and r["severity"] == "warn"],
    }
    report["table"] = format_rules_table(report)
    report["table_markdown"] = rules_markdown(report)
    metrics = {
        "rules_passed": float(sum(r["passed"] for r in rows_out)),
        "rules_failed": float(sum(not r["passed"] for r in rows_out)),
        "rules_blocking": float(len(blocked)),
    }
    report["metrics"] = metrics
    if artifacts_dir is not None:
        (artifacts_dir / "rules.json").write_text(json.dumps(report, indent=2, default=str))
        artifacts["rules"] = str(artifacts_dir / "rules.json")
    if blocked:
        raise ContractViolation(_block_message(contract, blocked), report)
    return StageOutcome(kept=kept, quarantined=quarantined, report=report, metrics=metrics)


def _jsonable(v):
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v


def tracking_artifacts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``(local path, MLflow artifact folder)`` pairs for a validate report: GX's result JSON, the rules table and
    the Data Docs folder (log a folder with ``log_artifacts``, a file with ``log_artifact``). Works on the report of
    a passed run (read from ``StageResult.report_uri``) and on ``ContractViolation.report``."""
    arts = report.get("artifacts") or {}
    out = [(arts[k], "validate") for k in ("gx_validation_results", "rules") if k in arts]
    if "data_docs" in arts:
        out.append((arts["data_docs"], "validate/data_docs"))
    return [(p, dest) for p, dest in out if Path(p).exists()]


def contract_fingerprint(cfg: ValidateConfig, tokenizer: str | None = None) -> str:
    """sha256 over the contract file, the files it names (labels, schema) and the tokenizer's files.

    Part of the validate tasks' cache key: editing a contract (or its labels file) re-runs validation even though
    the data did not change.
    """
    h = hashlib.sha256()
    path = contract_path(cfg.contract, cfg.contracts_dir)
    files = [path]
    try:
        c = load_contract(cfg.contract, cfg.contracts_dir)
        files += [resolve_path(r.labels_file) for r in c.rules if isinstance(r, LabelInSetRule) and r.labels_file]
        files += [resolve_path(r.schema_file) for r in c.rules if isinstance(r, JsonOutputRule) and r.schema_file]
    except ContractError:
        pass  # the task itself reports the problem
    if tokenizer and Path(tokenizer).is_dir():
        files += [Path(tokenizer) / n for n in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")]
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes() if f.is_file() else b"<missing>")
    return h.hexdigest()


def _cache_key(context, parameters: dict[str, Any]) -> str:
    return contract_fingerprint(parameters["cfg"], parameters.get("tokenizer"))


VALIDATE_CACHE = DATA_STAGE_CACHE + CacheKeyFnPolicy(cache_key_fn=_cache_key)


def _gx_dir(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / STAGE / f"gx-{key[:12]}"


@task(name="validate", cache_policy=VALIDATE_CACHE, persist_result=True)
def validate_task(ref: DatasetRef, cfg: ValidateConfig, tokenizer: str | None, out_dir: str) -> StageResult:
    """Prefect wrapper: validate ``ref``; on a blocking rule, write the report first, then fail the task."""
    records = read_records(ref)
    stage_dir = Path(out_dir) / STAGE
    try:
        outcome = validate(records, cfg, tokenizer, artifacts_dir=_gx_dir(out_dir, ref.sha256))
    except ContractViolation as e:
        stage_dir.mkdir(parents=True, exist_ok=True)
        path = stage_dir / f"{STAGE}-{ref.sha256[:12]}.blocked.report.json"
        path.write_text(json.dumps({"stage": STAGE, "blocked": True, **e.report}, indent=2, default=str))
        e.report_uri = str(path)
        _run_logger().error("%s\n%s", e.report.get("table", ""), e)
        raise
    _run_logger().info("%s", outcome.report["table"])
    return finish_stage(STAGE, len(records), outcome, stage_dir)


def _run_logger():
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context (called with .fn)
        return log


# --------------------------------------------------------------------------------------------- after the split


def check_splits(splits: Splits, cfg: ValidateConfig) -> dict[str, Any]:
    """Check the contract's ``split_sizes`` rules on the split sizes (a one-row table, through GX).

    Returns the report (``rules``, ``table``); raises :class:`ContractViolation` when a ``block`` rule fails.
    """
    contract = load_contract(cfg.contract, cfg.contracts_dir)
    rules = [r for r in contract.rules if isinstance(r, SplitSizesRule)]
    sizes = {"train": splits.train.rows, "val": splits.val.rows, "test": splits.test.rows}
    total = max(sum(sizes.values()), 1)
    report: dict[str, Any] = {
        "contract": {"name": contract.contract, "path": contract.path, "task": contract.task},
        "splits": sizes,
        "rules": [],
    }
    if rules:
        run = _GxRun(None)
        E = run.ns["gx"].expectations
        frame = pd.DataFrame(
            [
                {
                    "id": "splits",
                    **{f"{s}_rows": n for s, n in sizes.items()},
                    **{f"{s}_fraction": n / total for s, n in sizes.items()},
                }
            ]
        )
        exps, checks = [], []
        for r in rules:
            for split in ("val", "test"):
                b: SplitBounds = getattr(r, split)
                meta = {"rule": r.key, "severity": r.severity, "split": split}
                exps.append(
                    E.ExpectColumnValuesToBeBetween(
                        column=f"{split}_rows",
                        min_value=b.min_rows,
                        max_value=b.max_rows,
                        description=r.description,
                        meta={**meta, "what": "rows"},
                    )
                )
                exps.append(
                    E.ExpectColumnValuesToBeBetween(
                        column=f"{split}_fraction",
                        min_value=b.min_fraction,
                        max_value=b.max_fraction,
                        description=r.description,
                        meta={**meta, "what": "fraction"},
                    )
                )
                checks.append((r, split, b))
        result = run.run(f"{contract.contract}-splits", exps, frame)
        ok = {
            (
                x.expectation_config.meta["rule"],
                x.expectation_config.meta["split"],
                x.expectation_config.meta["what"],
            ): bool(x.success)
            for x in result.results
        }
        for r, split, b in checks:
            passed = ok[(r.key, split, "rows")] and ok[(r.key, split, "fraction")]
            threshold = f"≥ {b.min_rows} rows" if b.max_rows is None else f"{b.min_rows}–{b.max_rows} rows"
            if (b.min_fraction, b.max_fraction) != (0.0, 1.0):
                threshold += f", {b.min_fraction:.0%}–{b.max_fraction:.0%} of all"
            report["rules"].append(
                {
                    "rule": f"{r.key}.{split}",
                    "type": r.rule,
                    "severity": r.severity,
                    "description": r.description,
                    "observed": f"{sizes[split]} rows ({sizes[split] / total:.1%})",
                    "threshold": threshold,
                    "passed": passed,
                    "rows_affected": 0 if passed else sizes[split],
                    "example_ids": [],
                }
            )
            if not passed and r.severity == "warn":
                log.warning("contract %s: split rule %s.%s failed (warn)", contract.contract, r.key, split)
        report["gx_validation_results"] = run.results
    report["table"] = format_rules_table(report)
    blocked = [r for r in report["rules"] if not r["passed"] and r["severity"] == "block"]
    report["blocked"] = [r["rule"] for r in blocked]
    if blocked:
        raise ContractViolation(_block_message(contract, blocked), report)
    return report


@task(name="validate_splits", cache_policy=VALIDATE_CACHE, persist_result=True)
def validate_splits_task(splits: Splits, cfg: ValidateConfig, out_dir: str | None = None) -> dict[str, Any]:
    """Prefect wrapper of :func:`check_splits`; the report is written (beside the split report) before raising."""
    folder = Path(out_dir) / STAGE if out_dir else Path(splits.report_uri).parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"splits-{splits.train.sha256[:12]}.report.json"
    try:
        report = check_splits(splits, cfg)
    except ContractViolation as e:
        path.write_text(json.dumps({"stage": "validate_splits", **e.report}, indent=2, default=str))
        e.report_uri = str(path)
        raise
    path.write_text(json.dumps({"stage": "validate_splits", **report}, indent=2, default=str))
    report["report_uri"] = str(path)
    _run_logger().info("%s", report["table"])
    return report
