import json

import pandas as pd
import pytest

from tasks.core import StageError
from tasks.ingest import ColumnMap, IngestConfig, SourceConfig, ingest, load_file


def _write(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def test_three_formats_become_the_same_canonical_record(tmp_path):
    chat = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Route it."},
                        {"role": "user", "content": "My card is lost"},
                        {"role": "assistant", "content": "card_lost"},
                    ]
                }
            )
        ],
    )
    alpaca = _write(
        tmp_path / "a.jsonl",
        [json.dumps({"instruction": "Route it.", "input": "My card is lost", "output": "card_lost"})],
    )
    csv = tmp_path / "t.csv"
    pd.DataFrame({"ticket": ["My card is lost"], "queue": ["card_lost"]}).to_csv(csv, index=False)
    ids = set()
    for src in (
        SourceConfig(path=str(chat)),
        SourceConfig(path=str(alpaca)),
        SourceConfig(path=str(csv), columns=ColumnMap(text="ticket", label="queue"), system_prompt="Route it."),
    ):
        _, out = ingest(IngestConfig(sources=[src]))
        assert len(out.kept) == 1 and len(out.quarantined) == 0
        ids.add(out.kept["id"].iloc[0])
        assert [m["role"] for m in out.kept["messages"].iloc[0]] == ["system", "user", "assistant"]
    assert len(ids) == 1  # same content, same id, whichever format it came in


def test_prompt_completion_format(tmp_path):
    f = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "2+2?", "completion": "4"})])
    out = load_file(f)
    assert out.kept["messages"].iloc[0] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_bad_lines_are_quarantined_with_file_and_line_and_no_text(tmp_path):
    good = json.dumps({"prompt": "hello Jane Roe", "completion": "x"})
    f = _write(
        tmp_path / "mixed.jsonl",
        [
            good,
            '{"prompt": "secret jane.roe@example.com", "compl',  # truncated
            b'{"prompt": "\xff\xfe bad bytes", "completion": "x"}',  # invalid UTF-8
            "[1, 2, 3]",  # not an object
            json.dumps({"messages": [{"role": "user", "content": {"nested": 1}}]}),  # non-string content
            json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
            "",
        ],
    )
    rows_in, out = ingest(IngestConfig(sources=[SourceConfig(path=str(f))]))
    assert rows_in == 7 and len(out.kept) == 1  # every line of the file, the blank one included
    q = out.quarantined.set_index("reason")
    assert sorted(q.index) == [
        "bad_role", "blank_line", "invalid_utf8", "malformed_json", "non_string_content", "not_an_object"
    ]  # fmt: skip
    detail = json.loads(q.loc["malformed_json", "detail"])
    assert detail["line"] == 2 and detail["file"].endswith("mixed.jsonl")
    assert "jane.roe" not in out.quarantined.to_json()  # nothing of the raw text survives in quarantine
    assert q["record"].isna().all()


def test_empty_file_and_wrong_column_stop_with_a_readable_message(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(StageError, match=r"empty\.jsonl is empty"):
        ingest(IngestConfig(sources=[SourceConfig(path=str(empty))]))
    csv = tmp_path / "wrong.csv"
    pd.DataFrame({"tikcet_text": ["a"], "queue": ["b"]}).to_csv(csv, index=False)
    with pytest.raises(StageError, match=r"wrong\.csv has no column 'ticket_text'.*tikcet_text"):
        load_file(csv, columns=ColumnMap(text="ticket_text", label="queue"))
    with pytest.raises(StageError, match="does not exist"):
        load_file(tmp_path / "missing.jsonl")


def test_test_source_marks_rows_and_records_folder_is_read(tmp_path):
    from tasks.core import write_records

    f = _write(tmp_path / "t.jsonl", [json.dumps({"prompt": "a", "completion": "b"})])
    _, out = ingest(IngestConfig(sources=[SourceConfig(path=str(f), split="test")]))
    assert out.kept["meta"].iloc[0]["split"] == "test"
    part = tmp_path / "fb" / "date=2026-07-01"
    write_records(out.kept, part / "part.parquet")
    (part / "part.quarantine.parquet").write_bytes(b"ignored by the glob")
    src = SourceConfig(path=str(tmp_path / "fb"), format="records", glob="date=*/part.parquet", name="feedback")
    _, fb = ingest(IngestConfig(sources=[src]))
    assert len(fb.kept) == 1 and fb.kept["messages"].iloc[0][0]["content"] == "a"


def test_rows_in_counts_the_file_blank_lines_and_rows_past_max_rows(tmp_path):
    lines = [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(5)]
    f = _write(tmp_path / "five.jsonl", [lines[0], "", lines[1], "   ", *lines[2:]])
    rows_in, out = ingest(IngestConfig(sources=[SourceConfig(path=str(f), max_rows=2)]))
    assert rows_in == 7 and len(out.kept) == 2
    assert out.quarantined["reason"].tolist() == ["blank_line"] + ["past_max_rows"] * 4  # the cap comes first
    assert [json.loads(d)["line"] for d in out.quarantined["detail"]] == [2, 4, 5, 6, 7]
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\na,b\n\nc,d\ne,f\n")
    rows_in, out = ingest(IngestConfig(sources=[SourceConfig(path=str(csv), max_rows=3)]))
    assert rows_in == 4 and len(out.kept) == 2
    assert sorted(out.quarantined["reason"]) == ["blank_line", "past_max_rows"]


def test_ids_are_keyed_by_the_project_secret_and_records_keep_theirs(tmp_path, monkeypatch):
    from tasks.core import write_records
    from tasks.identity import SECRET_FILE, keyed_record_id, project_key

    f = _write(tmp_path / "t.jsonl", [json.dumps({"prompt": "My card is lost", "completion": "card_lost"})])
    ids = {}
    for home in ("h1", "h2"):
        monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / home))
        ids[home] = ingest(IngestConfig(sources=[SourceConfig(path=str(f))]))[1].kept["id"].iloc[0]
        assert ingest(IngestConfig(sources=[SourceConfig(path=str(f))]))[1].kept["id"].iloc[0] == ids[home]
        secret = tmp_path / home / SECRET_FILE
        assert secret.stat().st_mode & 0o777 == 0o600
        assert secret.read_bytes().strip() not in ids[home].encode()
    assert ids["h1"] != ids["h2"]  # another project's key gives other ids
    msgs = [{"role": "user", "content": "my  CARD is lost"}, {"role": "assistant", "content": "card_lost"}]
    assert keyed_record_id(msgs, project_key()) == ids["h2"]  # normalised raw content
    kept = ingest(IngestConfig(sources=[SourceConfig(path=str(f))]))[1].kept
    scrubbed = [{"role": "user", "content": "scrubbed <PERSON>"}, msgs[1]]
    kept = kept.assign(messages=pd.Series([scrubbed], index=kept.index, dtype=object))
    write_records(kept, tmp_path / "fb" / "date=2026-07-01" / "part.parquet")
    src = SourceConfig(path=str(tmp_path / "fb"), format="records", glob="date=*/part.parquet")
    assert ingest(IngestConfig(sources=[src]))[1].kept["id"].iloc[0] == ids["h2"]  # the id from the raw text
