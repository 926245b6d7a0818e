"""The console shows one line, not a traceback, for a user-facing stop; a real bug keeps its traceback."""

import logging
import sys

from loraflow.cli import _NoUserErrorTracebacks
from tasks.core import StageError
from tasks.train.interrupt import TrainingInterrupted


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "Task run failed", None, info)


def test_signal_stop_and_stage_error_lose_the_traceback_but_keep_the_line():
    keep = _NoUserErrorTracebacks()
    stop = TrainingInterrupted(15, 13, "/ck/checkpoint-13", "run the same command again to resume from it")
    for exc in (stop, StageError("data.sources[0]: file not found")):
        record = _record(exc)
        assert keep.filter(record) is True
        assert record.exc_info is None and record.exc_text is None
        assert logging.Formatter().format(record) == "Task run failed"


def test_any_other_exception_keeps_its_traceback():
    record = _record(ValueError("a bug"))
    assert _NoUserErrorTracebacks().filter(record) is True
    assert "Traceback" in logging.Formatter().format(record)
