"""Stopping training cleanly on SIGTERM / Ctrl-C, and what the caller is told.

While :func:`stop_on_signals` is active, the first SIGTERM or SIGINT only sets a flag; the trainer callback
(:class:`StopAtStepBoundary`) sees it at the end of the current optimizer step, asks the trainer to save a
checkpoint and stop, and :func:`raise_if_interrupted` then raises :class:`TrainingInterrupted`. A second signal
gives up waiting (the default action: Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process).

:func:`interrupted_by` stays set for the rest of the process, so the flow's ``finally`` can mark its MLflow run
KILLED instead of FAILED (``tasks.tracking.end_run`` asks it).
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received: list[int] = []


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, resume_hint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        where = f"checkpoint at step {step} in {checkpoint}" if checkpoint else f"stopped at step {step}"
        super().__init__(f"training stopped by {name} ({where}); {resume_hint}")


def interrupted_by() -> int | None:
    """The signal that asked training to stop in this process (None: none did)."""
    return _received[0] if _received else None


def requested() -> bool:
    return bool(_received)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM / SIGINT into a stop request for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread; the default behaviour stays
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):
        if _received:  # second signal: stop waiting for the step boundary
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)
            signal.raise_signal(signum)
            return
        _received.append(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_callback():
    """A transformers ``TrainerCallback`` that stops and saves at the next step boundary once a signal came."""
    from transformers import TrainerCallback

    class StopAtStepBoundary(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _received:
                control.should_training_stop = True
                control.should_save = True
            return control

    return StopAtStepBoundary()
