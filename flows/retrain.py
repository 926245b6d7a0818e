"""The retrain flow: the whole pipeline, from source files to a gated model version in the MLflow registry.

This module only wires the stages (``tasks/``) together and into one MLflow run; each helper below is one
segment of the DAG the flow's docstring lists.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from flows.backfill import backfill_feedback
from flows.config import RetrainConfig, flatten, resolve_config
from flows.params import RetrainParams
from tasks import cost, tracking
from tasks.approval_gate import pending_approval, resume_approval, with_approval
from tasks.core import StageResult, discard, format_counts
from tasks.dedup import dedup_task
from tasks.drift import log_drift
from tasks.evaluate import evaluate_task
from tasks.home import data_root, show_each_warning_once, tmp_root
from tasks.ingest import ingest_task
from tasks.lineage import log_lineage
from tasks.pii import scrub_pii_task
from tasks.register import current_champion, register_task
from tasks.runner import data_cluster
from tasks.split import split_task
from tasks.summary import retrain_markdown
from tasks.testset import log_test_set, record_test_set, tag_version, write_plan
from tasks.train import train_task
from tasks.validate import ContractViolation, validate_splits_task, validate_task


def _log_stage(run_id: str, result: StageResult) -> None:
    get_run_logger().info(format_counts(result))
    tracking.log_stage(run_id, result)


def _open_run(cfg: RetrainConfig, params: RetrainParams, base) -> str:
    """The run's MLflow run: tags linking it to this flow run, the resolved config as params and YAML."""
    flow_run_id = str(runtime.flow_run.id or "local")
    run_id = tracking.start_run(
        cfg.name,
        run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            **tracking.flow_run_tags(flow_run_id, str(runtime.flow_run.name or ""), runtime.flow_run.ui_url),
            "loraflow.config": params.config,
            "loraflow.dry_run": str(params.dry_run),
        },
    )
    get_run_logger().info("MLflow run %s (experiment %r); Prefect flow run %s", run_id, cfg.name, flow_run_id)
    base_params = {"base_model.path": base.path, "base_model.name": base.name, "base_model.sha256": base.sha256}
    tracking.log_params(
        run_id,
        {
            **flatten(cfg.dump()),
            **base_params,
            "flow.params": params.model_dump_json(),
            **tracking.environment_params(),
        },
    )
    tracking.client().log_text(run_id, yaml.safe_dump(cfg.dump(), sort_keys=False), "config/resolved.yaml")
    return run_id


def _clean_data(cfg: RetrainConfig, base_path: str, out_dir: str, run_id: str, runner=None) -> list[StageResult]:
    """ingest → scrub_pii → dedup → validate; the raw ingest output is deleted as soon as it is scrubbed.

    ``runner`` (``data.task_runner: dask``) runs the per-row work of the last three in shards on one Dask cluster.
    """
    ingested = ingest_task(cfg.data, os.getcwd(), out_dir, str(tmp_root()))
    _log_stage(run_id, ingested)
    try:
        scrubbed = scrub_pii_task(ingested.data, cfg.pii, out_dir, runner)
    finally:
        discard(ingested.data)
    _log_stage(run_id, scrubbed)
    # The frozen test set decides dedup's test-leak check and the split: plan it once, from the recorded state.
    cfg.split = cfg.split.model_copy(update={"plan": write_plan(scrubbed.data, cfg.split, cfg.name, out_dir)})
    deduped = dedup_task(scrubbed.data, cfg.dedup, cfg.split, out_dir, runner)
    _log_stage(run_id, deduped)
    try:
        validated = validate_task(deduped.data, cfg.validate_, base_path, out_dir, pii=cfg.pii, runner=runner)
    except ContractViolation as e:  # a block rule: keep the evidence in the run, then stop before training
        tracking.log_validation(run_id, e.report)
        if e.report_uri:
            tracking.log_artifact(run_id, e.report_uri, "reports")
        raise
    _log_stage(run_id, validated)
    tracking.log_validation(run_id, json.loads(Path(validated.report_uri).read_text()))
    return [ingested, scrubbed, deduped, validated]


def _split(cfg: RetrainConfig, validated: StageResult, out_dir: str, run_id: str):
    """split → the split-size contract; each split logged as an MLflow dataset."""
    splits = split_task(validated.data, cfg.split, out_dir)
    get_run_logger().info("split: %s", " ".join(f"{k}={v}" for k, v in splits.counts.items()))
    tracking.log_artifact(run_id, splits.report_uri, "reports")
    manifest = record_test_set(cfg.name, cfg.split.plan, splits.test)
    log_test_set(run_id, manifest)
    get_run_logger().info("test set v%s: %d ids (sha256 %s)", manifest["version"], manifest["count"],
                          manifest["sha256"][:12])  # fmt: skip
    validate_splits_task(splits, cfg.validate_)
    for name, ref in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        tracking.log_dataset(run_id, ref, f"{cfg.name}-{name}", {"val": "validation"}.get(name, name))
    return splits


def _train_and_gate(cfg: RetrainConfig, base, splits, stages: list[StageResult], run_dir: Path, run_id: str):
    """train → evaluate (base, candidate, champion on the same test split) → register through the gate."""
    logger = get_run_logger()
    model_name = cfg.register_.model_name or cfg.name
    champion = current_champion(model_name, str(run_dir / "champion"))
    log_drift(run_id, splits.train, champion.run_id if champion else None)  # this quarter's data vs the champion's
    warm = champion.adapter_dir if champion else None  # train.init_from=champion starts from it
    template = cfg.data.prompt_template  # one prompt layout for training, evaluation and (via the manifest) serving
    trained = train_task(splits.train, splits.val, cfg.train, str(run_dir / "adapter"), run_id, champion_adapter=warm,
                         prompt_template=template)  # fmt: skip
    adapters = {"base": None, "candidate": trained.adapter_dir}
    if champion is not None:
        adapters["champion"] = champion.adapter_dir
    evaluation = evaluate_task(splits.test, base.path, adapters, cfg.evaluate, str(run_dir / "eval"),
                               label_sources=[splits.train], prompt_template=template)  # fmt: skip
    for model, metrics in evaluation.metrics.items():
        tracking.log_metrics(run_id, {f"eval.{model}.{k}": v for k, v in metrics.items()})
        logger.info("eval %s: %s", model, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    for path in (evaluation.report_uri, evaluation.report_md_uri, evaluation.chart_uri):
        if path:  # the JSON report, the Markdown report with side-by-side examples, the per-metric chart
            tracking.log_artifact(run_id, path, "eval")
    tracking.log_predictions(run_id, evaluation.predictions_uri)
    tracking.log_charts(run_id, run_dir / "charts", stages, evaluation.predictions_uri,
                        classification=cfg.evaluate.task == "classification")  # fmt: skip
    registration = register_task(run_id, trained, evaluation, cfg.register_, model_name, splits.train.sha256,
                                 evaluated_champion=champion.version if champion else None)  # fmt: skip
    tag_version(registration.model_name, registration.version, run_id)
    logger.info("registered %s version %s, aliases %s; promoted=%s: %s", registration.model_name,
                registration.version, registration.aliases, registration.promoted,
                "; ".join(registration.reasons))  # fmt: skip
    return trained, evaluation, registration


@flow(name="retrain")
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:  # noqa: B008 (Prefect form default)
    """Retrain a LoRA adapter and gate it into the registry.

    Stages, in order: ingest → scrub_pii → dedup → validate → split → train → evaluate → register.
    Every stage logs ``rows_in == kept + quarantined`` and writes a JSON report; the data stages are cached on
    their input's content hash, config and code; everything lands in one MLflow run tagged with this flow run.
    """
    from tasks.base_model import resolve_base_model

    show_each_warning_once()  # also when a worker runs the flow without the CLI
    if params.feedback_start and params.feedback_end:
        backfill_feedback(params.feedback_start, params.feedback_end, config=params.config)
    cfg = resolve_config(params.config, params.as_overrides(), params.sources)
    resumed = pending_approval(cfg.name, str(runtime.flow_run.id or ""))
    if resumed is not None:  # re-started after its approval suspension: straight to the decision, no stage again
        return resume_approval(cfg.register_, resumed)
    base = resolve_base_model(cfg.train.base_model)
    out_dir = str(data_root() / cfg.name)
    run_id = _open_run(cfg, params, base)
    status = "FAILED"
    try:
        with data_cluster(cfg.data.task_runner, cfg.data.dask) as runner:  # None for local; one cluster for dask
            stages = _clean_data(cfg, base.path, out_dir, run_id, runner)
        splits = _split(cfg, stages[-1], out_dir, run_id)
        log_lineage(run_id, stages, splits.assignment)
        counts = {r.stage: dict(r.counts) for r in stages}
        tracking.json_artifact(run_id, counts, "reports/quarantine_counts.json")
        tracking.log_stage_table(run_id, stages, splits.counts)
        about = {"config": params.config, "base_model": base.name or base.path, "splits": splits.counts,
                 "digests": {n: getattr(splits, n).sha256 for n in ("train", "val", "test")}}  # fmt: skip
        tracking.set_description(run_id, tracking.run_description(**about))
        if params.dry_run:
            get_run_logger().info("dry run: data stages done, stopping before training")
            status = "FINISHED"
            return {"mlflow_run_id": run_id, "dry_run": True, "counts": counts}

        run_dir = Path(out_dir) / "runs" / run_id
        trained, evaluation, registration = _train_and_gate(cfg, base, splits, stages, run_dir, run_id)
        usage = cost.cost_metrics(cfg.cost)  # CPU / GPU seconds, tokens trained and generated, peak memory, estimate
        tracking.log_metrics(run_id, usage)
        get_run_logger().info("cost: %s", ", ".join(f"{k.removeprefix('cost.')}={v:g}" for k, v in usage.items()))
        tracking.set_description(run_id, tracking.run_description(
            **about, train=trained.model_dump(), metrics=evaluation.metrics, decision=registration.model_dump()
        ))  # fmt: skip
        create_markdown_artifact(
            retrain_markdown(
                cfg.name,
                tracking.run_link(run_id),
                stages,
                evaluation.metrics,
                registration,
                split=splits.counts,
                train=tracking.train_summary(run_id, trained.model_dump()),
                cost=usage,
            ),
            key=f"retrain-{cfg.name}".lower().replace("_", "-"),
            description="loraflow retrain summary",
        )
        status = "FINISHED"
        result = {"mlflow_run_id": run_id, "model_name": registration.model_name, "version": registration.version,
                  "aliases": list(registration.aliases), "promoted": registration.promoted,
                  "eval": evaluation.metrics, "counts": counts}  # fmt: skip
    finally:
        tracking.end_run(run_id, status)
    if registration.awaiting_approval:  # the gate passed: the owner decides through the Prefect UI's form
        result = with_approval(result, cfg.register_, registration, evaluation)
    return result
