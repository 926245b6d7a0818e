"""Prompt templates: the chat template by default, Alpaca or the user's own format string otherwise."""

import pytest

from tasks.prompting import ALPACA, render_full, render_prompt, template_text

MSGS = [{"role": "system", "content": "Summarise the ticket."}, {"role": "user", "content": "My card is stuck."}]


def test_chat_template_is_the_default(base_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    expected = tok.apply_chat_template(MSGS, tokenize=False, add_generation_prompt=True)
    assert render_prompt(tok, MSGS) == expected == render_prompt(tok, MSGS, "chat")
    full = render_full(tok, MSGS, "Card stuck.")
    assert full.startswith(expected) and "Card stuck.<|im_end|>" in full


def test_alpaca_and_custom_templates(base_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    prompt = render_prompt(tok, MSGS, "alpaca")
    assert prompt == ALPACA.replace("{instruction}", "Summarise the ticket.").replace("{input}", "My card is stuck.")
    assert prompt.endswith("### Response:\n")
    assert render_full(tok, MSGS, "Card stuck.", "alpaca") == prompt + "Card stuck." + tok.eos_token
    # Few-shot turns render as complete blocks before the question.
    shots = [MSGS[0], {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, MSGS[1]]
    two = render_prompt(tok, shots, "alpaca")
    assert two.count("### Response:") == 2 and "A1" + tok.eos_token in two and two.endswith(prompt[-40:])
    custom = render_prompt(tok, MSGS, "Q: {input}\nA:")
    assert custom == "Q: My card is stuck.\nA:"
    with pytest.raises(ValueError, match="input"):
        template_text("no fields here")
