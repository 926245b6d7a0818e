"""A model server that feeds the loop: OpenAI-compatible chat completions, ratings, all into the feedback store.

``loraflow serve-model MODEL@ALIAS`` serves the registered version (base + adapter, :class:`ChatEngine`) with
FastAPI + uvicorn:

- ``POST /v1/chat/completions``: OpenAI's request/response shape (``messages``, ``max_tokens``, ``temperature``;
  ``choices[0].message.content``, ``usage``); the response ``id`` is what feedback refers to.
- ``POST /v1/feedback``: ``{"response_id", "rating" (up/down or 1-5), "correction", "flag"}``.
- ``GET /health``: the model version being served.

Every exchange is PII-scrubbed with the retrain's own PII stage (:func:`tasks.pii.scrub`) **before** it is
written: the request + answer go into the feedback store (:func:`tasks.feedback.add`, model version
``NAME/VERSION``), a rating or correction updates that row (:func:`tasks.feedback.rate`), so ``loraflow backfill``
for the day turns the traffic into training records. Latency and token counts of each response go into a
``served_responses`` table beside it (keyed by response id). The server binds 127.0.0.1 unless told otherwise,
and refuses to bind anywhere else without a bearer token.
"""

import datetime as dt
import hmac
import json
import statistics
import threading
import time
import uuid
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tasks.core import RECORD_COLUMNS, StageError, record_id

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class _ServeBase(DeclarativeBase):
    pass


class ServedResponse(_ServeBase):
    """One answered request: which store row holds its (scrubbed) text, how long it took, how many tokens."""

    __tablename__ = "served_responses"

    response_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    feedback_id: Mapped[int | None] = mapped_column(Integer, index=True)
    model_version: Mapped[str] = mapped_column(String(200))
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class ChatMessage(BaseModel):
    role: str = Field(description="system, user or assistant.")
    content: str = Field(description="The message text.")


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions request the server honours (unknown fields are ignored)."""

    model: str | None = Field(None, description="Ignored: the server serves one version.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, ending with a user turn.")
    max_tokens: int | None = Field(None, ge=1, le=2048, description="Cap on generated tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy (the evaluated setting).")


class FeedbackRequest(BaseModel):
    response_id: str = Field(description="The `id` of a chat completion this server returned.")
    rating: str | int | bool | None = Field(None, description="up/down, true/false or 1-5 stars.")
    correction: str | None = Field(None, description="The answer the model should have given.")
    flag: str | None = Field(None, description="A short category (wrong_intent, harmful, ...).")


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: the server writes into the training data."""
    if host not in LOOPBACK and not token:
        raise StageError(
            f"serve-model: binding {host} exposes the model (and writes into the feedback store) beyond this "
            "machine; pass --token T (clients send `Authorization: Bearer T`) or bind 127.0.0.1."
        )


class FeedbackSink:
    """Scrubs each exchange with the PII stage, then writes it to the feedback store (nothing raw is written)."""

    def __init__(self, model_version: str, url: str | None = None, pii_cfg: Any = None, scrubber=None):
        from tasks import feedback

        if scrubber is None:
            from tasks.pii import PiiConfig, scrub

            scrubber, pii_cfg = scrub, pii_cfg if pii_cfg is not None else PiiConfig()
        self.model_version, self.url = model_version, url
        self._scrub, self._pii_cfg = scrubber, pii_cfg
        self._engine = feedback.engine(url)
        _ServeBase.metadata.create_all(self._engine)
        feedback.register_model_versions([model_version], url)

    def scrubbed(self, messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
        """The messages with PII replaced; None when the PII stage refuses the record (never stored then)."""
        frame = pd.DataFrame(
            [{"id": record_id(messages), "messages": messages, "source": "serve", "created_at": "", "meta": {}}],
            columns=RECORD_COLUMNS,
        )
        out = self._scrub(frame, self._pii_cfg)
        if len(out.kept) != 1:
            return None
        return [{"role": m["role"], "content": m["content"]} for m in out.kept.iloc[0]["messages"]]

    def record_response(self, response_id: str, messages: list[dict[str, str]], answer: str, usage: dict) -> int | None:
        """Store the scrubbed request + answer and the response's latency; returns the feedback row id."""
        from tasks import feedback

        clean = self.scrubbed([*messages, {"role": "assistant", "content": answer}])
        feedback_id = None
        if clean is not None:
            feedback_id = feedback.add(clean[:-1], clean[-1]["content"], model_version=self.model_version, url=self.url)
        with Session(self._engine) as s, s.begin():
            s.add(
                ServedResponse(
                    response_id=response_id,
                    feedback_id=feedback_id,
                    model_version=self.model_version,
                    latency_ms=usage["latency_ms"],
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
                )
            )
        return feedback_id

    def record_feedback(self, req: FeedbackRequest) -> str:
        """Apply a rating / correction to the response's row: ``ok``, ``unknown`` or ``unstored``."""
        from tasks import feedback

        with Session(self._engine) as s:
            served = s.get(ServedResponse, req.response_id)
        if served is None:
            return "unknown"
        if served.feedback_id is None:
            return "unstored"
        correction = None
        if req.correction and req.correction.strip():
            clean = self.scrubbed([{"role": "user", "content": req.correction}])
            correction = clean[0]["content"] if clean else None
        ok = feedback.rate(served.feedback_id, req.rating, correction, req.flag, url=self.url)
        return "ok" if ok else "unknown"


def create_app(engine, model_version: str, sink: FeedbackSink | None, token: str | None = None):
    """The FastAPI app over a :class:`tasks.serving_model.ChatEngine` (``sink`` None: nothing is stored)."""
    from fastapi import Depends, FastAPI, Header, HTTPException

    from tasks.serving_model import ChatAnswer

    app = FastAPI(title="loraflow model server", version=model_version)
    lock = threading.Lock()  # one generation at a time: the model is not safe to share between threads

    def auth(authorization: str | None = Header(None)) -> None:
        if token and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_version}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    def chat(req: ChatRequest) -> dict:
        messages = [m.model_dump() for m in req.messages]
        if messages[-1]["role"] != "user":
            raise HTTPException(status_code=422, detail="the last message must be a user message")
        with lock:
            ans: ChatAnswer = engine.answer(messages, max_new_tokens=req.max_tokens, temperature=req.temperature)
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        usage = {
            "prompt_tokens": ans.prompt_tokens,
            "completion_tokens": ans.completion_tokens,
            "total_tokens": ans.prompt_tokens + ans.completion_tokens,
        }
        if sink is not None:  # stored as the model saw it (with its system prompt): the training format
            stats = {**usage, "latency_ms": ans.seconds * 1000}
            sink.record_response(response_id, engine.with_system(messages), ans.text, stats)
        limit = req.max_tokens or engine.settings.max_new_tokens
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_version,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ans.text},
                    "finish_reason": "length" if ans.completion_tokens >= limit else "stop",
                }
            ],
            "usage": usage,
            "latency_ms": round(ans.seconds * 1000, 1),
        }

    @app.post("/v1/feedback", dependencies=[Depends(auth)])
    def post_feedback(req: FeedbackRequest) -> dict:
        if sink is None:
            raise HTTPException(status_code=503, detail="this server stores no feedback")
        try:
            status = sink.record_feedback(req)
        except StageError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        if status == "unknown":
            raise HTTPException(status_code=404, detail=f"no response with id {req.response_id!r}")
        return {"status": status, "response_id": req.response_id}

    return app


def bench(engine, prompts: list[str], n: int) -> dict[str, float]:
    """p50 / p95 latency and generated tokens/s over ``n`` sequential requests (cycling over ``prompts``)."""
    if n < 1 or not prompts:
        raise StageError("serve-model --bench needs N >= 1 and at least one prompt.")
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for i in range(n):
        ans = engine.answer([{"role": "user", "content": prompts[i % len(prompts)]}])
        latencies.append(ans.seconds)
        tokens += ans.completion_tokens
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {
        "requests": n,
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] * 1000, 1),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else 0.0,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
    }


def bench_prompts(path: str | None) -> list[str]:
    """The user turns of a records Parquet / JSONL file (e.g. the frozen test split), or a few generic ones."""
    if not path:
        return ["My card payment was declined.", "How do I reset my password?", "I was charged twice."]
    from tasks.core import read_records

    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        msgs = [r["messages"] for r in rows if "messages" in r]
    else:
        msgs = list(read_records(path)["messages"])
    prompts = [next((m["content"] for m in reversed(ms) if m["role"] == "user"), "") for ms in msgs]
    return [p for p in prompts if p]
