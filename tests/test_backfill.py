"""Backfill: per-day partitions that are idempotent (byte-identical re-runs), complete and PII-free."""

import datetime as dt
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_feedback import _msgs, seed_rows, write_jsonl

from tasks import backfill as bf
from tasks import feedback as fb
from tasks.core import RECORD_COLUMNS, StageError, StageOutcome, empty_quarantine, file_sha256, read_records, record_id

ROOT = Path(__file__).resolve().parents[1]
NAME = "Zebulon Quackenbush"
START, END = dt.date(2026, 7, 2), dt.date(2026, 7, 6)  # 07-02 empty, 07-03 nine rows, 07-04 one, 07-05 empty


def stub_scrub(records: pd.DataFrame, cfg) -> StageOutcome:
    """Stands in for tasks.pii.scrub (Presidio takes ~10 s to load): replaces NAME, recomputes ids."""
    rows = []
    for rec in records.to_dict("records"):
        msgs = [{**m, "content": m["content"].replace(NAME, "<PERSON_1>")} for m in rec["messages"]]
        rows.append({**rec, "messages": msgs, "id": record_id(msgs)})
    kept = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    return StageOutcome(kept=kept, quarantined=empty_quarantine(), report={"entities_found": 0})


def slow_stub_scrub(records, cfg):
    time.sleep(0.2)  # widen the window in which two writers could interleave
    return stub_scrub(records, cfg)


def _rows():
    rows = seed_rows()
    rows[0] = {**rows[0], "request_messages": _msgs(f"I am {NAME} and my card has not arrived")}
    rows[2] = {**rows[2], "request_messages": _msgs(f"{NAME} here, how do I top up")}
    return rows


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    fb.import_file(write_jsonl(tmp_path / "seed.jsonl", _rows()), url)
    return fb.FeedbackStoreConfig(url=url, known_model_versions=["bank/*"])


def _hashes(root):
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.glob("date=*/*")) if p.is_file()}


def test_same_window_twice_is_byte_identical(store, tmp_path):
    root = tmp_path / "feedback"
    first = bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    h1 = _hashes(root)
    second = bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    assert _hashes(root) == h1
    assert [r["sha256"] for r in first] == [r["sha256"] for r in second]
    assert [(r["day"], r["rows_in"], r["kept"], r["quarantined"]) for r in first] == [
        ("2026-07-02", 0, 0, 0),
        ("2026-07-03", 9, 3, 6),
        ("2026-07-04", 1, 1, 0),
        ("2026-07-05", 0, 0, 0),
    ]
    assert len(h1) == 12  # part, quarantine, report for each of the four days
    # A re-run into a fresh folder (another machine) gives the same bytes too.
    bf.backfill_window(START, END, root=tmp_path / "again", scrubber=stub_scrub, store=store)
    assert _hashes(tmp_path / "again") == h1


def test_partition_contents(store, tmp_path):
    root = tmp_path / "feedback"
    bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    part = read_records(root / "date=2026-07-03" / "part.parquet")
    assert list(part.columns) == RECORD_COLUMNS
    assert [m[-1]["content"] for m in part["messages"]] == [
        "card_arrival",
        "transaction_charged_twice",
        "exchange_rate",
    ]
    assert part["messages"][0][1]["content"] == "I am <PERSON_1> and my card has not arrived"
    assert [meta["target"] for meta in part["meta"]] == ["good_rating", "corrected", "good_rating"]
    q = pd.read_parquet(root / "date=2026-07-03" / "quarantine.parquet")
    assert sorted(q["reason"]) == ["flagged", "invalid_messages", "preference_only", "preference_only",
                                   "unknown_model_version", "unrated"]  # fmt: skip
    pref = [json.loads(r) for r, why in zip(q["record"], q["reason"], strict=True) if why == "preference_only"]
    assert pref[0]["messages"][1]["content"] == "<PERSON_1> here, how do I top up"  # scrubbed, kept for DPO
    report = json.loads((root / "date=2026-07-03" / "report.json").read_text())
    assert report["counts"]["rows_in"] == report["counts"]["kept"] + report["counts"]["quarantined"] == 9
    # Nothing under the partition tree holds the raw name.
    for p in root.rglob("*"):
        if p.is_file():
            assert NAME.encode() not in p.read_bytes(), p


def test_empty_day_is_a_valid_empty_partition(store, tmp_path):
    root = tmp_path / "feedback"
    bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    empty = root / "date=2026-07-02" / "part.parquet"
    full = root / "date=2026-07-03" / "part.parquet"
    df = read_records(empty)
    assert len(df) == 0 and list(df.columns) == RECORD_COLUMNS
    assert pq.read_schema(empty).types == pq.read_schema(full).types  # same schema: concatenates cleanly
    assert len(pd.read_parquet(root / "date=2026-07-02" / "quarantine.parquet")) == 0


def test_dry_run_writes_nothing(store, tmp_path):
    root = tmp_path / "feedback"
    res = bf.backfill_window(START, END, root=root, dry_run=True, store=store)
    assert [r["rows_in"] for r in res] == [0, 9, 1, 0]
    assert all(r["dry_run"] and not r["exists"] for r in res)
    assert res[1]["quarantined_invalid_messages"] == 1
    assert not root.exists() or not any(root.rglob("*.parquet"))


def test_partition_paths_and_bad_window(store, tmp_path):
    root = tmp_path / "feedback"
    bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    names = [p.parent.name for p in bf.partition_paths(root)]
    assert names == ["date=2026-07-02", "date=2026-07-03", "date=2026-07-04", "date=2026-07-05"]
    assert [p.parent.name for p in bf.partition_paths(root, dt.date(2026, 7, 3), dt.date(2026, 7, 5))] == [
        "date=2026-07-03",
        "date=2026-07-04",
    ]
    with pytest.raises(StageError, match="end exclusive"):
        bf.backfill_window(END, START, root=root, scrubber=stub_scrub, store=store)
    assert bf.backfill_window(START, START, root=root, scrubber=stub_scrub, store=store) == []


def _worker(args):
    start, end, root, url = args
    fb._ENGINES.clear()  # never share a forked connection pool
    store = fb.FeedbackStoreConfig(url=url, known_model_versions=["bank/*"])
    bf.backfill_window(start, end, root=root, scrubber=slow_stub_scrub, store=store)


def test_concurrent_overlapping_backfills_never_corrupt(store, tmp_path):
    reference = tmp_path / "ref"
    bf.backfill_window(START, END, root=reference, scrubber=stub_scrub, store=store)
    root = tmp_path / "feedback"
    jobs = [(START, END, root, store.url), (dt.date(2026, 7, 3), END, root, store.url), (START, END, root, store.url)]
    with multiprocessing.get_context("fork").Pool(3) as pool:
        pool.map(_worker, jobs)
    assert _hashes(root) == _hashes(reference)
    leftovers = [p.name for p in root.rglob(".*") if p.is_file() and p.parent.name != ".locks"]
    assert leftovers == []  # no temporary files left behind


def test_new_feedback_changes_only_its_day(store, tmp_path):
    root = tmp_path / "feedback"
    bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    before = _hashes(root)
    fb.add(_msgs("late arrival"), "card_arrival", "bank/1", "up", created_at="2026-07-05T10:00:00Z", url=store.url)
    bf.backfill_window(START, END, root=root, scrubber=stub_scrub, store=store)
    after = _hashes(root)
    changed = sorted({k.split("/")[0] for k in after if after[k] != before[k]})
    assert changed == ["date=2026-07-05"]
    assert len(read_records(root / "date=2026-07-05" / "part.parquet")) == 1


@pytest.mark.server
def test_backfill_on_postgresql(tmp_path):
    """Same window, same code, PostgreSQL store: the partitions equal the SQLite ones byte for byte."""
    base = os.environ.get("LORAFLOW_TEST_PG_URL")
    if not base:
        pytest.skip("LORAFLOW_TEST_PG_URL not set (start PostgreSQL with tests/pg_start.sh)")
    import uuid

    import sqlalchemy

    name = f"lf_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    pg = sqlalchemy.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        seed = write_jsonl(tmp_path / "seed.jsonl", _rows())
        sqlite = f"sqlite:///{tmp_path / 'fb.db'}"
        for url, sub in ((sqlite, "sqlite"), (pg, "pg")):
            fb.import_file(seed, url)
            store = fb.FeedbackStoreConfig(url=url, known_model_versions=["bank/*"])
            for _ in range(2):
                bf.backfill_window(START, END, root=tmp_path / sub, scrubber=stub_scrub, store=store)
        assert _hashes(tmp_path / "pg") == _hashes(tmp_path / "sqlite")
        assert len(_hashes(tmp_path / "pg")) == 12
    finally:
        eng = fb._ENGINES.pop(pg, None)
        if eng is not None:
            eng.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


@pytest.mark.slow
def test_real_scrubber_through_the_flow_logs_to_mlflow(tmp_path):
    """The Prefect flow end to end on one day, in a fresh process: real Presidio scrub, one MLflow run."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    url = f"sqlite:///{home / 'feedback' / 'feedback.db'}"
    rows = _rows()
    rows[0] = {**rows[0], "request_messages": _msgs("I am Zebulon Quackenbush, mail me at zq@example.org")}
    fb.import_file(write_jsonl(tmp_path / "seed.jsonl", rows), url)
    code = (
        "import datetime as dt, json; from tasks.home import configure_environment; configure_environment(); "
        "from flows.backfill import backfill_feedback; "
        "print('RESULT=' + json.dumps(backfill_feedback(dt.date(2026, 7, 3), dt.date(2026, 7, 4))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT=")[1])
    assert out["totals"]["rows_in"] == 9 and out["totals"]["kept"] == 4  # no versions declared: gpt-rogue kept
    assert "2026-07-03: rows_in=9 kept=4 quarantined=5" in proc.stdout + proc.stderr  # per-day counts in the logs
    part = home / "feedback" / "date=2026-07-03" / "part.parquet"
    blob = b"".join(p.read_bytes() for p in part.parent.iterdir())
    assert b"Quackenbush" not in blob and b"zq@example.org" not in blob
    assert re.search(rb"<PERSON(_1)?>", blob) and re.search(rb"<EMAIL_ADDRESS(_1)?>", blob)

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.params["backfill.start"] == "2026-07-03"
    assert run.data.metrics["backfill.total.kept"] == 4
    hist = client.get_metric_history(out["mlflow_run_id"], "backfill.rows_in")
    assert [(m.step, m.value) for m in hist] == [(0, 9.0)]
