"""`loraflow prepare` on N generated records: the local path beside `data.task_runner=dask`, stage by stage.

    python bench/prepare_scale.py                     # 1,000,000 records: local, dask with 1 and 2 workers
    python bench/prepare_scale.py --rows 20000 --runners local,dask:2

Each runner gets a fresh loraflow home (so no run takes another's stages from the cache) and runs the real CLI,
`loraflow prepare --config <generated config> [--set data.task_runner=dask --set data.dask.n_workers=K]`, in its
own process. Printed per runner and stage: rows in, kept, seconds (the stage task's run time, read from that
home's Prefect database) and rows in per second; per runner: wall time of the whole command (process start,
Prefect's embedded API, the MLflow run and, for dask, the cluster included) and the peak RSS of its process tree
(Dask workers included). The bench fails (exit 1) unless every runner reports the same counts and wrote the
same files: stage outputs are named by the digest of their content, so equal names mean equal content.

The records are a deterministic mix (``generate``): demo-style support tickets from examples/make_demo_data.py's
generator (30 % with planted PII), 4 % exact repeats after normalisation, 4 % near repeats (a typo, a greeting,
a dropped word) and 0.2 % unreadable lines.
"""

import argparse
import json
import os
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SYSTEM = "You are a support-ticket router for Fernbank. Reply with the ticket's category only."
STAGES = [("ingest", "ingest"), ("pii", "scrub_pii"), ("dedup", "dedup"), ("validate", "validate"), ("split", "split")]
_COUNTS = re.compile(r"^\s+(\w+)\s+rows_in=(\d+)\s+kept=(\d+)\s+quarantined=(\d+)")


def generate(n: int, seed: int = 7) -> Iterator[str]:
    """``n`` JSONL lines of chat records, the same for the same ``n`` and ``seed``."""
    sys.path.insert(0, str(ROOT / "examples"))
    from make_demo_data import LABELS, Generator

    g = Generator(seed)
    rng = random.Random(seed + 1)
    recent: list[tuple[str, str]] = []
    for i in range(n):
        u = rng.random()
        if u < 0.002:
            yield '{"messages": [{"role": "user", "content": "cut off'  # a truncated line: ingest quarantines it
            continue
        if u < 0.042 and recent:
            text, label = recent[rng.randrange(len(recent))]
            text = g.case_ws_variant(text)
        elif u < 0.082 and recent:
            text, label = recent[rng.randrange(len(recent))]
            try:
                text = g.near_variant(text, label)
            except RuntimeError:
                text = g.ticket(label, with_pii=False, check=False)
        else:
            label = LABELS[i % len(LABELS)]  # round robin: the contract's class-balance rule holds at any n
            text = g.ticket(label, with_pii=rng.random() < 0.3, check=False)
            recent = (recent + [(text, label)])[-1000:]
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                    {"role": "assistant", "content": label}]  # fmt: skip
        created = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"
        yield json.dumps({"messages": messages, "created_at": created})


def write_inputs(work: Path, rows: int) -> Path:
    """The records file and a config that reads it (the demo's PII allow-list and contract)."""
    data = work / f"records-{rows}.jsonl"
    if not data.exists():
        with open(data, "w") as f:
            for line in generate(rows):
                f.write(line + "\n")
    cfg = work / "scale.yaml"
    cfg.write_text(
        f"# Written by bench/prepare_scale.py: loraflow prepare --config {cfg}\n"
        "name: loraflow-scale\n"
        f"data:\n  sources:\n    - path: {data}\n"
        "include_feedback: false\n"
        "pii:\n  allow_list: [Fernbank, Fernbank Plus, FernPay, Fernbank Metal, Fernbank Premium, Fernbank Business, "
        "Fernbank Savings Pot]\n"
        "validate:\n  contract: demo\n"
    )
    return cfg


def _tree_rss(proc) -> int:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def run_prepare(cfg: Path, home: Path, runner: str, key: bytes) -> dict:
    """One `loraflow prepare` in a fresh process and home; its counts, wall time, peak RSS and stage times.

    Every home gets the same record-id key: ids, and so the hash-stable test split and what dedup removes as
    test leaks, follow the key (tasks/identity.py); homes with their own keys would split different rows.
    """
    from tasks.identity import share_key

    share_key(home, key)
    args = [sys.executable, "-m", "loraflow", "prepare", "--config", str(cfg)]
    if runner.startswith("dask"):
        workers = runner.partition(":")[2] or "0"
        args += ["--set", "data.task_runner=dask", "--set", f"data.dask.n_workers={workers}"]
    # The run's own Prefect and MLflow state (under its home); only the embedded API's start-up wait is kept.
    keep = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    env.setdefault("LORAFLOW_MODEL_CACHE", str(ROOT / ".loraflow" / "models"))
    log, out_file = home.with_suffix(".log"), home.with_suffix(".out")
    t0 = time.perf_counter()
    with open(log, "w") as err, open(out_file, "w") as out:  # files, not pipes: a full pipe would stall the run
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc))
            time.sleep(0.5)
    wall = time.perf_counter() - t0
    out = out_file.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{runner}: loraflow prepare failed (exit {proc.returncode}); see {log}\n{out[-2000:]}")
    counts = {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in map(_COUNTS.match, out.splitlines()) if m}
    split = _split_counts(home)
    counts["split"] = (split["rows_in"], split["train"] + split["val"] + split["test"], split["sampled_out"])
    return {"runner": runner, "wall": wall, "peak_rss": peak, "counts": counts, "split": split,
            "seconds": _stage_seconds(home), "files": _output_files(home)}  # fmt: skip


def _split_counts(home: Path) -> dict:
    (report,) = (home / "data" / "loraflow-scale" / "split").glob("split-*.report.json")
    return json.loads(report.read_text())["counts"]


def _stage_seconds(home: Path) -> dict[str, float]:
    """Each stage task's run time from the home's Prefect database (start to end of its one task run)."""
    db = sqlite3.connect(home / "prefect" / "prefect.db")
    rows = db.execute("SELECT name, start_time, end_time FROM task_run WHERE start_time IS NOT NULL").fetchall()
    db.close()
    out: dict[str, float] = {}
    for name, start, end in rows:
        task = name.rsplit("-", 1)[0]
        if end and task in {t for _, t in STAGES}:
            out[task] = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return out


def _output_files(home: Path) -> list[str]:
    """Every Parquet file the data stages wrote (names carry their content digest)."""
    root = home / "data" / "loraflow-scale"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def table(results: list[dict]) -> str:
    lines = ["| stage | " + " | ".join(f"{r['runner']}: rows in / kept / s / rows in per s" for r in results) + " |",
             "|---|" + "---|" * len(results)]  # fmt: skip
    for stage, task in STAGES:
        cells = []
        for r in results:
            rows_in, kept, _ = r["counts"][stage]
            s = r["seconds"].get(task)
            rate = f"{rows_in / s:,.0f}" if s else "-"
            cells.append(f"{rows_in:,} / {kept:,} / {s:.1f} / {rate}" if s is not None else f"{rows_in:,} / {kept:,}")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| whole command (wall) | " + " | ".join(f"{r['wall']:.1f} s" for r in results) + " |")
    lines.append("| peak RSS, process tree | " + " | ".join(f"{r['peak_rss'] / 2**30:.2f} GiB" for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="Records to generate (default 1,000,000).")
    ap.add_argument(
        "--runners",
        default="local,dask:1,dask:2",
        help="Comma-separated: local, dask:K (K workers; dask: one per core).",
    )
    ap.add_argument("--work", type=Path, default=None, help="Working folder (default: a new temporary one, kept).")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = write_inputs(work, args.rows)
    print(f"{args.rows:,} records in {work} ({time.perf_counter() - t0:.0f} s to generate); load {os.getloadavg()}")
    results, key = [], secrets.token_hex(32).encode()
    for runner in args.runners.split(","):
        home = work / f"home-{runner.replace(':', '-')}"
        results.append(run_prepare(cfg, home, runner, key))
        r = results[-1]
        print(f"  {runner}: {r['wall']:.1f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB; load {os.getloadavg()}")
    print()
    print(table(results))
    first = results[0]
    same = [r["runner"] for r in results[1:] if r["counts"] == first["counts"] and r["files"] == first["files"]]
    differ = [r["runner"] for r in results[1:] if r["runner"] not in same]
    print(f"\nsplit: {first['split']}")
    if differ:
        print(f"DIFFERENT from {first['runner']}: {', '.join(differ)} (counts or output files)")
        return 1
    print(f"same counts and the same {len(first['files'])} output files (content digests) for every runner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
