"""The derived columns: what the contract's rules look at, computed once per record and only when a rule needs it.

The table handed to Great Expectations holds these columns and the record id, never conversation text: token
counts, role pattern, label, JSON parse result, residual-PII kinds, text problems and duplicate keys.
"""

import functools
import json
import re
import time
from typing import Any

import pandas as pd

from tasks.core import StageError
from tasks.messages import coerce_messages, messages_problem
from tasks.validate.counting import PieceCounter

ROLE_CODES = {"system": "s", "user": "u", "assistant": "a"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

# The shared validator's codes under the names this rule has always reported (reports and dashboards use them).
_FIELD_CODES = {
    "messages_not_json": "messages_not_a_list",
    "content_missing": "content_missing_or_not_text",
    "non_string_content": "content_missing_or_not_text",
    "binary_content": "content_missing_or_not_text",
}

#: The PII stage's entity types under the short names contracts use (other types: lower-cased).
PII_KINDS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card_number",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
}
# Text with no letter or digit cannot hold PII: not worth an engine call.
_ALNUM = re.compile(r"[^\W_]")


def text_problems(text: str, control_chars: bool = True, mojibake: bool = True) -> list[str]:
    """``control_character`` / ``mojibake`` when present (ASCII text cannot be mojibake: skipped fast)."""
    out = []
    if control_chars and _CONTROL.search(text):
        out.append("control_character")
    if mojibake and not text.isascii():
        from ftfy.badness import is_bad

        if "\ufffd" in text or is_bad(text):
            out.append("mojibake")
    return out


def fields_problem(msgs: Any) -> str | None:
    """Why a ``messages`` value is not a usable chat (the shared validator's code), or None."""
    problem = messages_problem(msgs, roles=None, check_text=False)
    return None if problem is None else _FIELD_CODES.get(problem.reason, problem.reason)


def residual_pii(
    texts: list[str], entities: list[str] | None = None, pii_cfg=None, desc: str | None = None, runner=None
) -> list[list[str]]:
    """The kinds of PII the PII stage's own engine still finds in each text (kind names only, never the match).

    Args:
        texts: the texts to check (each distinct text is analysed once, in batches).
        entities: the entity types that count (None: every type ``pii_cfg`` scrubs).
        pii_cfg: the PII stage's config (:class:`tasks.pii.PiiConfig`; None: its defaults).
        desc: a name for a progress bar over the distinct texts (None: none).
        runner: a :class:`tasks.runner.DaskConfig` to scan the texts in shards on Dask (None: here).
    """
    from tasks.pii import PiiConfig, detect_spans_sharded

    cfg = pii_cfg or PiiConfig()
    wanted = set(cfg.entities if entities is None else entities)
    todo = sorted({t for t in texts if _ALNUM.search(t)})
    found: dict[str, list[str]] = {}
    for text, spans in zip(todo, detect_spans_sharded(todo, cfg, runner, desc), strict=True):
        kinds = sorted({PII_KINDS.get(s.entity_type, s.entity_type.lower()) for s in spans if s.entity_type in wanted})
        if kinds:
            found[text] = kinds
    return [found.get(t, []) for t in texts]


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """The base model's tokenizer, loaded once per process (lazily: transformers is heavy to import)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise StageError(
            f"Cannot load the tokenizer {name_or_path!r} for the token-length rules ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Point --tokenizer / train.base_model at a model folder."
        ) from None


def _exact_key(messages: list[dict[str, str]], key: str) -> int:
    """Dedup's own exact-duplicate key, so the contract counts the duplicates dedup would remove."""
    from tasks.dedup import exact_key

    return exact_key(messages, key)


class Derived:
    """The derived columns of one run, each computed at most once, only when some rule needs it.

    Args:
        records: canonical records (id, messages, meta...).
        label_from: where a record's label is (``assistant`` or ``meta.<key>``).
        tokenizer: model folder or id whose tokenizer counts tokens (None: token rules cannot run).
        token_batch_size: texts per tokenizer call.
        pii_cfg: the PII stage's config, for the residual-PII check.
        token_rules: who needs the tokenizer, for the error when none is given ("Data contract X: rule(s) Y").
        runner: where the residual-PII scan runs (a :class:`tasks.runner.DaskConfig`; None: here).
    """

    def __init__(
        self,
        records: pd.DataFrame,
        label_from: str = "assistant",
        tokenizer: str | None = None,
        token_batch_size: int = 2048,
        pii_cfg=None,
        token_rules: str = "the data contract's token-length rules",
        runner=None,
    ):
        self.records = records
        self.token_rules = token_rules
        self.label_from = label_from
        self.tokenizer = tokenizer
        self.token_batch_size = token_batch_size
        self.pii_cfg = pii_cfg
        self.runner = runner
        self.ids = records["id"].astype(str).tolist()
        self.msgs = [coerce_messages(v) for v in records["messages"]]
        self._cache: dict[str, list] = {"fields": [fields_problem(m) for m in self.msgs]}
        #: Cost of the expensive columns, for the report (seconds, texts analysed).
        self.stats: dict[str, float] = {}
        self.ok = [p is None for p in self._cache["fields"]]

    def _memo(self, key: str, fn) -> list:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def fields_problem(self) -> list:
        return self._cache["fields"]

    def role_pattern(self) -> list:
        def code(m):
            role = m.get("role") if isinstance(m, dict) else None
            return ROLE_CODES.get(role, "?") if isinstance(role, str) else "?"

        return self._memo(
            "roles", lambda: ["".join(code(x) for x in m) if isinstance(m, list) else "" for m in self.msgs]
        )

    def contents(self) -> list[list[str]]:
        """Every message's content as text (non-text content as an empty string)."""

        def texts(m):
            if not isinstance(m, list):
                return []
            return [x["content"] if isinstance(x, dict) and isinstance(x.get("content"), str) else "" for x in m]

        return self._memo("contents", lambda: [texts(m) for m in self.msgs])

    def full_text(self) -> list[str]:
        return self._memo("full_text", lambda: ["\n".join(c) for c in self.contents()])

    def assistant_chars(self) -> list:
        def shortest(m):
            lens = [
                len(x["content"].strip()) if isinstance(x.get("content"), str) else 0
                for x in m
                if isinstance(x, dict) and x.get("role") == "assistant"
            ]
            return min(lens) if lens else 0

        return self._memo("assistant_chars", lambda: [shortest(m) if isinstance(m, list) else 0 for m in self.msgs])

    def final_assistant(self) -> list[str | None]:
        def last(m):
            if isinstance(m, list) and m and isinstance(m[-1], dict) and m[-1].get("role") == "assistant":
                c = m[-1].get("content")
                return c if isinstance(c, str) else None
            return None

        return self._memo("final_assistant", lambda: [last(m) for m in self.msgs])

    def label(self) -> list[str]:
        def from_meta(meta, key):
            if isinstance(meta, str):
                try:
                    meta = json.loads(meta)
                except ValueError:
                    meta = None
            v = meta.get(key) if isinstance(meta, dict) else None
            return "" if v is None else str(v).strip()

        def compute():
            if self.label_from == "assistant":
                return [(c or "").strip() for c in self.final_assistant()]
            key = self.label_from.removeprefix("meta.")
            metas = self.records["meta"] if "meta" in self.records else [None] * len(self.records)
            return [from_meta(m, key) for m in metas]

        return self._memo("label", compute)

    def dup_key(self, key: str) -> list[str]:
        def compute():
            out = []
            for m, ok in zip(self.msgs, self.ok, strict=True):
                # malformed rows are never duplicates of each other
                out.append(f"{_exact_key(m, key):016x}" if ok else f"malformed:{len(out)}")
            return out

        return self._memo(f"dup_{key}", compute)

    def tokens(self, measure: str) -> list:
        return self._memo(f"tokens_{measure}", lambda: self._count_tokens(measure))

    def _texts_for(self, measure: str, tok) -> list[str | None]:
        if measure == "conversation":
            if getattr(tok, "chat_template", None):
                return self._chat_texts(tok)
            return ["\n".join(c) if ok else None for c, ok in zip(self.contents(), self.ok, strict=True)]
        want_assistant = measure == "completion"
        out = []
        for m, ok in zip(self.msgs, self.ok, strict=True):
            if not ok:
                out.append(None)
                continue
            out.append("\n".join(x["content"] for x in m if (x["role"] == "assistant") == want_assistant))
        return out

    def _chat_texts(self, tok) -> list[str | None]:
        """Render with the tokenizer's chat template: what the trainer feeds the model (special tokens included)."""
        good = [i for i, ok in enumerate(self.ok) if ok]
        out: list[str | None] = [None] * len(self.msgs)
        bs = self.token_batch_size
        for start in range(0, len(good), bs):
            idx = good[start : start + bs]
            try:
                texts = tok.apply_chat_template([self.msgs[i] for i in idx], tokenize=False)
            except Exception:  # a template may refuse some role order: render row by row, plain text on refusal
                texts = [self._render_one(tok, self.msgs[i]) for i in idx]
            for i, t in zip(idx, texts, strict=True):
                out[i] = t
        return out

    @staticmethod
    def _render_one(tok, msgs) -> str:
        try:
            return tok.apply_chat_template(msgs, tokenize=False)
        except Exception:  # the role_order rule reports the conversation itself
            return "\n".join(x["content"] for x in msgs)

    def _count_tokens(self, measure: str) -> list:
        if not self.tokenizer:
            raise StageError(
                f"{self.token_rules} count tokens with the base model's tokenizer, but no tokenizer was given "
                "(pass --tokenizer PATH, or set train.base_model)."
            )
        tok = load_tokenizer(self.tokenizer)
        texts = self._texts_for(measure, tok)
        present = [i for i, t in enumerate(texts) if t is not None]
        counts: list = [None] * len(texts)
        lens = PieceCounter(tok, self.token_batch_size).count([texts[i] for i in present])
        for i, n in zip(present, lens, strict=True):
            counts[i] = n
        return counts

    def json_problem(self, schema: dict[str, Any] | None) -> list:
        validator = None
        if schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = cls(schema)

        def check(text):
            if text is None:
                return "no_final_assistant_message"
            try:
                value = json.loads(text)
            except ValueError:
                return "not_json"
            if validator is not None:
                err = next(iter(validator.iter_errors(value)), None)
                if err is not None:
                    # The failing keyword and where, never the offending value (it may be text).
                    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                    return f"schema:{err.validator}@{path}"
            return None

        return [check(t) for t in self.final_assistant()]

    def residual_pii(self, entities: list[str] | None) -> list:
        """Per record: the PII kinds left in the messages the PII stage scans (comma-joined), or None."""
        roles = getattr(self.pii_cfg, "roles", None)
        per_row: list[list[str]] = []
        for m in self.msgs:
            items = m if isinstance(m, list) else []
            per_row.append(
                [
                    x["content"]
                    for x in items
                    if isinstance(x, dict)
                    and isinstance(x.get("content"), str)
                    and (roles is None or x.get("role") in roles)
                ]
            )
        flat = [t for texts in per_row for t in texts]
        t0 = time.perf_counter()
        kinds = iter(residual_pii(flat, entities, self.pii_cfg, desc="validate.pii", runner=self.runner))
        self.stats["residual_pii_s"] = round(time.perf_counter() - t0, 3)
        self.stats["residual_pii_texts"] = len(set(flat))
        out = []
        for texts in per_row:
            found = sorted({k for _ in texts for k in next(kinds)})
            out.append(",".join(found) or None)
        return out

    def text_problem(self, control_chars: bool, mojibake: bool) -> list:
        return [",".join(text_problems(t, control_chars, mojibake)) or None for t in self.full_text()]
