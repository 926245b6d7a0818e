"""The frozen test set: every test id stays test across quarters, whatever the split config says later."""

import json

import pandas as pd
import pytest

from tasks.core import StageError, read_records, write_records
from tasks.split import SplitConfig, run_split
from tasks.testset import load_state, read_plan, record_test_set, write_plan


def _records(prefix: str, n: int, meta: dict | None = None) -> pd.DataFrame:
    rows = [{"id": f"{prefix}{i:05d}", "created_at": "", "source": prefix, "meta": dict(meta or {}),
             "messages": [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": f"l{i % 5}"}]}
            for i in range(n)]  # fmt: skip
    return pd.DataFrame(rows)


def _quarter(tmp_path, name: str, frame: pd.DataFrame, cfg: SplitConfig):
    ref = write_records(frame, tmp_path / f"{name}.parquet")
    plan = write_plan(ref, cfg, "proj", tmp_path / "out")
    splits = run_split(ref, cfg.model_copy(update={"plan": plan}), tmp_path / "out")
    return plan, splits, record_test_set("proj", plan, splits.test)


def _ids(ref) -> set[str]:
    return set(read_records(ref)["id"])


def test_test_rows_stay_test_and_only_new_data_adds_test_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    q1 = _records("a", 600)
    cfg1 = SplitConfig(val_fraction=0.1, test_fraction=0.1)
    p1, s1, m1 = _quarter(tmp_path, "q1", q1, cfg1)
    assert m1["version"] == 1 and set(m1["ids"]) == _ids(s1.test) and m1["count"] == len(m1["ids"]) > 30
    again = write_records(q1.drop(index=[0, 1]), tmp_path / "again.parquet")  # two rows gone, as dedup drops some
    same = write_plan(write_records(q1, tmp_path / "q1b.parquet"), cfg1, "proj", tmp_path / "out")
    assert same == p1  # a retrain on the same data plans the same file: the data stages' cache keys stay
    assert (
        read_plan(write_plan(again, cfg1, "proj", tmp_path / "out"))["splits"].items()
        <= read_plan(p1)["splits"].items()
    )
    train1 = _ids(s1.train) | _ids(s1.val)

    # Q2: more data, a bigger test fraction, another salt and a `split: test` source: none may move a Q1 row.
    q2 = pd.concat([q1, _records("b", 300), _records("t", 40, {"split": "test"})], ignore_index=True)
    cfg2 = SplitConfig(val_fraction=0.2, test_fraction=0.3, salt="other")
    _, s2, m2 = _quarter(tmp_path, "q2", q2, cfg2)
    test2 = _ids(s2.test)
    assert set(m1["ids"]) <= test2 and set(m1["ids"]) <= set(m2["ids"])  # frozen rows stay, manifest grows
    assert not (train1 & test2)  # no Q1 train / val row became test
    assert {rid[0] for rid in test2 - set(m1["ids"])} == {"t"}  # new test rows come from new data only
    assert m2["version"] == 2

    # Q3 with the same data and config: the same plan file (cache keys stay), the same version.
    p3, s3, m3 = _quarter(tmp_path, "q3", q2, cfg2)
    assert m3["version"] == 2 and m3["ids"] == m2["ids"] and _ids(s3.test) == test2
    assert read_plan(p3)["splits"] == read_plan(write_plan(write_records(q2, tmp_path / "x.parquet"), cfg2, "proj",
                                                             tmp_path / "out"))["splits"]  # fmt: skip
    assert json.loads(load_state("proj").model_dump_json())["version"] == 2


def test_a_cap_below_the_frozen_rows_fails_clearly_and_sampled_out_rows_are_written(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    q1 = _records("a", 400)
    _, s1, m1 = _quarter(tmp_path, "q1", q1, SplitConfig(max_train_rows=100))
    assignment = read_records(s1.assignment)
    assert len(assignment) == 400 and s1.counts["sampled_out"] == s1.counts["sampled_out_train_cap"] > 0
    assert set(assignment.loc[assignment["split"] == "sampled_out", "reason"]) == {"train_cap"}
    with pytest.raises(StageError, match=r"max_test_rows=5 would leave out frozen test rows.*test set v1"):
        write_plan(write_records(q1, tmp_path / "q2.parquet"), SplitConfig(max_test_rows=5), "proj", tmp_path / "o")
    assert m1["count"] > 5
