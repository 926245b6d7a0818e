"""Record identity is fixed at ingest: PII settings never change an id or a split assignment."""

import json

from tasks.core import read_records, write_records
from tasks.ingest import IngestConfig, SourceConfig, ingest
from tasks.pii import PiiConfig, scrub
from tasks.split import SplitConfig, assign_splits

TICKETS = [
    "Hi, I am Eleanor Whitfield and my card was stolen yesterday, please block it.",
    "Please email me at quillon.vantreese.7731@example.org about the refund that never arrived.",
    "Call me on +44 20 7946 0321, my transfer has been pending for three days.",
    "What is the fee for a transfer to Spain?",
    "My name is Zebulon Quackenbush and I want to close my account.",
]


def test_two_pii_configs_give_identical_ids_and_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))
    src = tmp_path / "t.jsonl"
    lines = [json.dumps({"prompt": t, "completion": f"label{i % 2}"}) for i, t in enumerate(TICKETS * 8)]
    lines += [json.dumps({"prompt": f"ticket number {i} about my card", "completion": "card"}) for i in range(60)]
    src.write_text("\n".join(lines) + "\n")
    _, raw = ingest(IngestConfig(sources=[SourceConfig(path=str(src))]))
    ids = raw.kept["id"].tolist()
    placeholders = scrub(raw.kept, PiiConfig())
    hashed = scrub(raw.kept, PiiConfig(default_operator="hash", entities=["PERSON", "EMAIL_ADDRESS"]))
    texts = [json.dumps(m) for m in placeholders.kept["messages"]] + [json.dumps(m) for m in hashed.kept["messages"]]
    assert not any("Whitfield" in t or "quillon" in t for t in texts)  # both really scrubbed...
    assert placeholders.kept["messages"].tolist() != hashed.kept["messages"].tolist()  # ...differently
    assert placeholders.kept["id"].tolist() == hashed.kept["id"].tolist() == ids  # the ids did not move
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.2)
    a = assign_splits(read_records(write_records(placeholders.kept, tmp_path / "a.parquet")), cfg)
    b = assign_splits(read_records(write_records(hashed.kept, tmp_path / "b.parquet")), cfg)
    assert a.tolist() == b.tolist() and set(a) == {"train", "val", "test"}
