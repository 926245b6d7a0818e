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


# --------------------------------------------------------------------------------------------- one prompt, three stages

RECORD_SYSTEM = "Write one sentence about the game."
RECORD_USER = "inform(name[Portal 2], genres[puzzle])"


def _split(tmp_path, name: str, n: int):
    from chat_records import chat_records

    from tasks.core import write_records

    df = chat_records(
        [(f"{RECORD_USER} {i}" if i else RECORD_USER, f"Portal 2 is a puzzle game {i}.") for i in range(n)]
    )
    for msgs in df["messages"]:
        msgs[0]["content"] = RECORD_SYSTEM
    return write_records(df, tmp_path / f"{name}.parquet")


def _trained_prompt_ids(tiny_model_dir, train, val, cfg, template, tmp_path) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + answer ids) of the record as TRL tokenized it for the train stage."""
    from tasks.base_model import resolve_base_model
    from tasks.train import pick_device
    from tasks.train.trainer import build_trainer, training_datasets

    base = resolve_base_model(str(tiny_model_dir))
    train_ds, val_ds = training_datasets(train, val, cfg, base.path, template)
    trainer = build_trainer(base, train_ds, val_ds, cfg, *pick_device(cfg), tmp_path / "ck", None)
    row = trainer.train_dataset[0]
    start = next(i for i, label in enumerate(row["labels"]) if label != -100)  # the loss starts at the answer
    return row["input_ids"][:start], row["input_ids"]


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_train_eval_and_serve_render_the_same_prompt(tiny_model_dir, tmp_path, monkeypatch, template):
    """One record: the train stage's tokens, the evaluate stage's prompt and the served model's prompt agree."""
    from transformers import AutoTokenizer

    import tasks.evaluate.stage as stage
    from tasks.evaluate import EvalConfig, evaluate_models
    from tasks.serving_model import ChatEngine, settings_from_training
    from tasks.train import TrainConfig, train_adapter

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [{"role": "system", "content": RECORD_SYSTEM}, {"role": "user", "content": RECORD_USER}]
    answer = "Portal 2 is a puzzle game 0."
    expected = render_prompt(tok, msgs, template)
    if template == "alpaca":
        assert f"### Instruction:\n{RECORD_SYSTEM}\n\n### Input:\n{RECORD_USER}\n\n### Response:\n" in expected
        assert "<|im_start|>" not in expected
    else:
        assert expected == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    train, val = _split(tmp_path, "train", 4), _split(tmp_path, "val", 1)
    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=1, batch_size=2, max_length=128, resume=False)

    prompt_ids, full_ids = _trained_prompt_ids(tiny_model_dir, train, val, cfg, template, tmp_path)
    assert prompt_ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert full_ids == tok(render_full(tok, msgs, answer, template), add_special_tokens=False)["input_ids"]

    res = train_adapter(train, val, cfg, str(tmp_path / "adapter"), checkpoint_root=str(tmp_path / "ck2"),
                        prompt_template=template)  # fmt: skip
    seen: list[str] = []
    real = stage.score_all

    def spy(model, tokenizer, prompt_texts, *args, **kwargs):
        seen.extend(prompt_texts)
        return real(model, tokenizer, prompt_texts, *args, **kwargs)

    monkeypatch.setattr(stage, "score_all", spy)
    ecfg = EvalConfig(task="generation", max_new_tokens=2, fewshot_k=0, bootstrap=0, forgetting_set=None)
    adapters = {"base": None, "candidate": res.adapter_dir}
    evaluate_models(_split(tmp_path, "test", 1), str(tiny_model_dir), adapters, ecfg, str(tmp_path / "eval"),
                    prompt_template=template)  # fmt: skip
    assert seen == [expected, expected]  # base and candidate, the same prompt

    settings = settings_from_training(res.adapter_dir, res.base_model, res.base_model_sha256, 0, 4)
    assert settings.prompt_template == template and settings.system_prompt == RECORD_SYSTEM
    engine = ChatEngine(settings, res.adapter_dir)
    assert engine.prompt_text([{"role": "user", "content": RECORD_USER}]) == expected  # system prompt filled in
    assert engine.answer([{"role": "user", "content": RECORD_USER}], max_new_tokens=3).completion_tokens <= 3


def test_prompt_template_is_a_data_setting_checked_at_load(tmp_path):
    from flows.config import load_config
    from tasks.core import StageError

    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - path: x.jsonl\n")
    assert load_config(path).data.prompt_template == "chat"
    assert load_config(path, ["data.prompt_template=alpaca"]).data.prompt_template == "alpaca"
    custom = load_config(path, ["data.prompt_template=Q: {input}\\nA:"]).data.prompt_template
    assert "{input}" in custom
    with pytest.raises(StageError, match=r"data\.prompt_template: .*neither 'chat'"):
        load_config(path, ["data.prompt_template=alpacca"])
