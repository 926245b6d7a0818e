"""``loraflow review export|import``, ``loraflow approve`` and ``loraflow rollback``: people in the loop.

``review export RUN_ID`` writes a blind A/B sheet (no model names; the key stays in the run's artifacts);
``review import SHEET`` validates every cell, unblinds and logs ``review.*`` metrics to that run. ``approve``
moves ``champion`` to a version (or ``--reject`` tags why not); ``rollback`` moves it back to the previous one.
"""

from pathlib import Path
from typing import Annotated

import typer

review_app = typer.Typer(help="Blind A/B human review of a run's test predictions.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@review_app.command("export")
def export_command(
    run_id: Annotated[str, typer.Argument(help="The MLflow run whose test predictions are reviewed.")],
    rows: Annotated[int, typer.Option("--rows", help="Test rows sampled into the sheet.")] = 50,
    out: Annotated[Path, typer.Option("--out", help="Sheet to write (.csv).")] = Path("review-sheet.csv"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and the side shuffle.")] = 0,
) -> None:
    """Write a blind A/B scorecard sheet: candidate vs champion (or the best prompt baseline), sides shuffled."""
    from tasks.core import StageError
    from tasks.review import ReviewConfig, export_sheet

    try:
        res = export_sheet(run_id, out, ReviewConfig(rows=rows, seed=seed))
    except StageError as e:
        _fail(str(e))
    typer.echo(f"wrote {res['rows']} items to {res['path']} (sheet {res['sheet']}; the key is in run {run_id})")


@review_app.command("import")
def import_command(
    sheet: Annotated[Path, typer.Argument(help="A filled sheet written by `loraflow review export`.")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who filled it (one sheet per reviewer).")] = "reviewer",
) -> None:
    """Validate every cell, unblind, and log review.win_rate, its interval and per-criterion means to the run."""
    from tasks.core import StageError
    from tasks.review import import_sheet

    try:
        res = import_sheet(sheet, reviewer)
    except StageError as e:
        _fail(str(e))
    if not res["changed"]:
        typer.echo(f"{sheet}: already imported for {reviewer} in run {res['run_id']}; nothing changed")
        return
    for k, v in res["metrics"].items():
        typer.echo(f"  {k} = {v:.3f}")
    typer.echo(f"  logged to MLflow run {res['run_id']}")


def approve_command(
    model_version: Annotated[str, typer.Argument(help="MODEL/VERSION, e.g. loraflow-demo/3.")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who decides.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the version's tags).")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject: tag the reason, leave champion.")] = False,
) -> None:
    """Approve a version (champion moves to it) or --reject it (reason tagged, champion stays)."""
    from tasks.approval import decide
    from tasks.approval_gate import expire_pending
    from tasks.core import StageError

    model, _, version = model_version.rpartition("/")
    if not model or not version:
        _fail(f"{model_version!r}: expected MODEL/VERSION.")
    try:
        for late in expire_pending(model):  # suspended runs nobody resumed in time: the server failed them
            typer.echo(f"{model}/{late}: no decision in the Prefect form before its deadline; tagged approval=timeout")
        res = decide(model, version, reviewer, reason, approve=not reject)
    except StageError as e:
        _fail(str(e))
    typer.echo(f"{model}/{version} {res['decision']} by {reviewer} (champion was {res['previous_champion']})")


def rollback_command(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    to: Annotated[str | None, typer.Option("--to", help="Version to restore (default: the previous champion).")] = None,
    by: Annotated[str, typer.Option("--by", help="Who rolls back.")] = "unknown",
    reason: Annotated[str, typer.Option("--reason", help="Why.")] = "rollback",
) -> None:
    """Move champion back to the previous champion (or --to VERSION) if its base model is in the cache."""
    from tasks.approval import rollback
    from tasks.core import StageError

    try:
        res = rollback(model, by, reason, to=to)
    except StageError as e:
        _fail(str(e))
    typer.echo(f"{model}: champion is version {res['version']} again (was {res['previous_champion']})")
