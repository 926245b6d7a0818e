"""Progress bars for long stages that stay readable in logs.

On a terminal this is a normal tqdm bar. Anywhere else (``make demo > log``, a Prefect worker, CI) tqdm's
carriage-return redraws would pile up on one line, so the bar prints a plain line at most ``lines`` times per
run (every ~10 % by default), each ending in a newline::

    train:  40%|####      | 24/60 [01:12<01:48, 0.33step/s, loss=0.41]

Usage::

    from tasks.progress import progress

    for row in progress(rows, desc="pii", unit="row"):
        ...
    with progress(total=n_steps, desc="train", unit="step") as bar:
        bar.update(1)
"""

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO


class _LineWriter:
    """A file for tqdm that turns each redraw into one line (no carriage returns)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_interactive(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    lines: int = 10,
    stream: TextIO | None = None,
    disable: bool = False,
) -> Any:
    """A tqdm bar on a terminal; about ``lines`` plain lines in a log.

    Args:
        iterable: what to iterate over (or None and call ``update`` yourself).
        total: number of items (taken from ``len(iterable)`` when it has one).
        desc: the stage name printed in front of the bar.
        unit: what one item is ("row", "step", "batch").
        lines: how many lines at most a non-interactive log gets (plus the final one).
        stream: where to write (default stderr).
        disable: no output at all (the bar still counts).

    Returns:
        A ``tqdm`` object: iterate over it, or call ``update(n)`` / ``set_postfix(...)`` and ``close()``.
    """
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if is_interactive(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream, disable=disable, dynamic_ncols=True)
    step = max(1, (total or 0) // max(1, lines)) if total else 1
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=_LineWriter(stream),
        disable=disable,
        ascii=True,
        ncols=100,
        miniters=step,
        mininterval=0,
        maxinterval=float("inf"),
    )
