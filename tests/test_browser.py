"""What a person sees in the two UIs after a retrain, checked in headless Chromium (Debian's, through Playwright).

One tiny retrain through the real CLI (embedded Prefect API, MLflow on SQLite) into a throwaway home, then the real
``loraflow ui`` on free loopback ports against that home, as a user would run it after ``make demo``. Each test
opens a page and asserts on its visible text: the MLflow run page, its chart images, the predictions preview, the
data-contract report, the model version; the Prefect flow run's tasks, its summary artifact and its logs. The last
test sends ``loraflow ui`` SIGTERM and checks both servers are gone within 10 s.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.server

# What ``dis`` prints: the opcode names of CPython 3.10-3.13 that any disassembled function contains.
BYTECODE = re.compile(r"\b(LOAD_(FAST|GLOBAL|CONST|ATTR|DEREF|NAME)|STORE_FAST|RETURN_VALUE|RETURN_CONST|RESUME)\b")
STAGE_TASKS = ("ingest", "scrub_pii", "dedup", "validate", "split", "train", "evaluate", "register")


def _shots():
    spec = importlib.util.spec_from_file_location("screenshot_ui", ROOT / "docs" / "screenshot_ui.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


shots = _shots()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """A tiny retrain in a fresh home, then ``loraflow ui`` on it; yields (stack, browser, ids, home)."""
    pytest.importorskip("playwright")
    from test_deployments import _chromium

    from tasks.home import model_cache

    _chromium()
    home = tmp_path_factory.mktemp("ui-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LORAFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), LORAFLOW_MODEL_CACHE=str(model_cache()), PYTHONUNBUFFERED="1")
    args = ["run", "--config", "configs/tiny.yaml", "--set", f"train.base_model={tiny_model_dir}",
            "--set", "train.max_steps=2", "--set", "train.eval_steps=1", "--set", "evaluate.forgetting_set=null"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "loraflow", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    ids = shots.latest_run(home)
    with shots.ui_stack(env, home / "logs" / "ui.log") as s, shots.browser() as b:
        yield s, b, ids, home


def test_mlflow_run_page_opens_on_the_description_and_eval_metrics(stack, tmp_path):
    s, b, (exp, run, _), home = stack
    text = shots.mlflow_run_page(b, s, exp, run, tmp_path / "run.png")
    assert "LoRA retrain" in text and "Decision" in text and "Training" in text
    for key in ("eval.base.accuracy", "eval.candidate.accuracy_constrained", "train_loss", "val_loss"):
        assert key in text, key
    assert re.search(r"Metrics \(\d+\)", text)
    assert not re.search(r"\b(ingest|pii|dedup|validate|split)\.(rows_in|kept)\b", text), "counts: a table, not metrics"
    from mlflow import MlflowClient

    tags = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}").get_run(run).data.tags
    assert tags.get("prefect.flow_run_url", "http").startswith("http"), "no None/flow-runs/... link"


@pytest.mark.parametrize("chart", ["charts/loss_curves.png", "charts/confusion_matrix.png", "eval/eval_metrics.png"])
def test_chart_images_render(stack, chart):
    s, b, (exp, run, _), _ = stack
    shown = shots.mlflow_artifact(b, s, exp, run, chart)
    assert any(w >= 400 and h >= 200 for w, h, _ in shown["images"]), shown["images"]


def test_predictions_preview_renders_rows(stack, tmp_path):
    import pandas as pd

    s, b, (exp, run, _), home = stack
    shown = shots.mlflow_artifact(b, s, exp, run, "eval/predictions.json", tmp_path / "predictions.png")
    (pq,) = list((home / "data").rglob("eval/predictions.parquet"))
    df = pd.read_parquet(pq)
    assert "prediction_constrained" in shown["text"] and "View as table" in shown["text"]
    seen = [i for i in df["id"] if i in shown["text"]]
    assert len(seen) >= min(5, len(df)), f"rows visible: {len(seen)} of {len(df)}"


def test_contract_report_renders_with_its_styles(stack):
    s, b, (exp, run, _), _ = stack
    shown = shots.mlflow_artifact(b, s, exp, run, "validate/report.html")
    (frame,) = [f for f in shown["frames"] if "Data contract" in f["text"]]
    assert "rows in" in frame["text"] and "label_in_set" in frame["text"]
    assert frame["pass_colour"] == "rgb(230, 244, 234)", "the inline stylesheet was applied"


def test_model_version_shows_aliases_description_and_digests(stack):
    s, b, (_, run, _), _ = stack
    text = shots.mlflow_model_version(b, s, "loraflow-tiny", "1")
    assert re.search(r"@\s*challenger", text)  # the alias chip ("@", a no-break space, the name)
    assert "romoted" in text and run in text
    assert "accuracy_constrained" in text and "train data sha256" in text and "test data sha256" in text


def test_prefect_flow_run_shows_every_stage_task(stack):
    s, b, (_, _, flow_run), _ = stack
    text = shots.prefect_flow_run(b, s, flow_run, tab="Task Runs")
    for stage in STAGE_TASKS:
        assert re.search(rf"\b{stage}-\w+", text), stage


def test_prefect_summary_artifact_renders_its_tables(stack, tmp_path):
    s, b, (_, run, flow_run), _ = stack
    text = shots.prefect_artifact(b, s, flow_run, tmp_path / "summary.png")
    for cell in ("rows in", "quarantined", "Split", "best step", "tokens/s", "accuracy_constrained", "loraflow ui"):
        assert cell in text, cell
    assert run in text and "|---" not in text, "markdown tables render as tables"


def test_no_log_entry_of_the_run_is_bytecode(stack):
    s, b, (_, _, flow_run), _ = stack
    logs, offset = [], 0
    while True:
        page = shots.api(s.api, "POST", "/logs/filter",
                         {"logs": {"flow_run_id": {"any_": [flow_run]}}, "limit": 200, "offset": offset})  # fmt: skip
        logs += page
        offset += len(page)
        if len(page) < 200:
            break
    assert any("train" in (entry["message"] or "") for entry in logs)
    assert not [entry["message"][:80] for entry in logs if BYTECODE.search(entry["message"] or "")]
    assert not BYTECODE.search(shots.prefect_flow_run(b, s, flow_run))  # the Logs tab as shown


def test_loraflow_ui_stops_both_servers_on_sigterm_within_10_s(stack):
    s = stack[0]
    groups = shots.server_groups(s.proc.pid)
    assert len(groups) == 2, groups
    seconds = s.stop(timeout=15)
    assert s.proc.returncode is not None
    assert not [g for g in groups if shots._group_alive(g)], "a server outlived loraflow ui"
    assert seconds < 10, f"{seconds:.1f} s"
