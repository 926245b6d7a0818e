"""Trainer callbacks: loss relay to the caller, a log-friendly progress bar, early stopping, stop on signal,
and the warm-start check that the loaded adapter really learns."""

from tasks.core import StageError
from tasks.progress import progress
from tasks.train.config import TrainConfig
from tasks.train.interrupt import stop_callback

_RENAME = {"loss": "train_loss", "eval_loss": "val_loss"}


def callbacks_for(cfg: TrainConfig, on_log, check_grads: bool = False) -> list:
    """The callbacks a training run gets for ``cfg`` (``on_log(logs, step)`` receives every log line)."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or on_log is None or "train_runtime" in logs:
                return
            out = {_RENAME.get(k, k): float(v) for k, v in logs.items() if isinstance(v, int | float)}
            if out:
                on_log(out, int(state.global_step))

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(total=state.max_steps, desc="train", unit="step", lines=10)
            if state.global_step:
                self.bar.update(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs:
                shown = {_RENAME.get(k, k): round(v, 4) for k, v in logs.items() if k in _RENAME}
                if shown:
                    self.bar.set_postfix(shown, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class GradCheck(TrainerCallback):
        """A warm-started adapter must get gradients on its first step (a frozen load would not)."""

        checked = False

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if self.checked or model is None:
                return
            self.checked = True
            norm = sum(float(p.grad.detach().float().norm()) for p in model.parameters() if p.grad is not None)
            if norm == 0.0:
                raise StageError("the warm-start adapter got no gradient on its first step: it is frozen.")

    out = [Relay(), Progress(), stop_callback()]
    if cfg.early_stopping_patience:
        out.append(
            EarlyStoppingCallback(
                early_stopping_patience=cfg.early_stopping_patience,
                early_stopping_threshold=cfg.early_stopping_threshold,
            )
        )
    if check_grads:
        out.append(GradCheck())
    return out
