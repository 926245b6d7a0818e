"""PII stage: expected-output tests with negative cases.

One engine is built for the whole module (``engine`` fixture: spaCy + Presidio load once, ~5 s); every test
reuses it through :func:`tasks.pii.get_engine`'s cache.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks.core import finish_stage, read_records, record_id, write_records
from tasks.pii import PiiConfig, detect_spans, find_leaks, get_engine, scrub, scrub_with_spans

REPO = Path(__file__).resolve().parents[1]
CFG = PiiConfig(allow_list=["Fernbank", "FernPay"])

NAME = "Eleanor Whitfield"
EMAIL = "quillon.vantreese.7731@example.org"
PHONE = "+44 20 7946 0321"
CARD = "4539 5781 2468 1347"
IBAN = "GB33BUKB20201555555555"
RAW_VALUES = [NAME, EMAIL, PHONE, CARD, IBAN, "Whitfield"]


@pytest.fixture(scope="module")
def engine():
    return get_engine(CFG)


def rec(*turns: tuple[str, object], **extra) -> dict:
    msgs = [{"role": r, "content": c} for r, c in turns]
    return {"id": extra.get("id") or record_id([{"role": r, "content": str(c)} for r, c in turns]),
            "messages": msgs, "source": "test", "created_at": "", "meta": {}}  # fmt: skip


def frame(*records: dict) -> pd.DataFrame:
    return pd.DataFrame(list(records))


def texts_of(outcome) -> list[str]:
    return [m["content"] for msgs in outcome.kept["messages"] for m in msgs]


# --------------------------------------------------------------------------------------------- detection


def test_detects_the_core_types_with_exact_offsets(engine):
    text = f"Hi, I am {NAME}. Mail {EMAIL}, call {PHONE}, card {CARD}, IBAN {IBAN}, from 10.20.30.40."
    spans = detect_spans([text], CFG)[0]
    found = {text[s.start : s.end]: s.entity_type for s in spans}
    assert found[NAME] == "PERSON"
    assert found[EMAIL] == "EMAIL_ADDRESS"
    assert found[PHONE] == "PHONE_NUMBER"
    assert found[CARD] == "CREDIT_CARD"
    assert found[IBAN] == "IBAN_CODE"
    assert found["10.20.30.40"] == "IP_ADDRESS"
    assert [s.start for s in spans] == sorted(s.start for s in spans)  # reading order, no overlaps
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_street_addresses_dates_of_birth_and_ages(engine):
    texts = [
        "Please send the new card to 3784 Archwood Avenue Apt. 12, Springfield.",
        "My address is 22829 Jagerij 64, Mazée, Belgium 65260",
        "I was born on 7/14/1995 and I am 29 years old.",
    ]
    spans = detect_spans(texts, CFG)
    got = [{(t[s.start : s.end], s.entity_type) for s in sp} for t, sp in zip(texts, spans, strict=True)]
    assert any(v.startswith("3784 Archwood Avenue Apt. 12") and e == "STREET_ADDRESS" for v, e in got[0])
    assert any(v.startswith("22829 Jagerij 64") and "65260" in v for v, _ in got[1])
    assert ("7/14/1995", "DATE_OF_BIRTH") in got[2] and ("29", "AGE") in got[2]


def test_non_pii_numbers_and_transaction_dates_are_kept(engine):
    texts = [
        "Order ORD-92806 (order #48213) was charged $1,250.00 on 2024-03-01 and again on 11/03/2026.",
        "I have been a customer for 3 years; my order id is 123456789 and the refund was 907.50 THB.",
        "Transfer of 494.50 GBP pending since 2026-06-20, reference 88812, 2 items, card ending 1347.",
    ]
    assert detect_spans(texts, CFG) == [[], [], []]


def test_allow_listed_brands_survive_but_people_next_to_them_do_not(engine):
    text = "Dear Fernbank, my Fernbank Savings Pot and FernPay are broken. Lukas Bianchi"
    spans = detect_spans([text], CFG)[0]
    values = [text[s.start : s.end] for s in spans]
    assert not any("Fernbank" in v or "FernPay" in v for v in values)
    assert "Lukas Bianchi" in values
    # Without the allow list the brand is an organisation like any other (the negative case).
    assert any("Fernbank" in text[s.start : s.end] for s in detect_spans([text], PiiConfig())[0])


def test_deny_list_file_keeps_names_out_of_the_config(tmp_path):
    f = tmp_path / "deny.yaml"
    f.write_text("PERSON: [Quillon]\nPROJECT: [Bluebird]\n")
    cfg = PiiConfig(deny_list_file=str(f))
    text = "quillon leads project bluebird"
    spans = detect_spans([text], cfg)[0]
    assert [(text[s.start : s.end], s.entity_type) for s in spans] == [("quillon", "PERSON"), ("bluebird", "PROJECT")]
    assert "Quillon" not in cfg.model_dump_json()


def test_deny_list_and_per_type_thresholds():
    text = "quillon wrote from Madrid"
    spans = detect_spans([text], PiiConfig(deny_list={"PERSON": ["Quillon"]}))[0]
    assert [(text[s.start : s.end], s.entity_type) for s in spans] == [("quillon", "PERSON"), ("Madrid", "LOCATION")]
    spans = detect_spans([text], PiiConfig(score_thresholds={"LOCATION": 0.9}))[0]
    assert spans == []


def test_one_megabyte_message_is_chunked_with_right_offsets(engine):
    """A 1 MB message (an attachment pasted into a ticket: base64 lines plus prose with PII) is analysed in
    100 kB chunks; every planted value is found at its exact offset, including one across a chunk border."""
    rnd = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    targets = [99_700] + list(range(150_000, 1_000_000, 120_000))  # the first sits on the 100 kB border
    parts, planted, n = [], [], 0
    while n < 1_000_000:
        if targets and n >= targets[0]:
            targets.pop(0)
            email = f"planted.person{len(planted)}@example.org"
            sentence = f"\nPlease reply to {email} today.\n"
            planted.append((n + sentence.index(email), email))
            parts.append(sentence)
            n += len(sentence)
        line = "".join(rnd.choice(alphabet) for _ in range(76)) + "\n"
        parts.append(line)
        n += len(line)
    text = "".join(parts)
    assert len(text) >= 1_000_000 and len(planted) >= 8
    assert any(99_000 < off < 100_500 for off, _ in planted)  # straddles the first chunk border's overlap
    spans = detect_spans([text], CFG)[0]
    emails = [(s.start, text[s.start : s.end]) for s in spans if s.entity_type == "EMAIL_ADDRESS"]
    assert emails == planted
    assert all(0 <= s.start < s.end <= len(text) for s in spans)


@pytest.mark.slow
def test_one_megabyte_of_prose(engine):
    filler = "the customer wrote again about the invoice and the delivery that never arrived. "
    chunks = [filler * 60 + f"Write to prose{i}@example.org please. " for i in range(210)]
    text = "".join(chunks)
    assert len(text) > 1_000_000
    spans = detect_spans([text], CFG)[0]
    found = {text[s.start : s.end] for s in spans if s.entity_type == "EMAIL_ADDRESS"}
    assert found == {f"prose{i}@example.org" for i in range(210)}


# --------------------------------------------------------------------------------------------- scrubbing


def test_pseudonyms_are_consistent_across_turns_and_numbered_in_reading_order(engine):
    r = rec(
        ("system", "You are the Fernbank support assistant."),
        ("user", f"Hi, I am {NAME}. My colleague Tomasz Nowak gets a copy at {EMAIL}."),
        ("assistant", f"Thanks {NAME}, I have written to {EMAIL}. Eleanor, is Tomasz Nowak cc'd?"),
    )
    out = scrub(frame(r), CFG)
    msgs = out.kept.iloc[0]["messages"]
    assert msgs[0]["content"] == "You are the Fernbank support assistant."
    assert msgs[1]["content"] == ("Hi, I am <PERSON_1>. My colleague <PERSON_2> gets a copy at <EMAIL_ADDRESS_1>.")
    assert msgs[2]["content"] == (
        "Thanks <PERSON_1>, I have written to <EMAIL_ADDRESS_1>. <PERSON_1>, is <PERSON_2> cc'd?"
    )
    # A second record numbers from 1 again: pseudonyms are per conversation, not global.
    two = scrub(frame(r, rec(("user", "I am Maria Lopez."))), CFG)
    assert two.kept.iloc[1]["messages"][0]["content"] == "I am <PERSON_1>."


def test_operators_placeholder_hash_mask(engine, monkeypatch):
    monkeypatch.setenv("LORAFLOW_PII_SALT", "a-test-salt-of-at-least-16")
    r = rec(("user", f"I am {NAME}, mail {EMAIL}, phone {PHONE}."), ("assistant", f"Noted, {NAME}."))
    cfg = CFG.model_copy(update={"operators": {"PERSON": "hash", "EMAIL_ADDRESS": "placeholder",
                                               "PHONE_NUMBER": "mask"}})  # fmt: skip
    msgs = scrub(frame(r), cfg).kept.iloc[0]["messages"]
    user, assistant = msgs[0]["content"], msgs[1]["content"]
    tag = user.split(",")[0].removeprefix("I am ")
    assert tag.startswith("<PERSON_") and len(tag) == len("<PERSON_>") + 12 and tag in assistant
    assert "<EMAIL_ADDRESS>" in user and "*" * len(PHONE) in user
    monkeypatch.setenv("LORAFLOW_PII_SALT", "another-salt-of-16-chars")
    other = scrub(frame(r), cfg).kept.iloc[0]["messages"][0]["content"]
    assert tag not in other  # the hash is salted
    assert not any(v in user + assistant + other for v in RAW_VALUES)


def test_drop_row_policy_quarantines_without_raw_values(engine):
    keep = rec(("user", "How do I order a new card?"), ("assistant", "card_order"))
    drop = rec(("user", f"My card number is {CARD}, please block it."), ("assistant", "card_lost"))
    cfg = CFG.model_copy(update={"operators": {"CREDIT_CARD": "drop_row"}})
    out = scrub(frame(keep, drop), cfg)
    assert len(out.kept) == 1 and out.kept.iloc[0]["messages"][0]["content"] == "How do I order a new card?"
    q = out.quarantined.iloc[0]
    assert q["reason"] == "pii_drop_row" and json.loads(q["detail"]) == {"entity_types": {"CREDIT_CARD": 1}}
    assert CARD not in q["record"] and "<CREDIT_CARD>" in q["record"]
    assert out.report["records_dropped_by_policy"] == 1


def test_roles_to_scan(engine):
    r = rec(("user", f"I am {NAME}."), ("assistant", f"Hello {NAME}."))
    msgs = scrub(frame(r), CFG.model_copy(update={"roles": ["user"]})).kept.iloc[0]["messages"]
    assert msgs[0]["content"] == "I am <PERSON_1>." and msgs[1]["content"] == f"Hello {NAME}."


def test_bad_content_is_quarantined_not_fatal(engine, tmp_path):
    good = rec(("user", f"I am {NAME}."), ("assistant", "ok"))
    bad = [
        rec(("user", 12345), id="int"),
        rec(("user", None), id="none"),
        rec(("user", ["a", "list"]), id="list"),
        rec(("user", b"\x89PNG\r\n\x1a\n\x00\x00"), id="bytes"),
        rec(("user", "caf\udce9 latte"), id="surrogate"),  # invalid UTF-8 decoded with surrogateescape
        rec(("user", "\x00\x01\x02\x03binary\x04\x05\x06\x07\x08\x0e\x0f"), id="junk"),
        {"id": "nomsgs", "messages": "not a list", "source": "t", "created_at": "", "meta": {}},
    ]
    records = frame(good, *bad)
    out = scrub(records, CFG)
    assert len(out.kept) == 1 and out.kept.iloc[0]["messages"][0]["content"] == "I am <PERSON_1>."
    reasons = dict(zip(out.quarantined["id"], out.quarantined["reason"], strict=True))
    assert reasons == {"int": "non_string_content", "none": "non_string_content", "list": "non_string_content",
                       "bytes": "binary_content", "surrogate": "invalid_utf8", "junk": "binary_content",
                       "nomsgs": "malformed_messages"}  # fmt: skip
    assert out.quarantined["record"].isna().all()  # unscrubbable text is never stored
    result = finish_stage("pii", len(records), out, tmp_path)  # asserts rows_in == kept + quarantined
    assert result.counts["quarantined_non_string_content"] == 3


def test_report_metrics_and_outputs_hold_no_raw_values(engine, tmp_path):
    records = frame(
        rec(("user", f"I am {NAME}, card {CARD}, IBAN {IBAN}."), ("assistant", f"Thanks {NAME}.")),
        rec(("user", f"Email {EMAIL} or call {PHONE}."), ("assistant", "contact_update")),
        rec(("user", "What is the fee for a transfer?"), ("assistant", "fees")),
    )
    out, spans = scrub_with_spans(records, CFG)
    rep = out.report
    assert rep["records_touched"] == 2 and rep["messages_scanned"] == 6
    assert rep["entities_by_type"]["PERSON"] == 2 and rep["entities_by_role"]["assistant"] == 1
    assert out.metrics["pii.entities_found"] == rep["entities_found"] >= 6
    assert out.metrics["pii.entities.CREDIT_CARD"] == 1
    assert set(spans) == {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)}
    # Through the stage's own writer, the way the flow runs it.
    ref = write_records(records, tmp_path / "raw.parquet")
    from tasks.pii import scrub_pii_task

    result = scrub_pii_task.fn(ref, CFG, str(tmp_path / "out"))
    assert result.counts == {"rows_in": 3, "kept": 3, "quarantined": 0}
    kept = read_records(result.data)
    assert kept["id"].tolist() == records["id"].tolist()  # ids from ingest (raw text) are carried unchanged
    os.unlink(ref.uri)
    blob = json.dumps(rep) + json.dumps(out.metrics)
    assert not any(v in blob for v in RAW_VALUES)
    assert find_leaks(tmp_path, RAW_VALUES) == {}
    (tmp_path / "leak.txt").write_text(f"oops {EMAIL}")
    assert find_leaks(tmp_path, RAW_VALUES) == {EMAIL: [str(tmp_path / "leak.txt")]}


def test_empty_input(engine):
    out = scrub(frame(rec(("user", "x"))).iloc[0:0], CFG)
    assert len(out.kept) == 0 and len(out.quarantined) == 0


# --------------------------------------------------------------------------------------------- config + cli


def test_config_rejects_unknown_keys_and_operators():
    with pytest.raises(ValueError):
        PiiConfig(entitys=["PERSON"])
    with pytest.raises(ValueError):
        PiiConfig(operators={"PERSON": "shred"})


def test_importing_the_stage_stays_light():
    code = "import sys, tasks.pii; bad = [m for m in ('torch', 'transformers', 'presidio_analyzer', 'spacy') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_writes_scrubbed_chat_jsonl_spans_and_report(engine, tmp_path):
    from typer import Typer
    from typer.testing import CliRunner

    from loraflow.commands.scrub import command

    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"I am {NAME}, mail {EMAIL}"},
                    {"role": "assistant", "content": f"Hi {NAME}"},
                ]
            }
        ),  # fmt: skip
        "{not json",
        json.dumps({"instruction": "Route this ticket", "input": f"Call me on {PHONE}", "output": "callback"}),
        json.dumps({"prompt": "What is the fee for a transfer?", "completion": "fees"}),
    ]
    src.write_text("\n".join(lines) + "\n")
    app = Typer()
    app.command()(command)
    out, spans, report = tmp_path / "out.jsonl", tmp_path / "spans.jsonl", tmp_path / "report.json"
    res = CliRunner().invoke(app, [str(src), str(out), "--spans", str(spans), "--report", str(report)])
    assert res.exit_code == 0, res.output
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(written) == 3 and all("messages" in r for r in written)
    assert written[0]["messages"][0]["content"] == "I am <PERSON_1>, mail <EMAIL_ADDRESS_1>"
    assert written[0]["messages"][1]["content"] == "Hi <PERSON_1>"
    rows = [json.loads(x) for x in spans.read_text().splitlines()]
    assert all(list(r) == ["line", "message", "start", "end", "entity_type", "score"] for r in rows)
    originals = {0: json.loads(lines[0])["messages"], 2: None}
    by_line = {}
    for r in rows:
        by_line.setdefault(r["line"], []).append(r)
    assert set(by_line) == {0, 2}  # 0-based input line; line 1 was malformed, line 3 has no PII
    got = {(r["message"], originals[0][r["message"]]["content"][r["start"] : r["end"]], r["entity_type"])
           for r in by_line[0]}  # fmt: skip
    assert got == {(0, NAME, "PERSON"), (0, EMAIL, "EMAIL_ADDRESS"), (1, NAME, "PERSON")}
    (phone_span,) = by_line[2]
    assert phone_span["entity_type"] == "PHONE_NUMBER"
    alpaca_user = written[1]["messages"][-2]["content"]
    assert PHONE not in alpaca_user and "<PHONE_NUMBER_1>" in alpaca_user
    rep = json.loads(report.read_text())
    assert rep["counts"]["quarantined_at_read"] == 1 and rep["counts"]["kept"] == 3
    for blob in (out.read_text(), spans.read_text(), report.read_text(), res.output):
        assert not any(v in blob for v in RAW_VALUES)


def test_names_in_any_case_after_strong_cues_but_not_ordinary_words(engine):
    texts = [
        "when is my loan due? contact: maria farouk, tel 0612345678.",
        "PLEASE CLOSE MY ACCOUNT. ACCOUNT HOLDER: GIULIA BIANCHI",
        "hiya - this is ingrid fernandez writing. my wallet was stolen",
        "My name is spelled wrong on the card and this is urgent.",
    ]
    spans = detect_spans(texts, CFG)
    persons = [
        [t[s.start : s.end] for s in sp if s.entity_type == "PERSON"] for t, sp in zip(texts, spans, strict=True)
    ]
    assert persons == [["maria farouk"], ["GIULIA BIANCHI"], ["ingrid fernandez"], []]


def test_pseudonym_follows_the_value_not_the_ner_type():
    from tasks.pii import _Pseudonyms

    p = _Pseudonyms()
    tags = [p.get("PERSON", "Eleanor Whitfield"), p.get("ORGANIZATION", "eleanor  whitfield"),
            p.get("PERSON", "Eleanor"), p.get("ORGANIZATION", "Acme"), p.get("PERSON", "Tom Ray")]  # fmt: skip
    assert tags == ["<PERSON_1>", "<PERSON_1>", "<PERSON_1>", "<ORGANIZATION_1>", "<PERSON_2>"]


# --------------------------------------------------------------------------------------------- messy text


def test_names_in_all_caps_and_lower_case_text(engine):
    texts = [
        "HI, MY COLLEAGUE TOMASZ NOWAK WILL CALL YOU FROM WARSAW TOMORROW ABOUT THE INVOICE",
        "hi, my colleague tomasz nowak will call you from warsaw tomorrow about the invoice",
    ]
    for cfg in (CFG, CFG.model_copy(update={"case_robust": False})):
        got = [
            {(t[s.start : s.end].casefold(), s.entity_type) for s in sp}
            for t, sp in zip(texts, detect_spans(texts, cfg), strict=True)
        ]
        found = [any("tomasz nowak" in v and e == "PERSON" for v, e in g) for g in got]
        assert found == ([True, True] if cfg.case_robust else [False, False])
        assert all(("warsaw", "LOCATION") in g for g in got) == cfg.case_robust
        assert not any("invoice" in v for g in got for v, _ in g)  # a common word stays a common word


def test_recasing_keeps_every_offset():
    from tasks.pii.casing import caseless, recase

    for text in [
        "İSTANBUL STRASSE GROSSE ÉTÉ ǅ ﬁ KELVIN K",
        "straße ﬁle ǆ and more words here",
        "Normal Text, Kept As Is.",
    ]:
        assert len(recase(text)) == len(text)
    assert recase("Normal Text, Kept As Is.") == "Normal Text, Kept As Is." and not caseless("Normal Text, Kept As Is.")
    assert caseless("CALL ME TOMORROW PLEASE") and caseless("call me tomorrow please") and not caseless("OK")


def test_only_urls_that_point_at_a_person_are_scrubbed(engine):
    text = "see https://www.reddit.com/r/soccer/comments/5my29a/x and my profile https://www.linkedin.com/in/eleanor-w"
    values = [(text[s.start : s.end], s.entity_type) for s in detect_spans([text], CFG)[0]]
    assert values == [("https://www.linkedin.com/in/eleanor-w", "URL")]
    every = detect_spans([text], CFG.model_copy(update={"url_scope": "all"}))[0]
    assert [s.entity_type for s in every] == ["URL", "URL"]


def test_organisations_need_a_cue(engine):
    texts = ["Meta is trending again, Apple Music too", "I work at Quillonex Systems in Leeds"]
    cued = detect_spans(texts, CFG)
    assert cued[0] == [] and ("Quillonex Systems", "ORGANIZATION") in {
        (texts[1][s.start : s.end], s.entity_type) for s in cued[1]
    }
    free = detect_spans(texts, CFG.model_copy(update={"org_needs_context": False}))
    assert {texts[0][s.start : s.end] for s in free[0]} == {"Meta", "Apple Music"}


def test_report_says_how_much_text_was_replaced(engine):
    r = rec(("user", f"I am {NAME}."), ("assistant", "ok thanks"))  # 5 + 2 tokens, 2 of them the name
    rep = scrub(frame(r), CFG).report
    assert (rep["tokens_scanned"], rep["tokens_replaced"]) == (7, 2)
    assert rep["data_destroyed_share"] == round(2 / 7, 4)
