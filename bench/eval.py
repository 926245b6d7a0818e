"""Evaluation speed: the evaluate stage's batched decoding vs naive per-row ``generate``, on the same rows.

Both sides decode the same test prompts greedily with SmolLM2-135M-Instruct (zero-shot, the config's system
prompt, its chat template), in one process, back to back, for the two kinds of decoding the stage does:

    .venv/bin/python bench/eval.py --task generation --rows 64 --batch-size 64 --threads 2
    .venv/bin/python bench/eval.py --task classification --rows 128 --batch-size 32 --threads 2

* ``generation``: free answers on ViGGO test MRs, the token budget from the references' token-length
  distribution (as the stage derives it);
* ``classification``: label-constrained answers on BANKING77 test messages, decoding restricted to the 77
  intents (the stage's ``accuracy_constrained`` pass); the naive side passes the same label trie to
  ``generate(prefix_allowed_tokens_fn=...)``, as the transformers docs show constrained decoding.

* naive: what a user writes: one ``model.generate`` per prompt (greedy, KV cache on, stops at the end-of-turn
  token, ``torch.inference_mode``), no padding;
* batched: ``tasks.evaluate.score_all`` answers only (length-sorted, left-padded batches, the shared prompt
  prefix prefilled once, finished rows leaving the batch); ``--with-loss`` adds a row for the stage's full call,
  which also computes the answer loss on the references.

It prints rows/s and CPU seconds per row for each side, the speed-up in both, how many answers are identical
(the check that the speed costs no answers), and the load average before and after (the machine is shared).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SYSTEM = "Write one or two sentences about the video game described by this meaning representation."
SYSTEM_B77 = "Classify the banking customer's message. Reply with the intent label only."


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) {five:.2f} (5 min)"


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def naive_answers(model, tok, prompts: list[str], max_new: int, end: int, trie=None) -> list[str]:
    """One greedy ``generate`` call per prompt, as the transformers docs show it (``trie``: constrained to it)."""
    import torch

    answers = []
    for p in prompts:
        enc = tok(p, add_special_tokens=False, return_tensors="pt")
        n = enc["input_ids"].shape[1]
        extra = {}
        if trie is not None:
            extra["prefix_allowed_tokens_fn"] = lambda _batch, ids, n=n: trie.allowed(ids[n:].tolist())
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=end, **extra
            )
        new = out[0, n:].tolist()
        answers.append(tok.decode(new[: new.index(end)] if end in new else new, skip_special_tokens=True).strip())
    return answers


def _generation_rows(tok, rows: int, data: str):
    """ViGGO test MRs (one per MR), their prompts, prompt + first reference, and the stage's token budget."""
    from tasks.evaluate.generation import max_new_from_lengths
    from tasks.prompting import render_full, render_prompt

    df = pd.read_csv(data or SHARED / "viggo" / "test.csv")
    groups = df.groupby("mr", sort=False)["ref"].apply(list).reset_index().head(rows)
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": mr}] for mr in groups["mr"]]
    prompts = [render_prompt(tok, m) for m in msgs]
    fulls = [render_full(tok, m, refs[0]) for m, refs in zip(msgs, groups["ref"], strict=True)]
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for refs in groups["ref"] for r in refs]
    return prompts, fulls, max_new_from_lengths(lengths), None


def _classification_rows(tok, rows: int, data: str, end: int):
    """BANKING77 test messages (a seeded sample), their prompts and the label trie over the 77 intents."""
    import json

    from tasks.evaluate.generation import LabelTrie, label_token_ids, trie_max
    from tasks.prompting import render_full, render_prompt

    folder = Path(data) if data else SHARED / "banking77"
    df = pd.read_csv(folder / "test.csv").sample(n=rows, random_state=0)
    labels = json.loads((folder / "categories.json").read_text())
    msgs = [[{"role": "system", "content": SYSTEM_B77}, {"role": "user", "content": t}] for t in df["text"]]
    prompts = [render_prompt(tok, m) for m in msgs]
    fulls = [render_full(tok, m, c) for m, c in zip(msgs, df["category"], strict=True)]
    trie = LabelTrie(label_token_ids(tok, labels), end)
    return prompts, fulls, trie_max(trie), trie


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["generation", "classification"], default="generation")
    ap.add_argument("--rows", type=int, default=64, help="test rows to decode")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--with-loss", action="store_true", help="also time the stage's call (answers + answer loss)")
    ap.add_argument(
        "--naive-every",
        type=int,
        default=1,
        help="naive side on every k-th row only (rows/s is per row; agreement on those rows): for a loaded machine",
    )
    ap.add_argument("--data", default=None, help="viggo test.csv (generation) or the banking77 folder")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.base_model import resolve_base_model
    from tasks.evaluate import score_all
    from tasks.evaluate.generation import end_token_id

    torch.set_num_threads(args.threads)
    base = resolve_base_model("SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(base.path)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    end = end_token_id(tok)
    if args.task == "generation":
        prompts, fulls, max_new, trie = _generation_rows(tok, args.rows, args.data)
    else:
        prompts, fulls, max_new, trie = _classification_rows(tok, args.rows, args.data, end)
    n = len(prompts)
    print(f"task={args.task} rows={n} max_new_tokens={max_new} batch_size={args.batch_size} threads={args.threads}",
          flush=True)  # fmt: skip

    def batched_call(loss: bool) -> list[str]:
        free, constrained, _ = score_all(
            model, tok, prompts, fulls, max_new, args.batch_size, trie=trie, generate=trie is None, loss=loss
        )
        return free if trie is None else constrained

    what = "answers only" if trie is None else "label-constrained answers only"
    table, load_before = [], _load()
    batched, wall_b, cpu_b = _timed(lambda: batched_call(loss=False))
    table.append((f"batched (score_all, {what})", wall_b, cpu_b, n))
    print(f"batched: {wall_b:.1f} s", flush=True)
    if args.with_loss:
        staged, wall_s, cpu_s = _timed(lambda: batched_call(loss=True))
        table.append(("batched + answer loss (the stage's call)", wall_s, cpu_s, n))
        print(f"batched + loss: {wall_s:.1f} s; answers as without loss: {staged == batched}", flush=True)
    picked = list(range(0, n, args.naive_every))
    naive, wall_n, cpu_n = _timed(lambda: naive_answers(model, tok, [prompts[i] for i in picked], max_new, end, trie))
    naive_name = "naive per-row generate" + (" (prefix_allowed_tokens_fn: the label trie)" if trie else "")
    table.insert(0, (naive_name, wall_n, cpu_n, len(picked)))

    print("| path | rows | wall s | rows/s | CPU s / row |\n|---|---:|---:|---:|---:|")
    for name, wall, cpu, rows in table:
        print(f"| {name} | {rows} | {wall:.1f} | {rows / wall:.3f} | {cpu / rows:.3f} |")
    ratio_wall = (n / wall_b) / (len(picked) / wall_n)
    ratio_cpu = (cpu_n / len(picked)) / (cpu_b / n)
    same = sum(batched[i] == a for i, a in zip(picked, naive, strict=True))
    print(
        f"speed-up {ratio_wall:.1f}x rows/s (wall), {ratio_cpu:.1f}x CPU time; identical answers {same}/{len(picked)}"
    )
    for i, a in zip(picked, naive, strict=True):
        if batched[i] != a:
            print(f"  differs at row {i}: batched {batched[i][:80]!r} / naive {a[:80]!r}")
    print(f"load average before {load_before}, after {_load()}, on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
