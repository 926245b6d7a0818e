"""Stable record identity: an id fixed at ingest from the normalised raw content, keyed with a project secret.

The id is ``HMAC-SHA256(secret, canonical messages)`` cut to 16 hex characters (64 bits: a collision needs
~4e9 records). It is computed once, at ingest, from the raw text, and every later stage carries it unchanged, so
changing the PII, dedup or contract settings never changes an id or a split assignment. The key makes ids
useless as a dictionary attack on short texts ("yes", a phone number) for anyone who sees ids but not the key.

The secret lives with the project's state and is created on first use:

* a file ``<LORAFLOW_HOME>/secrets/record-id.key`` (mode 0600), or
* a Prefect Secret block (``data.id_secret_block`` in the config, or ``LORAFLOW_ID_SECRET_BLOCK``) when several
  machines retrain the same project and must all compute the same ids.

The secret is never logged, put in a param, a tag, a report or a Prefect result.
"""

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from tasks.core import normalise_text
from tasks.home import loraflow_home

SECRET_FILE = Path("secrets") / "record-id.key"
SECRET_BLOCK_ENV = "LORAFLOW_ID_SECRET_BLOCK"
ID_CHARS = 16


def canonical_messages(messages: list[dict[str, Any]]) -> bytes:
    """What the id is computed from: each turn's role and normalised text (case, width and spacing folded)."""
    canon = [[m.get("role", ""), normalise_text(str(m.get("content", "")))] for m in messages]
    return json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def keyed_record_id(messages: list[dict[str, Any]], key: bytes) -> str:
    """The record's stable id under ``key`` (see the module docstring)."""
    return hmac.new(key, canonical_messages(messages), hashlib.sha256).hexdigest()[:ID_CHARS]


def _secret_file(home: Path) -> bytes:
    path = home / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".record-id.", dir=path.parent)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):  # atomic, exclusive: of two first runs, one key wins
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"the record-id secret {path} is shorter than 32 characters; delete it to make a new one")
    return key


def share_key(home: Path, key: bytes) -> None:
    """Give a fresh loraflow home this record-id key (before its first run), so that runs in several homes
    compute the same ids and hence the same hash-stable splits (benchmarks comparing homes side by side)."""
    path = home / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(key)
    path.chmod(0o600)


def _secret_block(name: str) -> bytes:
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get()).encode()
    except ValueError:  # no such block yet: create it once
        pass
    with contextlib.suppress(ValueError):  # another host may have saved it first
        Secret(value=secrets.token_hex(32)).save(name, overwrite=False)
    return str(Secret.load(name).get()).encode()  # everyone uses the stored value


def project_key(block: str | None = None, home: Path | None = None) -> bytes:
    """The project's id key: from the named Prefect Secret block, else the file under the loraflow home."""
    block = block or os.environ.get(SECRET_BLOCK_ENV)
    if block:
        return _secret_block(block)
    return _secret_file(home or loraflow_home())
