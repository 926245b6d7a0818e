"""Register the candidate adapter in the MLflow model registry and decide, by a gate, whether it becomes champion.

Every candidate becomes a new model version with alias ``challenger``. ``champion`` moves to it only when the
gate passes (:mod:`tasks.gate`): on the same frozen test split, the candidate's ``gate_metric`` beats the best
prompt-engineering baseline AND the current champion by at least ``gate_margin``. The decision and every reason for it are logged to the run
(tag ``loraflow.register.decision``, metric ``register.promoted``, artifact ``register/decision.json``) and
tagged on the version.

The adapter folder is logged (safetensors + tokenizer + ``loraflow-adapter.json``) under ``adapter/``, and the
version is a servable MLflow pyfunc under ``model/`` (:mod:`tasks.serving_model`: the adapter attached to a base
model found by path + sha256, never copied), so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` answers
chat prompts. The version is created from that artifact URI with ``MlflowClient.create_model_version``.
"""

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock
from prefect import task
from pydantic import BaseModel, Field

from tasks.core import StageError
from tasks.evaluate import EvalResult
from tasks.gate import GateConfig, gate_decision
from tasks.home import loraflow_home
from tasks.tracking import version_description
from tasks.train import TrainResult, adapter_files


class RegisterConfig(GateConfig):
    """Registry name, promotion gate (:class:`tasks.gate.GateConfig`) and alias names."""

    model_name: str | None = Field(
        None, description="Registered model name in MLflow (None: the config's project name, passed by the flow)."
    )
    challenger_alias: str = Field("challenger", description="Alias every new candidate version gets.")
    champion_alias: str = Field("champion", description="Alias of the version in service; moved only by the gate.")
    artifact_path: str = Field("adapter", description="Run artifact folder the adapter is logged under.")
    require_approval: bool = Field(
        False,
        description="Once the gate passes, suspend the flow run with a scorecard and an approval form in the "
        "Prefect UI; champion moves only when an owner approves (reject or timeout: stays challenger).",
    )
    approval_timeout_hours: float = Field(
        168.0,
        gt=0.0,
        description="How long a run waits for the owner's decision (default 7 days); then it stays challenger "
        "with a timeout reason.",
    )


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
    awaiting_approval: bool = False


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
    # A servable (pyfunc) version keeps its adapter under artifacts/adapter; older versions are the adapter.
    if (Path(local) / "artifacts" / "adapter" / "adapter_config.json").exists():
        local = str(Path(local) / "artifacts" / "adapter")
    return ChampionInfo(
        model_name=model_name,
        version=str(mv.version),
        run_id=mv.run_id,
        adapter_dir=str(local),
        base_model_sha256=(mv.tags or {}).get("base_model_sha256"),
    )


#: ``evaluated_champion`` default: compare with the champion read at registration (no compare-and-set).
AT_REGISTER = object()


def _global_limit(name: str):
    """A Prefect global concurrency limit of one slot, across hosts, when a Prefect API runs this flow."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:  # a plain function call (tests, scripts): the file lock is enough
        return contextlib.nullcontext()
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return concurrency(name, occupy=1, timeout_seconds=900, strict=True)


@contextlib.contextmanager
def champion_lock(model_name: str):
    """Held while the champion is read, compared and moved: a file lock for processes on this host (the
    loraflow home) and, inside a flow run, a Prefect global concurrency limit for hosts sharing the API."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
    path = loraflow_home() / "locks" / f"champion-{slug}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, timeout=900), _global_limit(f"loraflow-champion-{slug}"):
        yield


def register_candidate(
    run_id: str,
    train: TrainResult,
    evaluation: EvalResult,
    cfg: RegisterConfig,
    model_name: str | None = None,
    dataset_digest: str | None = None,
    tags: dict[str, str] | None = None,
    candidate: str = "candidate",
    evaluated_champion: "str | None | object" = AT_REGISTER,
) -> Registration:
    """Log the adapter to the run, create a model version, set ``challenger``, and gate ``champion``.

    The champion is read, compared and moved under :func:`champion_lock` (compare-and-set): when it is no
    longer the version this candidate was evaluated against, the candidate stays challenger with that reason.

    Args:
        run_id: the MLflow run of this retrain.
        train: the training result (adapter folder, base model path and hash).
        evaluation: the evaluation of base / candidate / champion on the test split.
        cfg: registry and gate settings.
        model_name: registered model name (default ``cfg.model_name``; one of them must be set).
        dataset_digest: content hash of the training split, tagged on the version.
        tags: extra version tags from the flow (dataset digests, Prefect flow-run id...).
        candidate: key of the candidate in ``evaluation.metrics``.
        evaluated_champion: the champion version ``evaluation`` compared with (None: there was none);
            ``AT_REGISTER`` trusts the champion read at registration (callers that evaluate and register at once).
    """
    from mlflow.exceptions import MlflowException

    name = model_name or cfg.model_name
    if not name:
        raise StageError("register: no model name (set register.model_name or the config's name).")
    client = _client()
    adapter = Path(train.adapter_dir)
    if not (adapter / "adapter_config.json").exists():
        raise StageError(f"no adapter to register: {adapter} holds no adapter_config.json.")
    files = adapter_files(adapter)  # only the adapter's own files: out_dir may also hold other outputs
    with tempfile.TemporaryDirectory(prefix="loraflow-adapter-") as tmp:
        for f in files:
            shutil.copy2(f, Path(tmp) / f.name)
        client.log_artifacts(run_id, tmp, artifact_path=cfg.artifact_path)
    source = _log_servable_model(run_id, train, evaluation, files)

    with champion_lock(name):  # read the champion, decide, move the alias: one step for concurrent retrains
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description="LoRA adapters trained by loraflow; the base model is referenced by tags."
            )
        previous = _alias_version(client, name, cfg.champion_alias)
        prev_version = str(previous.version) if previous is not None else None
        compared = prev_version if evaluated_champion is AT_REGISTER else evaluated_champion
        if compared != prev_version:
            promote, reasons = False, [champion_moved(compared, prev_version)]
        else:
            promote, reasons = gate_decision(
                evaluation.metrics,
                cfg,
                prev_version,
                candidate=candidate,
                intervals=evaluation.intervals,
                forgetting=evaluation.forgetting,
            )
        return _create_version(client, name, run_id, source, train, evaluation, cfg, dataset_digest, tags,
                               promote, reasons, prev_version, compared)  # fmt: skip


def champion_moved(compared: str | None, now: str | None) -> str:
    """Why a candidate stays challenger when the champion changed between its evaluation and its registration."""
    was = f"version {compared}" if compared else "no champion"
    return (
        f"champion changed since evaluation (compared with {was}, now version {now}): stays challenger; "
        "retrain again to compare with the new champion"
    )


def _create_version(client, name, run_id, source, train, evaluation, cfg, dataset_digest, tags, promote, reasons,
                    prev_version, compared) -> "Registration":  # fmt: skip
    """The version with its tags and description, ``challenger``, and ``champion`` when the gate passed."""
    version_tags = {
        "base_model": train.base_model,
        "base_model_sha256": train.base_model_sha256,
        "train_rows": str(train.train_rows),
        "steps": str(train.steps),
        # the adapter registered is the best val-loss checkpoint when one was kept (early stopping, load-best)
        "best_step": str(train.best_step) if train.best_step is not None else "last",
        "gate_metric": cfg.gate_metric,
        "gate_margin": str(cfg.gate_margin),
        "gate_passed": str(promote).lower(),
    }
    for model, values in evaluation.metrics.items():
        for metric, value in values.items():
            version_tags[f"eval.{model}.{metric}"] = f"{value:.6g}"
    if dataset_digest:
        version_tags["train_dataset_sha256"] = dataset_digest
    test_digest = _test_digest(evaluation)
    if test_digest:
        version_tags["test_dataset_sha256"] = test_digest
    awaiting = promote and cfg.require_approval  # the gate passed; an owner decides (tasks.approval_gate)
    if awaiting:
        promote = False
        reasons = [*reasons, "gate passed: champion moves only when an owner approves (register.require_approval)"]
    version_tags["decision"] = "awaiting_approval" if awaiting else "promoted" if promote else "not_promoted"
    version_tags["loraflow.compared_with_champion"] = compared or "none"
    version_tags.update({k: str(v) for k, v in (tags or {}).items()})
    digests = {"train": dataset_digest or "", "test": test_digest or ""}
    mv = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags=version_tags,
        description=version_description(evaluation.metrics, promote, reasons, digests, train.base_model, run_id),
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
        "awaiting_approval": awaiting,
        "aliases": aliases,
        "previous_champion": prev_version,
        "gate_metric": cfg.gate_metric,
        "gate_margin": cfg.gate_margin,
        "reasons": reasons,
        "intervals": evaluation.intervals,  # candidate − each other model, paired bootstrap (tasks.gate)
        "forgetting": evaluation.forgetting,
    }
    client.set_tag(run_id, "loraflow.register.decision", version_tags["decision"])
    client.set_tag(run_id, "loraflow.register.version", version)
    client.set_tag(run_id, "loraflow.register.compared_with_champion", compared or "none")
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
        awaiting_approval=awaiting,
    )


def _test_digest(evaluation: EvalResult) -> str | None:
    """The test split's content hash, from the evaluation report (None when the report is gone)."""
    try:
        return json.loads(Path(evaluation.report_uri).read_text())["test"]["sha256"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _log_servable_model(run_id: str, train: TrainResult, evaluation: EvalResult, files: list[Path]) -> str:
    """Log the candidate as an MLflow pyfunc (base by path + hash, adapter attached); returns its artifact URI."""
    from tasks.serving_model import log_pyfunc, settings_from_training

    try:
        max_new = json.loads(Path(evaluation.report_uri).read_text()).get("max_new_tokens")
    except (OSError, ValueError):
        max_new = None
    settings = settings_from_training(
        train.adapter_dir, train.base_model, train.base_model_sha256, evaluation.labels, max_new
    )
    return log_pyfunc(run_id, files, settings)


# The Prefect task is register_candidate itself: the flow passes ``evaluated_champion`` (the champion version the
# evaluation compared with, None when there was none), checked again under the lock before the alias moves.
register_task = task(name="register")(register_candidate)
