"""The feedback store: import/add, and one day's extraction into records with every row accounted for.

The same tests run on SQLite (always) and on PostgreSQL (marked ``server``; needs ``LORAFLOW_TEST_PG_URL``,
e.g. from ``tests/pg_start.sh``).
"""

import datetime as dt
import json
import os
import uuid

import pytest

from tasks import feedback as fb
from tasks.core import StageError

SYSTEM = {"role": "system", "content": "Classify the banking query into one intent label."}
DAY = dt.date(2026, 7, 3)


def _msgs(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


def seed_rows() -> list[dict]:
    """Nine rows on DAY covering every rule, one on the next day, in a JSONL-ready shape."""
    at = "2026-07-03T{:02d}:00:00Z".format
    return [
        # good thumbs → keeps the response
        {
            "request_messages": _msgs("my card has not arrived"),
            "model_version": "bank/1",
            "response": "card_arrival",
            "rating": "up",
            "created_at": at(1),
        },
        # bad stars + correction → correction is the target
        {
            "request_messages": _msgs("I was charged twice"),
            "model_version": "bank/1",
            "response": "card_payment",
            "rating": 1,
            "corrected_response": "transaction_charged_twice",
            "created_at": at(2),
        },
        # bad thumbs, no correction → preference_only (kept in quarantine with its record)
        {
            "request_messages": _msgs("how do I top up"),
            "model_version": "bank/2",
            "response": "exchange_rate",
            "rating": "down",
            "created_at": at(3),
        },
        # 5 stars → good
        {
            "request_messages": _msgs("what is the exchange rate"),
            "model_version": "bank/2",
            "response": "exchange_rate",
            "rating": 5,
            "created_at": at(4),
        },
        # flagged without correction → flagged
        {
            "request_messages": _msgs("close my account now"),
            "model_version": "bank/2",
            "response": "terminate",
            "rating": 4,
            "flag_reason": "harmful",
            "created_at": at(5),
        },
        # invalid JSON messages
        {
            "request_messages": '[{"role": "user", "content": "broken',
            "model_version": "bank/1",
            "response": "x",
            "rating": "up",
            "created_at": at(6),
        },
        # unknown model version
        {
            "request_messages": _msgs("lost my card"),
            "model_version": "gpt-rogue",
            "response": "lost_or_stolen_card",
            "rating": "up",
            "created_at": at(7),
        },
        # no rating at all → unrated
        {
            "request_messages": _msgs("pin blocked"),
            "model_version": "bank/1",
            "response": "pin_blocked",
            "created_at": at(8),
        },
        # 3 stars (below good_min_stars=4), with a timezone offset that is still DAY in UTC
        {
            "request_messages": _msgs("atm ate my card"),
            "model_version": "bank/1",
            "response": "card_swallowed",
            "rating": 3,
            "created_at": "2026-07-03T23:30:00+02:00",
        },
        # next day: not part of DAY
        {
            "request_messages": _msgs("refund please"),
            "model_version": "bank/1",
            "response": "request_refund",
            "rating": "up",
            "created_at": "2026-07-04T00:00:00Z",
        },
    ]


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fb.db'}"
        return
    base = os.environ.get("LORAFLOW_TEST_PG_URL")
    if not base:
        pytest.skip("LORAFLOW_TEST_PG_URL not set (start PostgreSQL with tests/pg_start.sh)")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    # A fresh database per test, so tests never see each other's rows.
    name = f"lf_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    yield url
    eng = fb._ENGINES.pop(url, None)
    if eng is not None:
        eng.dispose()
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
    admin.dispose()


def _seed(store_url, tmp_path, versions=("bank/*",)):
    report = fb.import_file(write_jsonl(tmp_path / "seed.jsonl", seed_rows(), ["{not json", "[1, 2]"]), store_url)
    cfg = fb.FeedbackStoreConfig(url=store_url, known_model_versions=list(versions))
    return report, cfg


def test_import_counts_and_is_idempotent(store_url, tmp_path):
    report, _ = _seed(store_url, tmp_path)
    assert report["lines"] == 12
    assert report["inserted"] == 10
    assert report["rejected"] == [
        {"line": 11, "reason": "malformed_json"},
        {"line": 12, "reason": "not_a_feedback_object"},
    ]
    again = fb.import_file(tmp_path / "seed.jsonl", store_url)
    assert again["inserted"] == 0 and again["already_stored"] == 10
    assert fb.count(store_url) == 10


def test_extract_day_applies_every_rule(store_url, tmp_path):
    _, cfg = _seed(store_url, tmp_path)
    out = fb.extract_day(store_url, DAY, cfg)
    assert len(out.kept) + len(out.quarantined) == 9  # the next day's row is not in DAY

    targets = {m[-1]["content"]: meta["target"] for m, meta in zip(out.kept["messages"], out.kept["meta"], strict=True)}
    assert targets == {
        "card_arrival": "good_rating",
        "transaction_charged_twice": "corrected",
        "exchange_rate": "good_rating",
    }
    assert all(m[-1]["role"] == "assistant" and m[0] == SYSTEM for m in out.kept["messages"])
    assert set(out.kept["source"]) == {"feedback"}
    assert list(out.kept["created_at"]) == ["2026-07-03T01:00:00", "2026-07-03T02:00:00", "2026-07-03T04:00:00"]

    reasons = sorted(out.quarantined["reason"])
    assert reasons == [
        "flagged",
        "invalid_messages",
        "preference_only",
        "preference_only",
        "unknown_model_version",
        "unrated",
    ]
    by_reason = {r: row for r, row in zip(out.quarantined["reason"], out.quarantined.to_dict("records"), strict=True)}
    # Broken rows keep only where they came from, never their text.
    assert by_reason["invalid_messages"]["record"] is None
    assert "broken" not in by_reason["invalid_messages"]["detail"]
    assert json.loads(by_reason["unknown_model_version"]["detail"])["model_version"] == "gpt-rogue"

    # Rows excluded from SFT keep their record (to be scrubbed) for preference tuning.
    rec = json.loads(by_reason["flagged"]["record"])
    assert rec["messages"][-1]["content"] == "terminate" and rec["meta"]["flag"] == "harmful"
    assert out.report["targets"]["rejected"] == 2


def test_an_unknown_model_version_that_is_free_text_is_only_hashed_in_quarantine():
    from tasks.feedback import _version_detail

    assert _version_detail("loraflow-demo/3") == {"model_version": "loraflow-demo/3"}
    detail = _version_detail("call me at 555-0100, Jane Doe")
    assert "model_version" not in detail and detail["model_version_chars"] == 29
    assert "Jane" not in json.dumps(detail)


def test_missing_timestamp_is_quarantined_on_the_day_it_arrived(store_url, tmp_path):
    fid = fb.add(_msgs("no clock"), "card_arrival", "bank/1", "up", created_at=None, url=store_url)
    assert fid is not None
    today = dt.datetime.now(dt.UTC).date()
    out = fb.extract_day(store_url, today, fb.FeedbackStoreConfig(url=store_url))
    assert list(out.quarantined["reason"]) == ["missing_timestamp"]
    assert json.loads(out.quarantined["detail"][0]) == {"feedback_id": fid}
    assert len(out.kept) == 0


def test_add_and_registered_versions(store_url):
    at = dt.datetime(2026, 8, 1, 12)
    fb.add(_msgs("a"), "card_arrival", "bank/7", "up", created_at=at, url=store_url)
    fb.add(_msgs("b"), "card_arrival", "bank/8", 5, created_at=at, url=store_url)
    assert fb.add(_msgs("b"), "card_arrival", "bank/8", 5, created_at=at, url=store_url) is None  # same row
    # Nothing declared: any non-empty version is accepted.
    out = fb.extract_day(store_url, at.date(), fb.FeedbackStoreConfig(url=store_url))
    assert len(out.kept) == 2
    # Once versions are registered, the others are unknown.
    assert fb.register_model_versions(["bank/7"], store_url) == 1
    out = fb.extract_day(store_url, at.date(), fb.FeedbackStoreConfig(url=store_url))
    assert len(out.kept) == 1 and list(out.quarantined["reason"]) == ["unknown_model_version"]


def test_empty_day(store_url):
    out = fb.extract_day(store_url, dt.date(2020, 1, 1), fb.FeedbackStoreConfig(url=store_url))
    assert len(out.kept) == 0 and len(out.quarantined) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("up", ("thumbs", 1)),
        ("down", ("thumbs", 0)),
        (True, ("thumbs", 1)),
        (-1, ("thumbs", 0)),
        (4, ("stars", 4)),
        ("5", ("stars", 5)),
        (None, (None, None)),
    ],
)
def test_parse_rating(value, expected):
    assert fb.parse_rating(value) == expected


@pytest.mark.parametrize("value", [0, 6, "meh", 2.5])
def test_parse_rating_rejects(value):
    with pytest.raises(ValueError):
        fb.parse_rating(value)


def test_bad_rating_is_an_input_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    with pytest.raises(StageError, match="rating"):
        fb.add(_msgs("x"), "y", "bank/1", rating=9, url=url)
    report = fb.import_file(write_jsonl(tmp_path / "r.jsonl", [{**seed_rows()[0], "rating": 11}]), url)
    assert report["inserted"] == 0 and report["rejected"] == [{"line": 1, "reason": "bad_rating"}]


def test_import_missing_file_is_a_stage_error(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        fb.import_file(tmp_path / "nope.jsonl", f"sqlite:///{tmp_path / 'fb.db'}")


def test_safe_url_hides_password():
    assert "secret" not in fb.safe_url("postgresql+psycopg://u:secret@127.0.0.1:5432/db")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('[{"role": "user", "content": "hi"}]', True),
        ("[]", False),
        ('{"role": "user"}', False),
        ('[{"role": "user", "content": 3}]', False),
        ('[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]', False),
        ("nope", False),
    ],
)
def test_parse_messages(text, ok):
    if ok:
        assert fb.parse_messages(text) == [{"role": "user", "content": "hi"}]
    else:
        with pytest.raises(ValueError):
            fb.parse_messages(text)


def test_pii_flag_does_not_exclude_a_good_answer(tmp_path):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    at = dt.datetime(2026, 8, 2, 9)
    fb.add(_msgs("my email is a@b.example"), "card_arrival", "3", "up", flag_reason="pii", created_at=at, url=url)
    fb.add(_msgs("you are useless"), "card_arrival", "3", "up", flag_reason="offensive", created_at=at, url=url)
    out = fb.extract_day(url, at.date(), fb.FeedbackStoreConfig(url=url))
    assert [m["flag"] for m in out.kept["meta"]] == ["pii"]
    assert list(out.quarantined["reason"]) == ["flagged"]
    strict = fb.FeedbackStoreConfig(url=url, sft_ok_flags=[])
    assert len(fb.extract_day(url, at.date(), strict).kept) == 0
