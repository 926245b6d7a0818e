"""MLflow tracking helpers: one run per flow run, everything logged by explicit run id.

Tasks log through ``MlflowClient`` with the run id they are given rather than MLflow's thread-local "active
run", so they behave the same whichever thread or process Prefect runs them in.
"""

import json
import os
import platform
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core import DatasetRef, StageResult, read_records

# MLflow 3 accepts param values up to 6,000 characters; longer ones are cut with a marker (and the full value
# is in the config artifact anyway).
_MAX_PARAM = 6000
_PACKAGES = (
    "loraflow",
    "prefect",
    "mlflow",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "great-expectations",
    "presidio-analyzer",
    "presidio-anonymizer",
    "spacy",
    "datasketch",
    "pandas",
)


def client():
    import mlflow

    return mlflow.MlflowClient()


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create (if needed) the experiment and a run in it; returns the run id. The caller ends it."""
    import mlflow

    from tasks.home import mlflow_artifact_root

    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        uri = mlflow.get_tracking_uri()
        kwargs = {"artifact_location": mlflow_artifact_root() + f"/{experiment}"} if uri.startswith("sqlite") else {}
        exp_id = c.create_experiment(experiment, **kwargs)
    else:
        exp_id = exp.experiment_id
    return c.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


def log_params(run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v if len(v) <= _MAX_PARAM else v[: _MAX_PARAM - 12] + "...[cut]") for k, v in params.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client().log_batch(run_id, params=items[i : i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 1000):
        client().log_batch(run_id, metrics=items[i : i + 1000])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    elif path.exists():
        client().log_artifact(run_id, str(path), artifact_path)


def log_stage(run_id: str, result: StageResult) -> None:
    """Per-stage counts as metrics (``dedup.kept``, ``dedup.quarantined_near_duplicate``), report as artifact."""
    log_metrics(run_id, {f"{result.stage}.{k}": v for k, v in result.counts.items()})
    report = json.loads(Path(result.report_uri).read_text())
    if report.get("metrics"):
        log_metrics(run_id, {k if "." in k else f"{result.stage}.{k}": v for k, v in report["metrics"].items()})
    log_artifact(run_id, result.report_uri, "reports")


def log_dataset(run_id: str, ref: DatasetRef, name: str, context: str) -> None:
    """Log a split as an MLflow dataset input: its content digest, row count and where it lives."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    df = read_records(ref)
    df["messages"] = [json.dumps(m, ensure_ascii=False) for m in df["messages"]]
    df["meta"] = [json.dumps(m, ensure_ascii=False) for m in df["meta"]]
    with warnings.catch_warnings():  # a local path matches two equivalent source kinds; MLflow warns, then picks one
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=ref.uri, name=name, digest=ref.sha256[:16])
    entity = ds._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", context)]
    client().log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_params() -> dict[str, str]:
    """Package versions, hardware and the code version: what a reviewer needs to reproduce a run."""
    out: dict[str, str] = {"code.git_commit": git_commit()}
    for pkg in _PACKAGES:
        try:
            out[f"pkg.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["hw.platform"] = platform.platform()
    out["hw.python"] = platform.python_version()
    out["hw.cpu_count"] = str(os.cpu_count())
    try:
        import torch

        out["hw.cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        out["hw.torch_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return out


def json_artifact(run_id: str, data: Any, artifact_file: str) -> None:
    client().log_dict(run_id, data, artifact_file)
