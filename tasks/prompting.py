"""How chat messages become the model's text: the tokenizer's chat template, or a plain prompt template.

One function renders a prompt for training, evaluation and serving alike, so the three never drift apart.
``data.prompt_template``: ``chat`` (the default: the model's chat template), ``alpaca`` (the Stanford Alpaca
``### Instruction / ### Input / ### Response`` layout, for base models without a chat template), or the user's
own format string with ``{instruction}`` (the system message) and ``{input}`` (the user turn) ending where the
answer starts. Earlier turns (few-shot examples) are rendered as complete blocks before the last one.

Training feeds TRL :func:`training_example` rows: with ``chat`` the conversation itself (TRL applies the chat
template, exactly :func:`render_prompt` / :func:`render_full`), with a template the rendered prompt string and the
answer plus EOS (TRL tokenizes them together: :func:`render_full`). Evaluation and serving render with
:func:`render_prompt` and stop at :func:`end_token_id`: the token training put after every answer.
"""

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NAMED_TEMPLATES = {"alpaca": ALPACA}


PROMPT_TEMPLATE_HELP = (
    "How messages become the model's text in training, evaluation and serving alike: `chat` (the base model's "
    "chat template), `alpaca` (the Alpaca `### Instruction / ### Input / ### Response` layout, for base models "
    "without a chat template; the system message is the instruction, the user turn the input) or your own format "
    "string with `{input}` (the user turn) and optionally `{instruction}` (the system message), ending where the "
    "answer starts."
)


def template_text(template: str | None) -> str | None:
    """The format string of a named or custom template; None for the chat template."""
    if template in (None, "chat"):
        return None
    text = NAMED_TEMPLATES.get(template, template)
    if "{input}" not in text:
        raise ValueError(
            f"prompt template {template!r} is neither 'chat', a named template ({', '.join(NAMED_TEMPLATES)}) "
            "nor a format string with an {input} field."
        )
    return text


def render_prompt(tokenizer, messages: list[dict], template: str | None = None) -> str:
    """The text the model continues: every message, ending where the assistant's answer starts.

    Args:
        tokenizer: the model's tokenizer (its chat template is used for ``chat``).
        messages: system / user / assistant turns, ending with a user turn.
        template: ``chat``, ``alpaca`` or a format string (see the module docstring).
    """
    text = template_text(template)
    if text is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    turns = [m for m in messages if m["role"] != "system"]
    out = []
    for i, m in enumerate(turns):
        if m["role"] == "user":
            out.append(text.replace("{instruction}", system).replace("{input}", m["content"]))
            answer = turns[i + 1]["content"] if i + 1 < len(turns) and turns[i + 1]["role"] == "assistant" else None
            if answer is not None:
                out.append(f"{answer}{tokenizer.eos_token or ''}\n\n")
    return "".join(out)


def render_full(tokenizer, messages: list[dict], answer: str, template: str | None = None) -> str:
    """Prompt plus answer plus the end-of-answer token: the text training learns and the loss scores."""
    if template_text(template) is None:
        return tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    return f"{render_prompt(tokenizer, messages, template)}{answer}{tokenizer.eos_token or ''}"


def is_chat(template: str | None) -> bool:
    """True when the tokenizer's chat template renders the messages (``chat``, the default)."""
    return template_text(template) is None


def check_template(template: str) -> str:
    """``template`` if usable (a pydantic validator for ``data.prompt_template``); else ValueError."""
    template_text(template)
    return template


def training_example(tokenizer, messages: list[dict], template: str | None = None) -> dict:
    """One TRL prompt-completion row for a record ending with its assistant answer.

    ``chat``: conversational (``prompt`` = every message but the answer, ``completion`` = the answer message);
    TRL renders it with the chat template. A template: ``prompt`` = :func:`render_prompt`'s string,
    ``completion`` = the answer + EOS, so the trained text is :func:`render_full`'s.
    """
    if is_chat(template):
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    answer = str(messages[-1]["content"])
    return {
        "prompt": render_prompt(tokenizer, messages[:-1], template),
        "completion": f"{answer}{tokenizer.eos_token or ''}",
    }


def end_token_id(tokenizer, template: str | None = None) -> int:
    """The token that ends an answer: ``<|im_end|>`` for ChatML chat templates, else the tokenizer's EOS.

    Raises:
        ValueError: neither exists (generation could not stop).
    """
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>") if is_chat(template) else None
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    if end_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token: generation could not stop.")
    return end_id
