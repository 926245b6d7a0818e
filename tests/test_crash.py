"""Crashes inside each data stage: ``loraflow prepare`` is SIGKILLed while a stage holds its results in memory
(``LORAFLOW_TEST_PAUSE_AT=<stage>``, see :func:`tasks.core.pause_point`), then run again in the same home. The
re-run completes with the uninterrupted run's counts and split files; no raw ingest file is left under the
home, every visible Parquet file is whole, and no MLflow run is left RUNNING. (The train stage's own kill and
resume tests are in tests/test_train.py.) By default one stage is killed; ``-m slow`` kills each in turn.
"""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "pii", "dedup", "validate", "split")


def _cmd(model: Path) -> list[str]:
    return [sys.executable, "-m", "loraflow", "prepare", "--config", "configs/tiny.yaml",
            "--set", f"train.base_model={model}"]  # fmt: skip


def _seed_key(home: Path) -> None:
    """The same record-id key in every home (ids, and so splits, depend on it; see tasks/identity.py)."""
    from tasks.identity import SECRET_FILE

    path = home / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0123456789abcdef" * 4)
    path.chmod(0o600)


def _env(home: Path, pause: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LORAFLOW_TEST_PAUSE"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    if pause:
        env["LORAFLOW_TEST_PAUSE_AT"] = pause
    return env


def _prepare(model: Path, home: Path) -> tuple[list[str], set[str]]:
    _seed_key(home)
    proc = subprocess.run(_cmd(model), cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = [ln.strip() for ln in proc.stdout.splitlines() if re.match(r"\s+\w+\s+rows_in=", ln)]
    splits = {p.name for p in home.rglob("split/*.parquet")}
    return counts, splits


def _kill_inside(model: Path, home: Path, stage: str) -> None:
    _seed_key(home)
    proc = subprocess.Popen(
        _cmd(model), cwd=ROOT, env=_env(home, stage), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    marker = home / f"paused-{stage}"
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None, f"prepare ended (rc {proc.returncode}) before reaching {stage}"
        assert time.monotonic() < deadline, f"never reached {stage}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: the CLI and the Prefect API it started
    proc.wait(timeout=60)
    marker.unlink()


def _running_mlflow_runs(home: Path) -> int:
    db = home / "mlflow" / "mlflow.db"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    finally:
        con.close()


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    return _prepare(tiny_model_dir, tmp_path_factory.mktemp("home-clean"))


@pytest.mark.parametrize("stage", [pytest.param(s, marks=() if s == "dedup" else pytest.mark.slow) for s in STAGES])
def test_a_run_killed_inside_a_stage_reruns_to_the_same_result(stage, uninterrupted, tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    _kill_inside(tiny_model_dir, home, stage)
    counts, splits = _prepare(tiny_model_dir, home)
    assert counts == uninterrupted[0]
    assert splits == uninterrupted[1], "the re-run writes the same content-addressed split files"
    assert not list((home / "tmp").rglob("*.parquet")), "raw ingest output left under the home"
    for p in home.rglob("*.parquet"):
        if not p.name.startswith("."):
            assert pq.ParquetFile(p).metadata.num_rows >= 0  # every visible Parquet file is whole (atomic rename)
    assert _running_mlflow_runs(home) == 0, "the killed run's MLflow run is still RUNNING"
