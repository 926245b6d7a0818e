"""Per-stage progress bars: each long stage prints a few plain lines in a log (not one per row, no carriage
returns), ending at 100 %, and quotes no record text."""

import re

import pandas as pd
import pytest
import yaml

from tasks.core import record_id

SECRET = "marta.quill@example.org"


def rec(user: str, answer: str = "card_not_arrived") -> dict:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"id": record_id(msgs), "messages": msgs, "source": "s", "created_at": "", "meta": {}}


def bar_lines(err: str, desc: str) -> list[str]:
    """The lines of the bar named ``desc`` in captured stderr."""
    return [line for line in err.splitlines() if line.startswith(f"{desc}: ")]


def assert_bounded_bar(err: str, desc: str, total: int, most: int = 13) -> None:
    """The bar ``desc`` printed between 2 and ``most`` lines and finished at ``total``/``total``."""
    lines = bar_lines(err, desc)
    assert "\r" not in err
    assert 2 <= len(lines) <= most, (desc, lines)
    assert re.match(rf"{re.escape(desc)}: 100%", lines[-1]) and f"{total}/{total}" in lines[-1], lines[-1]


def test_pii_stage_prints_a_few_progress_lines_and_no_text(capsys):
    from tasks.pii import PiiConfig, scrub

    records = pd.DataFrame([rec(f"Ticket {i}: write to {SECRET} about my card.") for i in range(200)])
    out = scrub(records, PiiConfig())
    assert len(out.kept) + len(out.quarantined) == 200
    err = capsys.readouterr().err
    assert out.report["messages_scanned"] >= 200
    assert_bounded_bar(err, "pii", out.report["messages_scanned"])  # short messages: one piece each
    assert SECRET not in err and "Ticket" not in err


def test_dedup_prints_minhash_and_verify_bars(capsys):
    from tasks.dedup import DedupConfig, deduplicate

    # 150 pairs of near duplicates (one word differs): the LSH finds them and the verification checks them.
    texts = [f"my card number {i} has still not arrived after two long weeks of waiting here" for i in range(150)]
    rows = [rec(t) for t in texts] + [rec(t.replace("long", "whole")) for t in texts]
    out = deduplicate(pd.DataFrame(rows), DedupConfig(workers=1, batch_rows=100))
    assert len(out.kept) + len(out.quarantined) == 300 and len(out.quarantined) > 0
    err = capsys.readouterr().err
    assert_bounded_bar(err, "dedup.minhash", 300)
    pairs = int(out.metrics["dedup.candidate_pairs"])
    assert pairs >= 150
    assert_bounded_bar(err, "dedup.verify", pairs)


def test_validate_prints_column_pii_and_gx_bars(tmp_path, capsys):
    from tasks.validate import ValidateConfig, validate

    doc = {
        "contract": "test",
        "description": "A test contract.",
        "task": "classification",
        "rules": [
            {"rule": "required_fields", "description": "Fields.", "severity": "quarantine"},
            {"rule": "no_residual_pii", "description": "PII.", "severity": "quarantine", "patterns": ["email"]},
        ],
    }
    path = tmp_path / "contract.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    records = pd.DataFrame([rec(f"Ticket {i}: my card has not arrived.") for i in range(199)] + [rec(SECRET)])
    out = validate(records, ValidateConfig(contract=str(path), data_docs=False))
    assert list(out.quarantined["reason"]) == ["no_residual_pii"]
    err = capsys.readouterr().err
    assert_bounded_bar(err, "validate.columns", 2)
    # Distinct user and assistant texts: 200 tickets + 1 shared answer.
    assert_bounded_bar(err, "validate.pii", 201)
    assert_bounded_bar(err, "validate.gx", 3)
    assert SECRET not in err


def test_evaluation_generation_prints_one_line_per_batch_at_most(tiny_model_dir, base_tokenizer_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.evaluate import score_all

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    msgs = [[{"role": "user", "content": f"ticket {i} help"}] for i in range(40)]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    fulls = [tok.apply_chat_template([*m, {"role": "assistant", "content": "ok"}], tokenize=False) for m in msgs]
    capsys.readouterr()
    quiet = score_all(model, tok, prompts, fulls, 2, 2)
    # No name, no bar: callers outside a stage stay quiet.
    assert not re.search(r"^\S+: +\d+%\|", capsys.readouterr().err, re.MULTILINE)
    shown = score_all(model, tok, prompts, fulls, 2, 2, desc="eval.candidate")
    assert shown[0] == quiet[0] and shown[2] == pytest.approx(quiet[2])
    assert_bounded_bar(capsys.readouterr().err, "eval.candidate", 20)
