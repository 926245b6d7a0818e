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
        spans.parent.mkdir(parents=True, exist_ok=True)
        metas = list(records["meta"])
        with open(spans, "w", encoding="utf-8") as f:
            for (row, j), found in sorted(found_spans.items()):
                line = _input_index(metas[row], is_table, row)
                for s in found:
                    f.write(json.dumps({"line": line, "message": j, "start": s.start, "end": s.end,
                                        "entity_type": s.entity_type, "score": s.score}) + "\n")  # fmt: skip

    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for rec in outcome.kept.to_dict("records"):
            f.write(json.dumps({"messages": rec["messages"], "id": rec["id"], "source": rec["source"],
                                "created_at": rec["created_at"], "meta": rec["meta"]}, ensure_ascii=False) + "\n")  # fmt: skip

    q = outcome.quarantined
    counts = {
        "rows_in": len(records) + len(loaded.quarantined),
        "kept": len(outcome.kept),
        "quarantined_at_read": len(loaded.quarantined),
        "quarantined": len(q),
        **{f"quarantined_{k}": int(v) for k, v in (q["reason"].value_counts().items() if len(q) else [])},
        **{
            f"quarantined_at_read_{k}": int(v)
            for k, v in (loaded.quarantined["reason"].value_counts().items() if len(loaded.quarantined) else [])
        },  # fmt: skip
    }
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
