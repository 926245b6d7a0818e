"""The validate stage's report: the rules table as text and Markdown, the blocking message, tracking artifacts."""

from pathlib import Path
from typing import Any

import pandas as pd


def status(passed: bool, severity: str) -> str:
    """A rules-table row's result column."""
    if passed:
        return "pass"
    return {"quarantine": "fail: quarantined", "block": "FAIL: BLOCKS", "warn": "fail: warning"}[severity]


def format_rules_table(report: dict[str, Any]) -> str:
    """The rules table as fixed-width text (what the CLI prints and the flow logs)."""
    rows = report.get("rules", [])
    head = ("rule", "severity", "observed", "threshold", "result", "rows")
    body = [
        (r["rule"], r["severity"], r["observed"], r["threshold"], status(r["passed"], r["severity"]))
        + (str(r["rows_affected"]),)
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

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
        cells = [r["rule"], r["severity"], r["observed"], r["threshold"], status(r["passed"], r["severity"])]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + f" | {r['rows_affected']} |")
    return "\n".join(lines)


def block_message(contract, failed: list[dict[str, Any]]) -> str:
    """One paragraph naming the contract, each failed ``block`` rule, observed vs threshold and example ids."""
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


def jsonable(v):
    """A derived-column cell as a plain JSON value (NaN → None, numpy scalars → Python)."""
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
