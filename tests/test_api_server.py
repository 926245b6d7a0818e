"""The run's Prefect API server lives in its own session: a SIGTERM sent to the run's whole process group (what
Ctrl-C or ``kill -TERM -PGID`` do) reaches the run only, which can still talk to Prefect while it stops, and exits
with its own code; once the run exits, or is SIGKILLed, the server is gone too."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A run that waits in a flow for SIGTERM, then still needs the API (a task run after the signal), then exits 143.
RUN = """
import os, signal, sys, time
from pathlib import Path
from tasks.home import configure_environment
configure_environment()
from loraflow import api_server
api = api_server.start()
from prefect import flow, task
api.wait_ready()
print("URL", api.url, flush=True)
got = []

@task
def after_the_signal():
    return 7

@flow
def waits_for_sigterm():
    # Installed inside the flow, as training does: Prefect puts its own SIGTERM handler in place for a flow run.
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    Path(sys.argv[1]).touch()
    while not got:
        time.sleep(0.1)
    return after_the_signal()

print("RESULT", waits_for_sigterm(), flush=True)
sys.exit(143)
"""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    # A loaded machine can take minutes to start Prefect's server (its own limit, 120 s in loraflow's home).
    return env | {
        "LORAFLOW_HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
    }


def _start(home: Path, marker: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(marker)], cwd=ROOT, env=_env(home), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the flow never started"
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _gone(url: str, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while _answers(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_group_sigterm_reaches_the_run_not_its_prefect_server(tmp_path):
    marker = tmp_path / "in-flow"
    proc = _start(tmp_path / "home", marker)
    _wait_for(marker, proc)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, as Ctrl-C / kill -TERM -PGID do
    out = proc.communicate(timeout=300)[0]
    elapsed = time.monotonic() - t0
    assert proc.returncode == 143, out[-3000:]
    assert "RESULT 7" in out, out[-3000:]  # the task after the signal still reached the API
    assert "Traceback" not in out, out[-3000:]
    assert elapsed < 60, f"{elapsed:.0f} s from the signal to the exit"
    url = next(line.split()[1] for line in out.splitlines() if line.startswith("URL "))
    assert _gone(url), "the API server outlived the run"


def test_a_sigkilled_run_leaves_no_server_behind(tmp_path):
    marker = tmp_path / "in-flow"
    proc = _start(tmp_path / "home", marker)
    _wait_for(marker, proc)
    url = next(line.split()[1] for line in iter(proc.stdout.readline, "") if line.startswith("URL "))
    assert _answers(url)
    os.killpg(proc.pid, signal.SIGKILL)  # the run's group only: the server is in its own session
    proc.wait(timeout=60)
    assert _gone(url), "the API server outlived a SIGKILLed run"


@pytest.mark.slow
def test_group_sigterm_during_loraflow_run_training(tmp_path, tiny_model_dir):
    """The whole group of a real ``loraflow run`` gets SIGTERM mid-training: exit 143 within seconds, one line
    saying how to resume, no traceback, a checkpoint, and a KILLED MLflow run."""
    from tasks.train.checkpoints import last_checkpoint

    home = tmp_path / "home"
    env = _env(home)
    cmd = [sys.executable, "-m", "loraflow", "run", "--config", "configs/tiny.yaml", "--set",
           f"train.base_model={tiny_model_dir}", "--set", "train.max_steps=2000", "--set", "train.save_steps=5"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 1200
    while not any(last_checkpoint(f) for f in {p.parent for p in home.rglob("checkpoint-*")}):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.2)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 143, err[-3000:]
    assert elapsed < 60, f"{elapsed:.0f} s from the signal to the exit"
    assert "Traceback" not in err, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped at step ")]
    assert len(stopped) == 1 and "resume with: loraflow run" in stopped[0], err[-3000:]
    con = sqlite3.connect(f"file:{home / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True)
    try:
        statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
    finally:
        con.close()
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
