"""One end-to-end run of the real ``retrain`` flow through the real CLI, in fresh processes, on tiny data.

Run 1 trains a tiny random model on a few demo rows plus records carrying planted, unique PII ("canaries");
run 2 repeats it. Then the test reads what MLflow holds, checks that run 2 took the data stages from Prefect's
cache, and scans every file under the loraflow home — data, quarantine, MLflow store and artifacts, Prefect's
database and results — for the canaries.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Unique strings nobody else would write; each must be gone from everything the pipeline stores.
CANARIES = {
    "email": "quillon.vantreese.7731@example.org",
    "phone": "+44 20 7946 0321",
    "card": "4539 5781 2468 1347",
    "iban": "GB33BUKB20201555555555",
    "name": "Eleanor Whitfield",
}
SYSTEM = "You are a support-ticket router for Fernbank. Reply with the ticket's category only."


def _canary_file(path: Path) -> Path:
    tickets = [
        (f"Hi, I am {CANARIES['name']} and my card was stolen yesterday, please block it.", "card_lost_or_stolen"),
        (f"Please email me at {CANARIES['email']} about the refund that never arrived.", "refund_not_received"),
        (f"Call me on {CANARIES['phone']}, my transfer has been pending for three days.", "transfer_pending"),
        (f"My card {CANARIES['card']} was declined at the supermarket today.", "card_declined"),
        (f"I sent money to IBAN {CANARIES['iban']} by mistake, wrong recipient, can you recall it?", "wrong_recipient"),
    ]
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": t},
                    {"role": "assistant", "content": label},
                ]
            }
        )
        for t, label in tickets
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "loraflow", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("home")
    canary = _canary_file(tmp_path_factory.mktemp("input") / "canary.jsonl")
    args = [
        "run",
        "--config",
        "configs/tiny.yaml",
        "--set",
        f"train.base_model={tiny_model_dir}",
        "--set",
        f"data.sources=[{{path: {canary}}}, {{path: examples/demo/tickets_chat.jsonl, max_rows: 80}}]",
    ]
    first = _run_cli(args, home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    second = _run_cli(args, home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    return home, first, second


def _mlflow(home: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")


def test_mlflow_holds_params_metrics_artifacts_and_a_registered_version(two_runs):
    home, _, _ = two_runs
    client = _mlflow(home)
    exp = client.get_experiment_by_name("loraflow-tiny")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2, "each flow run makes its own MLflow run"
    run = runs[0]
    params = run.data.params
    assert len(params) >= 30
    assert params["train.lora_r"] == "16"
    assert len(params["base_model.sha256"]) == 64 and params["code.git_commit"]
    assert run.data.tags["prefect.flow_run_id"] not in ("", "local")
    metrics = run.data.metrics
    for key in (
        "eval.base.accuracy",
        "eval.candidate.accuracy",
        "eval.candidate.accuracy_constrained",
    ):
        assert key in metrics, key
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2  # max_steps=2, logged every step
    # What the run used: CPU seconds, tokens trained and generated, peak memory and a priced estimate.
    assert metrics["cost.cpu_s"] > 0 and metrics["cost.peak_rss_mb"] > 0 and "cost.estimate" in metrics
    assert metrics["cost.tokens_trained"] > 0 and metrics["cost.tokens_generated"] > 0
    # rows_in == kept + quarantined, stage by stage, as logged (one table artifact, not 40 metric charts)
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "reports/stage_counts.json")).read_text())
    counts = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert {"ingest", "dedup", "validate", "split"} <= set(counts)
    assert "scrub_pii" in counts or "pii" in counts
    assert not any(k.split(".")[0] in counts for k in metrics), "stage counts are not metrics"
    for s, c in counts.items():
        if s != "split":
            assert c["rows_in"] == c["kept"] + c["quarantined"], s
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert any("dedup" in a for a in artifacts) and any("validate" in a for a in artifacts)
    assert "config/resolved.yaml" in {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    inputs = run.inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {"loraflow-tiny-train", "loraflow-tiny-val", "loraflow-tiny-test"}
    # the registry: one version per run, the latest carries `challenger`
    versions = client.search_model_versions("name='loraflow-tiny'")
    assert len(versions) == 2
    latest = client.get_model_version_by_alias("loraflow-tiny", "challenger")
    assert latest.run_id == runs[1].info.run_id
    # which checkpoint was registered: the logged best val-loss step, or "last" when none was chosen
    best = client.get_run(latest.run_id).data.metrics.get("train.best_step")
    assert latest.tags["best_step"] == (str(int(best)) if best is not None else "last")


def test_second_run_takes_the_data_stages_from_cache(two_runs):
    _, first, second = two_runs
    cached = [line for line in (second.stdout + second.stderr).splitlines() if "Cached(type=COMPLETED)" in line]
    for stage in ("scrub_pii", "dedup", "validate", "split"):
        assert any(f"Task run '{stage}-" in line for line in cached), (stage, cached)
    assert not any(f"Task run '{s}-" in line for line in cached for s in ("ingest", "train", "evaluate"))
    assert "Cached(type=COMPLETED)" not in first.stdout + first.stderr


def test_no_canary_pii_anywhere_under_the_home(two_runs):
    home, first, second = two_runs
    needles = [v.encode() for v in CANARIES.values()] + [CANARIES["card"].replace(" ", "").encode()]
    leaks = []
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.relative_to(home)}: {n.decode()}" for n in needles if n in data]
    for name, out in (("run1 output", first.stdout + first.stderr), ("run2 output", second.stdout + second.stderr)):
        leaks += [f"{name}: {n.decode()}" for n in needles if n.decode() in out]
    assert not leaks, leaks
    assert not list((home / "tmp").rglob("*.parquet")), "raw ingest output must be removed once scrubbed"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{path: examples/bad/empty.jsonl}", r"examples/bad/empty.jsonl is empty \(0 bytes\)"),
        (
            "{path: examples/bad/wrong_column.csv, columns: {text: ticket_text, label: queue}}",
            r"wrong_column.csv has no column 'ticket_text' \(its columns are 'ticket_txt'",
        ),
    ],
    ids=["empty-file", "wrong-column"],
)
def test_unusable_sources_stop_with_one_paragraph_and_no_traceback(tmp_path, tiny_model_dir, source, expected):
    import re

    out = _run_cli(
        [
            "run",
            "--config",
            "configs/tiny.yaml",
            "--dry-run",
            "--set",
            f"train.base_model={tiny_model_dir}",
            "--set",
            f"data.sources=[{source}]",
        ],
        tmp_path,
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 1 and len(errors) == 1, out.stderr[-3000:]
    assert re.search(expected, errors[0]), errors[0]
    assert "Traceback" not in out.stdout + out.stderr


def test_ledger_matches_an_independent_count_and_lineage_answers(two_runs):
    home, first, _ = two_runs
    client = _mlflow(home)
    exp = client.get_experiment_by_name("loraflow-tiny")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    table = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "reports/stage_counts.json")).read_text())
    counts = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    # Every line of both input files, counted here from the files (the canary file, the whole demo chat file:
    # rows past max_rows=80 are quarantined, not ignored).
    canary_lines = len(_canary_file(home.parent / "recount.jsonl").read_bytes().splitlines())
    demo_lines = len((ROOT / "examples/demo/tickets_chat.jsonl").read_bytes().splitlines())
    assert counts["ingest"]["rows_in"] == canary_lines + demo_lines, counts["ingest"]
    split = counts["split"]
    assert split["rows_in"] == counts["validate"]["kept"]
    assert split["rows_in"] == split["train"] + split["val"] + split["test"] + split.get("sampled_out", 0)

    # The test-set manifest: logged by both runs, the same frozen set (nothing new in run 2).
    manifests = [json.loads(Path(client.download_artifacts(r.info.run_id, "test_set/manifest.json")).read_text())
                 for r in runs]  # fmt: skip
    assert manifests[0]["version"] == manifests[1]["version"] == 1 and manifests[0]["ids"] == manifests[1]["ids"]

    about = _run_cli(["lineage", "loraflow-tiny@challenger"], home)
    assert about.returncode == 0, about.stderr[-2000:]
    assert runs[1].info.run_id in about.stdout and "test set     v1" in about.stdout
    train_ids = _run_cli(["lineage", "loraflow-tiny@challenger", "--ids", "train"], home).stdout.split()
    assert len(train_ids) == split["train"]
    where = _run_cli(["lineage", "loraflow-tiny@challenger", "--row", train_ids[0]], home)
    assert where.stdout.strip() == f"{train_ids[0]}: train"
    assert not [c for c in CANARIES.values() if c in about.stdout + where.stdout]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two full tiny retrains side by side on 2 cores
def test_two_retrains_started_together_leave_one_champion_and_truthful_tags(tmp_path, tiny_model_dir):
    """Two ``loraflow run --config configs/tiny.yaml`` at the same moment on one home: both finish, exactly one
    version carries ``champion``, and each version names the champion it was really compared with."""
    home = tmp_path / "home"
    args = ["run", "--config", "configs/tiny.yaml", "--set", f"train.base_model={tiny_model_dir}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, "-m", "loraflow", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=1500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    client = _mlflow(home)
    found = client.search_model_versions("name='loraflow-tiny'")  # (search results carry no aliases)
    versions = [client.get_model_version("loraflow-tiny", v.version) for v in found]
    assert len(versions) == 2
    champions = [v for v in versions if "champion" in (v.aliases or [])]
    assert len(champions) == 1
    assert str(client.get_model_version_by_alias("loraflow-tiny", "champion").version) == str(champions[0].version)
    for v in versions:
        compared = v.tags["loraflow.compared_with_champion"]
        run = client.get_run(v.run_id)
        assert run.data.tags["loraflow.register.compared_with_champion"] == compared
        evaluated_champion = "eval.champion.accuracy" in run.data.metrics
        assert (compared != "none") == evaluated_champion  # it names a champion iff it evaluated one
        if int(v.version) > int(champions[0].version) and compared == "none":  # registered after the champion
            assert "champion changed since evaluation" in run.data.tags["loraflow.register.reasons"]
