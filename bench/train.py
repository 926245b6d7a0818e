"""Training benchmarks on the flow's own splits: model quality, and loraflow's train stage vs plain TRL.

The splits come from the retrain flow's data stages (ingest → PII scrub → dedup with decontamination → data
contract → split), run as ``loraflow prepare`` in a private ``LORAFLOW_HOME`` (cached: a second call is quick),
and are read back from that run's MLflow dataset inputs: exactly the rows ``loraflow run`` trains and tests on.

    # quality: train with the config's settings, evaluate base vs candidate on the flow's test split
    .venv/bin/python bench/train.py --config configs/demo.yaml
    # speed: loraflow's train stage vs TRL SFTTrainer + PEFT as the TRL docs set it up, same rows and steps
    .venv/bin/python bench/train.py --config configs/demo.yaml --compare-trl --steps 12
    .venv/bin/python bench/train.py --config configs/banking77.yaml --compare-trl --steps 12

``--compare-trl`` runs each row in its own process, back to back (peak RSS is per row; the machine is shared, so
the table carries the load average during each row and the ratio is what counts). The TRL row is what a user
writes from the TRL docs (``SFTConfig`` defaults: gradient checkpointing on, bf16 autocast; the PEFT example's
``lora_dropout=0.05`` and ``learning_rate=2e-4``), with ``use_cpu=True`` (needed on a CPU-only machine), the same
LoRA rank / alpha / target modules, rows per step and number of optimizer steps as loraflow's row.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "LORAFLOW_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    }
    shared_cache = ROOT / ".loraflow" / "models"
    if "LORAFLOW_MODEL_CACHE" not in env and shared_cache.is_dir():
        env["LORAFLOW_MODEL_CACHE"] = str(shared_cache)  # reuse a prepared base model instead of converting again
    return env


def flow_splits(config: str, home: Path, overrides: list[str], reuse: bool = False) -> dict:
    """Run the flow's data stages (``loraflow prepare``) and return the split refs its MLflow run logged.

    With ``reuse``, the home's latest run of that config is read without running the stages again.
    """
    env = _env(home)
    cli = [sys.executable, "-m", "loraflow"]
    if not reuse:
        subprocess.run([*cli, "models", "prepare"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sets = [a for kv in overrides for a in ("--set", kv)]
        t0 = time.perf_counter()
        subprocess.run([*cli, "prepare", "--config", config, *sets], env=env, cwd=ROOT, check=True)
        print(f"data stages (loraflow prepare): {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    import mlflow
    import yaml

    name = yaml.safe_load((ROOT / config).read_text())["name"]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(name)
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=20):
        refs = {
            i.dataset.name.rsplit("-", 1)[-1]: json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs
        }
        if {"train", "val", "test"} <= set(refs):  # the newest run that got as far as the split
            return refs
    raise SystemExit(f"no run in {home} logged its splits: run without --reuse-splits")


def _ref(uri: str):
    from tasks.core import DatasetRef, file_sha256, read_records

    return DatasetRef(uri=uri, sha256=file_sha256(uri), rows=len(read_records(uri)))


def _capped_val(uri: str, rows: int | None, seed: int, out: Path) -> str:
    """The val rows both rows are scored on: the train stage's own ``max_val_rows`` sample."""
    from tasks.core import read_records, write_records

    df = read_records(uri)
    if rows is not None and len(df) > rows:
        df = df.sample(n=rows, random_state=seed)
    return write_records(df.reset_index(drop=True), out / "val-scored.parquet").uri


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mean_tail(history: list[dict], key: str = "loss", n: int = 10) -> float | None:
    vals = [h[key] for h in history if key in h and "train_runtime" not in h]
    return float(sum(vals[-n:]) / len(vals[-n:])) if vals else None


def row_loraflow(job: dict) -> dict:
    """loraflow's train stage function, as the flow calls it (its defaults + the config's train section)."""
    from tasks.train import TrainConfig, train_adapter

    cfg = TrainConfig(**job["train"])
    curve: dict[int, float] = {}
    tokens, val_s = [0.0], [0.0]

    def on_log(logs: dict, step: int) -> None:
        if "val_loss" in logs:
            curve[step] = logs["val_loss"]
            val_s[0] += logs.get("eval_runtime", 0.0)
        if "num_tokens" in logs and "val_loss" not in logs:
            tokens[0] = logs["num_tokens"]

    out = Path(job["out"]) / "loraflow"
    cpu0 = time.process_time()
    res = train_adapter(_ref(job["train_uri"]), _ref(job["val_uri"]), cfg, str(out / "adapter"), on_log=on_log,
                        checkpoint_root=str(out / "ck"))  # fmt: skip
    last = curve[max(curve)] if curve else None
    return {"tokens": tokens[0], "train_s": res.runtime_s, "cpu_s": time.process_time() - cpu0, "steps": res.steps, "train_loss": res.train_loss,
            "val_loss": res.val_loss, "val_loss_last": last, "best_step": res.best_step, "val_s": val_s[0],
            "val_passes": len(curve)}  # fmt: skip


def row_trl(job: dict) -> dict:
    """Plain TRL + PEFT as the TRL docs show it (SFTConfig defaults), on the same rows, LoRA and step count."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tasks.core import read_records
    from tasks.home import model_cache
    from tasks.train import TrainConfig, to_prompt_completion

    cfg = TrainConfig(**job["train"])
    base = cfg.base_model if Path(cfg.base_model).is_dir() else str(model_cache() / cfg.base_model)
    train_ds = Dataset.from_list(to_prompt_completion(read_records(job["train_uri"])))
    val_ds = Dataset.from_list(to_prompt_completion(read_records(job["val_uri"])))
    args = SFTConfig(
        output_dir=str(Path(job["out"]) / "trl"),
        use_cpu=True,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=2e-4,
        report_to="none",
        seed=cfg.seed,
    )
    peft = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    trainer = SFTTrainer(model=base, args=args, train_dataset=train_ds, eval_dataset=val_ds, peft_config=peft)
    t0, cpu0 = time.perf_counter(), time.process_time()
    trainer.train()
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    history = trainer.state.log_history
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    val = float(trainer.evaluate()["eval_loss"])
    return {"tokens": tokens, "train_s": round(train_s, 2), "cpu_s": cpu_s, "steps": int(trainer.state.global_step),
            "train_loss": _mean_tail(history), "val_loss": val, "val_loss_last": val, "best_step": None,
            "val_s": 0.0, "val_passes": 0}  # fmt: skip


def run_row(name: str, job: dict) -> dict:
    """One row in a fresh process (its own peak RSS), with the load average around it."""
    job_file = Path(job["out"]) / f"job-{len(list(Path(job['out']).glob('job-*')))}.json"
    job_file.write_text(json.dumps(job))
    load0 = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, __file__, "--row", name, "--job", str(job_file)], cwd=ROOT, env=job["env"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"row {name} failed")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}"}


def compare_trl(args, refs: dict, tmp: Path, env: dict) -> None:
    import yaml

    from tasks.train import TrainConfig

    file_cfg = yaml.safe_load((ROOT / args.config).read_text()).get("train") or {}
    train = {**file_cfg, **_parse(args.set), "max_steps": args.steps}
    cfg = TrainConfig(**train)
    val_uri = _capped_val(refs["val"], cfg.max_val_rows, cfg.seed, tmp)
    job = {"train": train, "train_uri": refs["train"], "val_uri": val_uri, "out": str(tmp), "env": env}
    rows = {}
    for name in args.rows.split(","):
        rows[name] = run_row(name, job)
        print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
    print()
    print(f"config={args.config} steps={args.steps} rows/step={cfg.batch_size * cfg.grad_accum} "
          f"val rows={cfg.max_val_rows} train={json.dumps(_parse(args.set))}")  # fmt: skip
    print()
    # Wall time on a shared machine depends on the neighbours; CPU seconds much less: both are shown. The TRL row
    # computes its val loss once after training, outside its time; loraflow's val passes (best adapter, early
    # stopping) are inside its time, and shown apart too.
    print("| trainer | tokens/s | ratio | tokens per CPU s | ratio | val passes in the time | tokens/s outside them "
          "| ratio | peak RSS | s/step | final train loss | val loss | load avg |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    ref = rows.get("trl")

    def rate(r: dict, seconds: str) -> float:
        return r["tokens"] / max(r[seconds], 1e-9)

    for name, r in rows.items():
        r["step_s"] = r["train_s"] - r.get("val_s", 0.0)
        tps, tpc, tpx = rate(r, "train_s"), rate(r, "cpu_s"), rate(r, "step_s")
        ok = ref and ref["tokens"]
        ratio = tps / rate(ref, "train_s") if ok else float("nan")
        ratio_cpu = tpc / rate(ref, "cpu_s") if ok else float("nan")
        ratio_x = tpx / rate(ref, "step_s") if ok else float("nan")
        val = f"{r['val_loss']:.4f}" + (f" (last step {r['val_loss_last']:.4f})" if r["best_step"] else "")
        passes = f"{r.get('val_passes', 0)}, {r.get('val_s', 0.0):.1f} s"
        print(f"| {name} | {tps:.1f} | {ratio:.2f}x | {tpc:.1f} | {ratio_cpu:.2f}x | {passes} | {tpx:.1f} | "
              f"{ratio_x:.2f}x | {r['peak_rss_mb'] / 1024:.2f} GB | {r['train_s'] / max(1, r['steps']):.1f} | "
              f"{r['train_loss']:.4f} | {val} | {r['load']} |")  # fmt: skip


def quality(args, refs: dict, tmp: Path) -> None:
    """Train with the config's settings and score base vs candidate on the flow's test split."""
    import yaml

    from tasks.evaluate import EvalConfig, evaluate_models
    from tasks.train import TrainConfig, train_adapter

    raw = yaml.safe_load((ROOT / args.config).read_text())
    tcfg = TrainConfig(**{**(raw.get("train") or {}), **_parse(args.set)})
    ecfg = EvalConfig(**{**(raw.get("evaluate") or {}), **_parse(args.eval_set)})
    train, val, test = (_ref(refs[s]) for s in ("train", "val", "test"))
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    res = train_adapter(train, val, tcfg, str(tmp / "adapter"), checkpoint_root=str(tmp / "ck"))
    t_train, t1 = time.perf_counter() - t0, time.perf_counter()
    ev = evaluate_models(test, tcfg.base_model, {"base": None, "candidate": res.adapter_dir}, ecfg,
                         str(tmp / "eval"), label_sources=[train])  # fmt: skip
    t_eval = time.perf_counter() - t1
    print(f"\nconfig={args.config} train_rows={res.train_rows} test_rows={ev.rows} steps={res.steps} "
          f"best_step={res.best_step} tokens/s={res.tokens_per_s} train {t_train:.0f} s, eval {t_eval:.0f} s, "
          f"loadavg {load0:.1f}-{os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| model | accuracy (free) | accuracy (constrained) | valid label rate | test loss |")
    print("|---|---|---|---|---|")
    for name, m in ev.metrics.items():
        print(f"| {name} | {m['accuracy']:.3f} | {m.get('accuracy_constrained', float('nan')):.3f} | "
              f"{m['valid_label_rate']:.3f} | {m['test_loss']:.3f} |")  # fmt: skip


def _parse(kvs: list[str]) -> dict:
    out = {}
    for kv in kvs:
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="the retrain config whose data stages to run")
    ap.add_argument("--home", default=None, help="LORAFLOW_HOME for the data stages (default: a temp folder)")
    ap.add_argument("--split-set", action="append", default=[], help="config override for the data stages")
    ap.add_argument(
        "--reuse-splits", action="store_true", help="use the splits of --home's latest prepare (no data stages)"
    )
    ap.add_argument("--set", action="append", default=[], help="TrainConfig field=value (JSON values)")
    ap.add_argument("--eval-set", action="append", default=[], help="EvalConfig field=value")
    ap.add_argument("--compare-trl", action="store_true", help="loraflow's train stage vs plain TRL, side by side")
    ap.add_argument("--steps", type=int, default=12, help="--compare-trl: optimizer steps per row")
    ap.add_argument(
        "--rows",
        default="trl,loraflow",
        help="--compare-trl: rows in order; loraflow+FIELD=VALUE is loraflow with one train setting changed",
    )
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:  # a child process: one row of the comparison
        job = json.loads(Path(args.job).read_text())
        kind, *levers = args.row.split("+")  # "loraflow+precision=bf16": one lever changed, to see what it pays
        job["train"] = {**job["train"], **_parse(levers)}
        out = {"loraflow": row_loraflow, "trl": row_trl}[kind](job)
        print(json.dumps({**out, "peak_rss_mb": _peak_rss_mb()}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="loraflow-bench-train-"))
    home = Path(args.home) if args.home else tmp / "home"
    refs = flow_splits(args.config, home, args.split_set, reuse=args.reuse_splits)
    env = _env(home)
    os.environ.update({k: env[k] for k in ("LORAFLOW_HOME", "MLFLOW_TRACKING_URI", "LORAFLOW_MODEL_CACHE") if k in env})
    if args.compare_trl:
        compare_trl(args, refs, tmp, env)
    else:
        quality(args, refs, tmp)


if __name__ == "__main__":
    main()
