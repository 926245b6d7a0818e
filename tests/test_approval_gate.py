"""The owner's approval of a gated candidate, through a real Prefect server's API (``register.require_approval``).

One ``prefect server start`` (SQLite) for the module, the deployments registered, a process worker. A tiny
retrain of the ``retrain`` deployment suspends once the gate passes (the worker's process exits); resuming it
with ``approve=true`` makes the worker start the flow again, which goes straight to the decision: champion
moves, and no stage ran twice. ``loraflow run`` against the same server has no deployment to reschedule, so it
pauses in its process: rejecting leaves the version challenger, as does a tiny timeout. Without a server: a stale
approval (the champion moved since the evaluation) and a suspended run's expired deadline.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_deployments import _api, _chromium, _env
from test_review import MODEL, registry  # noqa: F401 (registry: three versions, champion 1)

ROOT = Path(__file__).resolve().parents[1]
KEY = "loraflow-approval"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``prefect server start`` (SQLite) with the deployments registered, as in test_deployments, but given up to
    10 min to answer: on a loaded shared machine its start alone has taken over 3 min."""
    from loraflow.commands.deploy import free_port, start_prefect_server, stop

    home = tmp_path_factory.mktemp("lf-approval-home")
    env, port = _env(home), free_port()
    proc = start_prefect_server("127.0.0.1", port, env=env, log=home / "prefect-server.log", timeout=600)
    api = f"http://127.0.0.1:{port}/api"
    try:
        code = "import os; from deployments.deploy import deploy_all; deploy_all(env={k: os.environ[k] for k in " \
               "('LORAFLOW_HOME', 'MLFLOW_TRACKING_URI')})"  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PREFECT_API_URL": api},
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": env, "home": home}
    finally:
        stop(proc)


def _overrides(model: str, *extra: str) -> list[str]:
    return ["validate.contract=tiny", "evaluate.forgetting_set=null", "register.require_approval=true",
            f"register.model_name={model}", *extra]  # fmt: skip


def _wait(api: str, run_id: str, types: tuple[str, ...], timeout: float, log: Path | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(api, "GET", f"/flow_runs/{run_id}")
        if run["state"]["type"] in types:
            return run
        if run["state"]["type"] in FINAL:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            pytest.fail(f"flow run {run_id} ended {run['state']['type']} ({run['state']['message']}): {tail}")
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} still {run['state']['type']} after {timeout:.0f} s")


def _mlflow(env: dict[str, str]):
    from mlflow import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def _aliases(client, model: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(model).aliases.items()}


def _flow_runs_of(client, flow_run_id: str) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")


def _input(api: str, run_id: str, what: str) -> str:
    import httpx

    r = httpx.get(f"{api}/flow_runs/{run_id}/input/suspended-{KEY}-{what}", timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def suspended(prefect_server, tiny_model_dir):
    """A tiny retrain of the ``retrain`` deployment, run by a process worker, stopped in ``Suspended``."""
    from loraflow.commands.deploy import start_worker, stop

    api, env, home = prefect_server["api"], prefect_server["env"], prefect_server["home"]
    log = home / "worker-approval.log"
    worker = start_worker(env={**env, "PREFECT_API_URL": api}, log=log, cwd=ROOT)
    try:
        dep = _api(api, "GET", "/deployments/name/retrain/retrain")
        params = {"config": "configs/tiny.yaml", "base_model": str(tiny_model_dir),
                  "overrides": _overrides("lf-approve")}  # fmt: skip
        run = _api(api, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": params}})
        paused = _wait(api, run["id"], ("PAUSED",), timeout=900, log=log)
        yield {"id": run["id"], "state": paused["state"], "log": log, **prefect_server}
    finally:
        stop(worker)


@pytest.mark.server
@pytest.mark.timeout(1800)  # the module fixture (server start, deploy, a tiny retrain) runs inside the first
def test_gate_passed_run_is_suspended_with_scorecard_and_typed_form(suspended):
    api, run_id = suspended["api"], suspended["id"]
    assert suspended["state"]["name"] == "Suspended"
    schema = _input(api, run_id, "schema")
    schema = schema if isinstance(schema, dict) else json.loads(schema)
    props = schema["properties"]
    assert {"approve", "reviewer", "reason"} <= set(props)
    assert props["approve"]["type"] == "boolean" and props["reviewer"]["type"] == "string"
    assert set(schema["required"]) >= {"reviewer", "reason"}
    description = _input(api, run_id, "description")
    assert "Approve lf-approve version 1" in description
    assert "| metric |" in description and "accuracy_constrained" in description  # the metrics table
    header = next(line for line in description.splitlines() if line.startswith("| metric |"))
    assert "candidate" in header and "base" in header  # one column per model
    assert "MLflow run:" in description and "No blind review imported yet" in description
    client = _mlflow(suspended["env"])
    (mv,) = client.search_model_versions("name='lf-approve'")
    assert mv.tags["approval"] == "pending" and mv.tags["decision"] == "awaiting_approval"
    assert mv.tags["gate_passed"] == "true"
    assert _aliases(client, "lf-approve") == {"challenger": "1"}
    (mlrun,) = _flow_runs_of(client, run_id)
    assert mlrun.data.tags["loraflow.approval"] == "pending"
    assert mlrun.info.run_id in description


@pytest.mark.server
@pytest.mark.timeout(1800)  # the module fixture (server start, deploy, a tiny retrain) runs inside the first
def test_approval_form_screenshot(suspended, tmp_path):
    pytest.importorskip("playwright")
    _chromium()
    spec = importlib.util.spec_from_file_location("screenshot_approval", ROOT / "docs" / "screenshot_approval.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    png = tmp_path / "approval-form.png"
    text = shot.capture_approval_form(suspended["ui"], suspended["id"], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000
    for label in ("Approve", "Reviewer", "Reason", "Test-set metrics", "Gate"):
        assert label in text, label
    if os.environ.get("LORAFLOW_SHOTS_DIR"):
        shutil.copy(png, Path(os.environ["LORAFLOW_SHOTS_DIR"]) / "approval-form.png")


@pytest.mark.server
@pytest.mark.timeout(1800)  # the module fixture (server start, deploy, a tiny retrain) runs inside the first
def test_approve_through_the_api_moves_champion_without_retraining(suspended):
    api, run_id, env = suspended["api"], suspended["id"], suspended["env"]
    body = {"run_input": {"approve": True, "reviewer": "Ada Owner", "reason": "beats every baseline"}}
    _api(api, "POST", f"/flow_runs/{run_id}/resume", body)
    final = _wait(api, run_id, ("COMPLETED",), timeout=600, log=suspended["log"])
    assert final["state"]["type"] == "COMPLETED"
    states = [s["name"] for s in _api(api, "GET", f"/flow_run_states/?flow_run_id={run_id}")]
    assert "Suspended" in states and "Resuming" in states  # the worker started the flow a second time
    tasks = _api(api, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    names = [t["name"].rsplit("-", 1)[0] for t in tasks]
    assert names.count("train") == 1 and names.count("evaluate") == 1 and names.count("register") == 1
    client = _mlflow(env)
    assert len(_flow_runs_of(client, run_id)) == 1  # the second start reused the run's checkpoint
    (mv,) = client.search_model_versions("name='lf-approve'")
    assert _aliases(client, "lf-approve") == {"challenger": "1", "champion": "1"}
    assert mv.tags["approval"] == "approved" and mv.tags["approval.by"] == "Ada Owner"
    assert mv.tags["approval.reason"] == "beats every baseline"
    assert mv.description.startswith("**Approved as champion** by Ada Owner: beats every baseline")
    (mlrun,) = _flow_runs_of(client, run_id)
    assert mlrun.data.tags["loraflow.approval"] == "approved" and mlrun.data.tags["loraflow.approval.by"] == "Ada Owner"


def _cli_run(server: dict, tiny_model_dir, model: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    """``loraflow run`` against the server (no deployment: the run pauses in this process)."""
    args = ["run", "--config", "configs/tiny.yaml", "--set", f"train.base_model={tiny_model_dir}"]
    for o in _overrides(model, *extra):
        args += ["--set", o]
    log = server["home"] / f"cli-{model}.log"
    env = {**server["env"], "PREFECT_API_URL": server["api"]}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "loraflow", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    return proc, log


def _flow_run_of_model(server: dict, model: str, timeout: float, log: Path) -> str:
    """The Prefect flow run id of the CLI run registering ``model`` (read from its MLflow run's tags)."""
    client = _mlflow(server["env"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_experiment_by_name("loraflow-tiny") is not None:
            runs = _flow_runs_by_param(client, model)
            if runs:
                return runs[0].data.tags["prefect.flow_run_id"]
        time.sleep(2)
    raise TimeoutError(f"no MLflow run for {model}: {log.read_text(errors='replace')[-3000:]}")


def _flow_runs_by_param(client, model: str) -> list:
    exp = client.get_experiment_by_name("loraflow-tiny")
    return client.search_runs([exp.experiment_id], f"params.`register.model_name` = '{model}'")


@pytest.mark.server
@pytest.mark.timeout(1800)  # the module fixture (server start, deploy, a tiny retrain) runs inside the first
def test_reject_from_the_form_leaves_the_version_challenger(prefect_server, tiny_model_dir):
    proc, log = _cli_run(prefect_server, tiny_model_dir, "lf-reject")
    try:
        run_id = _flow_run_of_model(prefect_server, "lf-reject", 900, log)
        paused = _wait(prefect_server["api"], run_id, ("PAUSED",), timeout=900, log=log)
        assert paused["state"]["name"] == "Paused"  # no deployment: Prefect cannot reschedule, the process waits
        body = {"run_input": {"approve": False, "reviewer": "Bo Owner", "reason": "tone is off-brand"}}
        _api(prefect_server["api"], "POST", f"/flow_runs/{run_id}/resume", body)
        assert proc.wait(300) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    client = _mlflow(prefect_server["env"])
    (mv,) = client.search_model_versions("name='lf-reject'")
    assert _aliases(client, "lf-reject") == {"challenger": "1"}
    assert mv.tags["approval"] == "rejected" and mv.tags["approval.by"] == "Bo Owner"
    assert mv.tags["approval.reason"] == "tone is off-brand"
    assert mv.description.startswith("**Rejected: stays challenger** by Bo Owner: tone is off-brand")


@pytest.mark.server
@pytest.mark.timeout(1800)  # the module fixture (server start, deploy, a tiny retrain) runs inside the first
def test_no_decision_before_the_timeout_leaves_the_version_challenger(prefect_server, tiny_model_dir):
    proc, log = _cli_run(prefect_server, tiny_model_dir, "lf-timeout", "register.approval_timeout_hours=0.002")
    try:
        run_id = _flow_run_of_model(prefect_server, "lf-timeout", 900, log)
        _wait(prefect_server["api"], run_id, ("PAUSED",), timeout=900, log=log)
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
    client = _mlflow(prefect_server["env"])
    (mv,) = client.search_model_versions("name='lf-timeout'")
    assert _aliases(client, "lf-timeout") == {"challenger": "1"}, log.read_text()[-3000:]
    assert mv.tags["approval"] == "timeout"
    assert mv.tags["approval.reason"] == "no decision within 0.002 h (register.approval_timeout_hours)"
    assert mv.description.startswith("**No decision in time: stays challenger**")


def test_an_approval_after_the_champion_moved_is_stale(registry):  # noqa: F811
    from tasks.approval import decide

    client, _ = registry
    res = decide(MODEL, "2", "owner", "looks good", expected_champion=None)  # evaluated when there was none
    assert res["decision"] == "stale" and str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["approval"] == "stale" and "champion changed since evaluation" in tags["approval.reason"]
    assert decide(MODEL, "2", "owner", "ok", expected_champion="1")["decision"] == "approved"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"


def test_a_pending_approval_past_its_deadline_is_recorded_as_timeout(registry):  # noqa: F811
    from tasks.approval_gate import expire_pending

    client, _ = registry
    for version, deadline in (("2", "2999-01-01T00:00:00+00:00"), ("3", "2020-01-01T00:00:00+00:00")):
        for k, v in {"approval": "pending", "approval.deadline": deadline, "approval.timeout_hours": "2"}.items():
            client.set_model_version_tag(MODEL, version, k, v)
    assert expire_pending(MODEL) == ["3"]
    late = client.get_model_version(MODEL, "3")
    assert late.tags["approval"] == "timeout"
    assert late.tags["approval.reason"] == "no decision within 2 h (register.approval_timeout_hours)"
    assert late.description.startswith("**No decision in time: stays challenger**")
    assert client.get_model_version(MODEL, "2").tags["approval"] == "pending"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert expire_pending(MODEL) == []  # recorded once
