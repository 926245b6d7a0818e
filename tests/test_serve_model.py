"""serve-model round trip: 20 chat requests and 5 ratings over HTTP, then the day's backfill holds them, scrubbed."""

import datetime as dt
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from registered_model import PROMPTS, register_tiny

from tasks.core import StageError

CANARY_EMAIL = "zelda.quackenbush@example.org"
CANARY_NAME = "Zelda Quackenbush"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served(mlflow_sqlite, tiny_model_dir, tmp_path, monkeypatch):
    """The registered tiny model served by uvicorn on a free loopback port, with a token; yields (url, store)."""
    import uvicorn

    from tasks.serve import FeedbackSink, create_app
    from tasks.serving_model import ChatEngine, download_version

    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    client, exp = mlflow_sqlite
    register_tiny(client, exp, tiny_model_dir, tmp_path)
    version = download_version("tiny@champion", tmp_path / "dl")
    store = f"sqlite:///{tmp_path / 'feedback.db'}"
    label = f"{version.model_name}/{version.version}"
    app = create_app(ChatEngine(version.settings, version.adapter_dir), label, FeedbackSink(label, store), "s3cret")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", store, label
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.server
def test_serve_feedback_backfill_round_trip(served, tmp_path):
    from tasks.backfill import backfill_window

    url, store, label = served
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=url, timeout=60) as http:
        assert (
            http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 401
        )
        ids = []
        for i in range(20):
            text = PROMPTS[i % len(PROMPTS)] + f" (ticket {i})"
            if i == 7:
                text = f"Hi, this is {CANARY_NAME}, mail me at {CANARY_EMAIL} about my refund"
            r = http.post("/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["object"] == "chat.completion" and body["model"] == label
            assert isinstance(body["choices"][0]["message"]["content"], str) and body["usage"]["completion_tokens"] >= 0
            ids.append(body["id"])
        assert len(set(ids)) == 20
        ratings = [("up", None), ("down", "refund"), (5, None), (None, f"card_lost, {CANARY_NAME} said"), ("up", None)]
        for rid, (rating, correction) in zip([ids[0], ids[3], ids[7], ids[9], ids[12]], ratings, strict=True):
            r = http.post(
                "/v1/feedback", headers=auth, json={"response_id": rid, "rating": rating, "correction": correction}
            )
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        assert http.post("/v1/feedback", headers=auth, json={"response_id": "nope", "rating": "up"}).status_code == 404
        bad = http.post("/v1/feedback", headers=auth, json={"response_id": ids[1], "rating": "meh"})
        assert bad.status_code == 422 and "neither thumbs" in bad.json()["detail"]

    # Nothing raw reached the store: the PII stage ran before the write.
    db = Path(store.removeprefix("sqlite:///")).read_bytes()
    assert CANARY_EMAIL.encode() not in db and b"Quackenbush" not in db

    today = dt.datetime.now(dt.UTC).date()
    (result,) = backfill_window(today, today + dt.timedelta(days=1), source=store, root=tmp_path / "parts")
    assert result["rows_in"] == 20
    part = pd.read_parquet(Path(result["partition"]))
    quarantine = pd.read_parquet(Path(result["partition"]).with_name("quarantine.parquet"))
    # Two thumbs up, 5 stars and two corrections (one on a thumbs-down) are training records; 15 unrated wait.
    assert len(part) == 5 and result["quarantined_unrated"] == 15 and len(quarantine) == 15
    metas = [json.loads(m) for m in part["meta"]]
    assert {m["model_version"] for m in metas} == {label}
    assert sorted(m["target"] for m in metas) == ["corrected", "corrected", "good_rating", "good_rating", "good_rating"]
    everything = part.to_json() + quarantine.to_json()
    assert CANARY_EMAIL not in everything and "Quackenbush" not in everything
    assert "refund" in " ".join(part["messages"])  # the correction became the target
    assert all(json.loads(m)[0]["role"] == "system" for m in part["messages"])  # as the model saw it

    from sqlalchemy import create_engine, text

    with create_engine(store).connect() as c:
        latencies = [r[0] for r in c.execute(text("SELECT latency_ms FROM served_responses"))]
    assert len(latencies) == 20 and all(v > 0 for v in latencies)


def test_bind_beyond_loopback_needs_a_token():
    from tasks.serve import check_bind

    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(StageError, match="--token"):
        check_bind("0.0.0.0", None)


def test_bench_reports_latency_percentiles(mlflow_sqlite, tiny_model_dir, tmp_path):
    from tasks.serve import bench
    from tasks.serving_model import ChatEngine, download_version

    client, exp = mlflow_sqlite
    register_tiny(client, exp, tiny_model_dir, tmp_path)
    version = download_version("tiny@champion", tmp_path / "dl")
    stats = bench(ChatEngine(version.settings, version.adapter_dir), PROMPTS, 8)
    assert stats["requests"] == 8 and 0 < stats["p50_ms"] <= stats["p95_ms"] and stats["tokens_per_s"] >= 0
