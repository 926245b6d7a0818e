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
