"""Where the data stages' per-row work runs: in this process (``local``) or in shards on Dask (``dask``).

``data.task_runner: dask`` cuts the embarrassingly parallel work of the data stages into shards of rows (the
PII scrub, which dominates; dedup's MinHash signatures; the contract's residual-PII scan) and runs each shard as
a Prefect task on prefect-dask's ``DaskTaskRunner``: a ``LocalCluster`` of one single-threaded *process* per
core by default (Presidio and spaCy hold the GIL, so threads would not help), or the cluster at
``data.dask.address``. Results come back in input order and are merged by the same code the local path uses,
so what the stages write (kept rows, ids, quarantine, ledger, split) is identical either way; the cache key of
a stage ignores which runner computed it.

The flow opens one cluster for all the data stages (:func:`data_cluster`), so each worker builds the Presidio
engine once (the engine is cached per process) and reuses it for the PII stage and the contract's
residual-PII check. Shard inputs travel in memory; workers never spill them to disk (they hold raw text before
scrubbing). prefect-dask and distributed are imported only when ``dask`` is chosen.
"""

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Literal

from pydantic import Field

from tasks.core import StrictModel

TaskRunnerKind = Literal["local", "dask"]

# Worker processes never write shard data to disk (raw text before scrubbing must not rest there) and keep
# distributed's per-connection INFO lines out of the run log.
_DASK_CONFIG = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.logging.distributed": "warning",
}


class DaskConfig(StrictModel):
    """The Dask side of ``data.task_runner: dask``."""

    address: str | None = Field(
        None,
        description="Scheduler address of an existing Dask cluster (tcp://host:8786); None starts a LocalCluster "
        "for the run and closes it afterwards.",
    )
    n_workers: int = Field(0, ge=0, description="LocalCluster worker processes, one thread each (0: one per CPU core).")
    shard_rows: int = Field(
        5_000,
        ge=1,
        description="Records per PII shard (one Prefect task each). Large enough that a shard's ~0.1-1 s of task "
        "overhead is small next to scrubbing it (~20-40 s on one core), small enough to spread over the workers.",
    )
    memory_limit: str = Field(
        "auto", description="LocalCluster memory limit per worker ('auto': the machine's memory / workers)."
    )


def workers_for(cfg: DaskConfig) -> int:
    """The LocalCluster's worker count: ``n_workers``, or one per core."""
    return cfg.n_workers or os.cpu_count() or 1


@contextmanager
def data_cluster(kind: TaskRunnerKind, cfg: DaskConfig) -> Iterator[DaskConfig | None]:
    """The runner the data stages share for one run: None for ``local``, else a Dask config with an address.

    With ``address`` unset a LocalCluster (processes, one thread each) is started here and closed on exit, so
    all stages of one run reuse the same worker processes and whatever those have loaded.
    """
    if kind == "local":
        yield None
        return
    if cfg.address:
        yield cfg
        return
    import dask
    from distributed import LocalCluster

    with dask.config.set(_DASK_CONFIG):
        cluster = LocalCluster(
            n_workers=workers_for(cfg),
            threads_per_worker=1,
            processes=True,
            memory_limit=cfg.memory_limit,
            dashboard_address=":0",  # a free port: several runs on one machine must not fight over :8787
        )
    try:
        yield cfg.model_copy(update={"address": cluster.scheduler_address})
    finally:
        cluster.close()


@contextmanager
def _dask_runner(cfg: DaskConfig):
    """A started ``DaskTaskRunner`` on ``cfg.address`` (or a temporary LocalCluster), whose workers report to
    this process's Prefect API.

    A worker hydrates the submitting process's settings; in Prefect's embedded mode those name no API URL, so
    each worker process would start (and wait for) an embedded server of its own. Submitting under the URL of
    the API this process already talks to sends every shard's task run there.
    """
    import dask
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    url = PREFECT_API_URL.value() or str(get_client(sync_client=True).api_url)
    with ExitStack() as stack:
        stack.enter_context(dask.config.set(_DASK_CONFIG))
        stack.enter_context(temporary_settings({PREFECT_API_URL: url}))
        if cfg.address:
            runner = DaskTaskRunner(address=cfg.address)
        else:
            kwargs = {"n_workers": workers_for(cfg), "threads_per_worker": 1, "processes": True,
                      "memory_limit": cfg.memory_limit, "dashboard_address": ":0"}  # fmt: skip
            runner = DaskTaskRunner(cluster_kwargs=kwargs)
        yield stack.enter_context(runner)


def map_shards(
    fn: Callable[..., Any], shards: Iterable[dict[str, Any]], runner: DaskConfig | None, name: str
) -> Iterator[Any]:
    """``fn(**kwargs)`` for each shard's kwargs, results in shard order.

    Args:
        fn: a plain, importable function (each shard becomes one run of a Prefect task wrapping it).
        shards: keyword arguments per shard, produced lazily.
        runner: None runs the shards one after another in this process; a Dask config runs them on Dask, at
            most two shards per worker in flight (memory stays bounded however many shards there are).
        name: the Prefect task name of a shard.
    """
    if runner is None:
        for kwargs in shards:
            yield fn(**kwargs)
        return
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    # Not cached and not persisted: a shard's inputs and results are rows, which must not rest on disk.
    shard_task = task(fn, name=name, cache_policy=NO_CACHE, persist_result=False, log_prints=False)
    with _dask_runner(runner) as dask_runner:
        slots = 2 * max(1, sum(dask_runner.client.nthreads().values()))
        pending: list = []
        for kwargs in shards:
            pending.append(dask_runner.submit(shard_task, kwargs))
            if len(pending) >= slots:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def row_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 * size), ...]`` covering ``range(n)``."""
    return [(i, min(n, i + size)) for i in range(0, n, size)]
