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

import logging
import os
import re
import warnings
from pathlib import Path


def loraflow_home() -> Path:
    return Path(os.environ.get("LORAFLOW_HOME", ".loraflow")).expanduser().resolve()


def data_root() -> Path:
    return loraflow_home() / "data"


def model_cache() -> Path:
    """``LORAFLOW_MODEL_CACHE``, else the home's ``models/``. A home without a prepared model (a command run from
    another folder) falls back to this checkout's own cache, where ``make models`` put the default model."""
    if os.environ.get("LORAFLOW_MODEL_CACHE"):
        return Path(os.environ["LORAFLOW_MODEL_CACHE"]).expanduser().resolve()
    own = loraflow_home() / "models"
    checkout = Path(__file__).resolve().parents[1] / ".loraflow" / "models"
    prepared = lambda d: d.is_dir() and any(d.glob("*/config.json"))  # noqa: E731
    return checkout if not prepared(own) and prepared(checkout) else own


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
    # The embedded API server gets 20 s to start by default: too short on a loaded 2-core machine.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri())
    # Offline by design: nothing is fetched from a model or dataset hub at run time.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    show_each_warning_once()
    _init_mlflow_store_once(env["MLFLOW_TRACKING_URI"])
    return home


def _init_mlflow_store_once(uri: str) -> None:
    """Create a new SQLite tracking store under a lock: two first runs on a fresh home would otherwise both run
    MLflow's schema migrations on the same file and one of them fail."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists():
        return
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(f".{db.name}.init.lock")):
        if not db.exists():
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).search_experiments(max_results=1)


class _FirstOfEachWarning(logging.Filter):
    """Lets through the first record of each distinct warning (category and text, whatever the location)."""

    _LOCATION = re.compile(r"^.*?:\d+: ")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        lines = record.getMessage().splitlines()
        key = self._LOCATION.sub("", lines[0]) if lines else ""
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _StderrUntilConfigured(logging.StreamHandler):
    """Prints a warning to stderr (as Python does) while the root logger has no handler of its own yet.

    Once Prefect (or anything) configures the root logger, warnings propagate there and this stays silent.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def show_each_warning_once() -> None:
    """Each distinct warning (same category and text) reaches the log once per process, wherever it comes from.

    Python's own ``once`` filter forgets what it showed whenever a library enters ``warnings.catch_warnings``
    (the registries reset on every filter change), so a deprecation inside ``generate`` was logged on every
    batch. Warnings are routed to the ``py.warnings`` logger (as Prefect does) and de-duplicated there.
    Deprecation, import and resource warnings stay hidden, as Python's defaults have them.
    """
    for category in (UserWarning, FutureWarning, RuntimeWarning):
        warnings.filterwarnings("once", category=category)
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    if not any(isinstance(h, _StderrUntilConfigured) for h in logger.handlers):
        logger.addHandler(_StderrUntilConfigured())
    if not any(isinstance(f, _FirstOfEachWarning) for f in logger.filters):
        logger.addFilter(_FirstOfEachWarning())


def mlflow_artifact_root() -> str:
    return (loraflow_home() / "mlflow" / "artifacts").as_uri()
