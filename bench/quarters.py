"""Three quarters end to end: Q1 on the demo data, then two quarters of generated production feedback.

    make quarters          # = .venv/bin/python bench/quarters.py  (a fresh home under .loraflow-quarters/)

Q1 retrains on the demo data. For Q2 and Q3 the demo generator (examples/make_demo_data.py) writes a quarter of
feedback on the champion: new wording, a category that did not exist (``crypto_wallet``), corrections of wrong
answers, and near-copies of Q1's test tickets; the script imports it into the feedback store, backfills the
quarter into daily partitions and retrains. A last, short run trains from the base model on Q2's data
(``train.init_from=base``) to compare its first train loss with Q2's warm start from the Q1 champion.

It prints one table (rows in / kept, dedup's test leaks, test-set version and size, base / candidate / champion
accuracy, promoted or not and why, drift) and checks what must hold across quarters: every test-set manifest
contains the earlier ones, and no test id of any quarter is in any quarter's train or val split. Deterministic:
fixed seeds, fixed dates, no clock in the data.
"""

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("LORAFLOW_QUARTERS_HOME", ROOT / ".loraflow-quarters"))
CONFIG = os.environ.get("LORAFLOW_QUARTERS_CONFIG", "configs/demo.yaml")
EXTRA = [s for s in os.environ.get("LORAFLOW_QUARTERS_SET", "").split(";") if s]  # e.g. train.max_steps=2
N_FEEDBACK = int(os.environ.get("LORAFLOW_QUARTERS_FEEDBACK", "240"))
QUARTERS = [(dt.date(2026, 7, 1), dt.date(2026, 10, 1)), (dt.date(2026, 10, 1), dt.date(2027, 1, 1))]
QUARTERS = QUARTERS[: int(os.environ.get("LORAFLOW_QUARTERS_GENERATED", len(QUARTERS)))]  # 1: Q1 and Q2 only
NEW_LABEL = "crypto_wallet"
NEW_WORDING = ["Quick one: ", "hiya, so ", "URGENT - ", "Not sure who to ask but ", "Hello team, "]
NEW_CATEGORY = [
    "My {coin} withdrawal to my external wallet has not arrived yet.",
    "I sent {coin} from the app to my wallet and it is still pending.",
    "How do I move my {coin} out of Fernbank into my own crypto wallet?",
    "The {coin} wallet address I pasted was rejected, what format do you need?",
]


def _setup() -> None:
    if HOME.exists():
        shutil.rmtree(HOME)
    os.environ["LORAFLOW_HOME"] = str(HOME)
    default_cache = ROOT / ".loraflow" / "models"
    if "LORAFLOW_MODEL_CACHE" not in os.environ and default_cache.exists():
        os.environ["LORAFLOW_MODEL_CACHE"] = str(default_cache)
    sys.path[:0] = [str(ROOT), str(ROOT / "examples")]
    from tasks.home import configure_environment

    configure_environment()


def _split_frame(run_id: str, split: str):
    from tasks import tracking
    from tasks.core import read_records

    run = tracking.client().get_run(run_id)
    for d in run.inputs.dataset_inputs:
        if d.dataset.name.endswith(f"-{split}"):
            return read_records(json.loads(d.dataset.source)["uri"].removeprefix("file://"))
    raise SystemExit(f"run {run_id} logged no {split} split")


def feedback_rows(quarter: int, start: dt.date, end: dt.date, test, model_version: str) -> list[dict]:
    """A quarter of production feedback, drawn by the demo generator with this quarter's seed."""
    import make_demo_data as demo

    g = demo.Generator(demo.SEED + quarter)
    r = g.rng
    lo, hi = dt.datetime.combine(start, dt.time()), dt.datetime.combine(end, dt.time()) - dt.timedelta(seconds=1)
    tests = [(m[-2]["content"], m[-1]["content"]) for m in test["messages"]]
    out = []
    for ts in sorted(demo._iso(r, lo, hi) for _ in range(N_FEEDBACK)):
        label, roll = r.choice(demo.LABELS), r.random()
        text, answer, rating, corrected = g.ticket(label, r.random() < 0.15, check=False), label, r.choice([4, 5]), None
        if roll < 0.30:  # new wording of a known request
            text = r.choice(NEW_WORDING) + text[:1].lower() + text[1:]
        elif roll < 0.45:  # a category the model never saw: the user corrects the answer
            label, text = NEW_LABEL, r.choice(NEW_CATEGORY).format(coin=r.choice(demo.COINS))
            answer, rating, corrected = r.choice(demo.LABELS), 1, NEW_LABEL
        elif roll < 0.65:  # a wrong answer, corrected
            answer, rating, corrected = demo.CONFUSABLE[label], r.choice([1, 2, "down"]), label
        elif roll < 0.80 and tests:  # a re-sent test ticket: dedup must keep it out of train
            text, label = tests[r.randrange(len(tests))]
            text, answer = g.near_variant(text, label), label
        msgs = [{"role": "system", "content": demo.SYSTEM_PROMPT}, {"role": "user", "content": text}]
        out.append({"request_messages": msgs, "model_version": model_version, "response": answer,
                    "rating": rating, "corrected_response": corrected, "flag_reason": None, "created_at": ts})  # fmt: skip
    return out


def _retrain(overrides: list[str]) -> dict:
    from flows.params import RetrainParams
    from flows.retrain import retrain

    return retrain(RetrainParams(config=CONFIG, overrides=[*EXTRA, *overrides]))


def _row(quarter: str, result: dict) -> dict:
    from tasks import tracking

    run = tracking.client().get_run(result["mlflow_run_id"])
    tags, metrics, c = run.data.tags, run.data.metrics, result["counts"]
    ev = result.get("eval", {})
    return {
        "quarter": quarter,
        "rows_in": c["ingest"]["rows_in"],
        "kept": c["validate"]["kept"],
        "test_leaks": c["dedup"].get("quarantined_test_leak", 0),
        "test_set": f"v{tags.get('loraflow.test_set.version')} ({tags.get('loraflow.test_set.count')})",
        **{m: ev.get(m, {}).get("accuracy_constrained") for m in ("base", "candidate", "champion")},
        "promoted": result["promoted"],
        "why": tags.get("loraflow.register.reasons", "").split(" | ")[0][:70],
        "drift_auc": metrics.get("drift.domain_auc"),
        "label_tvd": metrics.get("drift.label_tvd"),
        "run_id": result["mlflow_run_id"],
    }


def _print_table(rows: list[dict]) -> None:
    cols = ["quarter", "rows_in", "kept", "test_leaks", "test_set", "base", "candidate", "champion", "promoted",
            "drift_auc", "label_tvd", "why"]  # fmt: skip
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths, strict=True)))


def _check(rows: list[dict]) -> None:
    """Manifests grow; no test id of any quarter is in any quarter's train or val split."""
    from tasks import tracking

    manifests = [json.loads(Path(tracking.client().download_artifacts(r["run_id"], "test_set/manifest.json",
                                                                      str(HOME / "tmp"))).read_text())
                 for r in rows]  # fmt: skip
    for earlier, later in zip(manifests, manifests[1:], strict=False):
        assert set(earlier["ids"]) <= set(later["ids"]), "a test-set manifest lost an earlier test id"
    tests = set().union(*(m["ids"] for m in manifests))
    for r in rows:
        for split in ("train", "val"):
            leaked = tests & set(_split_frame(r["run_id"], split)["id"])
            assert not leaked, f"{r['quarter']}: {len(leaked)} test ids in {split}"
    print(f"\nchecked: {len(manifests)} manifests, each a superset of the last; 0 test ids in any train/val split")


def _first_loss(run_id: str) -> float:
    from tasks import tracking

    hist = sorted(tracking.client().get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    return hist[0].value


def main() -> None:
    t0 = time.time()
    _setup()
    from flows.backfill import backfill_feedback
    from flows.config import load_config
    from tasks import feedback as fb
    from tasks import tracking

    project = load_config(CONFIG, EXTRA).name
    rows = [_row("Q1", _retrain([]))]
    for i, (start, end) in enumerate(QUARTERS, start=2):
        model = tracking.client().get_model_version_by_alias(project, "champion")
        test = _split_frame(rows[-1]["run_id"], "test")
        path = HOME / f"feedback-q{i}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in feedback_rows(i, start, end, test, str(model.version))))
        fb.import_file(path)
        backfill_feedback(start, end)
        rows.append(_row(f"Q{i}", _retrain([])))
        if i == 2:
            base_run = _retrain([f"name={project}-from-base", "train.init_from=base", "train.max_steps=2",
                                 "evaluate.max_rows=8"])["mlflow_run_id"]  # fmt: skip
            warm, cold = _first_loss(rows[-1]["run_id"]), _first_loss(base_run)
    print()
    _print_table(rows)
    _check(rows)
    print(f"warm start: Q2's first train loss {warm:.4f} (from the Q1 champion) vs {cold:.4f} (from the base)")
    print(f"total {time.time() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
