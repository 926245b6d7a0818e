"""Validate: a dataset's data contract, executed by Great Expectations, before any GPU minute is spent.

A contract (``data_contracts/<name>.yaml``) is a list of rules a data owner can read: each has a ``rule`` type,
a one-sentence ``description`` and a ``severity``:

* ``quarantine``: row level. Failing rows are set aside with the rule's name as their reason; the flow goes on.
* ``block``: the flow stops before training with one paragraph naming the contract, the rule, the observed
  value, the threshold and up to five example record ids.
* ``warn``: logged and reported, nothing else.

How a run works (DESIGN.md "Contracts compile to Great Expectations"), one module per concern:

1. :mod:`~tasks.validate.contract` checks the YAML against pydantic models: an unknown rule, a wrong type or a
   missing field fails at load time with the file, the line and the key.
2. :mod:`~tasks.validate.derived` computes a few *derived columns* once per record (token length with the base
   model's tokenizer, role pattern, label, JSON parse result, residual PII found by the PII stage's own engine,
   text problems, dedup's exact key). The table handed to GX holds only these columns and the record id: no
   conversation text ever reaches a GX result, Data Docs or MLflow.
3. Each rule class (:mod:`~tasks.validate.rules`, :mod:`~tasks.validate.dataset_rules`) owns its derived
   column, its GX 1.x expectation, its threshold text and its summary. Where GX has no fitting expectation
   there is a custom one (:mod:`~tasks.validate.gx`: chat role order, class-imbalance ratio, a JSON-safe
   quantile check). GX's ``unexpected_index_list`` keyed on ``id`` is what sends a row to quarantine.
4. :mod:`~tasks.validate.stage` runs the rules in phases, builds the quarantine and the report
   (:mod:`~tasks.validate.report`), writes GX's results and Data Docs, and only then raises a failed ``block``
   rule as :class:`ContractViolation` carrying the report. The rule classes are in ``RULE_CLASSES``. The split-size rule runs after the split:
   :func:`check_splits` / :func:`validate_splits_task`.
"""

from tasks.validate.contract import RULE_CLASSES, RULE_TYPES, Contract, Rule, contract_path, load_contract
from tasks.validate.derived import Derived, load_tokenizer, residual_pii, text_problems
from tasks.validate.errors import STAGE, ContractError, ContractViolation, resolve_path
from tasks.validate.gx import GxRun, gx_namespace
from tasks.validate.report import format_rules_table, rules_markdown, tracking_artifacts
from tasks.validate.rules import BaseRule, load_labels, load_schema
from tasks.validate.stage import (
    VALIDATE_CACHE,
    ValidateConfig,
    check_splits,
    contract_fingerprint,
    validate,
    validate_splits_task,
    validate_task,
)

__all__ = [
    "RULE_CLASSES",
    "RULE_TYPES",
    "STAGE",
    "VALIDATE_CACHE",
    "BaseRule",
    "Contract",
    "ContractError",
    "ContractViolation",
    "Derived",
    "GxRun",
    "Rule",
    "ValidateConfig",
    "check_splits",
    "contract_fingerprint",
    "contract_path",
    "format_rules_table",
    "gx_namespace",
    "load_contract",
    "load_labels",
    "load_schema",
    "load_tokenizer",
    "residual_pii",
    "resolve_path",
    "rules_markdown",
    "text_problems",
    "tracking_artifacts",
    "validate",
    "validate_splits_task",
    "validate_task",
]
