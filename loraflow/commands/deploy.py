"""``loraflow serve | deploy | ui | backfill``: run the deployments, register them, click around, backfill.

The deployments themselves are declared once, in ``deployments/deploy.py``; this module only starts things.
"""

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _bin(name: str) -> str:
    """The console script installed beside this interpreter (the venv's ``prefect`` / ``mlflow``)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; raise if ``proc`` dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode} before it answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def prefect_server_env(host: str, port: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a local ``prefect server start``: the UI is told where its API is (needed on any port
    but 4200), and no telemetry is attempted offline."""
    out = dict(os.environ if env is None else env)
    out.pop("PREFECT_API_URL", None)
    out["PREFECT_UI_API_URL"] = f"http://{host}:{port}/api"
    out["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    out.setdefault("PREFECT_SERVER_API_HOST", host)
    return out


def start_prefect_server(
    host: str = "127.0.0.1",
    port: int = 4200,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 180,
) -> subprocess.Popen:
    """Start ``prefect server start`` (SQLite under ``PREFECT_HOME``) and wait up to ``timeout`` s for its API."""
    cmd = [_bin("prefect"), "server", "start", "--host", host, "--port", str(port)]
    health = f"http://{host}:{port}/api/health"
    return _start_server(cmd, prefect_server_env(host, port, env), log, health, timeout)


def _start_server(
    cmd: list[str], env: dict[str, str], log: Path | None, health: str, timeout: float = 180
) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so it and its children stop as one group) and wait for ``health``."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (owned by the child process)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(health, timeout=timeout, proc=proc)
    except BaseException:  # also SIGTERM (_Stop) while waiting: never leave the half-started server behind
        stop(proc)
        raise
    return proc


def start_mlflow_ui(
    host: str = "127.0.0.1",
    port: int = 5000,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    workers: int = 1,
) -> subprocess.Popen:
    """Start ``mlflow ui`` on the tracking store and wait until it answers. One worker by default: MLflow's 4
    uvicorn workers are four copies of the app for one person clicking around a 2-core box."""
    from tasks.home import mlflow_tracking_uri

    env = dict(os.environ if env is None else env)
    # The job runner (8 more processes: huey consumers for GenAI judges and periodic jobs) is not used here.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [_bin("mlflow"), "ui", "--backend-store-uri", env.get("MLFLOW_TRACKING_URI") or mlflow_tracking_uri(),
           "--host", host, "--port", str(port), "--workers", str(workers)]  # fmt: skip
    return _start_server(cmd, env, log, f"http://{host}:{port}/health")


def start_worker(
    pool: str = "loraflow-process", env: dict[str, str] | None = None, log: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start ``prefect worker start --pool POOL`` (a process worker: one subprocess per flow run)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_all(procs: list[subprocess.Popen], timeout: float = 7) -> None:
    """SIGTERM every process group at once, wait up to ``timeout`` seconds in all, then SIGKILL what is left."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            p.wait(5)


class _Stop(Exception):
    """SIGTERM / SIGINT reached ``loraflow ui``."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started here, and its own children (its process group), politely then firmly."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, PermissionError):
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# --------------------------------------------------------------------------------------------- commands

TZ_HELP = "Timezone of the quarterly schedule (IANA, e.g. Europe/Berlin; default $LORAFLOW_SCHEDULE_TZ or UTC)."
CONFIG_HELP = "Config file of the quarterly retrain (default $LORAFLOW_PRODUCTION_CONFIG or configs/production.yaml)."


def serve_command(
    timezone: Annotated[str | None, typer.Option("--timezone", help=TZ_HELP)] = None,
    config: Annotated[str | None, typer.Option("--config", help=CONFIG_HELP)] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many flow runs at once.")] = None,
) -> None:
    """Serve quarterly-retrain, retrain and backfill-feedback in this process (against PREFECT_API_URL, or the
    embedded API when unset) until interrupted."""
    from deployments.deploy import serve_all

    serve_all(timezone, config, limit)


def deploy_command(
    work_pool: Annotated[str, typer.Option("--work-pool", help="Work pool (a missing process pool is created).")] = (
        "loraflow-process"
    ),
    timezone: Annotated[str | None, typer.Option("--timezone", help=TZ_HELP)] = None,
    config: Annotated[str | None, typer.Option("--config", help=CONFIG_HELP)] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="Docker image with this project, for docker/kubernetes pools.")
    ] = None,
) -> None:
    """Register the three deployments with the Prefect server in PREFECT_API_URL and a work pool; then run a
    worker: prefect worker start --pool loraflow-process."""
    if not os.environ.get("PREFECT_API_URL"):
        _fail(
            "loraflow deploy registers deployments with a Prefect server, and PREFECT_API_URL is not set. Start one "
            "(`loraflow ui`, or `prefect server start`) and export PREFECT_API_URL=http://127.0.0.1:4200/api; "
            "to run the deployments without a server use `loraflow serve`."
        )
    from deployments.deploy import deploy_all

    env = {k: os.environ[k] for k in ("LORAFLOW_HOME", "MLFLOW_TRACKING_URI") if k in os.environ}
    ids = deploy_all(work_pool, timezone, config, image=image, env=env or None)
    typer.echo(f"registered {len(ids)} deployments in work pool {work_pool!r}: {', '.join(ids)}")
    typer.echo(f"run them with a worker:  prefect worker start --pool {work_pool}")


def ui_command(
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Port of the Prefect server and UI.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    mlflow_workers: Annotated[int, typer.Option("--mlflow-workers", min=1, help="MLflow UI worker processes.")] = 1,
) -> None:
    """Start a local Prefect server (with its UI) and the MLflow UI on loopback, until interrupted.

    SIGTERM and SIGINT stop both servers (their whole process groups) and wait for them: nothing is left behind.
    """
    from tasks.home import loraflow_home

    logs = loraflow_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        typer.echo("starting the Prefect server ...")
        procs.append(start_prefect_server(host, prefect_port, log=logs / "prefect-server.log"))
        typer.echo("starting the MLflow UI ...")
        procs.append(start_mlflow_ui(host, mlflow_port, log=logs / "mlflow-ui.log", workers=mlflow_workers))
        typer.echo(f"Prefect UI: http://{host}:{prefect_port}    MLflow UI: http://{host}:{mlflow_port}")
        typer.echo(f"to use this server elsewhere: export PREFECT_API_URL=http://{host}:{prefect_port}/api")
        typer.echo("the Deployments page fills once deployments exist: `loraflow deploy` (with that PREFECT_API_URL)")
        typer.echo(f"logs in {logs}; Ctrl-C stops both")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        _fail(f"a server exited; see the logs in {logs}")
    except (TimeoutError, RuntimeError) as e:
        _fail(f"{e}; see the logs in {logs}")
    except (_Stop, KeyboardInterrupt):
        typer.echo("stopping ...")
    finally:
        stop_all(procs)
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _environment(**values: str | None):
    """Set the given environment variables (None: leave as is) for the block, then restore them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def backfill_command(
    start: Annotated[dt.datetime, typer.Option("--start", formats=["%Y-%m-%d"], help="First day (inclusive).")],
    end: Annotated[dt.datetime, typer.Option("--end", formats=["%Y-%m-%d"], help="Day after the last (exclusive).")],
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Feedback store URL (default: $LORAFLOW_FEEDBACK_URL, else SQLite under the loraflow home); "
            "passed on through the environment, never stored as a flow parameter.",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what each day would write.")] = False,
    config: Annotated[
        str | None, typer.Option("--config", help="Retrain config whose `pii` section scrubs the feedback.")
    ] = None,
) -> None:
    """Backfill production feedback for [start, end) into one scrubbed partition per day (idempotent)."""
    from flows.backfill import backfill_feedback
    from loraflow.cli import _quiet_user_errors
    from tasks.backfill import days
    from tasks.core import StageError

    _quiet_user_errors()  # a StageError (an unreachable store...) is one line, not Prefect's traceback
    try:
        days(start.date(), end.date())  # a reversed window is a user error: say so before starting the flow
        # The URL travels through the environment, not as a flow parameter: Prefect stores parameters (a
        # password too) in its database.
        with _environment(LORAFLOW_FEEDBACK_URL=source):
            result = backfill_feedback(start.date(), end.date(), dry_run=dry_run, config=config)
    except StageError as e:
        _fail(str(e))
        return
    for r in result["days"]:
        reasons = ", ".join(f"{k.removeprefix('quarantined_')}={v}" for k, v in r.items()
                            if k.startswith("quarantined_"))  # fmt: skip
        typer.echo(f"  {r['day']}  rows_in={r['rows_in']:<5} kept={r['kept']:<5} quarantined={r['quarantined']:<4}"
                   + (f" ({reasons})" if reasons else ""))  # fmt: skip
    t = result["totals"]
    verb = "would write" if dry_run else "wrote"
    typer.echo(f"{verb} {len(result['days'])} day partitions: rows_in={t.get('rows_in', 0)} kept={t.get('kept', 0)} "
               f"quarantined={t.get('quarantined', 0)}" + ("" if dry_run else f"; MLflow run {result['mlflow_run_id']}"))  # fmt: skip
