"""Re-run on unchanged data: the data stages' time on a second ``loraflow prepare`` vs the first, same home.

Runs ``loraflow prepare --config <config>`` twice, back to back, in one fresh private ``LORAFLOW_HOME`` (the
prepared base model comes from this checkout's cache, which ``tasks.home.model_cache`` falls back to), then reads every stage task's run from that
home's Prefect database: its duration is the final state's timestamp minus the task run's creation (Pending)
time, so a cache hit's key computation (hashing the input file, the stage's code and named files) counts. Also
prints each whole process's wall time (the CLI start, the embedded Prefect server, the MLflow run), which the
cache cannot shorten.

    .venv/bin/python bench/rerun.py                     # the demo data
    .venv/bin/python bench/rerun.py --config configs/banking77.yaml
"""

import argparse
import hashlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "scrub_pii", "dedup", "validate", "split", "validate_splits"]


def _env(home: Path) -> dict[str, str]:
    # No Prefect / MLflow setting of the caller's reaches the runs, except a longer embedded-server start timeout
    # (a fresh home's first start runs the database migrations: over 120 s at nice 19 on a loaded machine).
    keep = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["LORAFLOW_HOME"] = str(home)  # the base model still comes from this checkout's cache: model_cache() falls back
    return env


def _tree_digests() -> dict[str, str]:
    """Digest of every source and config file a data stage's cache key can depend on (to explain a miss)."""
    files = [p for d in ("tasks", "flows", "configs", "data_contracts", "examples") for p in (ROOT / d).rglob("*")]
    return {
        str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and "__pycache__" not in p.parts
    }


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def stage_times(db: Path) -> list[dict[str, tuple[float, str]]]:
    """Per flow run (oldest first): {stage: (seconds, final state name)} from the Prefect database."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    flows = [r[0] for r in con.execute("SELECT id FROM flow_run WHERE name IS NOT NULL ORDER BY created")]
    out = []
    for flow_id in flows:
        rows = con.execute(
            "SELECT name, state_name, expected_start_time, state_timestamp FROM task_run WHERE flow_run_id = ?",
            (flow_id,),
        )
        times = {}
        for name, state, created, finished in rows:
            stage = name.rsplit("-", 1)[0]
            times[stage] = ((_ts(finished) - _ts(created)).total_seconds(), state)
        out.append(times)
    con.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="Override, e.g. a.b=1.")
    args = ap.parse_args()
    sets = [a for kv in args.overrides for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "loraflow", "prepare", "--config", args.config, *sets]
    with tempfile.TemporaryDirectory(prefix="loraflow-rerun-") as tmp:
        home = Path(tmp) / "home"
        walls, loads, trees = [], [], []
        for i in (1, 2):
            trees.append(_tree_digests())
            loads.append(os.getloadavg()[0])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=_env(home), cwd=ROOT, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
                raise SystemExit(f"run {i} failed (exit {proc.returncode}): {' '.join(cmd)}")
            print(f"run {i}: {walls[-1]:.1f} s", file=sys.stderr)
        runs = stage_times(home / "prefect" / "prefect.db")
    if len(runs) != 2:
        raise SystemExit(f"expected 2 flow runs in the Prefect database, found {len(runs)}")
    first, second = runs
    print(f"\n`{' '.join(['loraflow', *cmd[3:]])}` twice in one fresh LORAFLOW_HOME; "
          f"load avg 1-min {min(loads):.1f}–{max(loads):.1f}")  # fmt: skip
    print("| stage | first run s | second run s | second run state |")
    print("|---|---|---|---|")
    for stage in [s for s in STAGES if s in first or s in second]:
        a, b = first.get(stage, (0.0, "-")), second.get(stage, (0.0, "-"))
        print(f"| {stage} | {a[0]:.2f} | {b[0]:.2f} | {b[1]} |")
    t1 = sum(v[0] for v in first.values())
    t2 = sum(v[0] for v in second.values())
    print(f"| **data stages** | **{t1:.2f}** | **{t2:.2f}** | **{100 * t2 / t1:.1f} % of the first** |")
    print(f"| whole `loraflow prepare` process | {walls[0]:.1f} | {walls[1]:.1f} | {100 * walls[1] / walls[0]:.1f} % |")
    missed = [s for s, (_, state) in second.items() if s != "ingest" and state != "Cached"]
    if missed:
        changed = sorted(k for k in set(trees[0]) | set(trees[1]) if trees[0].get(k) != trees[1].get(k))
        print(f"\ncache MISSED on the second run for: {', '.join(missed)}; files changed between the runs: "
              f"{', '.join(changed) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    main()
