"""The contract's rules. Each rule class owns everything about itself: its parameters (checked at load time), the
derived column it needs, the GX expectation it compiles to, its threshold as text and the summary of its result.

A rule's :meth:`BaseRule.compile` puts its derived column into the table handed to GX and returns its
expectation; :meth:`BaseRule.summarise` turns GX's result back into the rules-table row. This module holds the
base class and the row-level rules; the dataset-level and split rules are in :mod:`tasks.validate.dataset_rules`.
"""

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

import pandas as pd
from pydantic import Field, field_validator, model_validator

from tasks.core import StrictModel
from tasks.validate.errors import ContractError, resolve_path

Severity = Literal["quarantine", "block", "warn"]
Measure = Literal["conversation", "prompt", "completion"]
PiiPattern = Literal["email", "phone", "card_number", "iban", "us_ssn", "ip_address"]

#: The short pattern names contracts may use, as the PII stage's entity types.
PATTERN_ENTITIES: dict[str, str] = {
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "card_number": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "us_ssn": "US_SSN",
    "ip_address": "IP_ADDRESS",
}


class Summary(NamedTuple):
    """One rule's result as the rules table shows it, plus the ids a quarantine rule sets aside."""

    observed: str
    rows_affected: int
    examples: list[str]
    failing: list[str]


def failing_ids(res) -> list[str]:
    """Ids out of GX's ``unexpected_index_list`` (``[{"id": [...]}]`` with exclude_unexpected_values)."""
    out: list[str] = []
    for item in res.result.get("unexpected_index_list") or []:
        v = item.get("id")
        out.extend(v if isinstance(v, list) else [v])
    return [str(x) for x in out]


def codes_summary(values: pd.Series | None) -> str:
    """The four commonest problem codes in a column of comma-joined codes (``schema:enum@$.x`` → ``schema:enum``)."""
    counts: Counter = Counter()
    for v in values.dropna() if values is not None else []:
        for part in str(v).split(","):
            counts[part.split("@")[0] if part.startswith("schema:") else part] += 1
    return ", ".join(f"{k} {n}" for k, n in counts.most_common(4))


class BaseRule(StrictModel):
    """Fields every rule has, and the four things each rule type says about itself (see the module doc)."""

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
    #: The derived column holds numbers: None (a malformed row) becomes NaN, which GX skips.
    numeric: ClassVar[bool] = False
    #: The derived value may be free text (a label): it never goes into a quarantine detail.
    free_text_value: ClassVar[bool] = False
    #: Rows this rule fails are quarantined without their record (the record itself is the problem).
    withholds_record: ClassVar[bool] = False

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
        """The rule's name in reports, quarantine reasons and column names."""
        return self.name or self.rule

    @property
    def column(self) -> str:
        """The name of this rule's derived column in the GX table."""
        return f"{self.key}__value"

    @property
    def phase(self) -> int:
        """1: per-row rules over every record; 2: row-removing dataset rules; 3: dataset rules on what is left."""
        return 1 if self.level == "row" else 3

    def compile(self, d, contract, ns, kw: dict[str, Any]) -> tuple[list | None, Any]:
        """The rule's derived column values (None: it needs none) and its GX expectation.

        Args:
            d: the run's :class:`tasks.validate.derived.Derived` columns.
            contract: the contract the rule belongs to (for files it names).
            ns: the GX namespace from :func:`tasks.validate.gx.gx_namespace`.
            kw: ``description`` and ``meta`` every expectation carries.
        """
        raise NotImplementedError

    def threshold(self, contract) -> str:
        """What the rule accepts, as the rules table shows it."""
        raise NotImplementedError

    def prepare(self, frame: pd.DataFrame) -> None:
        """Adjust the derived column to the rows of the phase before GX runs (most rules: nothing)."""

    def summarise(self, res, col: pd.Series | None, ids: pd.Series) -> Summary:
        """Observed value, rows affected and example ids from GX's result for this rule."""
        failing = failing_ids(res)
        n_fail = int(res.result.get("unexpected_count") or 0) if self.level == "row" else 0
        return Summary(self.observed(n_fail, col, ids, failing), n_fail, failing, failing)

    def observed(self, n_fail: int, col: pd.Series | None, ids: pd.Series, failing: list[str]) -> str:
        """The observed value of a row rule (used by the default :meth:`summarise`)."""
        return f"{n_fail} rows"


class _CodeRule(BaseRule):
    """A row rule whose derived column is a problem code per row (null: fine)."""

    def expect_null(self, ns, kw):
        return ns.gx.expectations.ExpectColumnValuesToBeNull(column=self.column, **kw)

    def observed(self, n_fail, col, ids, failing) -> str:
        kinds = codes_summary(col) if n_fail else ""
        return f"{n_fail} rows" + (f" ({kinds})" if kinds else "")


class RequiredFieldsRule(_CodeRule):
    """Every record has a non-empty ``messages`` list of ``{role, content}`` objects with string values."""

    rule: Literal["required_fields"]

    def compile(self, d, contract, ns, kw):
        return d.fields_problem(), self.expect_null(ns, kw)

    def threshold(self, contract) -> str:
        return "messages: [{role, content}] text"


class RoleOrderRule(BaseRule):
    """Roles go system? → user → assistant, alternating, and the conversation ends with the assistant."""

    rule: Literal["role_order"]
    system: Literal["optional", "required", "forbidden"] = Field(
        "optional", description="Whether the conversation may / must / must not open with a system message."
    )
    max_turns: int | None = Field(
        None, ge=1, description="At most this many user→assistant exchanges (1: single-turn). None: any."
    )

    def compile(self, d, contract, ns, kw):
        return d.role_pattern(), ns.RoleOrder(column=self.column, system=self.system, max_turns=self.max_turns, **kw)

    def threshold(self, contract) -> str:
        head = {"optional": "system?", "required": "system", "forbidden": "no system"}[self.system]
        turns = "" if self.max_turns is None else f", ≤ {self.max_turns} turn(s)"
        return f"{head} (user assistant)+{turns}"

    def observed(self, n_fail, col, ids, failing) -> str:
        return f"{n_fail} rows out of order"


class AssistantNotEmptyRule(BaseRule):
    """Every assistant message holds at least ``min_chars`` non-whitespace characters."""

    rule: Literal["assistant_not_empty"]
    min_chars: int = Field(1, ge=1, description="Characters left after stripping whitespace.")
    numeric: ClassVar[bool] = True

    def compile(self, d, contract, ns, kw):
        exp = ns.gx.expectations.ExpectColumnValuesToBeBetween(column=self.column, min_value=self.min_chars, **kw)
        return d.assistant_chars(), exp

    def threshold(self, contract) -> str:
        return f"≥ {self.min_chars} non-space char"

    def observed(self, n_fail, col, ids, failing) -> str:
        return f"{n_fail} rows empty"


class TokenLengthRule(BaseRule):
    """Length in tokens of the configured base model's tokenizer lies within [min, max]."""

    rule: Literal["token_length"]
    min: int = Field(1, ge=0, description="Fewest tokens allowed.")
    max: int = Field(ge=1, description="Most tokens allowed (the training max_length).")
    measure: Measure = Field(
        "conversation",
        description="conversation: the chat-template rendering of all messages; prompt: system + user "
        "messages; completion: assistant messages.",
    )
    numeric: ClassVar[bool] = True

    @model_validator(mode="after")
    def _bounds(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self

    def compile(self, d, contract, ns, kw):
        E = ns.gx.expectations
        return d.tokens(self.measure), E.ExpectColumnValuesToBeBetween(
            column=self.column, min_value=self.min, max_value=self.max, **kw
        )

    def threshold(self, contract) -> str:
        return f"{self.min}–{self.max} tokens ({self.measure})"

    def observed(self, n_fail, col, ids, failing) -> str:
        vals = pd.to_numeric(col, errors="coerce").dropna()
        span = f"{int(vals.min())}–{int(vals.max())}" if len(vals) else "n/a"
        return f"{n_fail} rows outside; range {span}"


class LabelInSetRule(BaseRule):
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
    free_text_value: ClassVar[bool] = True

    @model_validator(mode="after")
    def _one_source(self):
        if (self.labels is None) == (self.labels_file is None):
            raise ValueError("give exactly one of `labels` (a list, or from_data) and `labels_file`")
        return self

    def compile(self, d, contract, ns, kw):
        values = d.label()
        labels = load_labels(contract, self)
        if labels is None:
            counts = Counter(values)
            labels = sorted(k for k, n in counts.items() if k and n >= self.min_label_rows)
        return values, ns.gx.expectations.ExpectColumnValuesToBeInSet(column=self.column, value_set=labels, **kw)

    def threshold(self, contract) -> str:
        if self.labels == "from_data":
            return f"labels seen ≥ {self.min_label_rows}x"
        if self.labels_file:
            return f"{len(load_labels(contract, self))} labels ({Path(self.labels_file).name})"
        return f"{len(self.labels)} labels"

    def observed(self, n_fail, col, ids, failing) -> str:
        unknown = col[ids.isin(set(failing))].nunique() if n_fail else 0
        return f"{n_fail} rows, {unknown} unknown label(s)"


class JsonOutputRule(_CodeRule):
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

    def compile(self, d, contract, ns, kw):
        return d.json_problem(load_schema(contract, self)), self.expect_null(ns, kw)

    def threshold(self, contract) -> str:
        if self.schema_file:
            return f"JSON matching {Path(self.schema_file).name}"
        return "JSON matching schema" if self.json_schema else "parses as JSON"


class NoResidualPiiRule(_CodeRule):
    """Nothing the PII stage scrubs survived it: the PII stage's own engine (names, addresses, e-mails, phones,
    cards... every entity type it is configured for) finds nothing; placeholders like <PERSON_1> pass."""

    rule: Literal["no_residual_pii"]
    patterns: list[PiiPattern] | None = Field(
        None,
        min_length=1,
        description="Narrow the check to these kinds (email, phone, card_number, iban, us_ssn, ip_address). "
        "Default: every entity type the PII stage scrubs.",
    )
    entities: list[str] | None = Field(
        None,
        min_length=1,
        description="Narrow the check to these PII-stage entity types (PERSON, STREET_ADDRESS...). Default: all.",
    )
    withholds_record: ClassVar[bool] = True

    @model_validator(mode="after")
    def _one_narrowing(self):
        if self.patterns is not None and self.entities is not None:
            raise ValueError("give at most one of `patterns` and `entities`")
        return self

    def entity_types(self) -> list[str] | None:
        """The entity types checked (None: every type the PII stage's config scrubs)."""
        if self.patterns is not None:
            return [PATTERN_ENTITIES[p] for p in self.patterns]
        return list(self.entities) if self.entities is not None else None

    def compile(self, d, contract, ns, kw):
        return d.residual_pii(self.entity_types()), self.expect_null(ns, kw)

    def threshold(self, contract) -> str:
        if self.patterns is not None:
            return "none of " + "/".join(self.patterns)
        if self.entities is not None:
            return "none of " + "/".join(self.entities)
        return "no PII the PII stage scrubs"


class CleanTextRule(_CodeRule):
    """No control characters and no mojibake (UTF-8 decoded as Latin-1 / cp1252, U+FFFD) in any message."""

    rule: Literal["clean_text"]
    control_chars: bool = Field(True, description="Flag C0/C1 control characters other than tab and newline.")
    mojibake: bool = Field(True, description="Flag text that looks mis-decoded (ftfy's badness heuristic).")

    def compile(self, d, contract, ns, kw):
        return d.text_problem(self.control_chars, self.mojibake), self.expect_null(ns, kw)

    def threshold(self, contract) -> str:
        on = (("control chars", self.control_chars), ("mojibake", self.mojibake))
        return "none of " + "/".join(x for x, flag in on if flag)


def _where(contract, rule: BaseRule) -> str:
    line = contract.line_of(rule)
    return f"{contract.path}, line {line}" if line else contract.path


def load_labels(contract, rule) -> list[str] | None:
    """The allowed labels of a ``label_in_set`` / ``label_coverage`` rule (None for ``from_data``)."""
    if rule.labels == "from_data":
        return None
    if rule.labels is not None:
        return list(rule.labels)
    path = resolve_path(rule.labels_file)
    if not path.is_file():
        raise ContractError(
            f"Data contract {_where(contract, rule)}, key 'labels_file': rule {rule.key!r} names labels file "
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
            f"Data contract {_where(contract, rule)}: labels file {rule.labels_file!r} must hold a JSON list "
            "of strings (or one label per line)."
        )
    return data


def load_schema(contract, rule: JsonOutputRule) -> dict[str, Any] | None:
    """The JSON Schema of a ``json_output`` rule (inline or from its file), or None."""
    if rule.schema_file is None:
        return rule.json_schema
    path = resolve_path(rule.schema_file)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ContractError(
            f"Data contract {_where(contract, rule)}, key 'schema_file': cannot read JSON Schema "
            f"{rule.schema_file!r} ({type(e).__name__})."
        ) from None
