"""The production-feedback store and its extract stage: what users said about the model's answers.

One table row per answered request::

    request_messages     the chat the model was asked (JSON text, stored as received: a row with broken JSON
                         is kept so the extract stage can quarantine it with a reason instead of losing it)
    model_version        which model version answered (``name/version`` as registered, or any label)
    response             the model's answer
    rating_scale/rating  ``thumbs`` (1 = up, 0 = down) or ``stars`` (1-5); both null when nobody rated it
    corrected_response   a human-corrected answer, when someone wrote one
    flag_reason          a short category when the answer was flagged (``harmful``, ``wrong_intent``...)
    created_at           when the request was answered (UTC); null when the producer did not say
    received_at          when the store received the row (UTC), never null
    updated_at           last change (a correction added later, a re-rating)

The same SQLAlchemy 2.0 code runs on the default SQLite file (``<loraflow home>/feedback/feedback.db``) and on
PostgreSQL (``postgresql+psycopg://user:pw@host/db``): only the URL changes.

:func:`extract_day` turns one UTC day of feedback into canonical records (see :mod:`tasks.core`):

* a corrected response becomes the assistant target (whatever the rating);
* a good rating (thumbs up, or at least ``good_min_stars``) keeps the model's response as the target;
* a bad rating without a correction is excluded from SFT but quarantined *with its record* as
  ``preference_only`` (the rejected answer, for later preference tuning), likewise ``flagged`` and ``unrated``;
* a row whose messages are not valid chat JSON (``invalid_messages``), whose model version is unknown
  (``unknown_model_version``), or that has no timestamp (``missing_timestamp``, bucketed by the day the store
  received it) is quarantined with its reason and its store id only, never its text.

Nothing is dropped silently and no bad row stops the window: ``rows_in == kept + quarantined`` for every day.
Records here still hold raw text; the backfill flow scrubs them before anything is written to disk.
"""

import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field
from sqlalchemy import (
    DateTime,
    Integer,
    SmallInteger,
    String,
    Text,
    and_,
    create_engine,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tasks.core import (
    RECORD_COLUMNS,
    StageError,
    StageOutcome,
    StrictModel,
    empty_quarantine,
    empty_records,
    quarantine_rows,
)
from tasks.home import loraflow_home
from tasks.identity import keyed_record_id, project_key
from tasks.messages import ROLES, messages_problem

STAGE = "feedback"
_FLAG_TOKEN = re.compile(r"^[a-z0-9][a-z0-9_ .:-]{0,39}$")


_VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,63}")


def _version_detail(version: str | None) -> dict[str, Any]:
    """What a quarantine row may say about an unknown model version: the identifier itself when it looks like one
    (``loraflow-demo/3``, ``gpt-4o-2024-08-06``), else only its length and a hash, never free text."""
    value = version or ""
    if _VERSION_ID.fullmatch(value):
        return {"model_version": value}
    return {"model_version_sha256": hashlib.sha256(value.encode()).hexdigest()[:16], "model_version_chars": len(value)}


def default_store_url() -> str:
    """``LORAFLOW_FEEDBACK_URL`` when set (credentials stay in the environment, out of flow parameters), else
    the SQLite file under the loraflow home."""
    return os.environ.get("LORAFLOW_FEEDBACK_URL") or f"sqlite:///{loraflow_home() / 'feedback' / 'feedback.db'}"


class FeedbackStoreConfig(StrictModel):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL of the feedback store. Empty: the SQLite file <loraflow home>/feedback/"
        "feedback.db. PostgreSQL: postgresql+psycopg://user:password@host:5432/db.",
    )
    source_name: str = Field("feedback", description="`source` written on every record extracted from the store.")
    good_min_stars: int = Field(
        4, ge=1, le=5, description="A 1-5 star rating at or above this keeps the model's response as the target."
    )
    sft_ok_flags: list[str] = Field(
        default_factory=lambda: ["pii"],
        description="Flag reasons that do not exclude a row from SFT: `pii` means the request held personal data, "
        "which the PII stage scrubs. Any other flag without a correction excludes the row (reason `flagged`).",
    )
    known_model_versions: list[str] = Field(
        default_factory=list,
        description="Model versions that may have answered (fnmatch patterns, e.g. `banking77-lora/*`), in "
        "addition to those registered in the store's model_versions table. With neither, only a missing "
        "version counts as unknown.",
    )

    def resolved_url(self) -> str:
        return self.url or default_store_url()


# --------------------------------------------------------------------------------------------- schema


class Base(DeclarativeBase):
    pass


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    request_messages: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(200))
    response: Mapped[str | None] = mapped_column(Text)
    rating_scale: Mapped[str | None] = mapped_column(String(8))
    rating: Mapped[int | None] = mapped_column(SmallInteger)
    corrected_response: Mapped[str | None] = mapped_column(Text)
    flag_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow, onupdate=_utcnow)


class ModelVersion(Base):
    """Model versions that served production: feedback naming any other version is quarantined."""

    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    registered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)


_ENGINES: dict[str, Engine] = {}


def engine(url: str | None = None) -> Engine:
    """One engine per URL per process, with the tables created on first use."""
    url = url or default_store_url()
    if url not in _ENGINES:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, future=True, pool_pre_ping=True)
        try:
            Base.metadata.create_all(eng)
        except OperationalError as e:  # unreachable server, bad credentials: the user's to fix, in one line
            eng.dispose()
            why = str(e.orig).strip().splitlines()[0] if e.orig is not None else type(e).__name__
            raise StageError(
                f"the feedback store {safe_url(url)} cannot be opened: {why}. Check the URL, that the server is "
                "running and the credentials."
            ) from None
        _ENGINES[url] = eng
    return _ENGINES[url]


def safe_url(url: str | None) -> str:
    """The URL with its password hidden: what logs, reports and MLflow may show."""
    return make_url(url or default_store_url()).render_as_string(hide_password=True)


# --------------------------------------------------------------------------------------------- writing


def parse_rating(value: Any) -> tuple[str | None, int | None]:
    """``(scale, value)`` from what producers send: thumbs (``up``/``down``/bool/±1) or 1-5 stars.

    Raises ``ValueError`` on anything else (a rating we cannot read is an input error, not a guess).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bool):
        return "thumbs", int(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("up", "thumbs_up", "thumbsup", "good", "+1", "\N{THUMBS UP SIGN}"):
            return "thumbs", 1
        if v in ("down", "thumbs_down", "thumbsdown", "bad", "-1", "\N{THUMBS DOWN SIGN}"):
            return "thumbs", 0
        if v.isdigit():
            value = int(v)
    if isinstance(value, int) and value == -1:
        return "thumbs", 0
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= int(value) <= 5:
        return "stars", int(value)
    raise ValueError(f"rating {str(value)[:20]!r} is neither thumbs (up/down) nor 1-5 stars")


def parse_timestamp(value: Any) -> dt.datetime | None:
    """UTC naive datetime from an ISO string / datetime; None when missing or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        ts = value
    elif isinstance(value, dt.date):
        ts = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            ts = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if ts.tzinfo is not None:
        ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
    return ts


def _messages_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return json.dumps(messages, ensure_ascii=False)


def _dedup_key(row: dict[str, Any]) -> str:
    canon = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _row(
    request_messages: Any,
    model_version: str | None,
    response: str | None,
    rating: Any,
    corrected_response: str | None,
    flag_reason: str | None,
    created_at: Any,
) -> dict[str, Any]:
    scale, value = parse_rating(rating)
    row = {
        "request_messages": _messages_text(request_messages),
        "model_version": model_version or None,
        "response": response,
        "rating_scale": scale,
        "rating": value,
        "corrected_response": corrected_response or None,
        "flag_reason": flag_reason or None,
        "created_at": parse_timestamp(created_at),
    }
    row["dedup_key"] = _dedup_key(row)
    return row


def add(
    request_messages: list[dict[str, str]] | str,
    response: str | None,
    model_version: str | None = None,
    rating: Any = None,
    corrected_response: str | None = None,
    flag_reason: str | None = None,
    created_at: Any = "now",
    url: str | None = None,
) -> int | None:
    """Store one feedback row; returns its id (None when the identical row is already stored).

    ``created_at="now"`` stamps it with the current UTC time; pass None for a row without a timestamp.
    """
    if created_at == "now":
        created_at = _utcnow()
    try:
        row = _row(request_messages, model_version, response, rating, corrected_response, flag_reason, created_at)
    except ValueError as e:
        raise StageError(f"feedback add: {e}.") from None
    ids = _insert([row], url)
    return ids[0] if ids else None


def _insert(rows: list[dict[str, Any]], url: str | None) -> list[int]:
    """Insert rows whose dedup key is not stored yet; returns the new ids. Re-importing is a no-op."""
    eng = engine(url)
    new: list[int] = []
    with Session(eng) as s, s.begin():
        keys = [r["dedup_key"] for r in rows]
        seen: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            seen.update(s.scalars(select(Feedback.dedup_key).where(Feedback.dedup_key.in_(chunk))))
        objs = []
        for r in rows:
            if r["dedup_key"] in seen:
                continue
            seen.add(r["dedup_key"])
            objs.append(Feedback(**r))
        s.add_all(objs)
        s.flush()
        new = [o.id for o in objs]
    return new


def register_model_versions(names: list[str], url: str | None = None) -> int:
    """Declare model versions that served production; returns how many were new."""
    eng = engine(url)
    with Session(eng) as s, s.begin():
        have = set(s.scalars(select(ModelVersion.name)))
        fresh = sorted({n for n in names if n and n not in have})
        s.add_all(ModelVersion(name=n) for n in fresh)
    return len(fresh)


def rate(
    feedback_id: int,
    rating: Any = None,
    corrected_response: str | None = None,
    flag_reason: str | None = None,
    url: str | None = None,
) -> bool:
    """Add a rating / correction / flag to a stored row (what the model server's ``/v1/feedback`` does).

    Only the fields given change; returns False when no row has that id. Raises StageError on a bad rating.
    """
    try:
        scale, value = parse_rating(rating)
    except ValueError as e:
        raise StageError(f"feedback: {e}.") from None
    with Session(engine(url)) as s, s.begin():
        row = s.get(Feedback, feedback_id)
        if row is None:
            return False
        if scale is not None:
            row.rating_scale, row.rating = scale, value
        if corrected_response:
            row.corrected_response = corrected_response
        if flag_reason:
            row.flag_reason = flag_reason
    return True


def import_file(path: str | Path, url: str | None = None) -> dict[str, Any]:
    """Import a JSONL file of feedback rows into the store; idempotent (identical rows are stored once).

    Each line: ``{"request_messages": [...], "model_version", "response", "rating", "corrected_response",
    "flag_reason", "created_at"}``. ``request_messages`` may be a list or a JSON string (stored as given, so
    a broken one reaches the extract stage and is quarantined there). A line that is not a JSON object, or
    whose rating cannot be read, cannot be stored: it is counted and reported by line number, never quoted.

    Returns ``{"file", "lines", "inserted", "already_stored", "rejected": [{"line", "reason"}]}``.
    Raises StageError when the file cannot be read at all.
    """
    path = Path(path)
    if not path.is_file():
        raise StageError(f"feedback import: {path} does not exist or is not a file.")
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    lines = 0
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise StageError(f"feedback import: {path} is not UTF-8 text (byte {e.start}).") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        lines += 1
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            rejected.append({"line": lineno, "reason": "malformed_json"})
            continue
        if not isinstance(obj, dict) or "request_messages" not in obj:
            rejected.append({"line": lineno, "reason": "not_a_feedback_object"})
            continue
        try:
            rows.append(
                _row(
                    obj.get("request_messages"),
                    obj.get("model_version"),
                    obj.get("response"),
                    obj.get("rating"),
                    obj.get("corrected_response"),
                    obj.get("flag_reason"),
                    obj.get("created_at"),
                )
            )
        except (ValueError, TypeError):
            rejected.append({"line": lineno, "reason": "bad_rating"})
    new = _insert(rows, url)
    return {
        "file": str(path),
        "lines": lines,
        "inserted": len(new),
        "already_stored": len(rows) - len(new),
        "rejected": rejected,
    }


def count(url: str | None = None) -> int:
    with Session(engine(url)) as s:
        return int(s.scalar(select(func.count(Feedback.id))) or 0)


# --------------------------------------------------------------------------------------------- extract


def _known_versions(s: Session, cfg: FeedbackStoreConfig) -> tuple[set[str], list[str]]:
    return set(s.scalars(select(ModelVersion.name))), list(cfg.known_model_versions)


def _version_known(version: str | None, registered: set[str], patterns: list[str]) -> bool:
    if not version or not version.strip():
        return False
    if not registered and not patterns:
        return True
    return version in registered or any(fnmatch.fnmatchcase(version, p) for p in patterns)


def parse_messages(text: str) -> list[dict[str, str]]:
    """The request as chat messages; raises ValueError with a reason code that quotes no content."""
    problem = messages_problem(text if isinstance(text, str) else None, roles=ROLES, check_text=False)
    if problem:
        where = "" if problem.index is None else f" at message {problem.index}"
        raise ValueError(f"{problem.reason}{where}")
    out = [{"role": m["role"], "content": m["content"]} for m in json.loads(text)]
    if out[-1]["role"] != "user":
        raise ValueError("last_message_not_user")
    return out


def _flag(value: str | None) -> str | None:
    """Flag reasons are categories; free text (which could hold PII) is reported as ``other``."""
    if not value:
        return None
    v = value.strip().lower()
    return v if _FLAG_TOKEN.match(v) else "other"


def _is_good(scale: str | None, rating: int | None, good_min_stars: int) -> bool | None:
    if scale is None or rating is None:
        return None
    return rating >= 1 if scale == "thumbs" else rating >= good_min_stars


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(day.year, day.month, day.day)
    return start, start + dt.timedelta(days=1)


def read_day(url: str | None, day: dt.date) -> list[Feedback]:
    """The day's rows (by created_at; rows with none by received_at), in id order."""
    lo, hi = day_bounds(day)
    with Session(engine(url)) as s:
        q = (
            select(Feedback)
            .where(
                or_(
                    and_(Feedback.created_at >= lo, Feedback.created_at < hi),
                    and_(Feedback.created_at.is_(None), Feedback.received_at >= lo, Feedback.received_at < hi),
                )
            )
            .order_by(Feedback.id)
        )
        rows = list(s.scalars(q))
        s.expunge_all()
    return rows


def _target(fb, flag: str | None, good: bool | None, cfg: FeedbackStoreConfig) -> tuple[str, str, str | None] | None:
    """The SFT target of one feedback row, its kind and the quarantine reason (None: kept); None: no answer."""
    if fb.corrected_response and fb.corrected_response.strip():
        return fb.corrected_response, "corrected", None
    if not (fb.response or "").strip():
        return None
    if flag is not None and flag not in cfg.sft_ok_flags:
        return fb.response, "flagged", "flagged"
    if good is None:
        return fb.response, "unrated", "unrated"
    return (fb.response, "good_rating", None) if good else (fb.response, "rejected", "preference_only")


def extract_day(url: str | None, day: dt.date, cfg: FeedbackStoreConfig | None = None) -> StageOutcome:
    """One UTC day of feedback → SFT records (kept) and quarantined rows with reasons. Never raises on data.

    Kept records carry ``meta = {feedback_id, model_version, target, rating, flag}``; excluded-but-useful rows
    (``preference_only``, ``flagged``, ``unrated``) carry their full record in the quarantine row so the
    backfill can scrub and keep them; broken rows carry only ``{"feedback_id": ...}`` and an error.
    """
    cfg = cfg or FeedbackStoreConfig()
    url = url or cfg.resolved_url()
    rows = read_day(url, day)
    id_key = project_key()  # ids from the raw request + target, like ingest's: scrubbing never changes them
    with Session(engine(url)) as s:
        registered, patterns = _known_versions(s, cfg)

    kept: list[dict[str, Any]] = []
    q_frames: list[pd.DataFrame] = []
    excluded: list[tuple[dict[str, Any], str]] = []
    broken: list[tuple[str, str, dict[str, Any]]] = []
    targets: Counter[str] = Counter()

    for fb in rows:
        key = f"feedback:{fb.id}"
        if fb.created_at is None:
            broken.append((key, "missing_timestamp", {"feedback_id": fb.id}))
            continue
        try:
            request = parse_messages(fb.request_messages)
        except ValueError as e:
            broken.append((key, "invalid_messages", {"feedback_id": fb.id, "error": str(e)}))
            continue
        if not _version_known(fb.model_version, registered, patterns):
            broken.append((key, "unknown_model_version", {"feedback_id": fb.id, **_version_detail(fb.model_version)}))
            continue
        good = _is_good(fb.rating_scale, fb.rating, cfg.good_min_stars)
        flag = _flag(fb.flag_reason)
        meta = {
            "feedback_id": fb.id,
            "model_version": fb.model_version,
            "rating": None if fb.rating is None else f"{fb.rating_scale}:{fb.rating}",
            "flag": flag,
        }
        chosen = _target(fb, flag, good, cfg)
        if chosen is None:
            broken.append((key, "empty_response", {"feedback_id": fb.id}))
            continue
        target, kind, reason = chosen
        messages = [*request, {"role": "assistant", "content": target}]
        rec = {
            "id": keyed_record_id(messages, id_key),
            "messages": messages,
            "source": cfg.source_name,
            "created_at": fb.created_at.isoformat(),
            "meta": {**meta, "target": kind},
        }
        targets[kind] += 1
        if reason is None:
            kept.append(rec)
        else:
            excluded.append((rec, reason))

    if excluded:
        frame = pd.DataFrame([r for r, _ in excluded], columns=RECORD_COLUMNS)
        details = [{"feedback_id": r["meta"]["feedback_id"]} for r, _ in excluded]
        q_frames.append(quarantine_rows(STAGE, frame, [why for _, why in excluded], details))
    if broken:
        frame = pd.DataFrame({"id": [k for k, _, _ in broken]})
        q_frames.append(quarantine_rows(STAGE, frame, [why for _, why, _ in broken], [d for _, _, d in broken], False))
    quarantined = pd.concat(q_frames, ignore_index=True) if q_frames else empty_quarantine()
    kept_df = pd.DataFrame(kept, columns=RECORD_COLUMNS) if kept else empty_records()
    report = {
        "day": day.isoformat(),
        "store": safe_url(url),
        "targets": dict(sorted(targets.items())),
    }
    return StageOutcome(kept=kept_df, quarantined=quarantined, report=report)
