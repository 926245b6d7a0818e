"""Two runs over the same data in one loraflow home.

Each run's raw ingest output (``<home>/tmp/ingest-*.parquet``, unscrubbed text) is deleted by that run as soon
as the PII stage has read it. The file used to be named by its content alone, so two runs on the same data
shared it and the first one to finish scrubbing deleted the other's input. These tests interleave two runs at
that cleanup point (the stage functions called directly, in the order two concurrent runs can take), check a
killed run's raw file is swept by the next run, and that the PII stage's cache still hits on the data's content
although each run's raw file now has its own name.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = [
    {"prompt": f"Ticket {i}: please reset the card PIN for account {i}", "completion": f"cards{i % 3}"}
    for i in range(6)
]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    return home


def _source(folder: Path):
    from tasks.ingest import IngestConfig, SourceConfig

    src = folder / "tickets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return IngestConfig(sources=[SourceConfig(path=str(src))])


def test_a_run_cleaning_up_its_raw_file_leaves_the_other_runs_input(home, tmp_path):
    from tasks.core import discard
    from tasks.home import tmp_root
    from tasks.ingest import ingest_task
    from tasks.pii import PiiConfig, scrub_pii_task

    cfg = _source(tmp_path)
    raw = tmp_root()
    a = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out-a"), str(raw))
    b = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out-b"), str(raw))
    assert a.data.sha256 == b.data.sha256, "the same data gives the same content digest"

    # Run A scrubs and deletes its raw file while run B has not read its input yet.
    scrubbed_a = scrub_pii_task.fn(a.data, PiiConfig(), str(tmp_path / "out-a"))
    discard(a.data)
    assert Path(b.data.uri).exists(), "run A's cleanup deleted run B's input"
    scrubbed_b = scrub_pii_task.fn(b.data, PiiConfig(), str(tmp_path / "out-b"))
    discard(b.data)

    assert scrubbed_b.counts == scrubbed_a.counts and scrubbed_b.data.sha256 == scrubbed_a.data.sha256
    assert a.data.uri != b.data.uri, "each run's raw file is its own"
    assert not list(raw.glob("*.parquet")), "a raw ingest file is left under the home"


def test_the_next_run_sweeps_a_killed_runs_raw_file_but_not_a_live_ones(home, tmp_path):
    from tasks.home import tmp_root
    from tasks.ingest import ingest_task

    cfg = _source(tmp_path)
    raw = tmp_root()
    live = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out"), str(raw))  # this process: alive
    # A run killed after ingest: its raw file names a process that has ended.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    name = Path(live.data.uri).name.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    assert name != Path(live.data.uri).name
    killed = raw / name
    killed.write_bytes(Path(live.data.uri).read_bytes())
    content = Path(live.data.uri).name.split(".")[0]  # ingest-<digest>.<host>-<pid>-<nonce>.parquet
    other_host = raw / f"{content}.0000000000000000-{dead_pid}-feedfacecafe.parquet"
    other_host.write_bytes(b"another machine's run sharing this home")

    again = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out"), str(raw))
    assert not killed.exists(), "the killed run's raw text is still at rest"
    assert Path(live.data.uri).exists() and Path(again.data.uri).exists(), "a live run's input was swept"
    assert other_host.exists(), "a file of a process on another host was judged by this host's process table"


def test_the_scrub_cache_key_follows_the_content_not_the_file_name():
    from tasks.caching import DATA_STAGE_CACHE, ContentInputs
    from tasks.core import DatasetRef
    from tasks.pii import PiiConfig

    a = DatasetRef(uri="/home/tmp/ingest-abc.host-1-aaaa.parquet", sha256="ab" * 32, rows=6)
    b = DatasetRef(uri="/home/tmp/ingest-abc.host-2-bbbb.parquet", sha256="ab" * 32, rows=6)
    other = DatasetRef(uri=a.uri, sha256="cd" * 32, rows=6)
    key = ContentInputs().compute_key
    base = {"cfg": PiiConfig(), "out_dir": "/home/data/x"}
    assert key(None, {"ref": a, **base}, {}) == key(None, {"ref": b, **base}, {})
    assert key(None, {"ref": a, **base}, {}) != key(None, {"ref": other, **base}, {})
    assert key(None, {"ref": a, **base}, {}) != key(None, {"ref": a, **base, "out_dir": "/home/data/y"}, {})
    assert key(None, {"ref": a, **base}, {}) != key(
        None, {"ref": a, **base, "cfg": PiiConfig(default_score_threshold=0.9)}, {}
    )
    assert any(isinstance(p, ContentInputs) for p in DATA_STAGE_CACHE.policies)


def test_the_scrub_stage_key_is_the_same_for_two_runs_raw_files_of_the_same_data(home, tmp_path):
    """The whole key of the PII task (its own cache policy: inputs, code, named files, library versions) for the
    raw files of two runs on the same data. tests/test_flow_e2e.py checks a second ``loraflow run`` on the same
    data gets the stage ``Cached`` from Prefect."""
    from types import SimpleNamespace

    from tasks.core import discard
    from tasks.home import tmp_root
    from tasks.ingest import ingest_task
    from tasks.pii import PiiConfig, scrub_pii_task

    cfg = _source(tmp_path)
    a = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out"), str(tmp_root()))
    b = ingest_task.fn(cfg, str(tmp_path), str(tmp_path / "out"), str(tmp_root()))
    discard(a.data)
    discard(b.data)
    ctx = SimpleNamespace(task=scrub_pii_task)
    policy = scrub_pii_task.cache_policy

    def key(ref, pii=None):
        inputs = {"ref": ref, "cfg": pii or PiiConfig(), "out_dir": str(tmp_path)}
        return policy.compute_key(task_ctx=ctx, inputs=inputs,
                                  flow_parameters={})  # fmt: skip

    assert a.data.uri != b.data.uri
    assert key(a.data) == key(b.data)
    assert key(a.data) != key(a.data, PiiConfig(default_score_threshold=0.9))
