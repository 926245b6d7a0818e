"""What the UIs are given: chart PNGs, the offline contract page, previewable tables, links and tags."""

import json
from pathlib import Path

import pandas as pd

from tasks import charts, tracking

PNG = b"\x89PNG\r\n\x1a\n"


def _predictions() -> pd.DataFrame:
    rows = []
    for model, answers in (("base", ["b", "b", "zzz"]), ("candidate", ["a", "b", "c"])):
        for i, (t, p) in enumerate(zip(["a", "b", "c"], answers, strict=True)):
            rows.append({"id": f"r{i}", "model": model, "target": t, "prediction": p, "prediction_constrained": p})
    return pd.DataFrame(rows)


def test_best_step_is_the_lowest_val_loss_and_the_earliest_on_a_tie():
    assert charts.best_step([(1, 0.9), (2, 0.5), (3, 0.7), (4, 0.5)]) == (2, 0.5)
    assert charts.best_step([]) is None


def test_charts_are_pngs(tmp_path):
    loss = charts.loss_curves([(1, 2.0), (2, 1.5), (3, 1.2)], [(2, 1.6), (3, 1.4)], tmp_path / "loss.png")
    bars = charts.metric_bars({"base": {"accuracy": 0.1}, "candidate": {"accuracy": 0.8, "test_loss": 2.0}},
                              tmp_path / "bars.png")  # fmt: skip
    stages = charts.stage_counts([{"stage": "dedup", "counts": {"rows_in": 10, "kept": 7, "quarantined": 3,
                                                               "quarantined_near_duplicate": 3}}], tmp_path / "s.png")  # fmt: skip
    cm = charts.confusion_matrices(_predictions(), tmp_path / "cm.png")
    for path in (loss, bars, stages, cm):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000, path


def test_no_confusion_matrix_without_the_models(tmp_path):
    assert charts.confusion_matrices(_predictions(), tmp_path / "cm.png", models=("champion",)) is None
    assert not (tmp_path / "cm.png").exists()


def test_contract_page_is_self_contained_and_marks_each_result():
    report = {
        "contract": {"name": "demo", "path": "data_contracts/demo.yaml", "task": "classification"},
        "summary": {"rows_in": 10, "kept": 8, "quarantined": 2},
        "blocked": ["min_rows"],
        "rules": [
            {"rule": "label_in_set", "severity": "quarantine", "observed": "2 rows", "threshold": "24 labels",
             "passed": False, "rows_affected": 2, "example_ids": ["a1"], "description": "Known label <b>"},
            {"rule": "min_rows", "severity": "block", "observed": "8 rows", "threshold": ">= 500 rows",
             "passed": False, "rows_affected": 0, "example_ids": [], "description": "Enough rows"},
            {"rule": "clean_text", "severity": "quarantine", "observed": "0 rows", "threshold": "none",
             "passed": True, "rows_affected": 0, "example_ids": [], "description": "Clean"},
        ],
    }  # fmt: skip
    page = tracking.validation_html(report)
    assert "<style>" in page and "http" not in page and "<script" not in page and "<link" not in page
    assert "blocked by min_rows" in page and "Known label &lt;b&gt;" in page
    assert page.count("class=block>BLOCKED") == 1 and page.count("class=pass>passed") == 1
    assert page.count("class=warn>rows quarantined") == 1 and "warning" not in page


def test_flow_run_url_tag_only_for_a_real_ui_url():
    assert "prefect.flow_run_url" not in tracking.flow_run_tags("id", "name", None)
    assert "prefect.flow_run_url" not in tracking.flow_run_tags("id", "name", "None/flow-runs/flow-run/id")
    url = "http://127.0.0.1:4200/flow-runs/flow-run/id"
    assert tracking.flow_run_tags("id", "name", url)["prefect.flow_run_url"] == url


def test_tables_preview_and_the_local_link_says_loraflow_ui(mlflow_sqlite, tmp_path):
    from tasks.core import DatasetRef, StageResult

    client, exp = mlflow_sqlite
    run = client.create_run(exp).info.run_id
    pq = tmp_path / "predictions.parquet"
    _predictions().to_parquet(pq)
    assert tracking.log_predictions(run, str(pq)) == 6
    ref = DatasetRef(uri="x.parquet", sha256="0" * 64, rows=1)
    stage = StageResult(stage="dedup", data=ref, quarantine=ref, report_uri="r.json",
                        counts={"rows_in": 3, "kept": 2, "quarantined": 1, "quarantined_near_duplicate": 1})  # fmt: skip
    tracking.log_stage_table(run, [stage], {"rows_in": 2, "train": 1, "val": 0, "test": 1})
    table = json.loads(Path(client.download_artifacts(run, "reports/stage_counts.json")).read_text())
    assert table["columns"][:4] == ["stage", "rows_in", "kept", "quarantined"]
    assert [r[0] for r in table["data"]] == ["dedup", "split"]
    preds = json.loads(Path(client.download_artifacts(run, "eval/predictions.json")).read_text())
    assert len(preds["data"]) == 6 and "prediction_constrained" in preds["columns"]
    link = tracking.run_link(run)
    assert run in link and "loraflow ui" in link and f"/#/experiments/{exp}/runs/{run}" in link
