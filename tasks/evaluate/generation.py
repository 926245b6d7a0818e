"""Batched greedy generation and answer loss sharing one prompt prefill per batch.

Prompts are tokenized once, sorted by length (so a batch pads little), left-padded, and prefilled once with the
KV cache on, their common prefix only once for all batches; free generation, label-constrained generation and
the answer loss each continue from that cache. Every row stops at its end token and leaves the batch
(:mod:`tasks.evaluate.decoding`).
"""

import copy
import math

from tasks import cost
from tasks.core import StageError
from tasks.evaluate import decoding
from tasks.progress import progress


class LabelTrie:
    """Token trie over the labels, each followed by the end-of-turn token.

    ``allowed(prefix)`` returns the tokens that may follow ``prefix`` (a list of generated token ids); after a
    complete label + end token only the end token is allowed (the row is finished and just pads).
    """

    def __init__(self, sequences: list[list[int]], end_id: int):
        self.root: dict = {}
        self.end_id = end_id
        for seq in sequences:
            node = self.root
            for tok in [*seq, end_id]:
                node = node.setdefault(tok, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self.root
        for i, tok in enumerate(prefix):
            if tok == self.end_id and tok in node:
                return [self.end_id]
            if tok not in node:
                return [self.end_id]  # cannot happen under constraint; finish the row
            node = node[tok]
            if i == len(prefix) - 1 and not node:
                return [self.end_id]
        return list(node.keys()) or [self.end_id]

    def forced(self, prefix: list[int]) -> list[int] | None:
        """The rest of the answer when ``prefix`` leaves one path to the end token (end excluded), else None."""
        node = self.root
        for tok in prefix:
            if tok not in node:
                return None
            node = node[tok]
        rest: list[int] = []
        while len(node) == 1:
            (tok,) = node
            if tok == self.end_id:
                return rest
            rest.append(tok)
            node = node[tok]
        return None


def label_token_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    """How each label is tokenized as an answer: the same tokens training puts after ``assistant\\n``."""
    return [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]


def trie_max(trie: LabelTrie | None) -> int:
    """Longest path in the trie (label tokens + end token): the constrained pass needs no more steps."""

    def depth(node: dict) -> int:
        return 1 + max((depth(c) for c in node.values()), default=0) if node else 0

    return max(1, depth(trie.root)) if trie is not None else 1


def end_token_id(tokenizer, template: str | None = None) -> int:
    """The token an answer ends with (``<|im_end|>`` for ChatML chat templates, else EOS; see tasks.prompting)."""
    from tasks import prompting

    try:
        return prompting.end_token_id(tokenizer, template)
    except ValueError as e:
        raise StageError(str(e)) from None


def max_new_from_lengths(token_lengths: list[int], quantile: float = 0.99, cap: int = 512) -> int:
    """A generation budget from the answers' token lengths: the quantile x 1.25 + 4 (the end token and slack)."""
    if not token_lengths:
        return 64
    ordered = sorted(token_lengths)
    q = ordered[min(len(ordered) - 1, math.ceil(quantile * len(ordered)) - 1)]
    return max(1, min(cap, math.ceil(q * 1.25) + 4))


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _texts(tokenizer, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]


def _loss_on_cache(model, last, mask, pos, prefill, answers: list[list[int]], pad_id: int) -> tuple[float, int]:
    """Summed cross-entropy of the answer tokens, fed (after the last prompt token) on top of the prompt cache."""
    import torch

    n, alen = last.shape[0], max(len(a) for a in answers)
    if alen == 0:
        return 0.0, 0
    tail = torch.full((n, alen + 1), pad_id, dtype=torch.long)
    tail_mask = torch.zeros((n, alen + 1), dtype=torch.long)
    labels = torch.full((n, alen), -100, dtype=torch.long)
    for row, a in enumerate(answers):
        tail[row, 0], tail_mask[row, 0] = last[row, 0], 1
        if a:
            tail[row, 1 : 1 + len(a)] = torch.tensor(a)
            tail_mask[row, 1 : 1 + len(a)] = 1
            labels[row, : len(a)] = torch.tensor(a)
    tail_pos = pos[:, -1:] + torch.arange(alen + 1).unsqueeze(0)
    logits = model(
        input_ids=tail,
        attention_mask=torch.cat([mask[:, :-1], tail_mask], dim=1),
        position_ids=tail_pos,
        past_key_values=prefill,
        use_cache=True,
    ).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(loss), int((labels != -100).sum())


def _encode(tokenizer, prompt_texts: list[str], full_texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts]
    answers = [
        tokenizer(f[len(p) :], add_special_tokens=False)["input_ids"] if f.startswith(p) else []
        for p, f in zip(prompt_texts, full_texts, strict=True)
    ]
    return prompts, answers


def score_all(
    model,
    tokenizer,
    prompt_texts: list[str],
    full_texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    trie: LabelTrie | None = None,
    generate: bool = True,
    desc: str | None = None,
    loss: bool = True,
    end_id: int | None = None,
) -> tuple[list[str], list[str] | None, float]:
    """Free answers, constrained answers (when ``trie``) and mean answer loss, one prompt prefill per batch.

    The prompts' shared prefix is prefilled once for all batches and finished rows leave their batch
    (:mod:`tasks.evaluate.decoding`); the answers are greedy ``generate``'s.

    Args:
        model: a causal LM (or a PEFT model with the wanted adapter active).
        tokenizer: its tokenizer.
        prompt_texts: rendered prompts, ending where the answer starts.
        full_texts: prompt + reference answer (+ end of turn); the answer part is what the loss scores.
        max_new_tokens: generation budget of the free pass.
        batch_size: prompts per batch.
        trie: label trie for the constrained pass (None: no constrained pass).
        generate: False scores the loss only (the forgetting check).
        desc: a name for a progress bar over the batches (None: no bar).
        loss: False skips the answer loss (returned as NaN): answers only.
        end_id: the token that ends an answer (None: :func:`end_token_id` of the chat template).

    Returns:
        ``(free, constrained, loss)``; ``constrained`` is None without a trie, ``free`` is empty strings when
        ``generate`` is False.
    """
    import torch

    end_id = end_token_id(tokenizer) if end_id is None else end_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    prompts, answers = _encode(tokenizer, prompt_texts, full_texts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    free: list[str] = [""] * len(prompts)
    constrained: list[str] | None = [""] * len(prompts) if trie is not None else None
    total_loss, total_tokens = 0.0, 0
    plen = decoding.common_prefix_length(prompts)
    shared = decoding.prefix_cache(model, prompts[0][:plen]) if prompts else None
    batches = list(_batches(order, batch_size))
    for idx in progress(batches, desc=desc, unit="batch") if desc else batches:
        cache, last, mask, pos = decoding.prefill_batch(model, [prompts[i][plen:] for i in idx], shared, plen, pad_id)
        passes = [(free, max_new_tokens, None)] if generate else []
        if trie is not None:
            passes.append((constrained, trie_max(trie), trie))
        for k, (into, budget, constraint) in enumerate(passes):
            own = cache if k == len(passes) - 1 and not loss else copy.deepcopy(cache)  # greedy consumes it
            allowed, forced = (constraint.allowed, constraint.forced) if constraint is not None else (None, None)
            rows = decoding.greedy(model, own, last, mask, pos, budget, end_id, allowed, forced)
            cost.add_tokens("generated", sum(len(r) for r in rows))
            for i, text in zip(idx, _texts(tokenizer, rows), strict=True):
                into[i] = text
        if loss:
            with torch.inference_mode():
                value, count = _loss_on_cache(model, last, mask, pos, cache, [answers[i] for i in idx], pad_id)
            total_loss, total_tokens = total_loss + value, total_tokens + count
    return free, constrained, (total_loss / total_tokens if total_tokens else float("nan"))
