"""``loraflow validate FILE [--contract NAME]``: check a file of records against a data contract.

Exit status: 0 when no ``block`` rule fails (rows a ``quarantine`` rule sets aside are counted, not fatal),
1 when a ``block`` rule fails, 2 when the input, the contract or the tokenizer cannot be used.
The rules table goes to stdout; the blocking message and other errors to stderr.
"""

import json
from pathlib import Path
from typing import Annotated

import typer


def _usage_error(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _column_map(spec: str | None):
    """``text=ticket_text,label=queue`` → a ColumnMap for CSV / Parquet input."""
    if not spec:
        return None
    from tasks.ingest import ColumnMap

    pairs = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            _usage_error(f"--columns expects key=column pairs separated by commas, got {item!r}")
        pairs[key.strip()] = value.strip()
    try:
        return ColumnMap(**pairs)
    except Exception as e:  # pydantic's message names the bad key
        _usage_error(f"--columns {spec!r}: {str(e).splitlines()[-1].strip() if str(e) else e}")


def _default_tokenizer() -> str | None:
    """The prepared default base model in the model cache, if there is one (nothing is downloaded here)."""
    from tasks.base_model import DEFAULT_BASE_MODEL
    from tasks.home import model_cache

    folder = model_cache() / DEFAULT_BASE_MODEL
    return str(folder) if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists() else None


def _show(result: dict, unreadable, report: Path | None) -> None:
    """The rules table, the unreadable input lines and artifact paths on stdout; the JSON report if asked."""
    typer.echo(result["table"])
    if len(unreadable):
        reasons = unreadable["reason"].value_counts().to_dict()
        typer.echo(
            f"{len(unreadable)} unreadable line(s) set aside before validation: "
            + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        )
    for name, path in (result.get("artifacts") or {}).items():
        typer.echo(f"{name}: {path}")
    if report is not None:
        out = {k: v for k, v in result.items() if k != "table"}
        out["unreadable_lines"] = len(unreadable)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(out, indent=2, default=str))


def command(
    file: Annotated[
        Path,
        typer.Argument(help="Records: chat, Alpaca or prompt/completion JSONL, CSV or Parquet.", show_default=False),
    ],
    contract: Annotated[
        str | None,
        typer.Option("--contract", "-c", help="Contract name in data_contracts/ (demo, banking77...) or a YAML path."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Model folder (or hub id) whose tokenizer counts tokens. Default: the prepared SmolLM2 in the "
            "model cache.",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Column map for CSV / Parquet, e.g. text=ticket_text,label=queue."),
    ] = None,
    artifacts: Annotated[
        Path | None,
        typer.Option("--artifacts", help="Write GX's validation results (JSON), Data Docs (HTML) and rules.json here."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the rules table and counts as JSON (no record text).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Retrain config whose `pii` section the residual-PII rule runs with (allow list, entity types). "
            "Default: the PII stage's defaults.",
        ),
    ] = None,
) -> None:
    """Check records against a data contract: exit 0 clean, 1 when a block rule fails, 2 for unusable input."""
    from flows.config import load_stage_config
    from tasks.core import StageError
    from tasks.ingest import load_file
    from tasks.validate import ContractViolation, ValidateConfig, load_contract, validate

    cfg = ValidateConfig(contract=contract or ValidateConfig().contract, data_docs=artifacts is not None)
    try:
        loaded_contract = load_contract(cfg.contract, cfg.contracts_dir)  # a broken contract fails before reading
        pii = load_stage_config(config, "pii")
        loaded = load_file(file, columns=_column_map(columns))
    except StageError as e:
        _usage_error(str(e))
        return
    records = loaded.kept
    if len(records) == 0:
        _usage_error(f"{file}: no readable records ({len(loaded.quarantined)} unreadable lines).")
    counts_rules = any(r.rule in ("token_length", "length_percentiles") for r in loaded_contract.rules)
    tok = tokenizer or (_default_tokenizer() if counts_rules else None)
    if counts_rules and tok is None:
        from tasks.base_model import DEFAULT_BASE_MODEL
        from tasks.home import model_cache

        _usage_error(
            f"contract {cfg.contract!r} counts tokens, and the default base model {DEFAULT_BASE_MODEL} is not in "
            f"the model cache ({model_cache()}): run `loraflow models prepare` once, or pass --tokenizer PATH."
        )

    try:
        outcome = validate(records, cfg, tok, artifacts_dir=artifacts, pii=pii)
        result, code = outcome.report, 0
    except ContractViolation as e:
        result, code = e.report, 1
        blocked_message = str(e)
    except StageError as e:
        _usage_error(str(e))
        return

    _show(result, loaded.quarantined, report)
    if code:
        typer.secho(f"error: {blocked_message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code)
