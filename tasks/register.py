"""Register the candidate adapter in the MLflow model registry and decide, by a gate, whether it becomes champion.

Every candidate becomes a new model version with alias ``challenger``. ``champion`` moves to it only when the
gate passes: on the same frozen test split, the candidate's ``gate_metric`` beats the base model's AND the
current champion's by at least ``gate_margin``. The decision and every reason for it are logged to the run
(tag ``loraflow.register.decision``, metric ``register.promoted``, artifact ``register/decision.json``) and
tagged on the version.

Only the adapter folder is logged (safetensors + tokenizer + ``loraflow-adapter.json``); the base model is
referenced by path and sha256 tags, never copied. The version is created from the run's artifact URI with
``MlflowClient.create_model_version`` (``mlflow.register_model`` on ``runs:/`` needs a logged model flavour).
"""

import json
import shutil
import tempfile
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from tasks.core import StageError, StrictModel
from tasks.evaluate import EvalResult
from tasks.train import TrainResult, adapter_files


class RegisterConfig(StrictModel):
    """Registry name, promotion gate and alias names."""

    model_name: str | None = Field(
        None, description="Registered model name in MLflow (None: the config's project name, passed by the flow)."
    )
    gate_metric: str = Field(
        "accuracy_constrained",
        description="Eval metric the gate compares (higher is better): accuracy_constrained is how a classifier "
        "is served; accuracy is free generation.",
    )
    gate_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="The candidate must beat base and champion by at least this much (0.02 = 2 points). Larger: "
        "fewer promotions on test-set noise (one row of 500 is 0.2 points).",
    )
    require_champion_comparison: bool = Field(
        True,
        description="When a champion exists but could not be scored on this test set (e.g. a different base "
        "model), refuse promotion (True) or compare with the base only (False).",
    )
    challenger_alias: str = Field("challenger", description="Alias every new candidate version gets.")
    champion_alias: str = Field("champion", description="Alias of the version in service; moved only by the gate.")
    artifact_path: str = Field("adapter", description="Run artifact folder the adapter is logged under.")


class ChampionInfo(BaseModel):
    """The current champion version and a local copy of its adapter (for evaluation beside the candidate)."""

    model_name: str
    version: str
    run_id: str | None
    adapter_dir: str
    base_model_sha256: str | None


class Registration(BaseModel):
    """What the register stage did."""

    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    reasons: list[str]
    previous_champion: str | None = None
    source: str


# --------------------------------------------------------------------------------------------- gate


def _beats(candidate: float, other: float, margin: float) -> bool:
    """``candidate - other >= margin``, tolerant of float noise (0.12 - 0.10 is 0.01999...)."""
    return candidate - other >= margin - 1e-9


def gate_decision(
    metrics: dict[str, dict[str, float]],
    cfg: RegisterConfig,
    champion_version: str | None = None,
    candidate: str = "candidate",
) -> tuple[bool, list[str]]:
    """Decide promotion from the eval metrics; returns (promote, reasons). Pure: no MLflow involved.

    Args:
        metrics: ``EvalResult.metrics`` (``{"base": {...}, "candidate": {...}, "champion": {...}}``).
        cfg: gate settings.
        champion_version: the current champion's version, or None when there is none yet.
        candidate: the key of the candidate in ``metrics``.
    """
    key, margin = cfg.gate_metric, cfg.gate_margin
    reasons: list[str] = []
    cand = metrics.get(candidate, {}).get(key)
    if cand is None:
        return False, [f"candidate has no {key!r} metric (evaluated: {sorted(metrics.get(candidate, {}))})"]
    ok = True
    base = metrics.get("base", {}).get(key)
    if base is None:
        ok = False
        reasons.append(f"base model has no {key!r} metric to compare with")
    elif _beats(cand, base, margin):
        reasons.append(f"candidate {key} {cand:.4f} beats base {base:.4f} by {cand - base:+.4f} (margin {margin})")
    else:
        ok = False
        reasons.append(
            f"candidate {key} {cand:.4f} does not beat base {base:.4f} by the margin {margin} ({cand - base:+.4f})"
        )
    if champion_version is None:
        reasons.append("no current champion: base is the only comparison")
    else:
        champ = metrics.get("champion", {}).get(key)
        if champ is None:
            if cfg.require_champion_comparison:
                ok = False
                reasons.append(
                    f"champion v{champion_version} could not be scored on this test set; "
                    "refusing to replace it (register.require_champion_comparison=true)"
                )
            else:
                reasons.append(f"champion v{champion_version} not scored; compared with base only")
        elif _beats(cand, champ, margin):
            reasons.append(
                f"candidate {key} {cand:.4f} beats champion v{champion_version} {champ:.4f} by {cand - champ:+.4f}"
            )
        else:
            ok = False
            reasons.append(
                f"candidate {key} {cand:.4f} does not beat champion v{champion_version} {champ:.4f} by the margin "
                f"{margin} ({cand - champ:+.4f})"
            )
    return ok, reasons


# --------------------------------------------------------------------------------------------- registry


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _alias_version(client, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def current_champion(model_name: str, dst_dir: str | None = None, alias: str = "champion") -> ChampionInfo | None:
    """The version holding ``alias`` and a local copy of its adapter, or None when there is none.

    Args:
        model_name: registered model name.
        dst_dir: where to download the adapter (default: a fresh temporary folder).
        alias: the champion alias name.
    """
    import mlflow

    client = _client()
    mv = _alias_version(client, model_name, alias)
    if mv is None:
        return None
    dst = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix="loraflow-champion-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst))
    except Exception as exc:  # missing artifact store, deleted run
        raise StageError(
            f"the champion of {model_name!r} (version {mv.version}) points at {mv.source}, which cannot be "
            f"downloaded: {exc}. Move the champion alias to a version whose artifacts exist, or delete the alias."
        ) from None
    return ChampionInfo(
        model_name=model_name,
        version=str(mv.version),
        run_id=mv.run_id,
        adapter_dir=str(local),
        base_model_sha256=(mv.tags or {}).get("base_model_sha256"),
    )


def register_candidate(
    run_id: str,
    train: TrainResult,
    evaluation: EvalResult,
    cfg: RegisterConfig,
    model_name: str | None = None,
    dataset_digest: str | None = None,
    tags: dict[str, str] | None = None,
    candidate: str = "candidate",
) -> Registration:
    """Log the adapter to the run, create a model version, set ``challenger``, and gate ``champion``.

    Args:
        run_id: the MLflow run of this retrain.
        train: the training result (adapter folder, base model path and hash).
        evaluation: the evaluation of base / candidate / champion on the test split.
        cfg: registry and gate settings.
        model_name: registered model name (default ``cfg.model_name``; one of them must be set).
        dataset_digest: content hash of the training split, tagged on the version.
        tags: extra version tags from the flow (dataset digests, Prefect flow-run id...).
        candidate: key of the candidate in ``evaluation.metrics``.
    """
    from mlflow.exceptions import MlflowException

    name = model_name or cfg.model_name
    if not name:
        raise StageError("register: no model name (set register.model_name or the config's name).")
    client = _client()
    adapter = Path(train.adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise StageError(f"no adapter to register: {adapter} holds no adapter_config.json.")
    with tempfile.TemporaryDirectory(prefix="loraflow-adapter-") as tmp:
        # Only the adapter's own files: out_dir may also hold other outputs of the run.
        for f in adapter_files(adapter):
            shutil.copy2(f, Path(tmp) / f.name)
        client.log_artifacts(run_id, tmp, artifact_path=cfg.artifact_path)
    run = client.get_run(run_id)
    source = f"{run.info.artifact_uri.rstrip('/')}/{cfg.artifact_path}"

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="LoRA adapters trained by loraflow; the base model is referenced by tags."
        )
    previous = _alias_version(client, name, cfg.champion_alias)
    prev_version = str(previous.version) if previous is not None else None
    promote, reasons = gate_decision(evaluation.metrics, cfg, prev_version, candidate=candidate)

    version_tags = {
        "base_model": train.base_model,
        "base_model_sha256": train.base_model_sha256,
        "train_rows": str(train.train_rows),
        "steps": str(train.steps),
        "gate_metric": cfg.gate_metric,
        "gate_margin": str(cfg.gate_margin),
        "gate_passed": str(promote).lower(),
    }
    for model, values in evaluation.metrics.items():
        for metric, value in values.items():
            version_tags[f"eval.{model}.{metric}"] = f"{value:.6g}"
    if dataset_digest:
        version_tags["train_dataset_sha256"] = dataset_digest
    version_tags.update({k: str(v) for k, v in (tags or {}).items()})
    mv = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags=version_tags,
        description="; ".join(reasons),
    )
    version = str(mv.version)
    client.set_registered_model_alias(name, cfg.challenger_alias, version)
    aliases = [cfg.challenger_alias]
    if promote:
        client.set_registered_model_alias(name, cfg.champion_alias, version)
        aliases.append(cfg.champion_alias)

    decision = {
        "model_name": name,
        "version": version,
        "promoted": promote,
        "aliases": aliases,
        "previous_champion": prev_version,
        "gate_metric": cfg.gate_metric,
        "gate_margin": cfg.gate_margin,
        "reasons": reasons,
    }
    client.set_tag(run_id, "loraflow.register.decision", "promoted" if promote else "not_promoted")
    client.set_tag(run_id, "loraflow.register.version", version)
    client.set_tag(run_id, "loraflow.register.reasons", " | ".join(reasons)[:4900])
    client.log_metric(run_id, "register.promoted", 1.0 if promote else 0.0)
    client.log_text(run_id, json.dumps(decision, indent=2), "register/decision.json")
    return Registration(
        model_name=name,
        version=version,
        aliases=aliases,
        promoted=promote,
        reasons=reasons,
        previous_champion=prev_version,
        source=source,
    )


@task(name="register")
def register_task(
    run_id: str,
    train: TrainResult,
    evaluation: EvalResult,
    cfg: RegisterConfig,
    model_name: str | None = None,
    dataset_digest: str | None = None,
    tags: dict[str, str] | None = None,
) -> Registration:
    """Prefect wrapper around :func:`register_candidate`."""
    return register_candidate(run_id, train, evaluation, cfg, model_name, dataset_digest, tags=tags)
