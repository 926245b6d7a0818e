"""Data contracts through Great Expectations: every rule type catches a violating fixture and passes a clean one;
shipped contracts load; broken contracts fail with file, line and key; block / warn / quarantine behave; the CLI
exits 0 / 1 / 2."""

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks.core import DatasetRef, StageError, record_id, write_records
from tasks.split import Splits
from tasks.validate import (
    ContractError,
    ContractViolation,
    ValidateConfig,
    check_splits,
    load_contract,
    load_labels,
    residual_pii,
    text_problems,
    tracking_artifacts,
    validate,
    validate_task,
)

REPO = Path(__file__).resolve().parents[1]
SYSTEM = {"role": "system", "content": "Route the support ticket to its queue. Reply with the queue only."}
CANARY = "Zebulon Quixworth-Canary"  # a string that must never reach a GX artifact


def pii_found(text: str, patterns: list[str]) -> list[str]:
    """Which of the contract's pattern kinds the residual-PII rule (the PII stage's engine) finds in ``text``."""
    from tasks.validate.rules import PATTERN_ENTITIES

    kinds = residual_pii([text], [PATTERN_ENTITIES[p] for p in patterns])[0]
    return [p for p in patterns if p in kinds]


# --------------------------------------------------------------------------------------------- fixtures


def _build_tokenizer(folder: Path) -> str:
    """A word-level tokenizer with a ChatML template, for when the real base-model tokenizer is not cached."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(["my card has not arrived yet please help", "word ok route the ticket"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tokenizer_dir(request, tmp_path_factory) -> str:
    """The base model's tokenizer (conftest's ``base_tokenizer_dir``) or, without a model cache, a local stand-in."""
    try:
        return str(request.getfixturevalue("base_tokenizer_dir"))
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        return _build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def rec(user: str = "My card has not arrived yet.", answer: str = "card_not_arrived", messages=None, **meta):
    msgs = (
        messages
        if messages is not None
        else [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    )
    try:
        rid = record_id(msgs)
    except (AttributeError, TypeError):
        rid = hashlib.sha256(json.dumps(msgs, default=str).encode()).hexdigest()[:16]
    return {"id": rid, "messages": msgs, "source": "test", "created_at": "", "meta": meta}


def frame(*rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def distinct(n: int, label: str = "card_not_arrived") -> list[dict]:
    return [rec(user=f"Ticket number {i}: my card has not arrived yet.", answer=label) for i in range(n)]


def R(rule: str, severity: str = "quarantine", **params) -> dict:
    return {"rule": rule, "description": f"Test rule {rule}.", "severity": severity, **params}


def contract(tmp_path: Path, *rules: dict, **top) -> ValidateConfig:
    doc = {"contract": "test", "description": "A test contract.", "task": "classification", **top, "rules": list(rules)}
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ValidateConfig(contract=str(path), data_docs=False)


def rule_row(outcome_or_report, name: str) -> dict:
    report = outcome_or_report if isinstance(outcome_or_report, dict) else outcome_or_report.report
    return next(r for r in report["rules"] if r["rule"] == name)


def assert_quarantines(cfg, bad: list[dict], good: list[dict], reason: str, tokenizer=None):
    """The violating rows are quarantined with ``reason``; the clean rows are kept; the ledger balances."""
    out = validate(frame(*bad, *good), cfg, tokenizer)
    assert set(out.quarantined["id"]) == {r["id"] for r in bad}
    assert set(out.quarantined["reason"]) == {reason}
    assert set(out.kept["id"]) == {r["id"] for r in good}
    assert len(out.kept) + len(out.quarantined) == len(bad) + len(good)
    row = rule_row(out, reason)
    assert not row["passed"] and row["rows_affected"] == len(bad)
    clean = validate(frame(*good), cfg, tokenizer)
    assert clean.quarantined.empty and rule_row(clean, reason)["passed"]
    return out


# --------------------------------------------------------------------------------------------- row-level rules


def test_required_fields(tmp_path):
    cfg = contract(tmp_path, R("required_fields"))
    bad = [
        rec(messages=[SYSTEM, {"role": "user"}, {"role": "assistant", "content": "x"}]),
        rec(messages=[SYSTEM, {"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]),
        rec(messages=[]),
        rec(messages=["not a message"]),
    ]
    out = assert_quarantines(cfg, bad, distinct(3), "required_fields")
    details = [json.loads(d) for d in out.quarantined["detail"]]
    assert {d["required_fields"] for d in details} == {
        "content_missing_or_not_text",
        "no_messages",
        "message_not_an_object",
    }


def test_role_order(tmp_path):
    cfg = contract(tmp_path, R("role_order"))
    user, asst = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "card_declined"}
    bad = [
        rec(messages=[SYSTEM, user]),  # ends with the user
        rec(messages=[asst, user, asst]),  # starts with the assistant
        rec(messages=[SYSTEM, user, user, asst]),  # two user turns in a row
        rec(messages=[user, SYSTEM, asst]),  # system in the middle
        rec(messages=[SYSTEM, {"role": "tool", "content": "x"}, asst]),  # unknown role
    ]
    good = [rec(), rec(messages=[user, asst]), rec(messages=[SYSTEM, user, asst, user, asst])]
    assert_quarantines(cfg, bad, good, "role_order")


def test_role_order_options(tmp_path):
    user, asst = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "card_declined"}
    single = contract(tmp_path, R("role_order", system="required", max_turns=1))
    bad = [rec(messages=[user, asst]), rec(messages=[SYSTEM, user, asst, user, asst])]
    assert_quarantines(single, bad, [rec()], "role_order")


def test_assistant_not_empty(tmp_path):
    cfg = contract(tmp_path, R("assistant_not_empty"))
    bad = [rec(answer="   \n\t"), rec(answer="")]
    assert_quarantines(cfg, bad, distinct(2), "assistant_not_empty")


def test_token_length_max_with_the_base_tokenizer(tmp_path, tokenizer_dir):
    cfg = contract(tmp_path, R("token_length", min=1, max=64))
    bad = [rec(user="word " * 300)]
    out = assert_quarantines(cfg, bad, distinct(3), "token_length", tokenizer=tokenizer_dir)
    assert json.loads(out.quarantined["detail"].iloc[0])["token_length"] > 64


def test_token_length_min_on_the_completion(tmp_path, tokenizer_dir):
    cfg = contract(tmp_path, R("token_length", min=3, max=100, measure="completion"))
    bad = [rec(answer="ok")]
    good = [rec(answer="the card has not arrived yet")]
    assert_quarantines(cfg, bad, good, "token_length", tokenizer=tokenizer_dir)


def test_token_length_counts_tokens_not_characters(tmp_path, tokenizer_dir):
    """300 characters of one repeated word is far fewer tokens than characters."""
    cfg = contract(tmp_path, R("token_length", min=1, max=200, measure="prompt"))
    out = validate(frame(rec(user="word " * 60)), cfg, tokenizer_dir)  # 300 chars, ~60-120 tokens
    assert out.quarantined.empty


def test_token_length_without_tokenizer_is_a_user_error(tmp_path):
    cfg = contract(tmp_path, R("token_length", max=10))
    with pytest.raises(StageError, match="tokenizer"):
        validate(frame(rec()), cfg, None)


@pytest.mark.parametrize("source", ["inline", "file", "from_data"])
def test_label_in_set(tmp_path, source):
    labels = ["card_not_arrived", "card_declined"]
    if source == "inline":
        params = {"labels": labels}
    elif source == "file":
        (tmp_path / "labels.json").write_text(json.dumps(labels))
        params = {"labels_file": str(tmp_path / "labels.json")}
    else:
        params = {"labels": "from_data", "min_label_rows": 2}
    cfg = contract(tmp_path, R("label_in_set", **params))
    bad = [rec(user="A typo in the label.", answer="card_not_arived")]
    good = distinct(2, "card_not_arrived") + [rec(user=f"Declined {i}", answer="card_declined") for i in range(2)]
    out = assert_quarantines(cfg, bad, good, "label_in_set")
    assert "card_not_arived" not in out.quarantined["detail"].iloc[0]  # labels may be free text: not quoted


def test_label_from_meta(tmp_path):
    cfg = contract(tmp_path, R("label_in_set", labels=["a", "b"]), label_from="meta.queue")
    bad = [rec(user="x", queue="zzz")]
    good = [rec(user="y", queue="a"), rec(user="z", queue="b")]
    assert_quarantines(cfg, bad, good, "label_in_set")


def test_json_output(tmp_path):
    schema = {
        "type": "object",
        "required": ["category", "priority"],
        "properties": {"category": {"type": "string"}, "priority": {"enum": ["low", "high"]}},
    }
    cfg = contract(tmp_path, R("json_output", schema=schema), task="json_output")
    bad = [
        rec(answer="category: card"),  # not JSON
        rec(answer='{"category": "card"'),  # truncated
        rec(answer='{"category": "card", "priority": "urgent"}'),  # not in the enum
        rec(answer='{"priority": "low"}'),  # missing key
    ]
    good = [
        rec(answer='{"category": "card", "priority": "low"}'),
        rec(user="b", answer='{"category": "x", "priority": "high"}'),
    ]
    out = assert_quarantines(cfg, bad, good, "json_output")
    codes = {json.loads(d)["json_output"] for d in out.quarantined["detail"]}
    assert codes == {"not_json", "schema:enum@$.priority", "schema:required@$"}
    # Without a schema only parsing counts.
    parse_only = contract(tmp_path, R("json_output"))
    assert_quarantines(parse_only, bad[:2], good + [rec(user="c", answer='{"other": 1}')], "json_output")


def test_no_residual_pii(tmp_path):
    cfg = contract(tmp_path, R("no_residual_pii", patterns=["email", "phone", "card_number", "iban"]))
    bad = [
        rec(user="Please write to jane.doe@example.com about it."),
        rec(user="Call me back on +44 20 7946 0958 today."),
        rec(user="My card 4111 1111 1111 1111 was declined."),
        rec(user="Refund to GB82 WEST 1234 5698 7654 32 please."),
        rec(user="Ring (415) 555-0132 after five."),
    ]
    good = [
        rec(user="<PERSON_1> wrote from <EMAIL_ADDRESS> and called <PHONE_NUMBER>."),
        rec(user="Order 12345678 on 2026-11-22 for £1,250.00, reference 4411-22."),
        rec(user="Card ending 1111 was charged 49.99 EUR at 10:45 on 12/03/2026."),
    ]
    out = assert_quarantines(cfg, bad, good, "no_residual_pii")
    assert out.quarantined["record"].isna().all()  # residual PII is never written to the quarantine file
    kinds = {json.loads(d)["no_residual_pii"] for d in out.quarantined["detail"]}
    assert kinds == {"email", "phone", "card_number", "iban"}
    assert all("@" not in d and "4111" not in d for d in out.quarantined["detail"])


def test_pii_patterns_individually():
    assert pii_found("mail a.b+c@mail.example.co.uk now", ["email"]) == ["email"]
    assert pii_found("4111 1111 1111 1112", ["card_number"]) == []  # fails the Luhn check
    # The PII stage's engine (Presidio's SSN recognizer) rejects the well-known sample number 123-45-6789 as an
    # SSN, and still finds it as a number to scrub; a plausible SSN is found as one.
    assert pii_found("SSN 536-90-4399", ["us_ssn"]) == ["us_ssn"]
    assert residual_pii(["SSN 123-45-6789"]) == [["phone"]]
    assert pii_found("from 192.168.10.4", ["ip_address"]) == ["ip_address"]
    assert pii_found("version 1.2.3", ["ip_address"]) == []
    assert pii_found("GB82 WEST 1234 5698 7654 32", ["iban", "phone"]) == ["iban"]  # not also a phone


def test_clean_text(tmp_path):
    cfg = contract(tmp_path, R("clean_text"))
    bad = [
        rec(user="The app shows\x07 a bell character."),
        rec(user="I paid at the cafÃ© and was charged twice."),
        rec(user="The statement says donâ€™t worry."),
        rec(user="Broken \ufffd character here."),
    ]
    good = [rec(user="Naïve café charge of €5 in Zürich"), rec(user="日本語のサポート\tplease\nthanks")]
    assert_quarantines(cfg, bad, good, "clean_text")
    assert text_problems("ok\x1b[0m") == ["control_character"]
    assert text_problems("fine\ttext\n") == []


# --------------------------------------------------------------------------------------------- dataset rules


def _blocked(cfg, rows, tokenizer=None) -> ContractViolation:
    with pytest.raises(ContractViolation) as info:
        validate(frame(*rows), cfg, tokenizer)
    return info.value


def test_min_rows(tmp_path):
    cfg = contract(tmp_path, R("min_rows", "block", min=5))
    err = _blocked(cfg, distinct(3))
    assert "'min_rows'" in str(err) and "observed 3 rows" in str(err) and "≥ 5 rows" in str(err)
    assert "test" in str(err) and "contract.yaml" in str(err)
    assert validate(frame(*distinct(5)), cfg).report["rules"][0]["passed"]


def test_min_rows_counts_rows_left_after_quarantine(tmp_path):
    cfg = contract(tmp_path, R("assistant_not_empty"), R("min_rows", "block", min=5))
    err = _blocked(cfg, distinct(4) + [rec(answer=" ")])
    assert "observed 4 rows" in str(err)
    assert err.report["summary"]["quarantined"] == 1


def test_min_rows_per_class(tmp_path):
    cfg = contract(tmp_path, R("min_rows_per_class", "block", min=3))
    small = [rec(user="Declined once", answer="card_declined")]
    err = _blocked(cfg, distinct(3) + small)
    assert small[0]["id"] in str(err) and "smallest class 1 rows" in str(err)
    ok = distinct(3) + [rec(user=f"Declined {i}", answer="card_declined") for i in range(3)]
    assert validate(frame(*ok), cfg).report["rules"][0]["passed"]


def test_min_rows_per_class_can_quarantine_small_classes(tmp_path):
    cfg = contract(tmp_path, R("min_rows_per_class", min=3), R("min_rows", "block", min=3))
    small = [rec(user="Declined once", answer="card_declined")]
    out = validate(frame(*distinct(3), *small), cfg)
    assert list(out.quarantined["id"]) == [small[0]["id"]]
    assert list(out.quarantined["reason"]) == ["min_rows_per_class"]
    assert rule_row(out, "min_rows")["observed"] == "3 rows"  # judged after the class quarantine


def test_class_balance(tmp_path):
    cfg = contract(tmp_path, R("class_balance", "block", max_ratio=2))
    minority = [rec(user="Declined", answer="card_declined")]
    err = _blocked(cfg, distinct(5) + minority)
    assert "ratio 5.0" in str(err) and minority[0]["id"] in str(err)
    ok = distinct(2) + [rec(user=f"Declined {i}", answer="card_declined") for i in range(2)]
    assert validate(frame(*ok), cfg).report["rules"][0]["passed"]


def test_duplicate_rate(tmp_path):
    cfg = contract(tmp_path, R("duplicate_rate", "block", max=0.1))
    base = distinct(7)
    # Case and whitespace differences still count as the same example.
    dups = [rec(user=r["messages"][1]["content"].upper() + "  ", answer="card_not_arrived") for r in base[:3]]
    err = _blocked(cfg, base + dups)
    assert "30.0%" in str(err) and "≤ 10.0%" in str(err)
    assert any(d["id"] in str(err) for d in dups)
    assert validate(frame(*distinct(10)), cfg).report["rules"][0]["passed"]


def test_duplicate_rate_on_prompts(tmp_path):
    cfg = contract(tmp_path, R("duplicate_rate", "block", max=0.0, compare="prompt"))
    conflicting = [rec(user="Same ticket", answer="card_declined"), rec(user="Same ticket", answer="card_not_arrived")]
    _blocked(cfg, conflicting)
    whole = contract(tmp_path, R("duplicate_rate", "block", max=0.0, compare="conversation"))
    assert validate(frame(*conflicting), whole).report["rules"][0]["passed"]


def test_length_percentiles(tmp_path, tokenizer_dir):
    cfg = contract(tmp_path, R("length_percentiles", "block", percentiles={50: [1, 60], 95: [1, 200]}))
    long_rows = [rec(user=f"word {i} " + "word " * 120) for i in range(5)]
    err = _blocked(cfg, long_rows + distinct(2), tokenizer=tokenizer_dir)
    assert "p50" in str(err) and long_rows[0]["id"] in str(err)
    assert validate(frame(*distinct(5)), cfg, tokenizer_dir).report["rules"][0]["passed"]


def _splits(train: int, val: int, test: int) -> Splits:
    ref = lambda n, s: DatasetRef(uri=f"/nowhere/{s}.parquet", sha256=s * 8, rows=n)  # noqa: E731
    return Splits(
        train=ref(train, "a"), val=ref(val, "b"), test=ref(test, "c"), report_uri="/nowhere/r.json", counts={}
    )


def test_split_sizes(tmp_path):
    rule = R("split_sizes", "block", val={"min_rows": 1}, test={"min_rows": 10, "max_fraction": 0.3})
    cfg = contract(tmp_path, rule)
    with pytest.raises(ContractViolation, match=r"split_sizes\.val"):
        check_splits(_splits(100, 0, 20), cfg)
    with pytest.raises(ContractViolation, match=r"split_sizes\.test"):
        check_splits(_splits(50, 10, 40), cfg)  # 40 % test
    report = check_splits(_splits(80, 10, 10), cfg)
    assert all(r["passed"] for r in report["rules"]) and report["blocked"] == []
    # The split rule is not judged by validate() itself (there is no split yet).
    assert validate(frame(*distinct(2)), cfg).report["rules"] == []


# --------------------------------------------------------------------------------------------- severities


def test_block_on_a_row_rule_names_example_ids(tmp_path):
    cfg = contract(tmp_path, R("label_in_set", "block", labels=["card_not_arrived"]))
    bad = [rec(user=f"t{i}", answer="nope") for i in range(7)]
    err = _blocked(cfg, bad + distinct(2))
    msg = str(err)
    assert "'label_in_set'" in msg and "7 rows affected" in msg and "1 labels" in msg
    quoted = [r["id"] for r in bad if r["id"] in msg]
    assert len(quoted) == 5  # at most five example ids
    assert "\n" not in msg  # one paragraph
    assert err.report["blocked"] == ["label_in_set"] and "table" in err.report


def test_warn_only_reports(tmp_path, caplog):
    cfg = contract(tmp_path, R("assistant_not_empty", "warn"), R("min_rows", "warn", min=100))
    with caplog.at_level(logging.WARNING, logger="loraflow.validate"):
        out = validate(frame(rec(answer=" "), *distinct(2)), cfg)
    assert out.quarantined.empty and len(out.kept) == 3
    assert out.report["warnings"] == ["assistant_not_empty", "min_rows"]
    assert "min_rows" in caplog.text


def test_a_row_failing_several_rules_gets_the_first_as_reason(tmp_path):
    cfg = contract(tmp_path, R("assistant_not_empty"), R("label_in_set", labels=["card_not_arrived"]))
    out = validate(frame(rec(answer=" "), *distinct(1)), cfg)
    detail = json.loads(out.quarantined["detail"].iloc[0])
    assert out.quarantined["reason"].tolist() == ["assistant_not_empty"]
    assert detail["rules"] == ["assistant_not_empty", "label_in_set"]


def test_report_table_and_gx_artifacts_hold_no_text(tmp_path):
    cfg = ValidateConfig(contract=str(contract(tmp_path, R("label_in_set", labels=["x"]), R("clean_text")).contract))
    rows = [rec(user=f"{CANARY} wrote this", answer=f"{CANARY} label"), *distinct(2)]
    out = validate(frame(*rows), cfg, artifacts_dir=tmp_path / "gx")
    art = out.report["artifacts"]
    results = json.loads(Path(art["gx_validation_results"]).read_text())
    assert results[0]["results"][0]["result"]["unexpected_index_list"][0]["id"]  # ids, for quarantine
    assert Path(art["data_docs_index"]).exists()
    for f in (tmp_path / "gx").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".html"):
            assert CANARY not in f.read_text(errors="ignore"), f
    assert {dest for _, dest in tracking_artifacts(out.report)} == {"validate", "validate/data_docs"}
    assert "| label_in_set | quarantine |" in out.report["table_markdown"]
    table = out.report["table"]
    for word in ("rule", "severity", "observed", "threshold", "result", "rows", "label_in_set"):
        assert word in table


def test_stage_task_writes_the_report_before_blocking(tmp_path):
    cfg = contract(tmp_path, R("assistant_not_empty"), R("min_rows", "block", min=10))
    ref = write_records(frame(*distinct(3), rec(answer="")), tmp_path / "in.parquet")
    with pytest.raises(ContractViolation) as info:
        validate_task.fn(ref, cfg, None, str(tmp_path / "out"))
    report = json.loads(Path(info.value.report_uri).read_text())
    assert report["blocked"] == ["min_rows"] and report["summary"]["quarantined"] == 1
    assert Path(report["artifacts"]["gx_validation_results"]).exists()

    ok = validate_task.fn(ref, contract(tmp_path, R("assistant_not_empty")), None, str(tmp_path / "out"))
    assert ok.counts == {"rows_in": 4, "kept": 3, "quarantined": 1, "quarantined_assistant_not_empty": 1}
    assert json.loads(Path(ok.report_uri).read_text())["rules"][0]["rule"] == "assistant_not_empty"


# --------------------------------------------------------------------------------------------- contracts


SHIPPED = sorted((REPO / "data_contracts").glob("*.yaml"))


def test_the_shipped_contracts_are_there():
    assert {p.stem for p in SHIPPED} >= {"demo", "classification", "generation", "json_output", "banking77"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_contract_loads(path):
    c = load_contract(str(path))
    assert c.contract == path.stem
    assert all(r.description.strip() for r in c.rules)
    first = path.read_text().splitlines()[1]
    assert "loraflow validate" in first  # each contract opens with the command that uses it
    for r in c.rules:
        if r.rule == "label_in_set" and r.labels_file:
            if "shared/data" in r.labels_file and not (REPO / r.labels_file).exists():
                pytest.skip("shared data is not beside this checkout")
            assert load_labels(c, r)


def test_demo_and_banking_labels():
    demo = load_contract("demo")
    assert len(load_labels(demo, next(r for r in demo.rules if r.rule == "label_in_set"))) == 24
    if (REPO / "../shared/data/banking77/categories.json").exists():
        bank = load_contract("banking77")
        assert len(load_labels(bank, next(r for r in bank.rules if r.rule == "label_in_set"))) == 77


BAD_CONTRACTS = {
    "unknown_rule": (
        """contract: bad
description: x
task: classification
rules:
  - rule: min_rows
    description: enough rows
    severity: block
    min: 10
  - rule: no_emojis
    description: what is this
    severity: warn
""",
        9,
        "rules[1].rule",
        "unknown rule 'no_emojis'",
    ),
    "wrong_type": (
        """contract: bad
description: x
task: classification
rules:
  - rule: token_length
    description: fits
    severity: quarantine
    min: 1
    max: lots
""",
        9,
        "rules[0].max",
        "integer",
    ),
    "missing_field": (
        """contract: bad
description: x
task: classification
rules:
  - rule: min_rows
    description: enough rows
    min: 10
""",
        5,
        "rules[0].severity",
        "Field required",
    ),
    "unknown_key": (
        """contract: bad
description: x
task: classification
rules:
  - rule: min_rows
    description: enough rows
    severity: block
    minimum: 10
""",
        8,
        "rules[0].minimum",
        "unknown key",
    ),
    "bad_severity": (
        """contract: bad
description: x
task: classification
rules:
  - rule: class_balance
    description: balanced
    severity: quarantine
    max_ratio: 3
""",
        7,
        "rules[0].severity",
        "'block' or 'warn'",
    ),
    "wrong_severity_word": (
        """contract: bad
description: x
task: generation
rules:
  - rule: min_rows
    description: enough
    severity: stop
    min: 3
""",
        7,
        "rules[0].severity",
        "'quarantine', 'block' or 'warn'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTRACTS))
def test_bad_contracts_name_file_line_and_key(tmp_path, case):
    text, line, key, words = BAD_CONTRACTS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ContractError) as info:
        load_contract(str(path))
    msg = str(info.value)
    assert f"{case}.yaml" in msg and f"line {line}," in msg and f"key '{key}'" in msg and words in msg


def test_contract_problems_are_reported_together(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("contract: x\ntask: poetry\nrules:\n  - rule: min_rows\n    description: d\n    severity: block\n")
    msg = str(pytest.raises(ContractError, load_contract, str(path)).value)
    assert "3 problem(s)" in msg and "'description'" in msg and "'task'" in msg and "rules[0].min" in msg


def test_contract_yaml_syntax_error_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("contract: x\nrules: [\n  - a: b\n")
    with pytest.raises(ContractError, match=r"broken\.yaml, line \d+, column \d+: not valid YAML"):
        load_contract(str(path))
    with pytest.raises(ContractError, match="Known contracts in data_contracts/: .*demo"):
        load_contract("no_such_contract")


def test_duplicate_rule_names_and_missing_labels_file(tmp_path):
    cfg = contract(tmp_path, R("min_rows", "block", min=1), R("min_rows", "warn", min=5))
    with pytest.raises(ContractError, match="unique.*min_rows"):
        load_contract(cfg.contract)
    cfg = contract(tmp_path, R("label_in_set", labels_file="nowhere/labels.json"))
    with pytest.raises(ContractError, match=r"line \d+, key 'labels_file'.*does not exist"):
        validate(frame(rec()), cfg)


# --------------------------------------------------------------------------------------------- CLI


def _cli(*args):
    import typer
    from typer.testing import CliRunner

    from loraflow.commands.validate import command

    app = typer.Typer()
    app.command()(command)
    return CliRunner().invoke(app, [str(a) for a in args])


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows))
    return path


def test_cli_exit_codes(tmp_path):
    cfg = contract(tmp_path, R("assistant_not_empty"), R("min_rows", "block", min=3))
    clean = _jsonl(tmp_path / "clean.jsonl", [*distinct(3), rec(answer=" ")])
    res = _cli(clean, "--contract", cfg.contract)
    assert res.exit_code == 0, res.output
    assert "assistant_not_empty" in res.stdout and "fail: quarantined" in res.stdout

    small = _jsonl(tmp_path / "small.jsonl", distinct(2))
    res = _cli(small, "--contract", cfg.contract)
    assert res.exit_code == 1
    assert "FAIL: BLOCKS" in res.stdout and "blocks this dataset" in res.stderr

    assert _cli(tmp_path / "missing.jsonl", "--contract", cfg.contract).exit_code == 2
    (tmp_path / "garbage.jsonl").write_text("{not json\n")
    assert _cli(tmp_path / "garbage.jsonl", "--contract", cfg.contract).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("contract: x\n")
    res = _cli(clean, "--contract", bad)
    assert res.exit_code == 2 and "bad.yaml" in res.stderr


@pytest.mark.parametrize("fmt", ["alpaca", "prompt_completion"])
def test_cli_alpaca_and_prompt_completion_input_and_report(tmp_path, fmt):
    cfg = contract(tmp_path, R("role_order"), R("label_in_set", labels=["card_declined"]))
    path = tmp_path / f"{fmt}.jsonl"
    rows = [("Card declined at the shop.", "card_declined"), ("Where is my card?", "card_lost")]
    if fmt == "alpaca":
        lines = [{"instruction": "Route it.", "input": t, "output": label} for t, label in rows]
    else:
        lines = [{"prompt": t, "completion": label} for t, label in rows]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = _cli(path, "--contract", cfg.contract, "--report", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"] == {"rows_in": 2, "kept": 1, "quarantined": 1}


def test_cache_key_follows_the_contract_and_its_labels_file(tmp_path):
    from tasks.validate import contract_fingerprint

    labels = tmp_path / "labels.json"
    labels.write_text('["a"]')
    cfg = contract(tmp_path, R("label_in_set", labels_file=str(labels)))
    first = contract_fingerprint(cfg)
    assert contract_fingerprint(cfg) == first
    labels.write_text('["a", "b"]')
    second = contract_fingerprint(cfg)
    assert second != first
    contract(tmp_path, R("label_in_set", "warn", labels_file=str(labels)))  # same path, edited rule
    assert contract_fingerprint(cfg) != second


def test_no_rows_left_blocks_on_the_row_count_only(tmp_path):
    cfg = contract(
        tmp_path,
        R("required_fields"),
        R("min_rows", "block", min=1),
        R("duplicate_rate", "block", max=0.0),
        R("class_balance", "block", max_ratio=2),
    )
    err = _blocked(cfg, [rec(messages="not a list")])
    assert err.report["blocked"] == ["min_rows"]
    assert rule_row(err.report, "duplicate_rate")["observed"] == "not checked: no rows left"


# --------------------------------------------------------------------------------------------- the real flow


@pytest.mark.slow
def test_a_doctored_demo_dataset_stops_the_run_before_training(tmp_path, request):
    """A truncated export of the demo tickets breaks the `min_rows` block rule: `loraflow run` exits non-zero with
    the contract's one-paragraph message, before the train stage, and registers nothing."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tasks.dedup")  # the whole data path must exist
    try:
        model = str(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        model = str(REPO / ".loraflow/models/SmolLM2-135M-Instruct")
        if not Path(model, "tokenizer.json").exists():
            pytest.skip("no base model to count tokens with")
    doctored = tmp_path / "tickets_truncated.jsonl"
    doctored.write_bytes(b"".join((REPO / "examples/demo/tickets_chat.jsonl").read_bytes().splitlines(True)[:30]))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    args = ["run", "--config", "configs/tiny.yaml", "--set", f"train.base_model={model}",
            "--set", "validate.contract=tiny", "--set", f"data.sources=[{{path: {doctored}}}]"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "loraflow", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "blocks this dataset before training" in out and "rule 'min_rows'" in out and "threshold ≥ 40 rows" in out
    assert "Task run 'train" not in out
    assert list((home / "data").rglob("validate-*.blocked.report.json"))

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert client.search_registered_models() == []


def test_every_rule_type_has_its_own_test():
    from tasks.validate import RULE_TYPES

    names = set(globals())
    assert not [t for t in RULE_TYPES if not any(n == f"test_{t}" or n.startswith(f"test_{t}_") for n in names)]


def test_label_coverage(tmp_path):
    cfg = contract(tmp_path, R("label_coverage", "block", labels=["card_not_arrived", "card_declined"]))
    err = _blocked(cfg, distinct(3))
    assert "1 of 2 labels missing: card_declined" in str(err)
    ok = distinct(2) + [rec(user="Declined", answer="card_declined")]
    assert validate(frame(*ok), cfg).report["rules"][0]["passed"]


def test_cli_csv_with_a_column_map(tmp_path):
    cfg = contract(tmp_path, R("label_in_set", labels=["card_declined", "card_lost"]), R("min_rows", "block", min=2))
    path = tmp_path / "tickets.csv"
    path.write_text("ticket_text,queue\nCard declined at the shop,card_declined\nLost my card,card_lost\nHm,nope\n")
    res = _cli(path, "--contract", cfg.contract, "--columns", "text=ticket_text,label=queue")
    assert res.exit_code == 0, res.output
    assert "3 rows in, 2 kept, 1 quarantined" in res.stdout
    assert _cli(path, "--contract", cfg.contract, "--columns", "text").exit_code == 2
