"""The validate stage: derived columns → GX suites by phase → quarantine, report, block; and its Prefect tasks.

Rules run in phases: per-row rules over every record, then (if a ``min_rows_per_class`` rule quarantines) the
class-size rule over the rows that survived, then the dataset-level rules over what would be trained on. The
split-size rule runs separately after the split (:func:`check_splits`).
"""

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from pydantic import Field

from tasks.caching import DATA_STAGE_CACHE
from tasks.core import (
    DatasetRef,
    StageOutcome,
    StageResult,
    StrictModel,
    atomic_write_text,
    empty_quarantine,
    finish_stage,
    quarantine_rows,
    read_records,
)
from tasks.pii import PiiConfig
from tasks.progress import progress
from tasks.runner import DaskConfig
from tasks.split import Splits
from tasks.validate.contract import Contract, contract_path, load_contract
from tasks.validate.dataset_rules import MinRowsRule, SplitSizesRule
from tasks.validate.derived import Derived
from tasks.validate.errors import STAGE, ContractError, ContractViolation, resolve_path
from tasks.validate.gx import GxRun
from tasks.validate.report import block_message, format_rules_table, jsonable, rules_markdown
from tasks.validate.rules import BaseRule

log = logging.getLogger("loraflow.validate")


class ValidateConfig(StrictModel):
    """Which data contract the validate stage checks, and how."""

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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename): a reader never sees half a report."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _rule_row(rule: BaseRule, contract: Contract, phase: int, passed: bool, **summary) -> dict[str, Any]:
    return {
        "rule": rule.key,
        "type": rule.rule,
        "severity": rule.severity,
        "description": rule.description,
        "threshold": rule.threshold(contract),
        "passed": passed,
        "phase": phase,
        **summary,
    }


def derive_table(d: Derived, contract: Contract, rules: list[BaseRule], ns) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The GX table (id + each rule's derived column) and each rule's expectation, by rule name."""
    columns: dict[str, list] = {"id": d.ids}
    expectations = {}
    for r in progress(rules, desc="validate.columns", unit="rule"):
        kw = {"description": r.description, "meta": {"rule": r.key, "severity": r.severity}}
        values, expectations[r.key] = r.compile(d, contract, ns, kw)
        if values is not None:
            columns[r.column] = values
    table = pd.DataFrame(columns)
    for r in rules:
        if r.numeric:
            table[r.column] = pd.to_numeric(table[r.column], errors="coerce")
    return table, expectations


class _Phases:
    """Runs the rules phase by phase over the rows still alive; collects table rows and quarantine reasons."""

    def __init__(self, run: GxRun, contract: Contract, cfg: ValidateConfig, table: pd.DataFrame, expectations):
        self.run, self.contract, self.cfg = run, contract, cfg
        self.table, self.expectations = table, expectations
        self.rows: list[dict[str, Any]] = []
        self.reasons: dict[int, list[str]] = {}

    def all(self, rules: list[BaseRule]) -> None:
        alive = pd.Series(True, index=self.table.index)
        for phase in progress((1, 2, 3), desc="validate.gx", unit="phase"):
            in_phase = [r for r in rules if r.phase == phase]
            if in_phase:
                self.one(phase, in_phase, self.table[alive].reset_index(drop=False))
            if phase < 3:
                for pos in self.reasons:
                    alive.iloc[pos] = False

    def one(self, phase: int, in_phase: list[BaseRule], frame: pd.DataFrame) -> None:
        """One GX suite over ``frame`` (its ``index`` column keeps each row's position in the records)."""
        if frame.empty and phase > 1:
            # Nothing left to judge: only the row count means something (a ratio or a percentile of no rows
            # does not), so the other dataset rules are reported as not checked.
            for r in in_phase:
                if not isinstance(r, MinRowsRule):
                    self.rows.append(
                        _rule_row(r, self.contract, phase, True, observed="not checked: no rows left")
                        | {"rows_affected": 0, "example_ids": []}
                    )
            in_phase = [r for r in in_phase if isinstance(r, MinRowsRule)]
            if not in_phase:
                return
        for r in in_phase:
            r.prepare(frame)
        result = self.run.run(
            f"{self.contract.contract}-phase{phase}", [self.expectations[r.key] for r in in_phase], frame
        )
        by_rule = {res.expectation_config.meta["rule"]: res for res in result.results}
        for r in in_phase:
            self._judge(r, by_rule[r.key], frame, phase)

    def _judge(self, r: BaseRule, res, frame: pd.DataFrame, phase: int) -> None:
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise RuntimeError(
                f"Great Expectations could not evaluate rule {r.key!r}: {res.exception_info.get('exception_message')}"
            )
        s = r.summarise(res, frame.get(r.column), frame["id"])
        passed = bool(res.success)
        row = _rule_row(
            r,
            self.contract,
            phase,
            passed,
            observed=s.observed,
            rows_affected=s.rows_affected,
            example_ids=s.examples[: self.cfg.max_example_ids],
        )
        self.rows.append(row)
        if not passed and r.severity == "warn":
            log.warning(
                "contract %s: rule %s failed (warn): observed %s, threshold %s",
                self.contract.contract,
                r.key,
                s.observed,
                row["threshold"],
            )
        if not passed and r.severity == "quarantine" and s.failing:
            for pos in frame.loc[frame["id"].isin(set(s.failing)), "index"]:
                self.reasons.setdefault(int(pos), []).append(r.key)


def quarantine(
    records: pd.DataFrame, table: pd.DataFrame, rules: list[BaseRule], reasons: dict[int, list[str]], name: str
) -> pd.DataFrame:
    """Quarantine rows: reason = the first failing rule (contract order); detail = every failing rule and the
    derived values that made it fail (counts and codes only, never text). A row failed by a rule that withholds
    records (residual PII) is stored without its record."""
    by_key = {r.key: r for r in rules}
    order = {r.key: i for i, r in enumerate(rules)}
    positions = sorted(reasons)
    parts = []
    for with_record in (True, False):
        pos = [p for p in positions if any(by_key[n].withholds_record for n in reasons[p]) != with_record]
        if not pos:
            continue
        names = [sorted(reasons[p], key=order.__getitem__) for p in pos]
        details = [
            {
                "contract": name,
                "rules": ns,
                **{
                    n: jsonable(table.at[p, by_key[n].column])
                    for n in ns
                    if by_key[n].column in table and not by_key[n].free_text_value
                },
            }
            for p, ns in zip(pos, names, strict=True)
        ]
        parts.append(quarantine_rows(STAGE, records.iloc[pos], [n[0] for n in names], details, with_record))
    return pd.concat(parts, ignore_index=True) if parts else empty_quarantine()


def _artifacts(run: GxRun, artifacts_dir: Path | None, docs_dir: Path | None, clock: dict) -> dict[str, str]:
    """GX's validation results (JSON) and Data Docs (HTML) as files; their paths by name."""
    out: dict[str, str] = {}
    if artifacts_dir is None:
        return out
    results_path = artifacts_dir / "gx_validation_results.json"
    write_json(results_path, run.results)
    out["gx_validation_results"] = str(results_path)
    clock["gx"] = time.perf_counter()
    docs = run.build_docs()
    if docs:
        out["data_docs"] = str(docs_dir)
        out["data_docs_index"] = docs
    return out


def _report(contract: Contract, rows: list[dict], counts: dict[str, int], artifacts, clock) -> dict[str, Any]:
    end = time.perf_counter()
    gx_end = clock.get("gx", end)
    blocked = [r for r in rows if not r["passed"] and r["severity"] == "block"]
    report = {
        "contract": {"name": contract.contract, "path": contract.path, "task": contract.task},
        "timings": {
            "derived_columns_s": round(clock["derived"] - clock["start"], 3),
            "great_expectations_s": round(gx_end - clock["derived"], 3),
            "data_docs_s": round(end - gx_end, 3),
        },
        "summary": counts,
        "rules": rows,
        "artifacts": artifacts,
        "blocked": [r["rule"] for r in blocked],
        "warnings": [r["rule"] for r in rows if not r["passed"] and r["severity"] == "warn"],
    }
    report["table"] = format_rules_table(report)
    report["table_markdown"] = rules_markdown(report)
    report["metrics"] = {
        "rules_passed": float(sum(r["passed"] for r in rows)),
        "rules_failed": float(sum(not r["passed"] for r in rows)),
        "rules_blocking": float(len(blocked)),
    }
    return report


def _docs_dir(artifacts_dir: Path | None, data_docs: bool) -> Path | None:
    if artifacts_dir is None:
        return None
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = artifacts_dir / "data_docs" if data_docs else None
    if docs_dir is not None and docs_dir.exists():
        shutil.rmtree(docs_dir)  # one run's Data Docs, not every earlier run's on the same data
    return docs_dir


def validate(
    records: pd.DataFrame,
    cfg: ValidateConfig,
    tokenizer: str | None = None,
    artifacts_dir: str | Path | None = None,
    pii: PiiConfig | None = None,
    runner: DaskConfig | None = None,
) -> StageOutcome:
    """Check ``records`` against the contract named in ``cfg``; quarantine, warn or block rule by rule.

    Args:
        records: canonical records (id, messages, source, created_at, meta).
        cfg: the stage config (which contract, GX options).
        tokenizer: base model folder or id whose tokenizer counts tokens (needed by token-length rules).
        artifacts_dir: where GX's validation results (JSON) and Data Docs (HTML) go; None writes no files.
        pii: the PII stage's config, whose engine the ``no_residual_pii`` rule uses (None: its defaults).
        runner: where that rule's PII scan runs (a Dask config: in shards on Dask; None: here).

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
    docs_dir = _docs_dir(artifacts_dir, cfg.data_docs)

    clock = {"start": time.perf_counter()}
    records = records.reset_index(drop=True)
    token_rules = [r.key for r in rules if r.rule in ("token_length", "length_percentiles")]
    d = Derived(
        records,
        contract.label_from,
        tokenizer,
        cfg.token_batch_size,
        pii,
        token_rules=f"Data contract {contract.path}: rule(s) {', '.join(token_rules)}",
        runner=runner,
    )
    run = GxRun(docs_dir)
    table, expectations = derive_table(d, contract, rules, run.ns)
    clock["derived"] = time.perf_counter()
    phases = _Phases(run, contract, cfg, table, expectations)
    phases.all(rules)

    quarantined = quarantine(records, table, rules, phases.reasons, contract.contract)
    kept = records.drop(index=sorted(phases.reasons))
    artifacts = _artifacts(run, artifacts_dir, docs_dir, clock)
    counts = {"rows_in": len(records), "kept": len(kept), "quarantined": len(quarantined)}
    report = _report(contract, phases.rows, counts, artifacts, clock)
    report["derived_stats"] = d.stats
    if artifacts_dir is not None:
        artifacts["rules"] = str(artifacts_dir / "rules.json")
        write_json(artifacts_dir / "rules.json", report)
    if report["blocked"]:
        failed = [r for r in phases.rows if r["rule"] in report["blocked"]]
        raise ContractViolation(block_message(contract, failed), report)
    return StageOutcome(kept=kept, quarantined=quarantined, report=report, metrics=report["metrics"])


def contract_fingerprint(cfg: ValidateConfig, tokenizer: str | None = None) -> str:
    """sha256 over the contract file, the files it names (labels, schema) and the tokenizer's files.

    Part of the validate tasks' cache key: editing a contract (or its labels file) re-runs validation even though
    the data did not change.
    """
    h = hashlib.sha256()
    files = [contract_path(cfg.contract, cfg.contracts_dir)]
    try:
        c = load_contract(cfg.contract, cfg.contracts_dir)
        files += [resolve_path(f) for r in c.rules for f in (getattr(r, "labels_file", None),) if f]
        files += [resolve_path(f) for r in c.rules for f in (getattr(r, "schema_file", None),) if f]
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


def _run_logger():
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context (called with .fn)
        return log


# `runner` says where the PII scan runs, never the result: DATA_STAGE_CACHE leaves it out of the key.
@task(name="validate", cache_policy=VALIDATE_CACHE, persist_result=True)
def validate_task(
    ref: DatasetRef,
    cfg: ValidateConfig,
    tokenizer: str | None,
    out_dir: str,
    pii: PiiConfig | None = None,
    runner: DaskConfig | None = None,
) -> StageResult:
    """Prefect wrapper: validate ``ref``; on a blocking rule, write the report first, then fail the task."""
    records = read_records(ref)
    stage_dir = Path(out_dir) / STAGE
    try:
        outcome = validate(records, cfg, tokenizer, Path(out_dir) / STAGE / f"gx-{ref.sha256[:12]}", pii, runner)
    except ContractViolation as e:
        path = stage_dir / f"{STAGE}-{ref.sha256[:12]}.blocked.report.json"
        write_json(path, {"stage": STAGE, "blocked": True, **e.report})
        e.report_uri = str(path)
        _run_logger().error("%s\n%s", e.report.get("table", ""), e)
        raise
    _run_logger().info("%s", outcome.report["table"])
    return finish_stage(STAGE, len(records), outcome, stage_dir)


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
        run = GxRun(None)
        row = {"id": "splits", **{f"{s}_rows": n for s, n in sizes.items()}}
        frame = pd.DataFrame([row | {f"{s}_fraction": n / total for s, n in sizes.items()}])
        result = run.run(f"{contract.contract}-splits", [e for r in rules for e in r.expectations(run.ns)], frame)
        meta = [x.expectation_config.meta for x in result.results]
        ok = {(m["rule"], m["split"], m["what"]): bool(x.success) for m, x in zip(meta, result.results, strict=True)}
        for r in rules:
            for row in r.rows(ok, sizes):
                report["rules"].append(row)
                if not row["passed"] and r.severity == "warn":
                    log.warning("contract %s: split rule %s failed (warn)", contract.contract, row["rule"])
        report["gx_validation_results"] = run.results
    report["table"] = format_rules_table(report)
    blocked = [r for r in report["rules"] if not r["passed"] and r["severity"] == "block"]
    report["blocked"] = [r["rule"] for r in blocked]
    if blocked:
        raise ContractViolation(block_message(contract, blocked), report)
    return report


@task(name="validate_splits", cache_policy=VALIDATE_CACHE, persist_result=True)
def validate_splits_task(splits: Splits, cfg: ValidateConfig, out_dir: str | None = None) -> dict[str, Any]:
    """Prefect wrapper of :func:`check_splits`; the report is written (beside the split report) before raising."""
    folder = Path(out_dir) / STAGE if out_dir else Path(splits.report_uri).parent
    path = folder / f"splits-{splits.train.sha256[:12]}.report.json"
    try:
        report = check_splits(splits, cfg)
    except ContractViolation as e:
        write_json(path, {"stage": "validate_splits", **e.report})
        e.report_uri = str(path)
        raise
    write_json(path, {"stage": "validate_splits", **report})
    report["report_uri"] = str(path)
    _run_logger().info("%s", report["table"])
    return report
