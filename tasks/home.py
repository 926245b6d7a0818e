"""Where loraflow keeps its state, and the environment that points Prefect and MLflow at it.

Everything a run writes lives under one folder, ``LORAFLOW_HOME`` (default ``./.loraflow``)::

    data/        stage outputs (Parquet), quarantine files and JSON reports, by stage
    models/      the local base-model cache (``loraflow models prepare``)
    mlflow/      MLflow's SQLite database (mlflow.db) and artifact store
    prefect/     PREFECT_HOME: the ephemeral API's SQLite database and persisted task results
    feedback/    the default production-feedback store and its daily partitions
    tmp/         raw ingest output, removed as soon as it is scrubbed

``MLFLOW_TRACKING_URI`` and ``PREFECT_API_URL`` set by the user win: the same code then talks to real servers.
"""

import os
from pathlib import Path


def loraflow_home() -> Path:
    return Path(os.environ.get("LORAFLOW_HOME", ".loraflow")).expanduser().resolve()


def data_root() -> Path:
    return loraflow_home() / "data"


def model_cache() -> Path:
    return Path(os.environ.get("LORAFLOW_MODEL_CACHE", loraflow_home() / "models")).expanduser().resolve()


def tmp_root() -> Path:
    return loraflow_home() / "tmp"


def mlflow_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{loraflow_home() / 'mlflow' / 'mlflow.db'}"


def configure_environment() -> Path:
    """Point Prefect and MLflow at the loraflow home (unless the user pointed them elsewhere).

    Must run before ``prefect`` is imported: Prefect reads its settings at import time.
    """
    home = loraflow_home()
    for sub in ("data", "mlflow/artifacts", "prefect", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = os.environ
    env.setdefault("PREFECT_HOME", str(home / "prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    env.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
    # Offline by design: nothing is fetched from a model or dataset hub at run time.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return home


def mlflow_artifact_root() -> str:
    return (loraflow_home() / "mlflow" / "artifacts").as_uri()
