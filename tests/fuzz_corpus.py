"""A generated corpus of malformed input files for the fuzz tests (``tests/test_fuzz.py``).

Each :class:`Case` is one input file (or a directory / FIFO where a file should be) written by a Hypothesis
strategy, together with what the generator itself knows about it: how many rows it holds (counted while writing,
not by any reader loraflow uses) and whether a reader is allowed to refuse the whole source. Every text field
carries :data:`CANARY`, so a test can check that no quarantine detail quotes the raw input.
"""

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

CANARY = "Qzxcanary"  # planted in every generated text: must never appear in a quarantine detail

#: Kinds of input the corpus covers (RELIABILITY.md lists them).
KINDS = (
    "jsonl",
    "csv",
    "parquet",
    "empty",
    "whitespace_only",
    "directory",
    "fifo",
)


@dataclass
class Case:
    """One generated input.

    Attributes:
        kind: one of :data:`KINDS`.
        suffix: file name suffix (``.jsonl``, ``.csv``, ``.parquet``, or none for a directory / FIFO).
        data: the file's bytes (JSONL / CSV / empty files).
        table: the rows of a Parquet file (column → values) and its column types.
        rows: rows the generator wrote (JSONL: ``\\n``-separated lines; CSV: data records per the csv module;
            Parquet: table rows); None when the whole source must be refused.
        may_refuse: a reader may refuse the whole source with one clear error (StageError) instead of a ledger.
        line_kinds: what each JSONL line was generated as (for the corpus statistics).
    """

    kind: str
    suffix: str = ""
    data: bytes = b""
    table: dict | None = None
    rows: int | None = None
    may_refuse: bool = False
    line_kinds: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> Path:
        """Write the input under ``folder`` and return the path a user would pass."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"input{self.suffix}"
        if self.kind == "directory":
            path.mkdir()
            if self.table is not None:
                pq.write_table(pa.table(self.table), path / "part-0.parquet")
            else:
                (path / "notes.txt").write_bytes(self.data)
        elif self.kind == "fifo":
            os.mkfifo(path)
        elif self.kind == "parquet":
            pq.write_table(pa.table(self.table), path)
        else:
            path.write_bytes(self.data)
        return path


# --------------------------------------------------------------------------------------------- text

_words = st.sampled_from(
    ["card", "refund", "hello", "naïve", "café", "日本語", "Zürich", "€5", "\t", "emoji🙂", '"quoted"', "a,b", "x;y"]
)


@st.composite
def texts(draw, min_words: int = 1) -> str:
    """A short text with the canary in it (unicode, quotes, delimiters, tabs)."""
    words = draw(st.lists(_words, min_size=min_words, max_size=6))
    pos = draw(st.integers(0, len(words)))
    return " ".join([*words[:pos], CANARY, *words[pos:]])


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False), texts())
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8,
)


# --------------------------------------------------------------------------------------------- JSONL lines


@st.composite
def good_object(draw) -> dict:
    """A well-formed record in one of the three accepted shapes (extra keys sometimes)."""
    shape = draw(st.sampled_from(["chat", "alpaca", "prompt_completion"]))
    if shape == "chat":
        msgs = [{"role": "user", "content": draw(texts())}, {"role": "assistant", "content": draw(texts())}]
        if draw(st.booleans()):
            msgs.insert(0, {"role": "system", "content": draw(texts())})
        obj: dict = {"messages": msgs}
    elif shape == "alpaca":
        obj = {"instruction": draw(texts()), "input": draw(texts()), "output": draw(texts())}
    else:
        obj = {"prompt": draw(texts()), "completion": draw(texts())}
    if draw(st.booleans()):
        obj["extra_" + draw(st.sampled_from(["a", "meta", "id"]))] = draw(json_values)
    return obj


_FIELDS = ("messages", "instruction", "input", "output", "prompt", "completion", "role", "content", "created_at")


@st.composite
def wrong_types(draw) -> dict:
    """A record with a wrong-typed value in one field (messages, role, content, alpaca / prompt fields)."""
    obj = draw(good_object())
    target = draw(st.sampled_from(_FIELDS))
    bad = draw(json_values.filter(lambda v: not isinstance(v, str)))
    if target in ("role", "content") and "messages" in obj:
        i = draw(st.integers(0, len(obj["messages"]) - 1))
        obj["messages"][i][target] = bad
    elif target in ("role", "content"):
        obj["messages"] = [{"role": "user", target: bad}]
    else:
        obj[target] = bad
    return obj


def _dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


_LINE_KINDS = (
    "good",
    "truncated",
    "concatenated",
    "invalid_utf8",
    "bom",
    "nul_byte",
    "lone_cr",
    "deep_nesting",
    "wrong_types",
    "missing_fields",
    "duplicated_keys",
    "not_an_object",
    "blank",
    "whitespace",
    "lone_surrogate",
    "mixed_encoding",
)


@st.composite
def jsonl_line(draw) -> tuple[str, bytes]:
    """One line (without its line break) and the kind of malformation it carries."""
    kind = draw(st.sampled_from(_LINE_KINDS))
    good = _dumps(draw(good_object()))
    if kind == "good":
        line = good
    elif kind == "truncated":
        line = good[: draw(st.integers(1, len(good) - 1))]
    elif kind == "concatenated":
        line = good + draw(st.sampled_from([b"", b" ", b","])) + _dumps(draw(good_object()))
    elif kind == "invalid_utf8":
        at = draw(st.integers(0, len(good)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80\x80"]))
        line = good[:at] + junk + good[at:]
    elif kind == "bom":
        line = b"\xef\xbb\xbf" + good
    elif kind == "nul_byte":
        at = draw(st.integers(0, len(good)))
        line = good[:at] + b"\x00" + good[at:]
    elif kind == "lone_cr":
        at = draw(st.integers(0, len(good)))
        line = good[:at] + b"\r" + good[at:]
    elif kind == "deep_nesting":
        depth = draw(st.sampled_from([50, 2_000, 200_000]))
        inner = b"[" * depth + b"]" * depth
        line = b'{"messages": ' + inner + b"}" if draw(st.booleans()) else inner
    elif kind == "wrong_types":
        line = _dumps(draw(wrong_types()))
    elif kind == "missing_fields":
        obj = draw(good_object())
        obj.pop(draw(st.sampled_from(sorted(obj))))
        line = _dumps(obj)
    elif kind == "duplicated_keys":
        key = draw(st.sampled_from(_FIELDS))
        line = good[:-1] + b", " + json.dumps(key).encode() + b": " + _dumps(draw(json_values)) + b"}"
    elif kind == "not_an_object":
        line = _dumps(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    elif kind == "blank":
        line = b""
    elif kind == "whitespace":
        line = draw(st.sampled_from([b" ", b"\t", b" \t ", b"\r", b"\x0c", b"\x0b", b"\xc2\xa0"]))
    elif kind == "lone_surrogate":
        line = good.replace(CANARY.encode(), CANARY.encode() + b"\\ud800", 1)
    else:  # mixed_encoding: the same record in Latin-1 (or cp1252) instead of UTF-8
        line = json.dumps(json.loads(good), ensure_ascii=False).encode("latin-1", errors="replace")
    return kind, line


@st.composite
def jsonl_file(draw) -> Case:
    lines = draw(st.lists(jsonl_line(), min_size=1, max_size=8))
    sep = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = sep.join(line for _, line in lines)
    if draw(st.booleans()):
        body += sep
    if draw(st.integers(0, 9)) == 0:
        body = b"\xef\xbb\xbf" + body  # a BOM at the start of the file
    kinds = [k for k, _ in lines]
    # A file of blank / whitespace lines only may be refused as a whole ("no records").
    only_blank = not body.strip(b" \t\r\n\x0c\x0b\xef\xbb\xbf")
    return Case("jsonl", ".jsonl", body, rows=jsonl_rows(body), may_refuse=only_blank, line_kinds=kinds)


def jsonl_rows(data: bytes) -> int:
    """Lines of a JSON Lines file by its definition: ``\\n``-terminated, a last line without one counts."""
    return data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)


# --------------------------------------------------------------------------------------------- CSV


@st.composite
def csv_file(draw) -> Case:
    """A CSV with header and cell problems: missing / extra / duplicated columns, quoting and delimiter errors,
    multi-line cells, blank rows, BOM, mixed encodings."""
    header = draw(
        st.sampled_from(
            [["text", "label"], ["text", "label", "extra"], ["label", "text"], ["text", "text", "label"], ["text"],
             ["ticket", "label"], ["text", "label", ""]]
        )
    )  # fmt: skip
    delim = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    n = draw(st.integers(0, 6))
    rows = []
    for _ in range(n):
        width = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        rows.append([draw(texts()) if draw(st.integers(0, 5)) else "" for _ in range(max(width, 0))])
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delim, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue()
    problem = draw(st.sampled_from(["none", "none", "stray_quote", "unclosed_quote", "newline_in_cell", "blank"]))
    if problem == "stray_quote" and rows:
        text = text.replace(CANARY, f'{CANARY}"', 1)
    elif problem == "unclosed_quote" and rows:
        text = text.replace(CANARY, f'"{CANARY}', 1)
    elif problem == "newline_in_cell" and rows:
        text = text.replace(CANARY, f'"{CANARY}\nsecond line"', 1)
    elif problem == "blank":
        text += "\n\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "mixed"]))
    if encoding == "mixed":
        half = len(text) // 2
        data = text[:half].encode("utf-8") + text[half:].encode("latin-1", errors="replace")
    else:
        data = text.encode(encoding, errors="replace")
    try:
        decoded = data.decode("utf-8-sig")
        records = list(csv.reader(io.StringIO(decoded, newline=""), delimiter=","))
        count = max(len(records) - 1, 0)
    except (UnicodeDecodeError, csv.Error):
        count = None
    # A table that cannot be parsed, lacks the text / label column or is not UTF-8 is refused as a whole.
    return Case("csv", ".csv", data, rows=count, may_refuse=True)


# --------------------------------------------------------------------------------------------- Parquet

_PARQUET_SCHEMAS = {
    "good": {"text": pa.string(), "label": pa.string()},
    "int_text": {"text": pa.int64(), "label": pa.string()},
    "null_label": {"text": pa.string(), "label": pa.string()},
    "binary_text": {"text": pa.binary(), "label": pa.string()},
    "struct_label": {"text": pa.string(), "label": pa.struct([("a", pa.string())])},
    "no_label": {"text": pa.string()},
    "wrong_names": {"ticket": pa.string(), "queue": pa.string()},
    "list_text": {"text": pa.list_(pa.string()), "label": pa.string()},
}


@st.composite
def parquet_file(draw) -> Case:
    name = draw(st.sampled_from(sorted(_PARQUET_SCHEMAS)))
    schema = _PARQUET_SCHEMAS[name]
    n = draw(st.integers(0, 5))
    cols: dict = {}
    for col, typ in schema.items():
        vals: list = []
        for _ in range(n):
            t = draw(texts())
            if name == "null_label" and col == "label" and draw(st.booleans()):
                vals.append(None)
            elif typ == pa.int64():
                vals.append(draw(st.integers(-5, 5)))
            elif typ == pa.binary():
                vals.append(t.encode())
            elif isinstance(typ, pa.StructType):
                vals.append({"a": t})
            elif isinstance(typ, pa.ListType):
                vals.append([t])
            else:
                vals.append(t)
        cols[col] = pa.array(vals, type=typ)
    return Case("parquet", ".parquet", table=cols, rows=n, may_refuse=name in ("no_label", "wrong_names"))


# --------------------------------------------------------------------------------------------- the rest


@st.composite
def special_file(draw) -> Case:
    kind = draw(st.sampled_from(["empty", "whitespace_only", "directory", "directory", "fifo"]))
    suffix = draw(st.sampled_from([".jsonl", ".csv", ".parquet"])) if kind in ("empty", "whitespace_only") else ""
    if kind == "whitespace_only":
        data = draw(st.sampled_from([b" ", b"\n\n\n", b"\r\n \r\n", b"\t\n", b"\xef\xbb\xbf\n"]))
        return Case(kind, suffix, data, may_refuse=True)
    if kind == "directory":
        table = None
        if draw(st.booleans()):  # a folder of Parquet that is not loraflow records
            table = {"text": pa.array([draw(texts())]), "label": pa.array(["x"])}
        return Case(kind, "", draw(texts()).encode(), table=table, may_refuse=True)
    return Case(kind, suffix, may_refuse=True)


def cases() -> st.SearchStrategy[Case]:
    """Every kind of malformed input, JSONL most often (its lines carry the most kinds of damage)."""
    return st.one_of(jsonl_file(), jsonl_file(), jsonl_file(), jsonl_file(), csv_file(), parquet_file(), special_file())
