import pandas as pd
import pytest

from tasks.core import (
    StageOutcome,
    finish_stage,
    quarantine_rows,
    read_records,
    record_id,
    write_records,
)


def _records(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"label_{i % 3}"}]
        rows.append({"id": record_id(msgs), "messages": msgs, "source": "t", "created_at": "", "meta": {"i": i}})
    return pd.DataFrame(rows)


def test_record_id_is_stable_and_ignores_case_and_spacing():
    a = [{"role": "user", "content": "Hello  World"}]
    b = [{"role": "user", "content": "hello world"}]
    c = [{"role": "assistant", "content": "hello world"}]
    assert record_id(a) == record_id(b)
    assert record_id(a) != record_id(c)
    assert len(record_id(a)) == 16


def test_write_read_roundtrip_keeps_messages_and_meta(tmp_path):
    df = _records(5)
    ref = write_records(df, tmp_path / "x.parquet")
    back = read_records(ref)
    assert ref.rows == 5
    assert back["messages"].tolist() == df["messages"].tolist()
    assert back["meta"].tolist() == df["meta"].tolist()
    # same content, same digest: the cache key of every downstream stage
    assert write_records(df, tmp_path / "y.parquet").sha256 == ref.sha256


def test_finish_stage_counts_reasons_and_writes_quarantine(tmp_path):
    df = _records(6)
    q = quarantine_rows("demo", df.iloc[:2], ["too_long", "empty"], details=[{"n": 1}, {"n": 2}])
    result = finish_stage("demo", 6, StageOutcome(kept=df.iloc[2:], quarantined=q, report={"x": 1}), tmp_path)
    assert result.counts == {
        "rows_in": 6,
        "kept": 4,
        "quarantined": 2,
        "quarantined_empty": 1,
        "quarantined_too_long": 1,
    }
    qback = pd.read_parquet(result.quarantine.uri)
    assert set(qback["reason"]) == {"too_long", "empty"} and set(qback["stage"]) == {"demo"}
    assert read_records(result.data)["id"].tolist() == df["id"].iloc[2:].tolist()


def test_finish_stage_refuses_to_lose_rows(tmp_path):
    df = _records(4)
    with pytest.raises(AssertionError, match="lost rows"):
        finish_stage("demo", 5, StageOutcome(kept=df, quarantined=quarantine_rows("demo", df.iloc[:0], "x")), tmp_path)
