"""The shipped demo data: reproducible byte for byte, and it holds what MANIFEST.json says it holds.

The checks re-derive every planted count from the committed files with independent parsing (json / csv /
regexes / Luhn / IBAN mod-97), so a generator change that silently drops a malformed line or a duplicate fails.
"""

import csv
import importlib.util
import io
import json
import re
import unicodedata
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO = EXAMPLES / "demo"
SYSTEM_PROMPT = (DEMO / "system_prompt.txt").read_text().strip()
LABELS = json.loads((DEMO / "labels.json").read_text())
MANIFEST = json.loads((DEMO / "MANIFEST.json").read_text())
OVERLONG_WORDS = 450  # > 600 tokens for any BPE tokenizer of English (~1.3 tokens a word)


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", EXAMPLES / "make_demo_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _shingles(text: str, k: int = 5) -> set[str]:
    t = _norm(text)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def _violation(text, label) -> bool:
    return (
        not isinstance(text, str)
        or not isinstance(label, str)
        or label == ""
        or label not in LABELS
        or len(text.split()) > OVERLONG_WORDS
    )


def _scan():
    """Per file: malformed line count, contract-violation count, and the clean (text, label) rows."""
    out = {}
    for name in ("tickets_chat.jsonl", "tickets_alpaca.jsonl"):
        malformed, violations, clean = 0, 0, []
        for raw in (DEMO / name).read_bytes().splitlines():
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                malformed += 1
                continue
            if not isinstance(rec, dict):
                malformed += 1
                continue
            if name == "tickets_chat.jsonl":
                msgs = rec["messages"]
                assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
                datetime.fromisoformat(rec["created_at"])
                if [m["role"] for m in msgs] != ["system", "user", "assistant"]:
                    violations += 1
                    continue
                text, label = msgs[1]["content"], msgs[2]["content"]
            else:
                assert set(rec) == {"instruction", "input", "output"} and rec["instruction"] == SYSTEM_PROMPT
                text, label = rec["input"], rec["output"]
            if _violation(text, label):
                violations += 1
            else:
                clean.append((text, label))
        out[name] = (malformed, violations, clean)
    rows = list(csv.DictReader(io.StringIO((DEMO / "tickets.csv").read_text(encoding="utf-8"))))
    assert list(rows[0]) == MANIFEST["csv_columns"] == ["ticket_text", "queue", "opened_at"]
    for row in rows:
        datetime.fromisoformat(row["opened_at"])
    clean = [(r["ticket_text"], r["queue"]) for r in rows if not _violation(r["ticket_text"], r["queue"])]
    out["tickets.csv"] = (0, len(rows) - len(clean), clean)
    return out


SCAN = _scan()
CLEAN = [row for _, _, clean in SCAN.values() for row in clean]


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path):
    gen = _load_generator()
    gen.write(tmp_path)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        p.relative_to(EXAMPLES).as_posix() for d in ("demo", "bad") for p in (EXAMPLES / d).iterdir()
    )
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (EXAMPLES / rel).read_bytes(), rel
    # and a different seed really changes the data (the comparison above can fail)
    other = gen.build(seed=1)["files"]["demo/tickets.csv"]
    assert other != (EXAMPLES / "demo/tickets.csv").read_bytes()


def test_sizes_and_labels():
    assert len(LABELS) >= 24 and sorted(set(LABELS)) == LABELS and MANIFEST["labels"] == len(LABELS)
    total = 0
    for name, (malformed, violations, clean) in SCAN.items():
        rows = malformed + violations + len(clean)
        if name.endswith(".jsonl"):  # one record a line, none skipped by the scan
            assert rows == len((DEMO / name).read_bytes().splitlines()), name
        assert rows == MANIFEST["files"][name]["rows"], name
        total += rows
    assert total == MANIFEST["totals"]["rows"] and 1300 <= total <= 1500
    assert len(CLEAN) == MANIFEST["totals"]["clean_rows"]
    assert {label for _, label in CLEAN} == set(LABELS)  # every category present, nothing else
    per_label = Counter(label for _, label in CLEAN)
    assert per_label == Counter(MANIFEST["clean_rows_per_label"]) and min(per_label.values()) >= 40
    assert sum((DEMO / f).stat().st_size for f in MANIFEST["files"]) < 1_000_000


def test_planted_malformed_lines_and_contract_violations():
    for name, (malformed, violations, _) in SCAN.items():
        assert malformed == MANIFEST["files"][name]["malformed"], name
        assert violations == MANIFEST["files"][name]["contract_violations"], name
    assert sum(m for m, _, _ in SCAN.values()) == MANIFEST["totals"]["malformed_lines"] >= 3
    assert MANIFEST["totals"]["contract_violations"] == sum(MANIFEST["contract_violations"].values())
    assert set(MANIFEST["contract_violations"]) == {
        "empty_assistant",
        "label_not_in_set",
        "ends_with_user_turn",
        "overlong_ticket",
        "non_string_content",
    }
    assert set(MANIFEST["malformed"]) == {"truncated_json", "not_an_object", "invalid_utf8"}


def test_exact_near_duplicates_and_conflicts():
    by_text = defaultdict(set)
    for text, label in CLEAN:
        by_text[_norm(text)].add(label)
    conflicts = sum(1 for labels in by_text.values() if len(labels) > 1)
    assert conflicts == MANIFEST["totals"]["conflicting_targets"] >= 3
    distinct = {(_norm(t), label) for t, label in CLEAN}
    assert len(CLEAN) - len(distinct) == MANIFEST["totals"]["exact_duplicates"]
    raw_identical = len(CLEAN) - len(set(CLEAN))
    assert raw_identical == MANIFEST["duplicates"]["exact_duplicates_identical"]  # the rest differ in case/space
    # near duplicates: clusters of distinct normalised texts (same label) at char-5-gram Jaccard >= 0.75
    near = 0
    for label in LABELS:
        texts = sorted({t for t, lab in distinct if lab == label})
        sh = [_shingles(t) for t in texts]
        parent = list(range(len(texts)))

        def find(i, parent=parent):
            while parent[i] != i:
                i = parent[i]
            return i

        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if len(sh[i] & sh[j]) / len(sh[i] | sh[j]) >= 0.75:
                    parent[find(j)] = find(i)
        near += len(texts) - len({find(i) for i in range(len(texts))})
    assert near == MANIFEST["totals"]["near_duplicates"] >= 50


def test_pii_is_planted_and_realistic():
    gen = _load_generator()
    iban_re = re.compile(r"\b[A-Z]{2}\d{2}(?: [A-Z0-9]{1,4}){3,8}\b", re.IGNORECASE)  # some tickets are lower-case
    ibans = [m.group(0) for t, _ in CLEAN for m in iban_re.finditer(t)]
    assert len(ibans) >= 20 and all(gen.iban_ok(i) for i in ibans)
    card_re = re.compile(r"\b(?:\d[ -]?){13,16}\b")
    cards = [m.group(0) for t, _ in CLEAN for m in card_re.finditer(iban_re.sub("", t))]
    assert len(cards) >= 20 and all(gen.luhn_ok(c) for c in cards)
    emails = sum(1 for t, _ in CLEAN if re.search(r"[\w.]+@[\w.]+\.\w+", t))
    assert emails >= 50
    share = MANIFEST["pii"]["clean_rows_with_pii"] / MANIFEST["totals"]["clean_rows"]
    assert 0.25 <= share <= 0.35
    assert len(MANIFEST["pii"]["entities_in_unique_rows"]) >= 6
    # what an allow-list / the scrubber must keep
    assert sum(1 for t, _ in CLEAN if "Fernbank" in t) >= 200
    assert sum(1 for t, _ in CLEAN if re.search(r"ORD-\d{5}", t)) >= 10


def test_feedback_seed():
    rows = [json.loads(line) for line in (DEMO / "feedback_seed.jsonl").read_text().splitlines()]
    fb = MANIFEST["feedback_seed"]
    assert len(rows) == fb["rows"] >= 250
    stamps = [r["created_at"] for r in rows]
    assert stamps == sorted(stamps) and stamps[0] >= "2026-07-01" and stamps[-1] < "2026-11-01"
    assert Counter(s[:7] for s in stamps) == Counter(fb["by_month"]) and len(fb["by_month"]) == 4
    for r in rows:
        assert set(r) == {
            "request_messages",
            "model_version",
            "response",
            "rating",
            "corrected_response",
            "flag_reason",
            "created_at",
        }
        assert [m["role"] for m in r["request_messages"]] == ["system", "user"]
        assert r["request_messages"][0]["content"] == SYSTEM_PROMPT and r["model_version"] == "3"
        assert r["rating"] in (1, 2, 3, 4, 5, "up", "down")
        assert r["corrected_response"] is None or r["corrected_response"] in LABELS
        assert r["flag_reason"] in (None, "pii", "offensive", "wrong_category")
    assert sum(r["corrected_response"] is not None for r in rows) == fb["corrected"] > 0
    assert Counter(r["flag_reason"] for r in rows if r["flag_reason"]) == Counter(fb["flagged"])
    assert sum(r["response"] not in LABELS for r in rows) == fb["kinds"]["hallucinated"]


@pytest.mark.parametrize("name", ["truncated.jsonl", "empty.jsonl", "wrong_column.csv"])
def test_bad_inputs(name):
    data = (EXAMPLES / "bad" / name).read_bytes()
    if name == "empty.jsonl":
        assert data == b""
    elif name == "truncated.jsonl":
        failures = []
        for i, line in enumerate(data.splitlines(), 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                failures.append(i)
        assert failures == [3] and len(data.splitlines()) == 4
    else:
        header = data.decode().splitlines()[0].split(",")
        assert "ticket_text" not in header and "ticket_txt" in header
