"""The retrain flow: the whole pipeline, from source files to a gated model version in the MLflow registry."""

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from flows.backfill import backfill_feedback
from flows.config import RetrainConfig, flatten, load_config
from flows.params import RetrainParams
from tasks import tracking
from tasks.core import StageResult, discard, format_counts
from tasks.dedup import dedup_task
from tasks.evaluate import evaluate_task
from tasks.home import data_root, loraflow_home, tmp_root
from tasks.ingest import SourceConfig, ingest_task
from tasks.pii import scrub_pii_task
from tasks.register import current_champion, register_task
from tasks.split import split_task
from tasks.train import train_task
from tasks.validate import ContractViolation, validate_splits_task, validate_task


def resolve_config(params: RetrainParams) -> RetrainConfig:
    """The config file plus the form's overrides, extra sources and the feedback partitions."""
    cfg = load_config(params.config, params.as_overrides())
    extra = [SourceConfig(path=p) for p in params.sources or []]
    if cfg.include_feedback:
        extra.append(
            SourceConfig(
                path=str(loraflow_home() / "feedback"),
                name="feedback",
                format="records",
                glob="date=*/part.parquet",
                optional=True,
            )
        )
    if extra:
        cfg.data.sources = [*cfg.data.sources, *extra]
    return cfg


def _log_stage(run_id: str, result: StageResult) -> None:
    get_run_logger().info(format_counts(result))
    tracking.log_stage(run_id, result)


def _log_validation_artifacts(run_id: str, report: dict[str, Any]) -> None:
    """Great Expectations' validation result, the rules table and an offline HTML report."""
    tracking.log_validation(run_id, report)


def _summary_markdown(cfg: RetrainConfig, counts: list[StageResult], evaluation, registration, run_id: str) -> str:
    lines = [f"# Retrain `{cfg.name}`", "", f"MLflow run: `{run_id}` ({tracking_link(run_id)})", ""]
    lines += ["| stage | rows in | kept | quarantined |", "|---|---:|---:|---:|"]
    lines += [f"| {r.stage} | {r.counts['rows_in']} | {r.counts['kept']} | {r.counts['quarantined']} |" for r in counts]
    if evaluation is not None:
        models = list(evaluation.metrics)
        keys = sorted({k for m in models for k in evaluation.metrics[m]})
        lines += ["", "| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
        for k in keys:
            vals = [evaluation.metrics[m].get(k) for m in models]
            lines.append(f"| {k} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
    if registration is not None:
        lines += [
            "",
            f"**Model** `{registration.model_name}` version {registration.version}, aliases "
            f"{', '.join(registration.aliases) or 'none'}; promoted: **{registration.promoted}**",
        ]
        lines += [f"- {r}" for r in registration.reasons]
    return "\n".join(lines)


def tracking_link(run_id: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/runs/{run_id}"
    return "open with `loraflow ui`"


@flow(name="retrain", log_prints=True)
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:  # noqa: B008 (Prefect form default)
    """Retrain a LoRA adapter and gate it into the registry.

    Stages, in order: ingest → scrub_pii → dedup → validate → split → train → evaluate → register.
    Every stage logs ``rows_in == kept + quarantined`` and writes a JSON report; the data stages are cached on
    their input's content hash, config and code; everything lands in one MLflow run tagged with this flow run.
    """
    from tasks.base_model import resolve_base_model

    logger = get_run_logger()
    if params.feedback_start and params.feedback_end:
        backfill_feedback(params.feedback_start, params.feedback_end, config=params.config)
    cfg = resolve_config(params)
    base = resolve_base_model(cfg.train.base_model)
    out_dir = str(data_root() / cfg.name)
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
    logger.info("MLflow run %s (experiment %r); Prefect flow run %s", run_id, cfg.name, flow_run_id)
    status = "FAILED"
    try:
        tracking.log_params(
            run_id,
            {
                **flatten(cfg.dump()),
                "base_model.path": base.path,
                "base_model.name": base.name,
                "base_model.sha256": base.sha256,
                "flow.params": params.model_dump_json(),
                **tracking.environment_params(),
            },
        )
        tracking.client().log_text(run_id, yaml.safe_dump(cfg.dump(), sort_keys=False), "config/resolved.yaml")

        stages: list[StageResult] = []
        ingested = ingest_task(cfg.data, os.getcwd(), out_dir, str(tmp_root()))
        _log_stage(run_id, ingested)
        try:
            scrubbed = scrub_pii_task(ingested.data, cfg.pii, out_dir)
        finally:
            discard(ingested.data)  # the raw text is gone once scrubbed
        _log_stage(run_id, scrubbed)
        deduped = dedup_task(scrubbed.data, cfg.dedup, cfg.split, out_dir)
        _log_stage(run_id, deduped)
        stages += [ingested, scrubbed, deduped]
        try:
            validated = validate_task(deduped.data, cfg.validate_, base.path, out_dir)
        except ContractViolation as e:  # a block rule: keep the evidence in the run, then stop before training
            _log_validation_artifacts(run_id, e.report)
            if e.report_uri:
                tracking.log_artifact(run_id, e.report_uri, "reports")
            raise
        _log_stage(run_id, validated)
        _log_validation_artifacts(run_id, json.loads(Path(validated.report_uri).read_text()))
        stages.append(validated)
        splits = split_task(validated.data, cfg.split, out_dir)
        logger.info("split: %s", " ".join(f"{k}={v}" for k, v in splits.counts.items()))
        tracking.log_metrics(run_id, tracking.stage_metric_names("split", splits.counts))
        tracking.log_artifact(run_id, splits.report_uri, "reports")
        validate_splits_task(splits, cfg.validate_)
        for name, ref in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            tracking.log_dataset(run_id, ref, f"{cfg.name}-{name}", {"val": "validation"}.get(name, name))
        tracking.json_artifact(
            run_id, {r.stage: {k: v for k, v in r.counts.items()} for r in stages}, "reports/quarantine_counts.json"
        )
        tracking.log_stage_table(run_id, stages)
        about = {"config": params.config, "base_model": base.name or base.path, "splits": splits.counts,
                 "digests": {n: getattr(splits, n).sha256 for n in ("train", "val", "test")}}  # fmt: skip
        tracking.set_description(run_id, tracking.run_description(**about))
        if params.dry_run:
            logger.info("dry run: data stages done, stopping before training")
            status = "FINISHED"
            return {"mlflow_run_id": run_id, "dry_run": True, "counts": {r.stage: r.counts for r in stages}}

        model_name = cfg.register_.model_name or cfg.name
        champion = current_champion(model_name, str(Path(out_dir) / "runs" / run_id / "champion"))
        run_dir = str(Path(out_dir) / "runs" / run_id)
        trained = train_task(splits.train, splits.val, cfg.train, str(Path(run_dir) / "adapter"), run_id)
        adapters = {"base": None, "candidate": trained.adapter_dir}
        if champion is not None:
            adapters["champion"] = champion.adapter_dir
        evaluation = evaluate_task(
            splits.test, base.path, adapters, cfg.evaluate, str(Path(run_dir) / "eval"), label_sources=[splits.train]
        )
        for model, metrics in evaluation.metrics.items():
            tracking.log_metrics(run_id, {f"eval.{model}.{k}": v for k, v in metrics.items()})
            logger.info("eval %s: %s", model, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        tracking.log_artifact(run_id, evaluation.report_uri, "eval")
        tracking.log_predictions(run_id, evaluation.predictions_uri)
        tracking.log_charts(run_id, Path(run_dir) / "charts", stages, evaluation.metrics, evaluation.predictions_uri,
                            classification=cfg.evaluate.task == "classification")  # fmt: skip
        registration = register_task(run_id, trained, evaluation, cfg.register_, model_name, splits.train.sha256)
        tracking.set_description(
            run_id,
            tracking.run_description(
                **about, train=trained.model_dump(), metrics=evaluation.metrics, decision=registration.model_dump()
            ),
        )
        logger.info(
            "registered %s version %s, aliases %s; promoted=%s: %s",
            registration.model_name,
            registration.version,
            registration.aliases,
            registration.promoted,
            "; ".join(registration.reasons),
        )
        create_markdown_artifact(
            _summary_markdown(cfg, stages, evaluation, registration, run_id),
            key=f"retrain-{cfg.name}".lower().replace("_", "-"),
            description="loraflow retrain summary",
        )
        status = "FINISHED"
        return {
            "mlflow_run_id": run_id,
            "model_name": registration.model_name,
            "version": registration.version,
            "aliases": list(registration.aliases),
            "promoted": registration.promoted,
            "eval": evaluation.metrics,
            "counts": {r.stage: r.counts for r in stages},
        }
    finally:
        tracking.end_run(run_id, status)
