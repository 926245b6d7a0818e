"""loraflow's deployments, declared once: when and where the flows run. Nothing here does any work itself.

===================  ==============================  =================================================
deployment           flow                            when
===================  ==============================  =================================================
quarterly-retrain    ``flows.quarterly``             cron ``0 3 1 1,4,7,10 *`` (03:00 on the first day
                                                     of each quarter, in ``LORAFLOW_SCHEDULE_TZ``, UTC
                                                     by default): backfill feedback, then retrain with
                                                     the production config
retrain              ``flows.retrain``               on demand: its ``RetrainParams`` is the UI's form
backfill-feedback    ``flows.backfill``              on demand: ``start``, ``end`` (exclusive), source,
                                                     ``dry_run``
===================  ==============================  =================================================

Two ways to run them, both from :func:`build_deployments`:

* :func:`serve_all` (``loraflow serve``): one long-running process that polls whatever Prefect API is configured
  (the embedded one by default) and runs the flows in-process. Nothing else to start.
* :func:`deploy_all` (``loraflow deploy``): registers them with a Prefect server and a work pool; a worker
  (``prefect worker start --pool loraflow-process``) runs each flow run in a subprocess. Docker or Kubernetes pools
  are the production path: pass ``image=`` (see docs/DEPLOYMENTS.md).
"""

import os
from pathlib import Path
from typing import Any

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Cron

from flows.backfill import backfill_feedback
from flows.quarterly import quarterly_retrain
from flows.retrain import retrain

QUARTERLY_CRON = "0 3 1 1,4,7,10 *"  # minute 0, hour 3, day 1, months Jan/Apr/Jul/Oct
DEFAULT_WORK_POOL = "loraflow-process"
DEFAULT_PRODUCTION_CONFIG = "configs/production.yaml"
PROJECT_DIR = Path(__file__).resolve().parents[1]
TAGS = ["loraflow"]


def schedule_timezone(timezone: str | None = None) -> str:
    return timezone or os.environ.get("LORAFLOW_SCHEDULE_TZ") or "UTC"


def production_config(path: str | None = None) -> str:
    return path or os.environ.get("LORAFLOW_PRODUCTION_CONFIG") or DEFAULT_PRODUCTION_CONFIG


def build_deployments(
    timezone: str | None = None,
    config: str | None = None,
    entrypoint_type: EntrypointType = EntrypointType.FILE_PATH,
    **to_deployment: Any,
) -> list[RunnerDeployment]:
    """The three deployments. ``to_deployment`` kwargs (work pool, job variables...) apply to all of them.

    Args:
        timezone: IANA timezone of the quarterly schedule (default ``$LORAFLOW_SCHEDULE_TZ`` or UTC).
        config: Config file of the quarterly run (default ``$LORAFLOW_PRODUCTION_CONFIG`` or
            configs/production.yaml).
        entrypoint_type: FILE_PATH for serving; MODULE_PATH for work pools (the worker imports ``flows.*``).
    """
    tz = schedule_timezone(timezone)
    common = {"tags": TAGS, "entrypoint_type": entrypoint_type, **to_deployment}
    return [
        quarterly_retrain.to_deployment(
            name="quarterly-retrain",
            schedules=[Cron(QUARTERLY_CRON, timezone=tz)],
            parameters={"config": production_config(config), "timezone": tz},
            description="Quarterly: backfill production feedback up to the run date, then retrain and gate.",
            concurrency_limit=1,  # one retrain of the project at a time (the champion gate is also locked)
            **common,
        ),
        retrain.to_deployment(
            name="retrain",
            description="Retrain on demand: fill in the form (config file and the overrides people change).",
            concurrency_limit=1,
            **common,
        ),
        backfill_feedback.to_deployment(
            name="backfill-feedback",
            description="Production feedback for [start, end) → one scrubbed partition per day (idempotent).",
            **common,
        ),
    ]


def serve_all(timezone: str | None = None, config: str | None = None, limit: int | None = None) -> None:
    """Run all deployments in this process against the configured Prefect API (blocks until interrupted).

    Against a real server the schedules are paused on shutdown (nothing serves them any more); with the embedded
    API the server stops with this process, so there is nothing to pause (and trying hangs on Ctrl-C).
    """
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    serve(*build_deployments(timezone, config), limit=limit, pause_on_shutdown=bool(PREFECT_API_URL.value()))


def ensure_process_pool(name: str = DEFAULT_WORK_POOL) -> bool:
    """Create a process work pool named ``name`` unless it exists; returns True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            return True


def deploy_all(
    work_pool: str = DEFAULT_WORK_POOL,
    timezone: str | None = None,
    config: str | None = None,
    image: str | None = None,
    working_dir: str | Path | None = None,
    env: dict[str, str] | None = None,
    create_pool: bool = True,
) -> list[str]:
    """Register the deployments with the Prefect server in ``PREFECT_API_URL``; returns their ids.

    Args:
        work_pool: Work pool to run them (a process pool is created when missing and ``create_pool``).
        timezone: Timezone of the quarterly schedule.
        config: Config file of the quarterly run.
        image: Docker image holding this project (docker / kubernetes pools); None for a process pool.
        working_dir: Folder the worker runs flows in (relative config paths start there); default: this project
            folder for a process pool, the image's working directory otherwise.
        env: Extra environment for flow runs (e.g. ``LORAFLOW_HOME``, ``MLFLOW_TRACKING_URI``).
        create_pool: Create a missing process pool instead of failing.
    """
    if create_pool and image is None:
        ensure_process_pool(work_pool)
    job_variables: dict[str, Any] = {}
    if image is None:
        job_variables["working_dir"] = str(working_dir or PROJECT_DIR)
    elif working_dir:
        job_variables["working_dir"] = str(working_dir)
    if env:
        job_variables["env"] = dict(env)
    deployments = build_deployments(
        timezone, config, entrypoint_type=EntrypointType.MODULE_PATH, job_variables=job_variables
    )
    # RunnerDeployment.apply is what prefect.deploy() runs per deployment once an image is built; deploy() itself
    # is not used because, in 3.8.8, its worker check sends `limit: null` and the server answers 422.
    return [str(d.apply(work_pool_name=work_pool, image=image)) for d in deployments]
