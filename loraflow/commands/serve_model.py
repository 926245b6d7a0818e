"""``loraflow serve-model MODEL@ALIAS``: an OpenAI-compatible server whose traffic feeds the feedback store."""

import json
import tempfile
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def command(
    model: Annotated[str, typer.Argument(help="NAME@ALIAS (loraflow-demo@champion) or NAME/VERSION.")],
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Interface; anything but loopback needs --token.")] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="LORAFLOW_SERVE_TOKEN", help="Bearer token clients must send."),
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Feedback store URL (default: SQLite under the loraflow home).")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="Retrain config whose `pii` section scrubs the traffic.")
    ] = None,
    bench: Annotated[
        int | None, typer.Option("--bench", help="Answer N requests in-process, print p50/p95 latency, tokens/s.")
    ] = None,
    bench_prompts: Annotated[
        str | None, typer.Option("--prompts", help="Records file (Parquet/JSONL) whose user turns --bench sends.")
    ] = None,
) -> None:
    """Serve a registered version: /v1/chat/completions and /v1/feedback, every exchange scrubbed into the store."""
    from tasks.core import StageError
    from tasks.serve import FeedbackSink, check_bind, create_app
    from tasks.serve import bench as run_bench
    from tasks.serve import bench_prompts as load_prompts
    from tasks.serving_model import ChatEngine, download_version

    try:
        check_bind(host, token)
        with tempfile.TemporaryDirectory(prefix="loraflow-serve-") as tmp:
            version = download_version(model, tmp)
            engine = ChatEngine(version.settings, version.adapter_dir)
            label = f"{version.model_name}/{version.version}"
            if bench:
                stats = run_bench(engine, load_prompts(bench_prompts), bench)
                typer.echo(json.dumps({"model": label, **stats}))
                return
            from flows.config import load_stage_config

            sink = FeedbackSink(label, store, load_stage_config(config, "pii"))
            app = create_app(engine, label, sink, token)
            import uvicorn

            typer.echo(f"serving {label} on http://{host}:{port}/v1/chat/completions (feedback: /v1/feedback)")
            uvicorn.run(app, host=host, port=port, log_level="info")
    except StageError as e:
        _fail(str(e))
