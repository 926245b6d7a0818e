"""``loraflow dedup IN OUT [--report FILE] [--threshold T]``: remove exact and near duplicates from a file."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def command(
    input: Annotated[Path, typer.Argument(help="Records: chat, Alpaca or prompt/completion JSONL, CSV or Parquet.")],
    output: Annotated[Path, typer.Argument(help="The kept records, chat-format JSONL (input order).")],
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write the report as JSON: counts by reason, cluster-size histogram, largest clusters (ids "
            "only) and one line per dropped record (id, reason, kept_id, similarity). No text.",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.01,
            max=1.0,
            help="Verified similarity at or above which two records are near duplicates (default 0.75; "
            "higher removes less).",
        ),
    ] = None,
) -> None:
    """Remove exact and near duplicates (MinHash + LSH, verified) from records in any of the three formats."""
    from tasks.core import StageError
    from tasks.dedup import DedupConfig, deduplicate
    from tasks.ingest import load_file

    try:
        cfg = DedupConfig() if threshold is None else DedupConfig(threshold=threshold)
        loaded = load_file(input)
        records = loaded.kept.reset_index(drop=True)
        outcome = deduplicate(records, cfg)
    except StageError as e:
        _fail(str(e))
        return

    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for rec in outcome.kept.to_dict("records"):
            row = {k: rec[k] for k in ("messages", "id", "source", "created_at", "meta")}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    q = outcome.quarantined
    by_reason = {str(k): int(v) for k, v in q["reason"].value_counts().items()} if len(q) else {}
    read_bad = loaded.quarantined
    counts = {
        "rows_in": len(records) + len(read_bad),
        "kept": len(outcome.kept),
        "quarantined": len(q),
        "quarantined_at_read": len(read_bad),
        **{f"quarantined_{k}": v for k, v in sorted(by_reason.items())},
    }
    if report is not None:
        dropped = [
            {"id": i, "reason": r, **json.loads(d)} for i, r, d in zip(q["id"], q["reason"], q["detail"], strict=True)
        ]
        full = {
            "stage": "dedup",
            "input": str(input),
            "output": str(output),
            "counts": counts,
            **outcome.report,
            "metrics": outcome.metrics,
            "dropped": dropped,
        }
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items())) or "none"
    hist = outcome.report.get("cluster_size_histogram", {})
    print(
        f"dedup: {counts['rows_in']} records in, {counts['kept']} written to {output}, {len(q)} removed "
        f"({reasons}), {len(read_bad)} unreadable; clusters by size: "
        + (", ".join(f"{k}:{v}" for k, v in hist.items()) or "none"),
        file=sys.stderr,
    )
