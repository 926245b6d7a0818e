"""``loraflow export MODEL@ALIAS --format adapter|merged|gguf --out DIR``: a registered version for other servers."""

from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def command(
    model: Annotated[str, typer.Argument(help="NAME@ALIAS (loraflow-demo@champion) or NAME/VERSION.")],
    format_: Annotated[
        str, typer.Option("--format", "-f", help="adapter (PEFT folder), merged (safetensors), gguf (llama.cpp).")
    ] = "merged",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: ./export-NAME-FORMAT).")
    ] = None,
    outtype: Annotated[str, typer.Option("--outtype", help="GGUF weights: f16 or q8_0 (gguf only).")] = "f16",
) -> None:
    """Export a registered version: the adapter, a merged safetensors model, or a GGUF file with a Modelfile."""
    from tasks.core import StageError
    from tasks.export import export_version

    dest = out or Path(f"export-{model.replace('@', '-').replace('/', '-')}-{format_}")
    try:
        result = export_version(model, format_, dest, outtype=outtype)  # type: ignore[arg-type]
    except StageError as e:
        _fail(str(e))
        return
    typer.echo(f"{result.model_name} v{result.version} → {result.format} in {result.out_dir} ({result.seconds:.1f}s)")
    if result.gguf_file:
        typer.echo(f"  {result.gguf_file} ({result.outtype}, sha256 {result.gguf_sha256[:12]}); Modelfile for Ollama")
    typer.echo(f"  logged to the version's MLflow run (exports/{result.format}.json), tag export.{result.format}")
