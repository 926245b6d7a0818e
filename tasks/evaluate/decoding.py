"""Batched greedy decoding that only computes what changes the answers.

Three things make a batch cheaper than the same rows decoded one by one with ``generate``, at the same greedy
answers:

* **A shared prefix is prefilled once.** Every prompt of an evaluation starts with the same chat-template header
  and system prompt (and, for the few-shot baseline, the same examples). Its KV cache is computed once, copied to
  every row of a batch, and only each row's own suffix is prefilled. Rows are laid out as ``[prefix][pads][suffix]``
  with the pads masked and position ids counted over real tokens only, so each row attends to exactly its own
  tokens at their own positions, as it would alone.
* **Finished rows leave the batch.** A row that emits its end token is dropped from the KV cache, the mask and
  the next step's input, so a step costs the rows still writing, not the batch's longest answer times its width.
* **No logits that nobody reads.** The prefill keeps the last position's logits only (``logits_to_keep=1``).

Label-constrained decoding is the same loop with each row's logits masked to the tokens its label trie allows
(what ``generate``'s ``prefix_allowed_tokens_fn`` does), so both passes share the code and its savings, plus one
of its own: **a row whose label is already decided leaves the batch.** Once a row's tokens so far leave only one
path through the trie to the end token, greedy decoding can only walk that path, so the row takes the rest of
the label without the forward passes that would have confirmed it.
"""

import copy
from collections.abc import Callable

Allowed = Callable[[list[int]], list[int]]
Forced = Callable[[list[int]], list[int] | None]


def common_prefix_length(seqs: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own (the first decode input)."""
    if not seqs:
        return 0
    shortest = min(len(s) for s in seqs)
    n = 0
    while n < shortest - 1 and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def prefix_cache(model, prefix: list[int]):
    """The KV cache of the shared prefix (one row), or None when there is no shared prefix."""
    import torch

    if not prefix:
        return None
    ids = torch.tensor([prefix], dtype=torch.long)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    return out.past_key_values


def _repeat(cache, n: int):
    cache = copy.deepcopy(cache)
    for layer in cache.layers:
        layer.batch_repeat_interleave(n)
    return cache


def prefill_batch(model, suffixes: list[list[int]], shared, prefix_len: int, pad_id: int):
    """Prefill a batch: the shared prefix's cache repeated, then every row's suffix but its last token.

    Args:
        model: the causal LM (adapter active).
        suffixes: each row's tokens after the shared prefix (at least one each).
        shared: :func:`prefix_cache` of the prefix (None when ``prefix_len`` is 0).
        prefix_len: length of the shared prefix.
        pad_id: padding token.

    Returns:
        ``(cache, last, mask, pos)``: the cache over all but each row's last token, the last tokens ``(n, 1)``,
        the attention mask over every prompt column ``(n, width)`` and the position ids ``(n, width)``.
    """
    import torch
    from transformers import DynamicCache

    n, width = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    own = torch.zeros((n, width), dtype=torch.long)
    for row, seq in enumerate(suffixes):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        own[row, width - len(seq) :] = 1
    mask = torch.cat([torch.ones((n, prefix_len), dtype=torch.long), own], dim=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = _repeat(shared, n) if shared is not None else DynamicCache()
    if width > 1:
        with torch.inference_mode():
            cache = model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=pos[:, prefix_len:-1],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
    return cache, ids[:, -1:], mask, pos


def _only_allowed(logits, allowed: list[list[int]]):
    import torch

    bias = torch.full_like(logits, float("-inf"))
    for row, tokens in enumerate(allowed):
        bias[row, tokens] = 0.0
    return logits + bias


def greedy(
    model,
    cache,
    last,
    mask,
    pos,
    max_new: int,
    end_id: int,
    allowed: Allowed | None = None,
    forced: Forced | None = None,
) -> list[list[int]]:
    """Greedy tokens per row (end token excluded), each row stopping at its end token or after ``max_new``.

    ``cache`` (consumed) holds every prompt column but the last, whose tokens are ``last``; ``allowed(tokens so
    far)`` restricts a row's next token (label-constrained decoding). ``forced(tokens so far)`` returns the rest
    of the answer when the constraint leaves only one way to finish it (the rest of a label once its prefix is
    unique), or None: such a row takes those tokens and leaves the batch without another forward pass, since
    greedy decoding under the constraint could only have picked them.
    """
    import torch

    rows = torch.arange(last.shape[0])
    out: list[list[int]] = [[] for _ in range(last.shape[0])]
    step_pos = pos[:, -1:]
    with torch.inference_mode():
        for step in range(max_new):
            logits = model(
                input_ids=last, attention_mask=mask, position_ids=step_pos, past_key_values=cache, use_cache=True
            ).logits[:, -1]
            active = rows.tolist()
            if allowed is not None:
                logits = _only_allowed(logits, [allowed(out[r]) for r in active])
            nxt = logits.argmax(-1)
            going = nxt != end_id
            for k, (r, t, g) in enumerate(zip(active, nxt.tolist(), going.tolist(), strict=True)):
                if g:
                    out[r].append(t)
                    rest = forced(out[r]) if forced is not None else None
                    if rest is not None:
                        out[r].extend(rest[: max_new - len(out[r])])
                        going[k] = False
            keep = going.nonzero().squeeze(1)
            if step == max_new - 1 or len(keep) == 0:
                break
            if len(keep) < len(active):
                for layer in cache.layers:
                    layer.batch_select_indices(keep)
                rows, mask, step_pos, nxt = rows[keep], mask[keep], step_pos[keep], nxt[keep]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype)], dim=1)
            step_pos, last = step_pos + 1, nxt.unsqueeze(1)
    return out
