"""How chat messages become the model's text: the tokenizer's chat template, or a plain prompt template.

One function renders a prompt for training, evaluation and serving alike, so the three never drift apart.
``data.prompt_template``: ``chat`` (the default: the model's chat template), ``alpaca`` (the Stanford Alpaca
``### Instruction / ### Input / ### Response`` layout, for base models without a chat template), or the user's
own format string with ``{instruction}`` (the system message) and ``{input}`` (the user turn) ending where the
answer starts. Earlier turns (few-shot examples) are rendered as complete blocks before the last one.
"""

ALPACA = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NAMED_TEMPLATES = {"alpaca": ALPACA}


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
