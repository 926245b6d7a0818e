"""Blind A/B review round trip and owner approval / rollback, on a throwaway MLflow store (no model inference)."""

import csv
import json
import random

import pandas as pd
import pytest

from tasks.core import StageError

MODEL = "review-demo-model"


def _predictions(tmp_path, models=("candidate", "champion", "base")):
    rows = []
    for i in range(30):
        for m in models:
            good = m == "candidate" or i % 3 == 0
            rows.append({"id": f"row{i:03d}", "model": m, "prompt": f"question {i}", "target": f"answer {i}",
                         "prediction": f"answer {i}" if good else f"wrong {i}", "correct": good})  # fmt: skip
    path = tmp_path / "predictions.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture()
def run(mlflow_sqlite, tmp_path, monkeypatch):
    client, exp = mlflow_sqlite
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    r = client.create_run(exp)
    client.log_artifact(r.info.run_id, str(_predictions(tmp_path)), "eval")
    client.set_tag(r.info.run_id, "loraflow.register.compared_with_champion", "7")
    return client, r.info.run_id


def _key(run_id):
    import mlflow

    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/review/key.json"))


def _fill(path, out, prefer_truth=True, seed=1):
    """A simulated reviewer: scores the output that equals the reference high, prefers it (or randomly)."""
    rng = random.Random(seed)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for s in "AB":
            good = r[f"output_{s}"] == r["reference"]
            r[f"correct_{s}"] = "5" if good else "1"
            r[f"on_brand_{s}"] = "4" if good else "2"
        a_good, b_good = r["output_A"] == r["reference"], r["output_B"] == r["reference"]
        if prefer_truth:
            r["preferred"] = "tie" if a_good == b_good else ("A" if a_good else "B")
        else:
            r["preferred"] = rng.choice(["A", "B", "tie"])
    _write(rows, out)
    return rows


def _write(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _expected_win_rate(rows):
    # Every candidate output is correct; the opponent's is correct on every third row: a tie there, else a win.
    ties = sum(r["preferred"] == "tie" for r in rows)
    return (len(rows) - ties + 0.5 * ties) / len(rows)


def test_round_trip_blind_and_metrics(run, tmp_path):
    from tasks.review import ReviewConfig, export_sheet, import_sheet

    client, run_id = run
    sheet = tmp_path / "sheet.csv"
    res = export_sheet(run_id, sheet, ReviewConfig(rows=20, seed=3))
    assert res["rows"] == 20
    text = sheet.read_text()
    for leak in ("candidate", "champion", "base", run_id, "model", "version"):
        assert leak not in text.lower()
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    sides = [r["output_A"] == r["reference"] for r in rows if (r["output_A"] == r["reference"]) != (r["output_B"] == r["reference"])]  # fmt: skip
    assert 0 < sum(sides) < len(sides)  # the candidate is on both sides across rows
    key = _key(run_id)
    assert key["opponent"] == "champion" and len(key["items"]) == 20

    filled = _fill(sheet, tmp_path / "filled.csv")
    out = import_sheet(tmp_path / "filled.csv", "alice")
    assert out["changed"]
    m = client.get_run(run_id).data.metrics
    assert m["review.rows"] == 20
    assert m["review.win_rate"] == pytest.approx(_expected_win_rate(filled))
    assert m["review.win_rate_low"] < m["review.win_rate"] <= m["review.win_rate_high"]
    assert m["review.correct.candidate.mean"] == 5
    assert m["review.correct.champion.mean"] < 5
    assert "review/alice.csv" in [f.path for f in client.list_artifacts(run_id, "review")]


def test_bad_cell_refused_nothing_logged(run, tmp_path):
    from tasks.review import export_sheet, import_sheet

    client, run_id = run
    export_sheet(run_id, tmp_path / "s.csv")
    rows = _fill(tmp_path / "s.csv", tmp_path / "f.csv")
    rows[4]["on_brand_B"] = "9"
    _write(rows, tmp_path / "f.csv")
    with pytest.raises(StageError, match=r"row 6, column on_brand_B: '9' is not an integer from 1 to 5"):
        import_sheet(tmp_path / "f.csv", "bob")
    assert not any(k.startswith("review.") for k in client.get_run(run_id).data.metrics)
    assert "review/bob.csv" not in [f.path for f in client.list_artifacts(run_id, "review")]


def test_cli_bad_choice_exit_nonzero(run, tmp_path):
    from typer.testing import CliRunner

    from loraflow.cli import _register_commands, app

    _register_commands()
    client, run_id = run
    r = CliRunner().invoke(app, ["review", "export", run_id, "--rows", "5", "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    rows = _fill(tmp_path / "s.csv", tmp_path / "f.csv")
    rows[0]["preferred"] = "C"
    _write(rows, tmp_path / "f.csv")
    r = CliRunner().invoke(app, ["review", "import", str(tmp_path / "f.csv")])
    assert r.exit_code == 1
    assert "row 2, column preferred" in r.output and "A|B|tie" in r.output and "Traceback" not in r.output


def test_reordered_rows_and_idempotent(run, tmp_path):
    from tasks.review import export_sheet, import_sheet

    client, run_id = run
    export_sheet(run_id, tmp_path / "s.csv", None)
    rows = _fill(tmp_path / "s.csv", tmp_path / "f.csv")
    import_sheet(tmp_path / "f.csv", "alice")
    first = client.get_run(run_id).data.metrics
    again = import_sheet(tmp_path / "f.csv", "alice")
    assert not again["changed"]
    assert len(client.get_metric_history(run_id, "review.win_rate")) == 1
    random.Random(5).shuffle(rows)
    _write(rows, tmp_path / "shuffled.csv")
    out = import_sheet(tmp_path / "shuffled.csv", "alice")  # same judgements, other order: same metrics
    assert {k: out["metrics"][k] for k in first} == pytest.approx(first)


def test_second_reviewer_agreement(run, tmp_path):
    from tasks.review import ReviewConfig, export_sheet, import_sheet

    client, run_id = run
    export_sheet(run_id, tmp_path / "s.csv")
    _fill(tmp_path / "s.csv", tmp_path / "a.csv")
    _fill(tmp_path / "s.csv", tmp_path / "b.csv")
    import_sheet(tmp_path / "a.csv", "alice")
    out = import_sheet(tmp_path / "b.csv", "bob")
    assert out["metrics"]["review.rows"] == 60 and out["metrics"]["review.agreement"] == 1.0
    _fill(tmp_path / "s.csv", tmp_path / "c.csv", prefer_truth=False)
    out = import_sheet(tmp_path / "c.csv", "bob")  # bob's new sheet replaces his old one
    assert out["metrics"]["review.rows"] == 60
    assert out["metrics"]["review.agreement"] < 1.0 and out["metrics"]["review.kappa"] < 1.0
    with pytest.raises(StageError, match="already has imported reviews"):  # the key the reviews need stays
        export_sheet(run_id, tmp_path / "other.csv", ReviewConfig(seed=9))


def test_baseline_opponent_without_champion(mlflow_sqlite, tmp_path):
    from tasks.review import export_sheet

    client, exp = mlflow_sqlite
    r = client.create_run(exp)
    client.log_artifact(r.info.run_id, str(_predictions(tmp_path, ("candidate", "base", "base_fewshot"))), "eval")
    export_sheet(r.info.run_id, tmp_path / "s.csv")
    assert _key(r.info.run_id)["opponent"] in ("base", "base_fewshot")


# --------------------------------------------------------------------------------------------- approval


@pytest.fixture()
def registry(mlflow_sqlite, tmp_path, monkeypatch):
    from tasks.base_model import MANIFEST

    client, exp = mlflow_sqlite
    cache = tmp_path / "models" / "tiny"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")
    (cache / MANIFEST).write_text(json.dumps({"sha256": "cafe" * 16}))
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAFLOW_MODEL_CACHE", str(tmp_path / "models"))
    client.create_registered_model(MODEL)
    for sha in ("cafe" * 16, "cafe" * 16, "dead" * 16):
        r = client.create_run(exp)
        client.log_text(r.info.run_id, "adapter", "adapter/adapter.txt")
        client.create_model_version(MODEL, f"runs:/{r.info.run_id}/adapter", r.info.run_id,
                                    tags={"base_model_sha256": sha})  # fmt: skip
    client.set_registered_model_alias(MODEL, "champion", "1")
    return client, tmp_path / "models"


def test_approve_reject_rollback(registry):
    from tasks.approval import decide, history, rollback

    client, cache = registry
    res = decide(MODEL, "2", "owner", "scores look good")
    assert res["previous_champion"] == "1"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["approval"] == "approved" and tags["approval.by"] == "owner"
    assert tags["approval.reason"] == "scores look good"

    decide(MODEL, "3", "owner", "off brand", approve=False)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert client.get_model_version(MODEL, "3").tags["approval"] == "rejected"

    back = rollback(MODEL, "oncall", "regression in prod", cache=cache)
    assert back == {"model": MODEL, "version": "1", "previous_champion": "2"}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert client.get_model_version(MODEL, "1").tags["rollback.by"] == "oncall"
    assert [h["version"] for h in history(MODEL)] == ["2", "1"]
    with pytest.raises(StageError, match="no previous champion"):  # back past version 1: nothing recorded
        rollback(MODEL, "oncall", "again", cache=cache)


def test_cli_approve_and_rollback(registry):
    from typer.testing import CliRunner

    from loraflow.cli import _register_commands, app

    _register_commands()
    client, _ = registry
    r = CliRunner().invoke(app, ["approve", f"{MODEL}/2", "--reviewer", "owner", "--reason", "ok"])
    assert r.exit_code == 0, r.output
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    r = CliRunner().invoke(app, ["rollback", MODEL, "--to", "3", "--by", "oncall", "--reason", "x"])
    assert r.exit_code == 1 and "not in the local model cache" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["rollback", MODEL, "--by", "oncall", "--reason", "bad"])
    assert r.exit_code == 0, r.output
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_rollback_refuses_missing_base(registry):
    from tasks.approval import rollback

    client, cache = registry
    with pytest.raises(StageError, match="not in the local model cache"):
        rollback(MODEL, "oncall", "try", to="3", cache=cache)
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    with pytest.raises(StageError, match="no previous champion"):
        rollback(MODEL, "oncall", "try", cache=cache)
