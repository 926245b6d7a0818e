"""A training process for the kill / resume tests: ``python tests/train_worker.py '<json job>'``.

Mirrors what the retrain flow does around training: an MLflow run (optional) ended in a ``finally`` with the
status FAILED unless training finished, and the CLI's exit code on :class:`TrainingInterrupted`. Prints
``RESULT <TrainResult json>`` when training completes. ``sleep_s`` slows each step so the test can kill it
mid-training on a busy machine.
"""

import json
import sys
import time

from tasks.core import DatasetRef
from tasks.train import TrainConfig, TrainingInterrupted, train_adapter
from tasks.train import trainer as trainer_module


def main() -> int:
    job = json.loads(sys.argv[1])
    cfg = TrainConfig(**job["cfg"])
    refs = DatasetRef(**job["train"]), DatasetRef(**job["val"])
    sleep_s = float(job.get("sleep_s", 0))
    if sleep_s:
        from transformers import TrainerCallback

        class Slow(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                time.sleep(sleep_s)

        original = trainer_module.callbacks_for
        trainer_module.callbacks_for = lambda *a, **k: [*original(*a, **k), Slow()]
    run_id = None
    if job.get("mlflow_uri"):
        import mlflow

        from tasks import tracking

        mlflow.set_tracking_uri(job["mlflow_uri"])
        run_id = tracking.start_run("worker", "train-worker", {})
        print(f"RUN {run_id}", flush=True)
    status = "FAILED"
    try:
        res = train_adapter(*refs, cfg, job["out"], checkpoint_root=job["root"])
        status = "FINISHED"
        print("RESULT " + res.model_dump_json(), flush=True)
        return 0
    except TrainingInterrupted as e:
        print(f"STOPPED {e}", flush=True)
        return e.exit_code
    finally:
        if run_id:
            from tasks import tracking

            tracking.end_run(run_id, status)


if __name__ == "__main__":
    sys.exit(main())
