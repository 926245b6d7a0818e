"""What a run costs: CPU / GPU seconds, tokens trained and generated, peak memory, and a price estimate.

Stages meter themselves with :class:`Meter` and report tokens with :func:`add_tokens`; the flow turns the
process totals into ``cost.*`` metrics with :func:`cost_metrics`::

    from tasks import cost

    with cost.Meter("train") as m:       # CPU s, wall s, GPU s (wall time on a CUDA device), peak memory
        ...
    cost.add_tokens("generated", n)      # e.g. from the evaluation's generate loop
    metrics = cost.cost_metrics(CostConfig())  # {"cost.cpu_s": ..., "cost.usd": ...}

Prices are per hour and configurable (``cost.cpu_core_hour_usd``, ``cost.gpu_hour_usd``): the estimate is
``cpu_s / 3600 x cpu_core_hour_usd + gpu_s / 3600 x gpu_hour_usd``. CPU seconds are process CPU time (user +
system, all threads), so 2 busy cores for 60 s count 120 s: a core-hour price fits them.
"""

import resource
import sys
import threading
import time
from collections import Counter

from pydantic import Field

from tasks.core import StrictModel

_lock = threading.Lock()
_tokens: Counter = Counter()
_stages: dict[str, dict[str, float]] = {}


class CostConfig(StrictModel):
    """Prices for the run's cost estimate (``cost.*`` metrics). Defaults are on-demand cloud list prices, 2026."""

    cpu_core_hour_usd: float = Field(
        0.045, ge=0, description="Price of one vCPU for one hour (e.g. a c7i vCPU on demand, ~0.045 USD)."
    )
    gpu_hour_usd: float = Field(
        2.5, ge=0, description="Price of one GPU for one hour (charged for the wall time a stage ran on a GPU)."
    )
    currency: str = Field("USD", description="Label for the prices above (only printed).")


def cpu_seconds() -> float:
    """CPU time of this process so far (user + system, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def add_tokens(kind: str, n: int) -> None:
    """Count ``n`` tokens of ``kind`` ("trained", "generated", "prompt") towards this process's totals."""
    with _lock:
        _tokens[kind] += int(n)


def tokens() -> dict[str, int]:
    with _lock:
        return dict(_tokens)


class Meter:
    """Context manager that records one stage's wall, CPU and GPU seconds and peak memory under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.usage: dict[str, float] = {}

    def __enter__(self) -> "Meter":
        self._t0, self._cpu0 = time.perf_counter(), cpu_seconds()
        self._cuda = _cuda_ready()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        self.usage = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu_seconds() - self._cpu0, 2),
            "gpu_s": round(wall, 2) if self._cuda else 0.0,
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if self._cuda:
            import torch

            self.usage["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
        with _lock:
            _stages[self.name] = dict(self.usage)


def _cuda_ready() -> bool:
    """True when torch is already loaded and sees a GPU (never imports torch just to ask)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def stage_usage() -> dict[str, dict[str, float]]:
    with _lock:
        return {k: dict(v) for k, v in _stages.items()}


def cost_metrics(cfg: CostConfig, cpu_s: float | None = None, gpu_s: float | None = None) -> dict[str, float]:
    """The ``cost.*`` metrics: process CPU seconds (or ``cpu_s``), GPU seconds, tokens, peak memory, estimate."""
    cpu = cpu_seconds() if cpu_s is None else cpu_s
    gpu = sum(s.get("gpu_s", 0.0) for s in stage_usage().values()) if gpu_s is None else gpu_s
    out = {"cost.cpu_s": round(cpu, 1), "cost.gpu_s": round(gpu, 1), "cost.peak_rss_mb": round(peak_rss_mb(), 1)}
    out.update({f"cost.tokens_{k}": float(v) for k, v in sorted(tokens().items())})
    for stage, usage in sorted(stage_usage().items()):
        out.update({f"cost.{stage}.{k}": v for k, v in usage.items()})
    out["cost.estimate"] = round(cpu / 3600 * cfg.cpu_core_hour_usd + gpu / 3600 * cfg.gpu_hour_usd, 6)
    return out
