"""``loraflow scrub IN OUT [--spans S.jsonl] [--report R.json] [--config C.yaml]``: PII-scrub a file of records."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def load_pii_config(path: Path | None):
    """A PiiConfig from YAML: either a retrain config (its ``pii:`` section) or the PII section alone."""
    import yaml
    from pydantic import ValidationError

    from tasks.core import StageError
    from tasks.pii import PiiConfig

    if path is None:
        return PiiConfig()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise StageError(f"PII config {path} cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise StageError(f"PII config {path} must be a mapping (a retrain config or its `pii:` section).")
    section = raw.get("pii", {} if any(k in raw for k in ("data", "train", "name")) else raw) or {}
    try:
        return PiiConfig.model_validate(section)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise StageError(f"PII config {path} is invalid: {problems}") from e


def _input_index(meta, fmt_is_table: bool, fallback: int) -> int:
    """0-based index of the record in the input: its line minus one (JSONL), its data row (CSV/Parquet)."""
    line = meta.get("line") if isinstance(meta, dict) else None
    if not isinstance(line, int):
        return fallback
    return line - 2 if fmt_is_table else line - 1


def _write_spans(path: Path, found_spans: dict, metas: list, is_table: bool) -> None:
    """One JSON line per entity: where it is (input line, message, offsets) and its type, never its text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for (row, j), found in sorted(found_spans.items()):
            line = _input_index(metas[row], is_table, row)
            for s in found:
                span = {"line": line, "message": j, "start": s.start, "end": s.end, "entity_type": s.entity_type,
                        "score": s.score}  # fmt: skip
                f.write(json.dumps(span) + "\n")


def _write_records(path: Path, kept) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in kept.to_dict("records"):
            out = {k: rec[k] for k in ("messages", "id", "source", "created_at", "meta")}
            f.write(json.dumps(out, ensure_ascii=False) + "\n")


def _reason_counts(prefix: str, quarantined) -> dict[str, int]:
    if not len(quarantined):
        return {}
    return {f"{prefix}_{k}": int(v) for k, v in quarantined["reason"].value_counts().items()}


def _counts(parsed_rows: int, read_quarantine, outcome) -> dict[str, int]:
    """The ledger: every input row was read and kept, quarantined at read, or quarantined by the scrubber."""
    return {
        "rows_in": parsed_rows + len(read_quarantine),
        "kept": len(outcome.kept),
        "quarantined_at_read": len(read_quarantine),
        "quarantined": len(outcome.quarantined),
        **_reason_counts("quarantined", outcome.quarantined),
        **_reason_counts("quarantined_at_read", read_quarantine),
    }


def command(
    input: Annotated[Path, typer.Argument(help="Records: chat, Alpaca or prompt/completion JSONL, CSV or Parquet.")],
    output: Annotated[Path, typer.Argument(help="Scrubbed records, chat-format JSONL.")],
    spans: Annotated[
        Path | None,
        typer.Option(
            "--spans",
            help='One JSON line per detected entity: {"line", "message", "start", "end", "entity_type", '
            '"score"}, offsets into the original message text, never the text itself.',
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the stage report (counts only, no values) as JSON.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML with the PII settings (a retrain config's `pii:` section or just it)."),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="CSV/Parquet: column holding the user turn (default text).")
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", help="CSV/Parquet: column holding the assistant turn (default label)."),
    ] = None,
) -> None:
    """PII-scrub records (any of the three formats); --spans writes offsets and types, never raw text."""
    from tasks.core import StageError
    from tasks.ingest import load_file
    from tasks.pii import scrub_with_spans

    try:
        cfg = load_pii_config(config)
        columns = None
        if text_column or label_column:
            from tasks.ingest import ColumnMap

            columns = ColumnMap(text=text_column or "text", label=label_column or "label")
        loaded = load_file(input, columns=columns)
        records = loaded.kept.reset_index(drop=True)
        is_table = input.suffix.lower() in (".csv", ".parquet", ".tsv")
        outcome, found_spans = scrub_with_spans(records, cfg)
    except StageError as e:
        _fail(str(e))
        return

    if spans is not None:
        _write_spans(spans, found_spans, list(records["meta"]), is_table)
    _write_records(output, outcome.kept)
    counts = _counts(len(records), loaded.quarantined, outcome)
    full = {"stage": "pii", "input": str(input), "output": str(output), "counts": counts, **outcome.report}
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(full, indent=2, sort_keys=True))
    by_type = ", ".join(f"{k}={v}" for k, v in outcome.report.get("entities_by_type", {}).items()) or "none"
    print(
        f"scrub: {counts['rows_in']} records in, {counts['kept']} written to {output}, "
        f"{counts['quarantined'] + counts['quarantined_at_read']} quarantined; "
        f"{outcome.report.get('entities_found', 0)} entities ({by_type}) in "
        f"{outcome.report.get('records_touched', 0)} records",
        file=sys.stderr,
    )
