"""The train stage: a LoRA adapter fine-tuned with TRL + PEFT on the train split, validated on the val split.

- :mod:`tasks.train.config`: :class:`TrainConfig` (the ``train:`` section) and :class:`TrainResult`.
- :mod:`tasks.train.trainer`: :func:`train_adapter`, checkpoints, resume, early stopping, warm start.
- :mod:`tasks.train.adapter`: records → prompt-completion examples; the adapter folder and its manifest.
- :mod:`tasks.train.gpu`: device, precision, QLoRA loading and packing (CUDA only).
- :mod:`tasks.train.checkpoints`, :mod:`tasks.train.interrupt`: where checkpoints live, SIGTERM / Ctrl-C.

Heavy imports (torch, transformers, peft, trl, datasets) happen inside the functions.
"""

import os
import sys

from prefect import task

from tasks.core import DatasetRef
from tasks.train.adapter import ADAPTER_MANIFEST, adapter_files, adapter_manifest, to_prompt_completion
from tasks.train.config import ALL_LINEAR, TrainConfig, TrainResult
from tasks.train.gpu import pick_device
from tasks.train.interrupt import TrainingInterrupted, interrupted_by
from tasks.train.trainer import train_adapter

__all__ = [
    "ADAPTER_MANIFEST",
    "ALL_LINEAR",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "adapter_files",
    "adapter_manifest",
    "interrupted_by",
    "pick_device",
    "to_prompt_completion",
    "train_adapter",
    "train_task",
]

_STREAMED = ("train_loss", "val_loss", "learning_rate", "grad_norm")


@task(name="train")
def train_task(
    train: DatasetRef,
    val: DatasetRef,
    cfg: TrainConfig,
    out_dir: str,
    mlflow_run_id: str | None = None,
    champion_adapter: str | None = None,
    prompt_template: str | None = None,
) -> TrainResult:
    """Prefect wrapper: train, stream ``train_loss`` / ``val_loss`` per step into the MLflow run, log the outcome.

    Args:
        train: the train split.
        val: the val split.
        cfg: the ``train:`` settings.
        out_dir: where the adapter goes.
        mlflow_run_id: the flow's MLflow run (None: log nothing).
        champion_adapter: the current champion's adapter folder, for ``train.init_from=champion``.
        prompt_template: ``data.prompt_template`` (None / ``chat``: the model's chat template).
    """
    on_log = None
    if mlflow_run_id:
        from tasks import tracking

        client = tracking.client()

        def on_log(logs: dict, step: int) -> None:
            for key in _STREAMED:
                if key in logs:
                    client.log_metric(mlflow_run_id, key, logs[key], step=step)

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.stderr.flush()
    result = train_adapter(
        train, val, cfg, out_dir, on_log=on_log, champion_adapter=champion_adapter, prompt_template=prompt_template
    )
    if mlflow_run_id:
        _log_outcome(mlflow_run_id, result)
    return result


def _log_outcome(run_id: str, result: TrainResult) -> None:
    """Which step's adapter was kept, whether it resumed or warm-started, and what training used."""
    from tasks import tracking

    tracking.log_params(
        run_id,
        {
            "train.best_step": str(result.best_step),
            "train.resumed_from_step": str(result.resumed_from_step),
            "train.init_from_used": result.init_from,
        },
    )
    tracking.client().set_tag(run_id, "loraflow.init_from", result.init_from)
    metrics = {
        "train.steps": result.steps,
        "train.best_step": result.best_step,
        "train.best_val_loss": result.val_loss,
        "train.stopped_early": float(result.stopped_early),
        "train.tokens_per_s": result.tokens_per_s,
        "cost.tokens_trained": result.tokens_trained,
    }
    metrics.update({f"cost.train.{k}": v for k, v in result.usage.items()})
    tracking.log_metrics(run_id, metrics)
