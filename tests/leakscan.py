"""A canary scan that reads every file through its format, not as raw bytes.

A raw ``grep`` cannot see a leak inside a snappy-compressed Parquet page, a SQLite page or an escaped JSON
string. :func:`scan_tree` decodes each file under a folder: Parquet (every value of every column, nested ones
included), SQLite databases (every text and blob cell of every table, e.g. Prefect's and MLflow's), JSON and
JSON Lines (every string after parsing), and any other file as UTF-8 / UTF-16 text plus its raw bytes. It also
scans plain strings (console output). A needle matches case-insensitively, and with its whitespace removed
(``4539 5781`` is also found as ``45395781``).
"""

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

_SQLITE_MAGIC = b"SQLite format 3\x00"
_PARQUET_MAGIC = b"PAR1"
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".pyc")  # tensors: numbers, not text


def _forms(needle: str) -> list[str]:
    low = needle.casefold()
    return sorted({low, "".join(low.split())})


def _strings(value) -> Iterator[str]:
    """Every string inside a decoded value (dicts, lists, bytes as UTF-8)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("utf-8", errors="ignore")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _parquet(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield " ".join(table.schema.names)
    for col in table.columns:
        for v in col.to_pylist():
            yield from _strings(v)
            if isinstance(v, str) and v[:1] in "[{":  # JSON columns (messages, meta, detail)
                with contextlib.suppress(ValueError):
                    yield from _strings(json.loads(v))


def _sqlite(path: Path) -> Iterator[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            for row in con.execute(f'SELECT * FROM "{t}"'):  # noqa: S608 - table names come from the database
                for v in row:
                    yield from _strings(v)
                    if isinstance(v, str) and v[:1] in "[{":
                        with contextlib.suppress(ValueError):
                            yield from _strings(json.loads(v))
    finally:
        con.close()


def _json(data: bytes) -> Iterator[str]:
    text = data.decode("utf-8", errors="ignore")
    try:
        yield from _strings(json.loads(text))
        return
    except ValueError:
        pass
    for line in text.splitlines():  # JSON Lines
        try:
            yield from _strings(json.loads(line))
        except ValueError:
            yield line


def decoded_texts(path: Path) -> Iterator[str]:
    """The texts a file holds, read through its format (see the module docstring)."""
    data = path.read_bytes()
    if data.startswith(_SQLITE_MAGIC):
        yield from _sqlite(path)
    elif data.startswith(_PARQUET_MAGIC):
        yield from _parquet(path)
    elif path.suffix in (".json", ".jsonl"):
        yield from _json(data)
    yield data.decode("utf-8", errors="ignore")
    yield data.decode("utf-16-le", errors="ignore")
    yield data.decode("latin-1")


def scan_texts(texts: Iterable[str], needles: Iterable[str]) -> set[str]:
    """The needles found in any of ``texts``."""
    forms = {n: _forms(n) for n in needles}
    found: set[str] = set()
    for text in texts:
        low = text.casefold()
        squeezed = None
        for n, fs in forms.items():
            if n in found:
                continue
            if fs[0] in low:
                found.add(n)
            elif len(fs) > 1:
                squeezed = squeezed if squeezed is not None else "".join(low.split())
                if fs[1] in squeezed:
                    found.add(n)
    return found


def scan_tree(root: Path, needles: Iterable[str]) -> dict[str, list[str]]:
    """``{needle: [files holding it]}`` over every file under ``root`` (empty: nothing found).

    Also returns how many files were read, by kind, under the key ``"__files__"`` (for the report).
    """
    needles = list(needles)
    hits: dict[str, list[str]] = {}
    kinds: dict[str, int] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        head = p.read_bytes()[:16]
        kind = (
            "sqlite"
            if head.startswith(_SQLITE_MAGIC)
            else "parquet"
            if head.startswith(_PARQUET_MAGIC)
            else (p.suffix.lstrip(".") or "other")
        )
        kinds[kind] = kinds.get(kind, 0) + 1
        if p.suffix in _SKIP_SUFFIXES:
            texts: Iterable[str] = [p.read_bytes().decode("latin-1")]
        else:
            texts = decoded_texts(p)
        for n in scan_texts(texts, needles):
            hits.setdefault(n, []).append(str(p.relative_to(root)))
    hits["__files__"] = [f"{k}={v}" for k, v in sorted(kinds.items())]
    return hits
