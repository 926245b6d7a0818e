"""Deployments: the quarterly cron, the retrain form's schema, and (``server``) a real Prefect server that
registers them, runs ``retrain`` with overridden parameters through its API, and renders the Run form."""

import asyncio
import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deployments.deploy import QUARTERLY_CRON, build_deployments
from flows.params import RetrainParams
from flows.quarterly import previous_quarter_start, quarter_start
from tasks.home import model_cache

ROOT = Path(__file__).resolve().parents[1]


def _by_name(deps):
    return {d.name: d for d in deps}


def _next_dates(schedule, n, start):
    """The dates the Prefect *server's* scheduler would create for this schedule."""
    from prefect.server.schemas.schedules import CronSchedule

    server_side = CronSchedule(cron=schedule.cron, timezone=schedule.timezone, day_or=schedule.day_or)
    return asyncio.run(server_side.get_dates(n=n, start=start))


def test_three_deployments_declared_once():
    deps = _by_name(build_deployments())
    assert set(deps) == {"quarterly-retrain", "retrain", "backfill-feedback"}
    assert deps["retrain"].entrypoint == "flows/retrain.py:retrain"
    assert deps["backfill-feedback"].entrypoint == "flows/backfill.py:backfill_feedback"
    assert [s.schedule.cron for s in deps["quarterly-retrain"].schedules] == [QUARTERLY_CRON]
    assert deps["retrain"].schedules == [] and deps["backfill-feedback"].schedules == []
    assert deps["quarterly-retrain"].parameters == {"config": "configs/production.yaml", "timezone": "UTC"}
    assert deps["quarterly-retrain"].concurrency_limit == 1 and deps["retrain"].concurrency_limit == 1


def test_quarterly_cron_next_four_runs_utc():
    (sched,) = [s.schedule for s in _by_name(build_deployments())["quarterly-retrain"].schedules]
    got = _next_dates(sched, 4, dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC))
    assert [d.astimezone(dt.UTC).isoformat() for d in got] == [
        "2027-01-01T03:00:00+00:00",
        "2027-04-01T03:00:00+00:00",
        "2027-07-01T03:00:00+00:00",
        "2027-10-01T03:00:00+00:00",
    ]
    # A run date that is itself a quarter start at 03:00 is included; one minute later it is not.
    on = _next_dates(sched, 1, dt.datetime(2027, 4, 1, 3, 0, tzinfo=dt.UTC))
    after = _next_dates(sched, 1, dt.datetime(2027, 4, 1, 3, 1, tzinfo=dt.UTC))
    assert on[0].isoformat().startswith("2027-04-01T03:00") and after[0].isoformat().startswith("2027-07-01")


def test_quarterly_cron_timezone_is_configurable(monkeypatch):
    monkeypatch.setenv("LORAFLOW_SCHEDULE_TZ", "Europe/Berlin")
    dep = _by_name(build_deployments())["quarterly-retrain"]
    (sched,) = [s.schedule for s in dep.schedules]
    assert sched.timezone == "Europe/Berlin" and dep.parameters["timezone"] == "Europe/Berlin"
    got = _next_dates(sched, 4, dt.datetime(2026, 11, 22, tzinfo=dt.UTC))
    berlin = [d.astimezone(ZoneInfo("Europe/Berlin")) for d in got]
    assert all((d.day, d.hour, d.minute) == (1, 3, 0) for d in berlin)
    # 03:00 in Berlin is 02:00 UTC in winter (CET) and 01:00 UTC in summer (CEST).
    assert [d.astimezone(dt.UTC).hour for d in got] == [2, 1, 1, 1]
    assert (
        _by_name(build_deployments(timezone="America/New_York"))["quarterly-retrain"].schedules[0].schedule.timezone
        == "America/New_York"
    )


def _check_retrain_schema(schema: dict) -> None:
    """Every RetrainParams field: a type, its default and its description, as the UI form needs."""
    (param,) = schema["properties"].values()
    ref = param["$ref"].split("/")[-1]
    props = schema["definitions"][ref]["properties"]
    assert list(props) == list(RetrainParams.model_fields)
    for name, field in RetrainParams.model_fields.items():
        p = props[name]
        assert p["description"] == field.description and p["description"], name
        assert "type" in p or "anyOf" in p, name
        default = field.get_default(call_default_factory=True)
        assert p.get("default", param["default"][name]) == json.loads(json.dumps(default, default=str)), name
    assert props["lora_r"]["type"] == "integer"  # no None toggle: the default is the config's value
    assert props["learning_rate"]["type"] == "number"
    assert props["lora_r"]["default"] == 16 and "configs/demo.yaml: 16" in props["lora_r"]["description"]
    assert props["feedback_start"]["anyOf"][0] == {"format": "date", "type": "string"}
    assert props["dry_run"]["type"] == "boolean" and props["dry_run"]["default"] is False


def test_retrain_parameter_schema_is_a_typed_form():
    dep = _by_name(build_deployments())["retrain"]
    _check_retrain_schema(dep._parameter_openapi_schema.model_dump())


def test_backfill_parameter_schema():
    dep = _by_name(build_deployments())["backfill-feedback"]
    props = dep._parameter_openapi_schema.model_dump()["properties"]
    assert props["start"]["format"] == props["end"]["format"] == "date"
    assert "exclusive" in props["end"]["description"]
    assert props["dry_run"]["default"] is False and props["source"]["default"] is None
    assert dep._parameter_openapi_schema.model_dump()["required"] == ["start", "end"]


@pytest.mark.parametrize(
    ("day", "quarter", "previous"),
    [
        ("2026-10-01", "2026-10-01", "2026-07-01"),
        ("2027-01-01", "2027-01-01", "2026-10-01"),
        ("2026-05-17", "2026-04-01", "2026-01-01"),
        ("2026-12-31", "2026-10-01", "2026-07-01"),
    ],
)
def test_quarter_arithmetic(day, quarter, previous):
    d = dt.date.fromisoformat(day)
    assert quarter_start(d).isoformat() == quarter
    assert previous_quarter_start(d).isoformat() == previous


# --------------------------------------------------------------------------------------------- real server


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LORAFLOW_"))}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        LORAFLOW_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        LORAFLOW_MODEL_CACHE=str(model_cache()),  # the base model prepared once, outside the throwaway home
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real ``prefect server start`` on a free loopback port (SQLite), with the deployments registered."""
    from loraflow.commands.deploy import free_port, start_prefect_server, stop

    home = tmp_path_factory.mktemp("lf-home")
    env = _env(home)
    port = free_port()
    proc = start_prefect_server("127.0.0.1", port, env=env, log=home / "prefect-server.log")
    api = f"http://127.0.0.1:{port}/api"
    try:
        code = (
            "import json, os; from deployments.deploy import deploy_all; "
            "print(json.dumps(deploy_all(env={k: os.environ[k] for k in ('LORAFLOW_HOME', 'MLFLOW_TRACKING_URI')})))"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PREFECT_API_URL": api},
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": env, "home": home}
    finally:
        stop(proc)


def _api(base: str, method: str, path: str, body: dict | None = None) -> dict | list:
    import httpx

    r = httpx.request(method, f"{base}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.mark.server
def test_server_has_the_deployments_schedule_and_form(prefect_server):
    api = prefect_server["api"]
    retrain = _api(api, "GET", "/deployments/name/retrain/retrain")
    _check_retrain_schema(retrain["parameter_openapi_schema"])
    assert retrain["work_pool_name"] == "loraflow-process"
    quarterly = _api(api, "GET", "/deployments/name/quarterly-retrain/quarterly-retrain")
    assert [s["schedule"]["cron"] for s in quarterly["schedules"]] == [QUARTERLY_CRON]
    backfill = _api(api, "GET", "/deployments/name/backfill-feedback/backfill-feedback")
    assert backfill["parameter_openapi_schema"]["required"] == ["start", "end"]


def _wait_final(api: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(api, "GET", f"/flow_runs/{run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} still {run['state']['type']} after {timeout:.0f} s")


@pytest.mark.server
def test_retrain_triggered_through_the_api_with_overrides(prefect_server, request):
    """Trigger ``retrain`` through the Prefect API with overridden form values; a process worker runs it; the
    values are what MLflow recorded."""
    if not (ROOT / "configs" / "tiny.yaml").exists():
        pytest.skip("configs/tiny.yaml not present")
    try:
        tiny_model = str(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("no tiny_model_dir fixture (tests/conftest.py)")
    from loraflow.commands.deploy import start_worker, stop

    api, env, home = prefect_server["api"], prefect_server["env"], prefect_server["home"]
    worker = start_worker(env={**env, "PREFECT_API_URL": api}, log=home / "worker.log", cwd=ROOT)
    try:
        dep = _api(api, "GET", "/deployments/name/retrain/retrain")
        params = {"config": "configs/tiny.yaml", "base_model": tiny_model, "lora_r": 4, "lora_alpha": 8,
                  "max_steps": 3, "learning_rate": 0.003, "overrides": ["validate.contract=tiny"]}  # fmt: skip
        run = _api(api, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"params": params}})
        final = _wait_final(api, run["id"], timeout=900)
        log = (home / "worker.log").read_text(errors="replace")
        assert final["state"]["type"] == "COMPLETED", log[-4000:]
        assert final["parameters"]["params"]["lora_r"] == 4
    finally:
        stop(worker)

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`prefect.flow_run_id` = '{run['id']}'"
    )
    assert len(runs) == 1
    p = runs[0].data.params
    assert (p["train.lora_r"], p["train.lora_alpha"], p["train.max_steps"]) == ("4", "8", "3")
    assert float(p["train.learning_rate"]) == 0.003
    assert p["train.base_model"] == tiny_model
    assert json.loads(p["flow.params"])["lora_r"] == 4
    assert p["validate.contract"] == "tiny"


def _chromium() -> str:
    """Debian's chromium, installed here when missing (root + apt) — the test setup, not the code under test."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium missing and cannot apt-get install it")
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True, timeout=900)
        if not Path("/usr/bin/chromium").exists():
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                           timeout=900)  # fmt: skip
    return "/usr/bin/chromium"


@pytest.mark.server
def test_run_form_screenshot_shows_the_fields(prefect_server, tmp_path):
    pytest.importorskip("playwright")
    _chromium()
    spec = importlib.util.spec_from_file_location("screenshot_form", ROOT / "docs" / "screenshot_form.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    dep_id = shot.deployment_id(prefect_server["api"], "retrain", "retrain")
    png = tmp_path / "retrain-form.png"
    text = shot.capture_form(prefect_server["ui"], dep_id, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    for name, field in RetrainParams.model_fields.items():
        assert field.description in text, name  # every field is rendered with its description
    for label in ("Lora R", "Learning Rate", "Max Steps", "Feedback Start", "Gate Margin", "Dry Run"):
        assert label in text
    assert "Can't connect to Server API" not in text


@pytest.mark.server
def test_backfill_triggered_through_the_api(prefect_server):
    """A process worker runs the registered backfill-feedback deployment; the partitions land in the home."""
    from loraflow.commands.deploy import start_worker, stop
    from tasks import feedback as fb

    api, env, home = prefect_server["api"], prefect_server["env"], prefect_server["home"]
    rows = [json.loads(line) for line in (ROOT / "examples" / "demo" / "feedback_seed.jsonl").open()][:6]
    seed = home / "seed.jsonl"
    seed.write_text("".join(json.dumps({**r, "created_at": f"2026-07-0{1 + i % 2}T10:0{i}:00Z"}) + "\n"
                            for i, r in enumerate(rows)))  # fmt: skip
    assert fb.import_file(seed, f"sqlite:///{home / 'feedback' / 'feedback.db'}")["inserted"] == 6
    worker = start_worker(env={**env, "PREFECT_API_URL": api}, log=home / "worker-backfill.log", cwd=ROOT)
    try:
        dep = _api(api, "GET", "/deployments/name/backfill-feedback/backfill-feedback")
        body = {"parameters": {"start": "2026-07-01", "end": "2026-07-04"}}
        run = _api(api, "POST", f"/deployments/{dep['id']}/create_flow_run", body)
        final = _wait_final(api, run["id"], timeout=600)
        log = (home / "worker-backfill.log").read_text(errors="replace")
        assert final["state"]["type"] == "COMPLETED", log[-4000:]
    finally:
        stop(worker)
    parts = sorted(p.parent.name for p in (home / "feedback").glob("date=*/part.parquet"))
    assert parts == ["date=2026-07-01", "date=2026-07-02", "date=2026-07-03"]
    reports = [json.loads((home / "feedback" / d / "report.json").read_text())["counts"] for d in parts]
    assert sum(r["rows_in"] for r in reports) == 6 and reports[2]["rows_in"] == 0
    task_runs = _api(api, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert sorted(t["name"] for t in task_runs) == ["backfill-2026-07-01", "backfill-2026-07-02", "backfill-2026-07-03"]
    (artifact,) = _api(api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    assert artifact["key"] == "backfill-feedback" and "| **total** | 6 |" in artifact["data"]


@pytest.mark.server
@pytest.mark.slow
def test_quarterly_retrain_through_the_api(prefect_server):
    """The scheduled deployment, run now for a given day: backfill the previous quarter, then a dry-run retrain."""
    if not (ROOT / "configs" / "tiny.yaml").exists():
        pytest.skip("configs/tiny.yaml not present")
    from loraflow.commands.deploy import start_worker, stop

    api, env, home = prefect_server["api"], prefect_server["env"], prefect_server["home"]
    worker = start_worker(env={**env, "PREFECT_API_URL": api}, log=home / "worker-quarterly.log", cwd=ROOT)
    try:
        dep = _api(api, "GET", "/deployments/name/quarterly-retrain/quarterly-retrain")
        body = {"parameters": {"config": "configs/tiny.yaml", "day": "2026-07-03", "dry_run": True,
                               "overrides": ["validate.contract=tiny"]}}  # fmt: skip
        run = _api(api, "POST", f"/deployments/{dep['id']}/create_flow_run", body)
        final = _wait_final(api, run["id"], timeout=900)
        log = (home / "worker-quarterly.log").read_text(errors="replace")
        assert final["state"]["type"] == "COMPLETED", log[-4000:]
    finally:
        stop(worker)
    subflows = _api(api, "POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}})
    assert len(subflows) == 2  # backfill-feedback, then retrain
    parts = {p.parent.name for p in (home / "feedback").glob("date=*/part.parquet")}
    assert {"date=2026-04-01", "date=2026-07-02"} <= parts and "date=2026-07-03" not in parts

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("loraflow-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`loraflow.dry_run` = 'True'")
    assert runs and runs[0].data.tags["loraflow.config"] == "configs/tiny.yaml"
