"""The champion gate is a compare-and-set: stale evaluations never promote, concurrent ones promote once."""

import multiprocessing
import os

from test_register import _eval, _metrics, _train_result

from tasks.register import RegisterConfig, register_candidate


def test_a_candidate_evaluated_against_an_old_champion_stays_challenger(mlflow_sqlite, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    client, exp = mlflow_sqlite
    cfg = RegisterConfig(gate_margin=0.02)
    run1, run2, run3 = (client.create_run(exp).info.run_id for _ in range(3))
    first = register_candidate(run1, _train_result(tmp_path, "a1"), _eval(_metrics(0.1, 0.5)), cfg, "m",
                               evaluated_champion=None)  # fmt: skip
    assert first.promoted
    # Evaluated when there was no champion; version 1 became champion meanwhile: no promotion, and it says why.
    stale = register_candidate(run2, _train_result(tmp_path, "a2"), _eval(_metrics(0.1, 0.9)), cfg, "m",
                               evaluated_champion=None)  # fmt: skip
    assert not stale.promoted and "champion changed since evaluation" in stale.reasons[0]
    assert str(client.get_model_version_by_alias("m", "champion").version) == first.version
    tags = client.get_model_version("m", stale.version).tags
    assert tags["loraflow.compared_with_champion"] == "none" and tags["decision"] == "not_promoted"
    # Evaluated against the current champion: the gate decides as usual.
    fresh = register_candidate(run3, _train_result(tmp_path, "a3"), _eval(_metrics(0.1, 0.9, 0.5)), cfg, "m",
                               evaluated_champion=first.version)  # fmt: skip
    assert (
        fresh.promoted and client.get_model_version("m", fresh.version).tags["loraflow.compared_with_champion"] == "1"
    )


def _register_at_once(uri: str, home: str, folder: str, name: str, barrier) -> None:
    import mlflow

    os.environ.update(MLFLOW_TRACKING_URI=uri, LORAFLOW_HOME=home)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.get_experiment_by_name("test").experiment_id).info.run_id
    from pathlib import Path

    train = _train_result(Path(folder), name)
    barrier.wait()
    register_candidate(run, train, _eval(_metrics(0.1, 0.8)), RegisterConfig(), "race", evaluated_champion=None)


def test_two_registrations_at_the_same_moment_promote_exactly_one(mlflow_sqlite, tmp_path):
    client, _ = mlflow_sqlite
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    procs = [ctx.Process(target=_register_at_once, args=(uri, str(tmp_path / "home"), str(tmp_path), n, barrier))
             for n in ("x", "y")]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    versions = client.search_model_versions("name='race'")
    decisions = sorted(v.tags["decision"] for v in versions)
    assert decisions == ["not_promoted", "promoted"]  # both evaluated against "no champion"; only one won
    champion = client.get_model_version_by_alias("race", "champion")
    assert champion.tags["decision"] == "promoted"
    loser = next(v for v in versions if v.version != champion.version)
    assert loser.tags["loraflow.compared_with_champion"] == "none"
