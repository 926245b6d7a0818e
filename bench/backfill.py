"""Backfill the demo feedback seed twice through the real flow: cold and re-run times, byte-identity.

    LORAFLOW_HOME=/tmp/lfbench/home .venv/bin/python bench/backfill.py

Uses a fresh store under LORAFLOW_HOME (refuses to run on one that already holds partitions), the real PII stage
and the embedded Prefect API. Prints a markdown table.
"""

import datetime as dt
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "demo" / "feedback_seed.jsonl"
START, END = dt.date(2026, 7, 1), dt.date(2026, 11, 1)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tasks.home import configure_environment

    configure_environment()
    from flows.backfill import backfill_feedback
    from tasks import feedback as fb
    from tasks.backfill import feedback_root, partition_paths

    if partition_paths():
        sys.exit(f"{feedback_root()} already holds partitions: point LORAFLOW_HOME at an empty folder")
    imported = fb.import_file(SEED, None)

    def hashes() -> dict[str, str]:
        return {str(p.relative_to(feedback_root())): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(feedback_root().glob("date=*/*"))}  # fmt: skip

    runs = []
    for _ in range(2):
        t = time.perf_counter()
        result = backfill_feedback(START, END)
        runs.append((time.perf_counter() - t, result["totals"], hashes()))
    t = time.perf_counter()
    backfill_feedback(START, END, dry_run=True)
    dry = time.perf_counter() - t
    totals = runs[0][1]
    reasons = ", ".join(
        f"{k.removeprefix('quarantined_')} {v}" for k, v in totals.items() if k.startswith("quarantined_")
    )
    print(f"\n{imported['inserted']} feedback rows, {(END - START).days} days ({START} .. {END}, end exclusive)\n")
    print("| run | wall time | result |")
    print("|---|---:|---|")
    print(f"| first backfill (cold) | {runs[0][0]:.1f} s | {totals['kept']} SFT records, {totals['quarantined']} "
          f"quarantined ({reasons}), {len(runs[0][2])} files |")  # fmt: skip
    same = runs[0][2] == runs[1][2] and runs[0][1] == runs[1][1]
    print(f"| same window again | {runs[1][0]:.1f} s | files byte-identical: {same} |")
    print(f"| dry run | {dry:.1f} s | nothing written |")


if __name__ == "__main__":
    main()
