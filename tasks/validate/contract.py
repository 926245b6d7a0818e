"""The data contract's schema and its YAML loader: every problem reported at once, each with file, line and key."""

import os
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from tasks.core import StrictModel
from tasks.validate.dataset_rules import (
    ClassBalanceRule,
    DuplicateRateRule,
    LabelCoverageRule,
    LengthPercentilesRule,
    MinRowsPerClassRule,
    MinRowsRule,
    SplitSizesRule,
)
from tasks.validate.errors import ContractError, display_path, resolve_path
from tasks.validate.rules import (
    AssistantNotEmptyRule,
    BaseRule,
    CleanTextRule,
    JsonOutputRule,
    LabelInSetRule,
    NoResidualPiiRule,
    RequiredFieldsRule,
    RoleOrderRule,
    TokenLengthRule,
)

RULE_CLASSES = (
    RequiredFieldsRule,
    RoleOrderRule,
    AssistantNotEmptyRule,
    TokenLengthRule,
    LabelInSetRule,
    JsonOutputRule,
    NoResidualPiiRule,
    CleanTextRule,
    MinRowsRule,
    MinRowsPerClassRule,
    ClassBalanceRule,
    DuplicateRateRule,
    LengthPercentilesRule,
    LabelCoverageRule,
    SplitSizesRule,
)
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
RULE_TYPES = tuple(cls.model_fields["rule"].annotation.__args__[0] for cls in RULE_CLASSES)


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
        """The contract file as shown in messages (``<inline>`` for a contract built in code)."""
        return display_path(self._path) if self._path else "<inline>"

    def line_of(self, rule: BaseRule) -> int | None:
        """The 1-based line where ``rule`` starts in the contract file, if known."""
        return self._lines.get(rule.key)


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
    for kind in (str, bool, int, float):
        if isinstance(node, kind):
            return kind(node)
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


def _problems(data, shown: str, error: ValidationError) -> list[str]:
    """One ``file, line N, key 'k': message`` per pydantic error."""
    problems = []
    for err in error.errors():
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
    return problems


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
    shown = display_path(path)
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
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(f"Data contract {shown}: cannot be read ({type(e).__name__}).") from None
    if not isinstance(data, dict):
        raise ContractError(f"Data contract {shown}: expected a mapping with `contract`, `task` and `rules`.")
    try:
        parsed = Contract.model_validate(_plain(data))
    except ValidationError as e:
        problems = _problems(data, shown, e)
        raise ContractError(
            f"Data contract {shown} has {len(problems)} problem(s): " + "; ".join(problems) + "."
        ) from None
    parsed._path = path
    for i, raw in enumerate(data.get("rules") or []):
        if isinstance(raw, dict) and i < len(parsed.rules):
            parsed._lines[parsed.rules[i].key] = data["rules"].lc.item(i)[0] + 1
    return parsed
