"""The evaluate stage: baselines, candidate and champion on the same frozen test prompts, one base model load.

The base model is loaded once; adapters are attached with PEFT (``load_adapter`` / ``set_adapter``) and the
baselines are scored with adapters disabled, never reloaded. For generation and json configs the test records
are grouped by prompt: each distinct prompt is generated once and scored against all of its references.

Outputs in ``out_dir``: ``predictions.parquet`` / ``.csv`` (id, model, prompt, target, prediction, correct, ...;
the prompts are the already-scrubbed test records), ``eval_report.json`` (metrics, intervals, forgetting,
judge), ``eval_report.md`` (side-by-side examples) and ``eval_metrics.png`` (a bar chart per metric).
"""

import json
import time
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.base_model import resolve_base_model
from tasks.core import DatasetRef, StageError, atomic_write_parquet, read_records
from tasks.evaluate.baselines import pick_fewshot, with_fewshot
from tasks.evaluate.config import EvalConfig, EvalResult
from tasks.evaluate.forgetting import forgetting_delta
from tasks.evaluate.generation import (
    LabelTrie,
    end_token_id,
    label_token_ids,
    max_new_from_lengths,
    score_all,
)
from tasks.evaluate.metrics import classification_metrics, json_metrics, single_reference_rouge, text_metrics
from tasks.evaluate.report import write_report
from tasks.evaluate.significance import candidate_intervals
from tasks.prompting import render_full, render_prompt

PRIMARY_METRIC = {"classification": "accuracy_constrained", "generation": "rougeL", "json": "field_f1"}
ZENML_ROWS = 50  # ZenML's LoRA recipe scores ROUGE on the first 50 test rows, one reference each


def _adapter_base_sha(adapter_dir: str) -> str | None:
    manifest = Path(adapter_dir) / "loraflow-adapter.json"
    if manifest.exists():
        return json.loads(manifest.read_text()).get("base_model_sha256")
    return None


def _test_items(test: DatasetRef, cfg: EvalConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, rows): one item per prompt (all its references) for generation/json, one per row otherwise."""
    df = read_records(test)
    if len(df) == 0:
        raise StageError(f"the test split {test.uri} is empty: there is nothing to evaluate the models on.")
    df = df.sort_values("id", kind="stable").reset_index(drop=True)
    df["prompt_msgs"] = [[{"role": m["role"], "content": m["content"]} for m in msgs[:-1]] for msgs in df["messages"]]
    df["target"] = [str(msgs[-1]["content"]).strip() for msgs in df["messages"]]
    df["key"] = [json.dumps(p, sort_keys=True) for p in df["prompt_msgs"]] if cfg.task != "classification" else df["id"]
    items = (
        df.groupby("key", sort=False)
        .agg(id=("id", "first"), prompt_msgs=("prompt_msgs", "first"), refs=("target", list))
        .reset_index()
    )
    if cfg.max_rows is not None and len(items) > cfg.max_rows:
        items = items.sample(n=cfg.max_rows, random_state=cfg.seed)
    items = items.sort_values("id", kind="stable").reset_index(drop=True)
    rows = df[df["key"].isin(set(items["key"]))].reset_index(drop=True)
    return items, rows


def _pool(label_sources: list[DatasetRef] | None) -> pd.DataFrame:
    frames = [read_records(r) for r in label_sources or []]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "messages"])


def _load(base_path: str, cfg: EvalConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    return tokenizer, model.eval()


class _Scorer:
    """Holds the base model and the PEFT wrapper; scores a named model with or without an adapter."""

    def __init__(self, model, tokenizer, base_sha: str):
        self.model, self.tokenizer, self.base_sha, self.peft = model, tokenizer, base_sha, None

    def check(self, adapter: str) -> str | None:
        sha = _adapter_base_sha(adapter)
        if sha is not None and sha != self.base_sha:
            return f"adapter was trained on base weights {sha[:12]}, this run's base is {self.base_sha[:12]}"
        if not (Path(adapter) / "adapter_config.json").exists():
            return f"no adapter_config.json in {adapter}"
        return None

    def activate(self, name: str, adapter: str | None):
        """(model to call, context manager): the adapter set active, or the base with adapters disabled."""
        from contextlib import nullcontext

        if adapter is None:
            return (self.peft or self.model), (self.peft.disable_adapter() if self.peft else nullcontext())
        if self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(self.model, adapter, adapter_name=name, is_trainable=False).eval()
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(adapter, adapter_name=name, is_trainable=False)
        self.peft.set_adapter(name)
        return self.peft, nullcontext()


def _plan(adapters: dict[str, str | None], cfg: EvalConfig, fewshot: list[dict]) -> list[tuple[str, str | None, bool]]:
    """(name, adapter, few-shot prompt?) in scoring order; base_fewshot right after base."""
    plan = []
    for name, adapter in adapters.items():
        plan.append((name, adapter, False))
        if name == "base" and fewshot and "base_fewshot" not in adapters:
            plan.append(("base_fewshot", None, True))
    return plan


def _budget(cfg: EvalConfig, tokenizer, pool: pd.DataFrame, items: pd.DataFrame, trie_labels) -> int:
    if cfg.max_new_tokens:
        return cfg.max_new_tokens
    if cfg.task == "classification":
        return max(len(x) for x in trie_labels) + 4
    answers = (
        [str(m[-1]["content"]) for m in pool["messages"]] if len(pool) else [r for refs in items["refs"] for r in refs]
    )
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
    return max_new_from_lengths(lengths)


def _task_metrics(cfg: EvalConfig, items: pd.DataFrame, free, constrained, label_set, schema):
    if cfg.task == "classification":
        return classification_metrics(free, [r[0] for r in items["refs"]], set(label_set), constrained)
    if cfg.task == "json":
        return json_metrics(free, [r[0] for r in items["refs"]], schema)
    return text_metrics(free, list(items["refs"]))


def _table(name: str, items: pd.DataFrame, free: list[str], constrained: list[str] | None) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "id": items["id"],
            "model": name,
            "prompt": [p[-1]["content"] if p else "" for p in items["prompt_msgs"]],
            "target": [r[0] for r in items["refs"]],
            "prediction": free,
            "correct": [p in refs for p, refs in zip(free, items["refs"], strict=True)],
        }
    )
    if any(len(r) > 1 for r in items["refs"]):
        table["references"] = [json.dumps(r) for r in items["refs"]]
    if constrained is not None:
        table["prediction_constrained"] = constrained
        table["correct_constrained"] = [p == r[0] for p, r in zip(constrained, items["refs"], strict=True)]
    return table


def _load_schema(path: str | None) -> dict | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = Path(__file__).resolve().parents[2] / path
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StageError(
            f"evaluate.json_schema {path!r}: cannot read a JSON Schema there ({type(e).__name__})."
        ) from None


def _label_set(cfg: EvalConfig, items: pd.DataFrame, pool: pd.DataFrame, labels: list[str] | None) -> list[str]:
    if cfg.task != "classification":
        return []
    derived = {r[0] for r in items["refs"]}
    derived.update(str(m[-1]["content"]).strip() for m in pool["messages"] if len(m))
    return sorted(set(cfg.labels or labels or derived))


def _score_models(scorer: _Scorer, plan, items, cfg, fewshot, label_set, schema, template, rows):
    """Generate and score every planned model; returns (metrics, per-item stats, tables, predictions, ...)."""
    tok = scorer.tokenizer
    trie, trie_labels = None, []
    if cfg.task == "classification":
        trie_labels = label_token_ids(tok, label_set)
        trie = LabelTrie(trie_labels, end_token_id(tok)) if cfg.constrained else None
    max_new = _budget(cfg, tok, scorer.pool, items, trie_labels)
    texts = {}
    for shots in (False, True):
        prompts = [with_fewshot(p, fewshot) if shots else p for p in items["prompt_msgs"]]
        texts[shots] = (
            [render_prompt(tok, p, template) for p in prompts],
            [render_full(tok, p, r[0], template) for p, r in zip(prompts, items["refs"], strict=True)],
        )
    metrics, stats, tables, preds, timings, skipped = {}, {}, [], {}, {}, {}
    for name, adapter, shots in plan:
        t0 = time.perf_counter()
        if adapter is not None and (why := scorer.check(adapter)):
            skipped[name] = why
            continue
        model, ctx = scorer.activate(name, adapter)
        with ctx:
            free, constrained, loss = score_all(model, tok, *texts[shots], max_new, cfg.batch_size, trie=trie)
        m, stats[name] = _task_metrics(cfg, items, free, constrained, label_set, schema)
        m["test_loss"] = float(loss)
        if cfg.task == "generation":
            by_key = dict(zip(items["key"], free, strict=True))
            first = rows.head(ZENML_ROWS)
            m["rougeL_first50_single_ref"] = single_reference_rouge(
                [by_key[k] for k in first["key"]], list(first["target"])
            )
        metrics[name] = {k: round(float(v), 6) for k, v in m.items()}
        preds[name] = free
        tables.append(_table(name, items, free, constrained))
        timings[name] = round(time.perf_counter() - t0, 2)
    return metrics, stats, tables, preds, timings, skipped, max_new


def evaluate_models(
    test: DatasetRef,
    base_model: str,
    adapters: dict[str, str | None],
    cfg: EvalConfig,
    out_dir: str,
    labels: list[str] | None = None,
    label_sources: list[DatasetRef] | None = None,
    prompt_template: str | None = None,
) -> EvalResult:
    """Score the baselines and each named model on the test split and write the predictions, report and chart.

    Args:
        test: the frozen test split.
        base_model: the base model (folder, model-cache name or hub id) every adapter was trained on.
        adapters: model name → adapter folder, or None for the base model as-is
            (e.g. ``{"base": None, "candidate": ".../adapter", "champion": ".../champion"}``). With a ``base``
            entry and ``cfg.fewshot_k > 0`` a ``base_fewshot`` row is scored right after it.
        cfg: evaluation settings.
        out_dir: folder for the predictions table, ``eval_report.json`` / ``.md`` and the chart.
        labels: label set for constrained decoding when ``cfg.labels`` is unset.
        label_sources: the train split(s): the label set (with the test split's answers) when neither
            ``cfg.labels`` nor ``labels`` is given, the few-shot examples and the generation budget.
        prompt_template: ``data.prompt_template`` (None / ``chat``: the model's chat template).

    Returns:
        :class:`EvalResult`: ``metrics[name]`` per task (see :mod:`tasks.evaluate.metrics`) plus ``test_loss``;
        the candidate's paired intervals against every other row; the forgetting delta; the judge's verdicts.
    """
    base = resolve_base_model(base_model)
    items, rows = _test_items(test, cfg)
    pool = _pool(label_sources)
    label_set = _label_set(cfg, items, pool, labels)
    tokenizer, model = _load(base.path, cfg)
    scorer = _Scorer(model, tokenizer, base.sha256)
    scorer.pool = pool
    fewshot = pick_fewshot(pool, cfg.fewshot_k, cfg.seed, cfg.fewshot_pick, cfg.task) if "base" in adapters else []
    plan = _plan(adapters, cfg, fewshot)
    schema = _load_schema(cfg.json_schema)
    metrics, stats, tables, preds, timings, skipped, max_new = _score_models(
        scorer, plan, items, cfg, fewshot, label_set, schema, prompt_template, rows
    )
    _external_baseline(cfg, items, label_set, schema, metrics, stats, tables, preds, skipped)
    intervals = (
        candidate_intervals(stats, "candidate", cfg.bootstrap, cfg.confidence, cfg.seed) if cfg.bootstrap else {}
    )
    forgetting = None
    if cfg.forgetting_set and adapters.get("candidate") and "candidate" in metrics:
        forgetting = forgetting_delta(scorer, adapters["candidate"], cfg, prompt_template)
    judge = _run_judge(cfg, items, preds, metrics) if cfg.judge else None
    return _write_outputs(
        out_dir,
        test,
        cfg,
        base,
        adapters,
        items,
        label_set,
        metrics,
        intervals,
        forgetting,
        judge,
        tables,
        preds,
        timings,
        skipped,
        max_new,
        fewshot,
    )


def _external_baseline(cfg, items, label_set, schema, metrics, stats, tables, preds, skipped) -> None:
    """Score a hosted model on the same prompts as one more baseline row (``cfg.external``)."""
    if cfg.external is None:
        return
    from tasks.evaluate.openai_client import ChatClient, EndpointError

    ext = cfg.external
    client = ChatClient(ext.url, ext.model, ext.api_key_env, ext.api_key_secret, ext.timeout_s)
    if len(items) > ext.max_calls:
        skipped[ext.name] = f"{len(items)} test prompts exceed evaluate.external.max_calls={ext.max_calls}"
        return
    try:
        free = [client.complete(list(p), max_tokens=256).strip() for p in items["prompt_msgs"]]
    except EndpointError as e:
        skipped[ext.name] = str(e)
        return
    m, stats[ext.name] = _task_metrics(cfg, items, free, None, label_set, schema)
    metrics[ext.name] = {k: round(float(v), 6) for k, v in m.items()}
    preds[ext.name] = free
    tables.append(_table(ext.name, items, free, None))


def _run_judge(cfg: EvalConfig, items: pd.DataFrame, preds: dict[str, list[str]], metrics) -> dict | None:
    from tasks.evaluate.baselines import is_baseline
    from tasks.evaluate.judge import judge_pairwise

    if "candidate" not in preds:
        return None
    gate_key = PRIMARY_METRIC[cfg.task]
    baselines = [n for n in preds if is_baseline(n)]
    if cfg.judge.against == "champion_or_best_baseline" and "champion" in preds:
        other = "champion"
    elif baselines:
        other = max(baselines, key=lambda n: metrics[n].get(gate_key, float("-inf")))
    else:
        return None
    prompts = [p[-1]["content"] if p else "" for p in items["prompt_msgs"]]
    result = judge_pairwise(prompts, preds["candidate"], preds[other], cfg.judge, seed=cfg.seed)
    return {**result, "against": other}


def _write_outputs(
    out_dir,
    test,
    cfg,
    base,
    adapters,
    items,
    label_set,
    metrics,
    intervals,
    forgetting,
    judge,
    tables,
    preds,
    timings,
    skipped,
    max_new,
    fewshot,
) -> EvalResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    pq, csv = out / "predictions.parquet", out / "predictions.csv"
    atomic_write_parquet(predictions, pq)
    predictions.to_csv(csv, index=False)
    report = {
        "stage": "evaluate",
        "test": test.model_dump(),
        "rows": len(items),
        "task": cfg.task,
        "labels": len(label_set),
        "base_model": base.path,
        "base_model_sha256": base.sha256,
        "adapters": adapters,
        "metrics": metrics,
        "intervals": intervals,
        "confidence": cfg.confidence,
        "forgetting": forgetting,
        "judge": judge,
        "fewshot_ids_k": len(fewshot),
        "seconds": timings,
        "skipped": skipped,
        "max_new_tokens": max_new,
    }
    report_path = out / "eval_report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    md, chart = write_report(out, report, items, preds, cfg.report_examples)
    return EvalResult(
        metrics=metrics,
        predictions_uri=str(pq),
        predictions_csv_uri=str(csv),
        report_uri=str(report_path),
        rows=len(items),
        labels=len(label_set),
        skipped=skipped,
        intervals=intervals,
        forgetting=forgetting,
        judge=judge,
        report_md_uri=str(md),
        chart_uri=str(chart) if chart else None,
    )


@task(name="evaluate")
def evaluate_task(
    test: DatasetRef,
    base_model: str,
    adapters: dict[str, str | None],
    cfg: EvalConfig,
    out_dir: str,
    labels: list[str] | None = None,
    label_sources: list[DatasetRef] | None = None,
    prompt_template: str | None = None,
) -> EvalResult:
    """Prefect wrapper around :func:`evaluate_models` (no caching: adapters change every run)."""
    return evaluate_models(
        test,
        base_model,
        adapters,
        cfg,
        out_dir,
        labels=labels,
        label_sources=label_sources,
        prompt_template=prompt_template,
    )
