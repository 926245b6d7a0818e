"""``loraflow lineage``: the version's run, sources and counts, and where one record went; never text."""

import json

import pandas as pd
import pytest

from tasks import lineage
from tasks.core import DatasetRef, StageError, StageResult, quarantine_rows, write_records


def _stage(tmp_path, name: str, dropped: pd.DataFrame, reason: str, report: dict | None = None) -> StageResult:
    q = write_records(quarantine_rows(name, dropped, reason), tmp_path / f"{name}-q.parquet")
    rep = tmp_path / f"{name}.json"
    rep.write_text(json.dumps(report or {}))
    data = DatasetRef(uri="unused", sha256="0" * 64, rows=0)
    return StageResult(stage=name, data=data, quarantine=q, report_uri=str(rep), counts={})


def test_describe_and_where_is(mlflow_sqlite, tmp_path):
    client, exp = mlflow_sqlite
    recs = pd.DataFrame({"id": ["a", "b", "c", "d"], "messages": [[{"role": "user", "content": "secret text"}]] * 4,
                         "source": "s", "created_at": "", "meta": [{}] * 4})  # fmt: skip
    sources = {"tickets": {"rows_in": 5, "kept": 4, "sha256": "f" * 64}}
    stages = [_stage(tmp_path, "ingest", recs.iloc[:0], "x", {"sources": sources}),
              _stage(tmp_path, "dedup", recs.iloc[[1]], "near_duplicate")]  # fmt: skip
    assignment = write_records(pd.DataFrame({"id": ["a", "c", "d"], "split": ["train", "test", "sampled_out"],
                                             "reason": ["", "", "train_cap"]}), tmp_path / "a.parquet")  # fmt: skip
    run = client.create_run(exp, tags={"loraflow.config": "configs/tiny.yaml"}).info.run_id
    client.log_param(run, "base_model.sha256", "ab" * 32)
    lineage.log_lineage(run, stages, assignment)
    client.create_registered_model("m")
    mv = client.create_model_version("m", source="runs:/x", run_id=run,
                                     tags={"loraflow.test_set.version": "2", "decision": "promoted"})  # fmt: skip
    client.set_registered_model_alias("m", "champion", mv.version)

    d = lineage.describe("m@champion")
    assert d["run_id"] == run and d["config"] == "configs/tiny.yaml" and d["test_set"]["version"] == "2"
    assert d["sources"] == sources and d["splits"] == {"train": 1, "test": 1, "sampled_out": 1}
    text = lineage.format_description(d)
    assert "secret text" not in text and "sha256 " + "f" * 64 in text
    assert lineage.where_is("m/1", "b") == [{"id": "b", "stage": "dedup", "outcome": "quarantined",
                                             "reason": "near_duplicate"}]  # fmt: skip
    assert lineage.where_is("m@champion", "d")[0]["reason"] == "train_cap"
    assert lineage.where_is("m@champion", "zzz") == []
    with pytest.raises(StageError, match="no model version 'm@nope'"):
        lineage.describe("m@nope")
    with pytest.raises(StageError, match="neither MODEL@ALIAS nor MODEL/VERSION"):
        lineage.describe("m")
