"""The process setup a run gets: each distinct warning shown once, even across libraries' catch_warnings."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import warnings
from tasks.home import show_each_warning_once
show_each_warning_once()
if PREFECT:
    from prefect.logging.configuration import setup_logging
    setup_logging()

def generate_a():
    warnings.warn("`past_key_values` is deprecated", FutureWarning)

def generate_b():
    warnings.warn("`past_key_values` is deprecated", FutureWarning)

for _ in range(4):
    generate_a()
    generate_b()
    with warnings.catch_warnings():  # what libraries do; it resets Python's own once-registry
        warnings.simplefilter("ignore", UserWarning)
warnings.warn("a different one", UserWarning)
import types
lib = types.ModuleType("somelib")  # a library's deprecation (the __main__ module's own ones are shown)
exec("import warnings\ndef old():\n    warnings.warn('old api', DeprecationWarning)", lib.__dict__)
lib.old()
"""


def _stderr(prefect: bool) -> str:
    code = f"PREFECT = {prefect}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_each_distinct_warning_once_without_and_with_prefect_logging():
    for prefect in (False, True):
        err = _stderr(prefect)
        assert err.count("FutureWarning: `past_key_values` is deprecated") == 1, err
        assert err.count("UserWarning: a different one") == 1, err
        assert "old api" not in err  # deprecations stay hidden, as Python's defaults have them
