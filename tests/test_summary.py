"""The retrain summary page: counts, metrics and the decision, in that order."""

from types import SimpleNamespace

from tasks.core import DatasetRef, StageResult
from tasks.summary import retrain_markdown


def _stage(name: str, rows_in: int, kept: int) -> StageResult:
    ref = DatasetRef(uri=f"{name}.parquet", sha256="0" * 64, rows=kept)
    counts = {"rows_in": rows_in, "kept": kept, "quarantined": rows_in - kept}
    return StageResult(stage=name, data=ref, quarantine=ref, report_uri="r.json", counts=counts)


def test_page_holds_counts_metrics_and_reasons():
    decision = SimpleNamespace(model_name="m", version="3", aliases=["challenger"], promoted=False,
                               reasons=["candidate 0.50 does not beat champion 0.60"])  # fmt: skip
    page = retrain_markdown(
        "demo", "`run1`", [_stage("ingest", 10, 9), _stage("pii", 9, 9)], {"base": {"acc": 0.25}}, decision
    )
    lines = page.splitlines()
    assert lines[0] == "# Retrain `demo`" and "MLflow run: `run1`" in lines
    assert "| ingest | 10 | 9 | 1 |" in lines and "| pii | 9 | 9 | 0 |" in lines
    assert "| acc | 0.2500 |" in lines
    assert lines.index("| acc | 0.2500 |") < lines.index("- candidate 0.50 does not beat champion 0.60")
    assert "version 3, aliases challenger; promoted: **False**" in page


def test_page_without_evaluation_stops_after_the_counts():
    page = retrain_markdown("demo", "x", [_stage("ingest", 2, 2)], None, None)
    assert page.splitlines()[-1] == "| ingest | 2 | 2 | 0 |"


def test_page_holds_the_split_and_the_training_row():
    train = {"train_rows": 120, "val_rows": 15, "steps": 30, "train_loss": 0.51234, "tokens_per_s": 812.4,
             "runtime_s": 61.0, "device": "cpu/fp32", "best_step": 20, "best_val_loss": 0.4321}  # fmt: skip
    split = {"rows_in": 150, "train": 120, "val": 15, "test": 15, "sampled_out": 0}
    page = retrain_markdown("demo", "x", [_stage("ingest", 2, 2)], None, None, split=split, train=train)
    lines = page.splitlines()
    assert "**Split** of 150 rows: train 120, val 15, test 15" in lines
    assert "| 120 | 30 | 20 | 0.4321 | 0.5123 | 812 | 61 | cpu/fp32 |" in lines
    assert lines.index("| ingest | 2 | 2 | 0 |") < lines.index(
        "| 120 | 30 | 20 | 0.4321 | 0.5123 | 812 | 61 | cpu/fp32 |"
    )
