"""``loraflow feedback import FILE`` and ``loraflow feedback add``: put production feedback into the store."""

import json
from pathlib import Path
from typing import Annotated

import typer

URL_HELP = "Feedback store URL (default: SQLite under the loraflow home; postgresql+psycopg://... for PostgreSQL)."


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSONL: one feedback row per line (request_messages, model_version, "
            "response, rating, corrected_response, flag_reason, created_at)."
        ),
    ],
    url: Annotated[str | None, typer.Option("--url", help=URL_HELP)] = None,
    known_version: Annotated[
        list[str] | None,
        typer.Option("--known-version", help="Declare a model version that served production (repeatable)."),
    ] = None,
) -> None:
    """Import a JSONL file of production feedback into the store (re-importing the same rows is a no-op)."""
    from tasks import feedback as fb
    from tasks.core import StageError

    try:
        if known_version:
            fb.register_model_versions(list(known_version), url)
        report = fb.import_file(file, url)
    except StageError as e:
        _fail(str(e))
        return
    typer.echo(
        f"{report['file']}: {report['lines']} lines, {report['inserted']} stored, "
        f"{report['already_stored']} already stored, {len(report['rejected'])} rejected → {fb.safe_url(url)}"
    )
    for r in report["rejected"][:20]:
        typer.echo(f"  line {r['line']}: {r['reason']}", err=True)
    if len(report["rejected"]) > 20:
        typer.echo(f"  ... and {len(report['rejected']) - 20} more", err=True)


def add_command(
    response: Annotated[str, typer.Option("--response", help="The model's answer.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="The user's message.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="The system prompt the model was given.")] = None,
    messages: Annotated[
        str | None, typer.Option("--messages", help="The whole request as chat JSON (instead of --system/--prompt).")
    ] = None,
    model_version: Annotated[str | None, typer.Option("--model-version", help="Model version that answered.")] = None,
    rating: Annotated[str | None, typer.Option("--rating", help="up / down, or 1-5 stars.")] = None,
    corrected: Annotated[str | None, typer.Option("--corrected", help="A human-corrected answer.")] = None,
    flag: Annotated[str | None, typer.Option("--flag", help="Flag reason category (e.g. harmful, wrong).")] = None,
    created_at: Annotated[
        str | None, typer.Option("--created-at", help="ISO timestamp of the answer (default: now, UTC).")
    ] = None,
    url: Annotated[str | None, typer.Option("--url", help=URL_HELP)] = None,
) -> None:
    """Add one feedback row to the store."""
    from tasks import feedback as fb
    from tasks.core import StageError

    if messages is not None:
        request: list | str = messages
        try:
            json.loads(messages)
        except json.JSONDecodeError:
            _fail("--messages is not valid JSON (a list of {role, content}).")
    elif prompt is not None:
        request = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    else:
        _fail("give the request with --prompt (and optionally --system) or --messages.")
        return
    when = created_at or "now"
    if created_at and fb.parse_timestamp(created_at) is None:
        _fail(f"--created-at {created_at!r} is not an ISO timestamp (e.g. 2026-07-01T12:00:00Z).")
    try:
        fid = fb.add(request, response, model_version, rating, corrected, flag, when, url)
    except StageError as e:
        _fail(str(e))
        return
    typer.echo(f"stored feedback {fid}" if fid is not None else "identical feedback already stored")
