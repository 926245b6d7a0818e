"""What dedup compares: the normalised text of a record and the hashes of its exact keys.

:func:`dedup_normalise` is :func:`tasks.core.normalise_text` (NFKC, case-folded, whitespace collapsed: the
form record ids hash) plus two documented steps, so ``duplicate_rate`` in the data contract and this stage
agree on what a duplicate is: :func:`exact_key` is that one definition.
"""

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tasks.core import normalise_text

_NON_WORD = re.compile(r"[\W_]+")
# Scripts written without spaces (CJK ideographs, kana): a space that punctuation left between two of their
# characters is not a word boundary, so "我的卡，到了" and "我的卡到了" normalise alike.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNSPACED_GAP = re.compile(f"(?<=[{_UNSPACED}]) (?=[{_UNSPACED}])")


def dedup_normalise(text: str) -> str:
    """:func:`tasks.core.normalise_text`, then punctuation folded away.

    The two extra steps: every run of punctuation, symbols and whitespace becomes one space (``"card?!"`` and
    ``"card"`` are the same question), and a space between two CJK / kana characters is dropped (those scripts
    do not separate words). NFKC (in ``normalise_text``) folds look-alike compatibility forms (full-width
    letters, ligatures, non-breaking spaces) onto the plain form, so ``ＨＥＬＬＯ`` and ``hello`` compare equal.
    Letters and digits of every script survive.
    """
    return _UNSPACED_GAP.sub("", _NON_WORD.sub(" ", normalise_text(text))).strip()


def h64(text: str) -> int:
    """A stable 64-bit hash of a string (blake2b; the same on every machine and Python version)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def split_turns(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(prompt messages, target text): the target is the final assistant turn ('' when there is none)."""
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content", ""))
    return messages, ""


@dataclass
class RowKeys:
    """Everything the engine needs from one record; texts are only kept where the caller wants them."""

    exact: int  # hash of the normalised, role-tagged key (conversation or prompt)
    prompt: int  # hash of the normalised prompt side
    target: int  # hash of the normalised target
    text: str  # normalised dedup text (user/assistant turns; system prompts excluded)
    raw: int  # hash of the record as stored (last tie-breaker)
    empty: bool  # no user text left after normalisation: nothing to compare (quarantined as empty_key)


@dataclass
class _Normalised:
    prompt: list[tuple[str, str]]  # (role, normalised content) of the prompt turns
    target: str  # normalised final assistant turn
    has_target: bool  # the record ends with a non-empty assistant turn
    prompt_key: str

    def exact(self, key: str) -> str:
        if key == "prompt" or not self.has_target:
            return self.prompt_key
        return self.prompt_key + "\x1fassistant\x1e" + self.target


def _normalised(messages: list[dict[str, str]]) -> _Normalised:
    prompt_msgs, target = split_turns(messages)
    norm_prompt = [(m.get("role", ""), dedup_normalise(str(m.get("content", "")))) for m in prompt_msgs]
    prompt_key = "\x1f".join(f"{r}\x1e{c}" for r, c in norm_prompt)
    return _Normalised(norm_prompt, dedup_normalise(target), bool(target), prompt_key)


def exact_key(messages: list[dict[str, str]], key: Literal["conversation", "prompt"] = "conversation") -> int:
    """The exact-duplicate key of a record: two records are exact duplicates for dedup iff their keys are equal.

    Args:
        messages: the record's chat messages (``role`` / ``content``).
        key: ``conversation`` (every turn, roles included) or ``prompt`` (every turn but the final assistant
            one). System turns are part of both.

    Returns:
        A 64-bit hash of the role-tagged, :func:`dedup_normalise`-d turns.
    """
    return h64(_normalised(list(messages)).exact(key))


def row_keys(messages: list[dict[str, str]], key: str) -> RowKeys:
    """Compute a record's keys.

    System messages take part in the exact key but not in the near-duplicate text: a system prompt shared by
    every row would otherwise make all short queries look alike.
    """
    norm = _normalised(messages)
    user_side = [c for r, c in norm.prompt if r != "system"]
    text_parts = user_side if key == "prompt" else user_side + ([norm.target] if norm.has_target else [])
    text = " ".join(p for p in text_parts if p)
    raw = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return RowKeys(h64(norm.exact(key)), h64(norm.prompt_key), h64(norm.target), text, h64(raw), not any(user_side))


@dataclass
class Features:
    """Per-row key arrays of a batch of records, aligned with it."""

    exact: np.ndarray
    prompt: np.ndarray
    target: np.ndarray
    raw: np.ndarray
    empty: np.ndarray
    texts: list[str]


def features(messages: Iterable[list[dict[str, str]]], key: str) -> Features:
    """:func:`row_keys` of every record, as arrays."""
    keys = [row_keys(list(m), key) for m in messages]
    u = np.uint64
    return Features(
        exact=np.array([k.exact for k in keys], dtype=u),
        prompt=np.array([k.prompt for k in keys], dtype=u),
        target=np.array([k.target for k in keys], dtype=u),
        raw=np.array([k.raw for k in keys], dtype=u),
        empty=np.array([k.empty for k in keys], dtype=bool),
        texts=[k.text for k in keys],
    )
