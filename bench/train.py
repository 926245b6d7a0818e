"""Model quality and speed: LoRA-train SmolLM2-135M on BANKING77 (or the demo data) and evaluate base vs candidate.

Calls the stage functions directly (no Prefect, no MLflow) so it measures training and evaluation alone:

    .venv/bin/python bench/train.py --dataset banking77 --train-per-intent 40 --test-rows 500
    .venv/bin/python bench/train.py --dataset demo

Prints a markdown table with the accuracies (free and label-constrained), losses, and wall times.
"""

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.core import record_id, write_records  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BANKING_SYSTEM = "Classify the banking customer's message. Reply with the intent label only."


def records_from_pairs(system: str, texts, labels, source: str) -> pd.DataFrame:
    rows = []
    for text, label in zip(texts, labels, strict=True):
        msgs = [
            {"role": "system", "content": system},
            {"role": "user", "content": str(text)},
            {"role": "assistant", "content": str(label)},
        ]
        rows.append({"id": record_id(msgs), "messages": msgs, "source": source, "created_at": "", "meta": {}})
    return pd.DataFrame(rows).drop_duplicates("id")


def banking77(per_intent: int, val_per_intent: int, test_rows: int, seed: int):
    train = pd.read_csv(SHARED / "banking77" / "train.csv")
    test = pd.read_csv(SHARED / "banking77" / "test.csv")
    shuffled = train.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby("category").cumcount()
    tr = shuffled[rank < per_intent]
    va = shuffled[(rank >= per_intent) & (rank < per_intent + val_per_intent)]
    te = test.sample(n=min(test_rows, len(test)), random_state=seed)
    mk = lambda d, s: records_from_pairs(BANKING_SYSTEM, d["text"], d["category"], s)  # noqa: E731
    return (
        mk(tr, "banking77-train"),
        mk(va, "banking77-train"),
        mk(te, "banking77-test"),
        sorted(train["category"].unique()),
    )


def demo(max_train_rows: int | None, seed: int):
    """The demo data through ingest + exact dedup + the stable split (no PII scrub: accuracy barely depends on it)."""
    import yaml

    from tasks.ingest import IngestConfig, ingest
    from tasks.split import SplitConfig, split_records

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "demo.yaml").read_text())
    _, outcome = ingest(IngestConfig(**cfg["data"]), root)
    labels = json.loads((root / "examples" / "demo" / "labels.json").read_text())
    # Stand-in for the validate stage: the demo plants a few contract violations (no answer, unknown label).
    ok = [
        bool(m) and m[-1]["role"] == "assistant" and m[-1]["content"].strip() in labels
        for m in outcome.kept["messages"]
    ]
    records = outcome.kept[ok].drop_duplicates("id")
    split_cfg = {k: v for k, v in (cfg.get("split") or {}).items()}
    if max_train_rows:
        split_cfg["max_train_rows"] = max_train_rows
    parts = split_records(records, SplitConfig(**split_cfg, seed=seed))
    return parts["train"], parts["val"], parts["test"], labels


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="banking77", choices=["banking77", "demo"])
    ap.add_argument("--max-train-rows", type=int, default=None, help="demo: cap on train rows (stratified)")
    ap.add_argument("--train-per-intent", type=int, default=40)
    ap.add_argument("--val-per-intent", type=int, default=2)
    ap.add_argument("--test-rows", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="TrainConfig field=value (JSON values)")
    ap.add_argument("--eval-set", action="append", default=[], help="EvalConfig field=value")
    ap.add_argument("--models", default="base,candidate")
    ap.add_argument("--out", default="/tmp/loraflow-bench")
    args = ap.parse_args()

    from tasks.evaluate import EvalConfig, evaluate_models
    from tasks.train import TrainConfig, train_adapter

    def parse(kvs):
        out = {}
        for kv in kvs:
            k, v = kv.split("=", 1)
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    if args.dataset == "demo":
        tr, va, te, labels = demo(args.max_train_rows, args.seed)
    else:
        tr, va, te, labels = banking77(args.train_per_intent, args.val_per_intent, args.test_rows, args.seed)
    refs = {n: write_records(d, out / f"{n}.parquet") for n, d in (("train", tr), ("val", va), ("test", te))}
    tcfg = TrainConfig(**parse(args.set))
    ecfg = EvalConfig(**parse(args.eval_set))
    load = os.getloadavg()
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    res = train_adapter(refs["train"], refs["val"], tcfg, str(out / "adapter"))
    t_train = time.perf_counter() - t0
    cpu_train = _cpu_s() - cpu0
    print(res.model_dump_json(indent=1), flush=True)
    adapters = {"base": None, "candidate": res.adapter_dir}
    adapters = {k: v for k, v in adapters.items() if k in args.models.split(",")}
    t0 = time.perf_counter()
    ev = evaluate_models(refs["test"], tcfg.base_model, adapters, ecfg, str(out / "eval"), labels=labels)
    t_eval = time.perf_counter() - t0
    cpu_eval = _cpu_s() - cpu0 - cpu_train
    load_end = os.getloadavg()
    print()
    print(
        f"dataset={args.dataset} train_rows={res.train_rows} test_rows={ev.rows} train={tcfg.model_dump(exclude_defaults=True)} eval={ecfg.model_dump(exclude_defaults=True)}"
    )
    print(
        f"loadavg start={load[0]:.2f} end={load_end[0]:.2f}; wall: train {t_train:.0f}s ({res.tokens_per_s} tok/s, "
        f"{res.steps} steps), eval {t_eval:.0f}s, total {time.perf_counter() - t_all:.0f}s; CPU seconds: train "
        f"{cpu_train:.0f}, eval {cpu_eval:.0f} (CPU s / 2 ~ wall time on 2 otherwise idle cores)"
    )
    print()
    print("| model | accuracy (free) | accuracy (constrained) | valid label rate | test loss |")
    print("|---|---|---|---|---|")
    for name, m in ev.metrics.items():
        print(
            f"| {name} | {m['accuracy']:.3f} | {m.get('accuracy_constrained', float('nan')):.3f} | {m['valid_label_rate']:.3f} | {m['test_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
