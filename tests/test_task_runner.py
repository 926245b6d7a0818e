"""`data.task_runner: dask` gives the data stages' outputs byte for byte as the local path does.

The same generated records (bench/prepare_scale.py's deterministic mix: tickets with planted PII, exact and near
repeats, unreadable lines) go through ingest → PII → dedup → validate → split twice, once in this process and
once in shards on a two-worker Dask LocalCluster, each run writing its own stage files. Compared: every kept,
quarantine and split file (bytes and content digest), the ledger counts of every stage and the record ids.
The default run uses 600 records; the 10,000-record version is marked slow (Presidio on 2 cores: minutes).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from tasks.core import read_records

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("prepare_scale_bench", ROOT / "bench" / "prepare_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cluster():
    """One two-worker LocalCluster for the module (as the flow opens one for all its data stages)."""
    from tasks.runner import DaskConfig, data_cluster

    with data_cluster("dask", DaskConfig(n_workers=2, shard_rows=250)) as runner:
        yield runner


def _prepare(source: Path, out: Path, tokenizer: Path, runner) -> dict:
    """The flow's data stages as plain functions (ingest → PII → dedup → validate → split) into ``out``."""
    from tasks.core import finish_stage
    from tasks.dedup import DedupConfig, deduplicate
    from tasks.ingest import IngestConfig, SourceConfig, ingest
    from tasks.pii import PiiConfig, scrub_sharded
    from tasks.split import SplitConfig, run_split, test_mask
    from tasks.validate import ValidateConfig, validate

    pii_cfg = PiiConfig(allow_list=["Fernbank"])
    dedup_cfg = DedupConfig(batch_rows=300)  # several signature batches, so dedup's shards are exercised too
    split_cfg = SplitConfig()
    rows_in, outcome = ingest(IngestConfig(sources=[SourceConfig(path=str(source))]))
    stages = {"ingest": finish_stage("ingest", rows_in, outcome, out / "ingest")}
    raw = read_records(stages["ingest"].data)
    stages["pii"] = finish_stage("pii", len(raw), scrub_sharded(raw, pii_cfg, runner), out / "pii")
    scrubbed = read_records(stages["pii"].data)
    deduped = deduplicate(scrubbed, dedup_cfg, is_test=test_mask(scrubbed, split_cfg), runner=runner)
    stages["dedup"] = finish_stage("dedup", len(scrubbed), deduped, out / "dedup")
    kept = read_records(stages["dedup"].data)
    checked = validate(kept, ValidateConfig(contract="tiny"), str(tokenizer), None, pii_cfg, runner)
    stages["validate"] = finish_stage("validate", len(kept), checked, out / "validate")
    return {"stages": stages, "split": run_split(stages["validate"].data, split_cfg, out)}


def _files(result: dict) -> dict[str, bytes]:
    refs = {f"{k}.{part}": getattr(r, part) for k, r in result["stages"].items() for part in ("data", "quarantine")}
    split = result["split"]
    refs.update({f"split.{s}": getattr(split, s) for s in ("train", "val", "test", "assignment")})
    return {k: (ref.sha256, Path(ref.uri).read_bytes()) for k, ref in refs.items()}


def _same_outputs(rows: int, tmp_path: Path, tokenizer: Path, runner) -> None:
    source = tmp_path / "records.jsonl"
    source.write_text("".join(line + "\n" for line in _bench().generate(rows)))
    local = _prepare(source, tmp_path / "local", tokenizer, None)
    dask = _prepare(source, tmp_path / "dask", tokenizer, runner)

    for stage, res in local["stages"].items():
        assert res.counts == dask["stages"][stage].counts, stage
        assert res.counts["rows_in"] == res.counts["kept"] + res.counts["quarantined"]
    assert local["split"].counts == dask["split"].counts
    a, b = _files(local), _files(dask)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between the local and the dask path"
    ids = read_records(local["stages"]["validate"].data)["id"].tolist()
    assert ids == read_records(dask["stages"]["validate"].data)["id"].tolist()
    # The generated mix exercises every path: rows quarantined by ingest, PII found, duplicates removed.
    counts = {s: r.counts for s, r in local["stages"].items()}
    assert counts["ingest"]["quarantined"] > 0 and counts["dedup"]["quarantined"] > 0
    assert local["stages"]["pii"].counts["kept"] > 0.9 * rows
    assert read_records(local["split"].test).shape[0] > 0


def _engines_built_per_worker(runner) -> dict[str, int]:
    from distributed import Client

    def built() -> int:
        from tasks.pii.engine import _engine_for

        return _engine_for.cache_info().misses

    with Client(runner.address) as client:
        return client.run(built)


def test_dask_path_writes_the_same_files_as_the_local_path(tmp_path, base_tokenizer_dir, cluster):
    _same_outputs(600, tmp_path, base_tokenizer_dir, cluster)
    # Each worker built the Presidio engine once and reused it for every PII shard and the contract's scan.
    built = _engines_built_per_worker(cluster)
    assert len(built) == 2 and set(built.values()) == {1}, built


@pytest.mark.slow
def test_dask_path_writes_the_same_files_on_10k_records(tmp_path, base_tokenizer_dir, cluster):
    _same_outputs(10_000, tmp_path, base_tokenizer_dir, cluster)


def test_runner_choice_is_validated_and_stays_out_of_the_cache_key():
    from types import SimpleNamespace

    from flows.config import load_config
    from tasks.core import DatasetRef, StageError
    from tasks.dedup import dedup_task
    from tasks.pii import PiiConfig, scrub_pii_task
    from tasks.runner import DaskConfig
    from tasks.validate import validate_task

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.task_runner=dask", "data.dask.n_workers=2"])
    assert cfg.data.task_runner == "dask" and cfg.data.dask.n_workers == 2
    assert load_config(ROOT / "configs" / "tiny.yaml").data.task_runner == "local"
    with pytest.raises(StageError, match="data.task_runner"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.task_runner=ray"])

    ref = DatasetRef(uri="/nowhere/x.parquet", sha256="ab" * 32, rows=3)
    ctx = SimpleNamespace(task=scrub_pii_task)

    def key(pii: PiiConfig, runner) -> str:
        inputs = {"ref": ref, "cfg": pii, "out_dir": "/out", "runner": runner}
        return scrub_pii_task.cache_policy.compute_key(task_ctx=ctx, inputs=inputs, flow_parameters={})

    on_dask = DaskConfig(address="tcp://127.0.0.1:8786", n_workers=2)
    assert key(PiiConfig(), None) == key(PiiConfig(), on_dask)
    assert key(PiiConfig(), None) != key(PiiConfig(roles=["user"]), None)  # the config does decide the key
    assert dedup_task.cache_policy is scrub_pii_task.cache_policy
    assert any(getattr(p, "exclude", None) == ["runner"] for p in validate_task.cache_policy.policies)


def test_choosing_local_imports_no_dask():
    import subprocess

    code = (
        "import sys, flows.retrain, tasks.runner as r\n"
        "from tasks.runner import DaskConfig\n"
        "with r.data_cluster('local', DaskConfig()) as x: assert x is None\n"
        "print(sorted(m for m in ('dask', 'distributed', 'prefect_dask') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
