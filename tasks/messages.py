"""The one check of a record's ``messages`` value, shared by ingest, PII, the data contract and feedback.

:func:`messages_problem` answers "can this value be used as a chat?" with ``None`` or a
:class:`MessageProblem` whose ``reason`` is a short code and whose ``index`` is the message at fault. Neither
ever quotes the text, so both can go to a quarantine file or a log before PII scrubbing. Stages that keep
older reason names map these codes to them; the codes themselves are:

======================== ==========================================================================
``messages_not_json``    a JSON text that does not parse
``messages_not_a_list``  the value is not a list (nor JSON text of one)
``no_messages``          an empty list
``message_not_an_object`` an element is not a ``{role, content}`` mapping
``role_missing_or_not_text`` no ``role`` key, or a role that is not a string
``bad_role``             a role outside ``roles`` (when given)
``content_missing``      no ``content`` key
``non_string_content``   content that is not a string (number, null, list...)
``binary_content``       bytes, NUL / U+FFFD, or more than 10 % control characters (``check_text``)
``invalid_utf8``         lone surrogates that cannot be encoded as UTF-8 (``check_text``)
======================== ==========================================================================
"""

import json
from collections.abc import Collection
from typing import Any, NamedTuple

ROLES = ("system", "user", "assistant")

#: Share of control characters (outside ``\\n\\r\\t``) above which a text is taken for binary data; real chat
#: text has almost none, a decoded binary blob has ~12 % (32 of 256 byte values plus DEL and C1).
BINARY_CONTROL_SHARE = 0.1
_SCAN = 4096


class MessageProblem(NamedTuple):
    """Why a ``messages`` value cannot be used: a reason code and the message index (None: the whole value)."""

    reason: str
    index: int | None = None


def coerce_messages(value: Any) -> Any:
    """The value as Python objects: JSON text decoded, numpy arrays (Parquet) turned into lists.

    Text that is not JSON is returned unchanged (a ``str``), which :func:`messages_problem` reports as
    ``messages_not_json``.
    """
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, dict):
        return value.tolist()
    return value


def text_problem(content: str) -> str | None:
    """Why a string cannot be scanned as text (``invalid_utf8`` / ``binary_content``), or None."""
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes decoded with surrogateescape, or bad \\u escapes
        return "invalid_utf8"
    if "\x00" in content or "\ufffd" in content:
        return "binary_content"
    head = content[:_SCAN]
    if head:
        ctrl = sum(1 for c in head if (ord(c) < 32 and c not in "\n\r\t") or 0x7F <= ord(c) < 0xA0)
        if ctrl / len(head) > BINARY_CONTROL_SHARE:
            return "binary_content"
    return None


def content_problem(content: Any, check_text: bool = True) -> str | None:
    """Why one message's ``content`` is unusable (``non_string_content``, ``binary_content``...), or None."""
    if isinstance(content, bytes | bytearray | memoryview):
        return "binary_content"
    if not isinstance(content, str):
        return "non_string_content"
    return text_problem(content) if check_text else None


def messages_problem(
    value: Any, roles: Collection[str] | None = ROLES, check_text: bool = True
) -> MessageProblem | None:
    """Check a record's ``messages`` value; None when it is a usable list of ``{role, content}`` messages.

    Args:
        value: the ``messages`` value as stored: a list, a numpy array from Parquet, or JSON text.
        roles: the allowed roles; None accepts any string role.
        check_text: also reject binary or non-UTF-8 content (see :func:`text_problem`).

    Returns:
        None, or the first problem found (reason code and message index); never any of the text.
    """
    if isinstance(value, str):
        value = coerce_messages(value)
        if isinstance(value, str):
            return MessageProblem("messages_not_json")
    value = coerce_messages(value)
    if not isinstance(value, list):
        return MessageProblem("messages_not_a_list")
    if not value:
        return MessageProblem("no_messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return MessageProblem("message_not_an_object", i)
        role = m.get("role")
        if not isinstance(role, str):
            return MessageProblem("role_missing_or_not_text", i)
        if roles is not None and role not in roles:
            return MessageProblem("bad_role", i)
        if "content" not in m:
            return MessageProblem("content_missing", i)
        why = content_problem(m["content"], check_text)
        if why:
            return MessageProblem(why, i)
    return None
