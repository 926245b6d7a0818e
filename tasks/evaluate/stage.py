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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.base_model import resolve_base_model
from tasks.core import DatasetRef, StageError, atomic_write_parquet, read_records
from tasks.evaluate.baselines import pick_fewshot, with_fewshot
from tasks.evaluate.config import EvalConfig, EvalResult
from tasks.evaluate.forgetting import default_set_missing, forgetting_delta
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

    def __init__(self, model, tokenizer, base_sha: str, pool: pd.DataFrame):
        self.model, self.tokenizer, self.base_sha, self.peft = model, tokenizer, base_sha, None
        self.pool = pool  # the train records: few-shot examples and the generation budget

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


@dataclass
class _Run:
    """What one evaluation accumulates: the test items, and per scored model its metrics, stats and answers."""

    items: pd.DataFrame
    rows: pd.DataFrame
    label_set: list[str]
    schema: dict | None
    fewshot: list[dict]
    max_new: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)
    tables: list[pd.DataFrame] = field(default_factory=list)
    preds: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, cfg: EvalConfig, name: str, free: list[str], constrained: list[str] | None, extra: dict) -> None:
        """Score one model's answers and keep them."""
        m, self.stats[name] = _task_metrics(cfg, self.items, free, constrained, self.label_set, self.schema)
        m.update(extra)
        if cfg.task == "generation":
            by_key = dict(zip(self.items["key"], free, strict=True))
            first = self.rows.head(ZENML_ROWS)
            m["rougeL_first50_single_ref"] = single_reference_rouge(
                [by_key[k] for k in first["key"]], list(first["target"])
            )
        self.metrics[name] = {k: round(float(v), 6) for k, v in m.items()}
        self.preds[name] = free
        self.tables.append(_table(name, self.items, free, constrained))


def _score_models(scorer: _Scorer, plan, run: _Run, cfg: EvalConfig, template: str | None) -> None:
    """Generate with and score every planned model, into ``run``."""
    tok = scorer.tokenizer
    trie, trie_labels, end_id = None, [], end_token_id(tok, template)
    if cfg.task == "classification":
        trie_labels = label_token_ids(tok, run.label_set)
        trie = LabelTrie(trie_labels, end_id) if cfg.constrained else None
    run.max_new = _budget(cfg, tok, scorer.pool, run.items, trie_labels)
    texts = {}
    for shots in (False, True):
        prompts = [with_fewshot(p, run.fewshot) if shots else p for p in run.items["prompt_msgs"]]
        texts[shots] = (
            [render_prompt(tok, p, template) for p in prompts],
            [render_full(tok, p, r[0], template) for p, r in zip(prompts, run.items["refs"], strict=True)],
        )
    for name, adapter, shots in plan:
        t0 = time.perf_counter()
        if adapter is not None and (why := scorer.check(adapter)):
            run.skipped[name] = why
            continue
        model, ctx = scorer.activate(name, adapter)
        with ctx:
            free, constrained, loss = score_all(
                model, tok, *texts[shots], run.max_new, cfg.batch_size, trie=trie, desc=f"eval.{name}", end_id=end_id
            )
        run.add(cfg, name, free, constrained, {"test_loss": float(loss)})
        run.timings[name] = round(time.perf_counter() - t0, 2)


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
    tokenizer, model = _load(base.path, cfg)
    scorer = _Scorer(model, tokenizer, base.sha256, pool)
    fewshot = pick_fewshot(pool, cfg.fewshot_k, cfg.seed, cfg.fewshot_pick, cfg.task) if "base" in adapters else []
    run = _Run(items, rows, _label_set(cfg, items, pool, labels), _load_schema(cfg.json_schema), fewshot)
    _score_models(scorer, _plan(adapters, cfg, fewshot), run, cfg, prompt_template)
    _external_baseline(cfg, run)
    intervals = {}
    if cfg.bootstrap:
        intervals = candidate_intervals(run.stats, "candidate", cfg.bootstrap, cfg.confidence, cfg.seed)
    forgetting = None
    if default_set_missing(cfg.forgetting_set):
        run.skipped["forgetting"] = f"the default regression set {cfg.forgetting_set} is not in this installation"
    elif cfg.forgetting_set and adapters.get("candidate") and "candidate" in run.metrics:
        forgetting = forgetting_delta(scorer, adapters["candidate"], cfg, prompt_template)
    judge = _run_judge(cfg, run) if cfg.judge else None
    extras = {"intervals": intervals, "forgetting": forgetting, "judge": judge}
    return _write_outputs(Path(out_dir), test, cfg, base, adapters, run, extras)


def _external_baseline(cfg: EvalConfig, run: _Run) -> None:
    """Score a hosted model on the same prompts as one more baseline row (``cfg.external``)."""
    if cfg.external is None:
        return
    from tasks.evaluate.openai_client import ChatClient, EndpointError

    ext = cfg.external
    client = ChatClient(ext.url, ext.model, ext.api_key_env, ext.api_key_secret, ext.timeout_s)
    if len(run.items) > ext.max_calls:
        run.skipped[ext.name] = f"{len(run.items)} test prompts exceed evaluate.external.max_calls={ext.max_calls}"
        return
    try:
        free = [client.complete(list(p), max_tokens=256).strip() for p in run.items["prompt_msgs"]]
    except EndpointError as e:
        run.skipped[ext.name] = str(e)
        return
    run.add(cfg, ext.name, free, None, {})


def _run_judge(cfg: EvalConfig, run: _Run) -> dict | None:
    from tasks.evaluate.baselines import is_baseline
    from tasks.evaluate.judge import judge_pairwise

    if "candidate" not in run.preds:
        return None
    key = PRIMARY_METRIC[cfg.task]
    baselines = [n for n in run.preds if is_baseline(n)]
    if cfg.judge.against == "champion_or_best_baseline" and "champion" in run.preds:
        other = "champion"
    elif baselines:
        other = max(baselines, key=lambda n: run.metrics[n].get(key, float("-inf")))
    else:
        return None
    prompts = [p[-1]["content"] if p else "" for p in run.items["prompt_msgs"]]
    result = judge_pairwise(prompts, run.preds["candidate"], run.preds[other], cfg.judge, seed=cfg.seed)
    return {**result, "against": other}


def _write_outputs(out: Path, test: DatasetRef, cfg: EvalConfig, base, adapters, run: _Run, extras: dict) -> EvalResult:
    out.mkdir(parents=True, exist_ok=True)
    predictions = pd.concat(run.tables, ignore_index=True) if run.tables else pd.DataFrame()
    pq, csv = out / "predictions.parquet", out / "predictions.csv"
    atomic_write_parquet(predictions, pq)
    predictions.to_csv(csv, index=False)
    report = {
        "stage": "evaluate",
        "test": test.model_dump(),
        "rows": len(run.items),
        "task": cfg.task,
        "labels": len(run.label_set),
        "base_model": base.path,
        "base_model_sha256": base.sha256,
        "adapters": adapters,
        "metrics": run.metrics,
        "confidence": cfg.confidence,
        "fewshot_ids_k": len(run.fewshot),
        "seconds": run.timings,
        "skipped": run.skipped,
        "max_new_tokens": run.max_new,
        **extras,
    }
    report_path = out / "eval_report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    md, chart = write_report(out, report, run.items, run.preds, cfg.report_examples)
    return EvalResult(
        metrics=run.metrics,
        predictions_uri=str(pq),
        predictions_csv_uri=str(csv),
        report_uri=str(report_path),
        rows=len(run.items),
        labels=len(run.label_set),
        skipped=run.skipped,
        report_md_uri=str(md),
        chart_uri=str(chart) if chart else None,
        **extras,
    )


# The Prefect task is the function itself (no caching: adapters change every run).
evaluate_task = task(name="evaluate")(evaluate_models)
