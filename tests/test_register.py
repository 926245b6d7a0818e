"""Registry gate against a throwaway sqlite MLflow: challenger always, champion only past the margin."""

import json
from pathlib import Path

import pytest

from tasks.core import StageError
from tasks.evaluate import EvalResult
from tasks.register import RegisterConfig, current_champion, gate_decision, register_candidate
from tasks.train import TrainResult


def _metrics(base, cand, champ=None, key="accuracy_constrained"):
    out = {"base": {key: base, "accuracy": 0.0}, "candidate": {key: cand, "accuracy": 0.0}}
    if champ is not None:
        out["champion"] = {key: champ, "accuracy": 0.0}
    return out


@pytest.mark.parametrize(
    ("base", "cand", "champ", "champion_version", "promote"),
    [
        (0.10, 0.50, None, None, True),  # first model, far better than base
        (0.10, 0.11, None, None, False),  # better than base, but within the margin
        (0.10, 0.50, 0.49, "1", False),  # not better than the champion by the margin
        (0.10, 0.60, 0.50, "1", True),  # better than both
        (0.10, 0.12, None, None, True),  # exactly on the margin counts
        (0.10, 0.60, None, "1", False),  # a champion exists but was not scored on this test set
    ],
)
def test_gate_decision(base, cand, champ, champion_version, promote):
    ok, reasons = gate_decision(_metrics(base, cand, champ), RegisterConfig(gate_margin=0.02), champion_version)
    assert ok is promote
    assert reasons and all(isinstance(r, str) for r in reasons)


def test_gate_without_champion_comparison_when_allowed():
    cfg = RegisterConfig(gate_margin=0.02, require_champion_comparison=False)
    ok, reasons = gate_decision(_metrics(0.1, 0.6), cfg, "3")
    assert ok and any("compared with base only" in r for r in reasons)


def test_gate_missing_metric_refuses():
    ok, reasons = gate_decision({"base": {}, "candidate": {"accuracy": 1.0}}, RegisterConfig(), None)
    assert not ok and "accuracy_constrained" in reasons[0]


def _train_result(tmp_path, name):
    adapter = tmp_path / name
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "unrelated_output.csv").write_text("not part of the adapter")
    (adapter / "loraflow-adapter.json").write_text(
        json.dumps({"base_model_sha256": "ab" * 32, "files": ["adapter_config.json", "adapter_model.safetensors"]})
    )
    return TrainResult(
        adapter_dir=str(adapter),
        base_model="/models/base",
        base_model_sha256="ab" * 32,
        train_rows=10,
        val_rows=2,
        steps=3,
        train_loss=1.0,
        val_loss=1.1,
        runtime_s=1.0,
        tokens_per_s=10.0,
        trainable_params=100,
        device="cpu/fp32",
    )


def _eval(metrics):
    return EvalResult(metrics=metrics, predictions_uri="p", predictions_csv_uri="c", report_uri="r", rows=10, labels=3)


def test_register_promotes_then_refuses(mlflow_sqlite, tmp_path):
    client, exp = mlflow_sqlite
    cfg = RegisterConfig(gate_margin=0.02)
    assert current_champion("tickets") is None  # no registered model yet

    run1 = client.create_run(exp).info.run_id
    reg1 = register_candidate(run1, _train_result(tmp_path, "a1"), _eval(_metrics(0.1, 0.5)), cfg, "tickets", "d1")
    assert reg1.promoted and reg1.version == "1" and reg1.aliases == ["challenger", "champion"]
    mv = client.get_model_version("tickets", "1")
    assert mv.tags["base_model_sha256"] == "ab" * 32 and mv.tags["train_dataset_sha256"] == "d1"
    assert mv.tags["eval.candidate.accuracy_constrained"] == "0.5"
    run = client.get_run(run1)
    assert run.data.tags["loraflow.register.decision"] == "promoted" and run.data.metrics["register.promoted"] == 1.0
    # Only the adapter's files were logged, never the rest of its folder.
    logged = {f.path for f in client.list_artifacts(run1, "adapter")}
    assert logged == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}

    champ = current_champion("tickets", dst_dir=str(tmp_path / "dl"))
    assert champ.version == "1" and champ.base_model_sha256 == "ab" * 32
    assert (tmp_path / "dl").exists() and json.loads(Path(champ.adapter_dir, "adapter_config.json").read_text())

    # Candidate 2 beats base but not the champion by the margin: challenger moves, champion stays.
    run2 = client.create_run(exp).info.run_id
    reg2 = register_candidate(run2, _train_result(tmp_path, "a2"), _eval(_metrics(0.1, 0.51, 0.5)), cfg, "tickets")
    assert not reg2.promoted and reg2.version == "2" and reg2.aliases == ["challenger"]
    assert reg2.previous_champion == "1" and any("does not beat champion v1" in r for r in reg2.reasons)
    assert str(client.get_model_version_by_alias("tickets", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tickets", "challenger").version) == "2"
    assert client.get_run(run2).data.tags["loraflow.register.decision"] == "not_promoted"
    decision = json.loads(Path(client.download_artifacts(run2, "register/decision.json", str(tmp_path))).read_text())
    assert decision["promoted"] is False and decision["reasons"] == reg2.reasons

    # Candidate 3 beats both: champion moves.
    run3 = client.create_run(exp).info.run_id
    reg3 = register_candidate(run3, _train_result(tmp_path, "a3"), _eval(_metrics(0.1, 0.6, 0.5)), cfg, "tickets")
    assert reg3.promoted and str(client.get_model_version_by_alias("tickets", "champion").version) == "3"


def test_register_without_adapter_is_a_stage_error(mlflow_sqlite, tmp_path):
    client, exp = mlflow_sqlite
    res = _train_result(tmp_path, "a")
    (tmp_path / "a" / "adapter_config.json").unlink()
    with pytest.raises(StageError, match="no adapter"):
        register_candidate(client.create_run(exp).info.run_id, res, _eval(_metrics(0.1, 0.5)), RegisterConfig(), "m")


def test_gate_needs_the_best_baseline_not_just_base():
    metrics = {"base": {"rougeL": 0.13}, "base_fewshot": {"rougeL": 0.40}, "candidate": {"rougeL": 0.41}}
    ok, reasons = gate_decision(metrics, RegisterConfig(gate_metric="rougeL", gate_margin=0.02), None)
    assert not ok and "does not beat the prompt-engineering baseline base_fewshot" in reasons[0]
    metrics["candidate"]["rougeL"] = 0.55
    ok, reasons = gate_decision(metrics, RegisterConfig(gate_metric="rougeL", gate_margin=0.02), None)
    assert ok and "beats the prompt-engineering baseline base_fewshot" in reasons[0]
    # An external model is a baseline too.
    metrics["external"] = {"rougeL": 0.60}
    ok, reasons = gate_decision(metrics, RegisterConfig(gate_metric="rougeL", gate_margin=0.02), None)
    assert not ok and "baseline external" in reasons[0]


def test_gate_require_significance_uses_the_interval_lower_bound():
    metrics = {"base": {"acc": 0.50}, "candidate": {"acc": 0.60}}
    noisy = {"base": {"acc": {"diff": 0.10, "low": 0.01, "high": 0.19}}}
    sure = {"base": {"acc": {"diff": 0.10, "low": 0.05, "high": 0.15}}}
    cfg = RegisterConfig(gate_metric="acc", gate_margin=0.02, require_significance=True)
    ok, reasons = gate_decision(metrics, cfg, None, intervals=noisy)
    assert not ok and "lower bound +0.0100 does not clear the margin" in reasons[0]
    assert gate_decision(metrics, cfg, None, intervals=sure)[0]
    assert not gate_decision(metrics, cfg, None, intervals=None)[0]  # no interval, no promotion
    assert gate_decision(metrics, RegisterConfig(gate_metric="acc"), None, intervals=noisy)[0]  # off by default


def test_gate_max_forgetting_blocks():
    metrics = {"base": {"acc": 0.10}, "candidate": {"acc": 0.90}}
    cfg = RegisterConfig(gate_metric="acc", max_forgetting=0.25)
    ok, reasons = gate_decision(metrics, cfg, None, forgetting=0.40)
    assert not ok and "forgot too much" in reasons[-1]
    assert gate_decision(metrics, cfg, None, forgetting=0.10)[0]
    assert gate_decision(metrics, RegisterConfig(gate_metric="acc"), None, forgetting=3.0)[0]  # report only


def test_candidate_below_fewshot_registers_as_challenger_only(mlflow_sqlite, tmp_path):
    client, exp = mlflow_sqlite
    cfg = RegisterConfig(gate_metric="field_f1", gate_margin=0.02)
    metrics = {"base": {"field_f1": 0.05}, "base_fewshot": {"field_f1": 0.62}, "candidate": {"field_f1": 0.60}}
    run = client.create_run(exp).info.run_id
    reg = register_candidate(run, _train_result(tmp_path, "a"), _eval(metrics), cfg, "json-model")
    assert not reg.promoted and reg.aliases == ["challenger"]
    assert any("does not beat the prompt-engineering baseline base_fewshot" in r for r in reg.reasons)
    assert str(client.get_model_version_by_alias("json-model", "challenger").version) == reg.version
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("json-model", "champion")
    assert client.get_run(run).data.tags["loraflow.register.decision"] == "not_promoted"
