"""Evaluation speed: batched, length-sorted generation (the evaluate stage's path) vs naive per-row ``generate``.

Both decode the same ViGGO test prompts greedily with SmolLM2-135M-Instruct (zero-shot, the viggo config's system
prompt) and the same token budget (from the references' length distribution, as the stage does); the table gives
rows/s, the speed-up, and how many answers are identical between the two paths:

    .venv/bin/python bench/eval.py --rows 64 --batch-size 32

The batched path is ``tasks.evaluate.score_all`` (it also computes the answer loss, so the comparison is
conservative); the naive path is one ``model.generate`` call per prompt without padding.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64, help="distinct test MRs to decode")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(SHARED / "viggo" / "test.csv"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.base_model import resolve_base_model
    from tasks.evaluate import score_all
    from tasks.evaluate.generation import end_token_id, max_new_from_lengths

    torch.set_num_threads(args.threads)
    df = pd.read_csv(args.data)
    groups = df.groupby("mr", sort=False)["ref"].apply(list).reset_index().head(args.rows)
    base = resolve_base_model("SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained(base.path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": mr}] for mr in groups["mr"]]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    fulls = [
        tok.apply_chat_template([*m, {"role": "assistant", "content": refs[0]}], tokenize=False)
        for m, refs in zip(msgs, groups["ref"], strict=True)
    ]
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for refs in groups["ref"] for r in refs]
    max_new = max_new_from_lengths(lengths)
    end = end_token_id(tok)

    t0 = time.perf_counter()
    batched, _, _ = score_all(model, tok, prompts, fulls, max_new, args.batch_size)
    t_batched = time.perf_counter() - t0
    print(f"batched: {len(prompts)} rows in {t_batched:.1f} s", flush=True)

    naive = []
    t0 = time.perf_counter()
    for p in prompts:
        ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=end
            )
        new = out[0, ids.shape[1] :].tolist()
        naive.append(tok.decode(new[: new.index(end)] if end in new else new, skip_special_tokens=True).strip())
    t_naive = time.perf_counter() - t0

    same = sum(a == b for a, b in zip(batched, naive, strict=True))
    load = os.getloadavg()
    print(f"rows={len(prompts)} max_new_tokens={max_new} batch_size={args.batch_size} threads={args.threads}")
    print("| path | seconds | rows/s |\n|---|---:|---:|")
    print(f"| naive per-row generate | {t_naive:.1f} | {len(prompts) / t_naive:.2f} |")
    print(f"| batched, length-sorted (score_all) | {t_batched:.1f} | {len(prompts) / t_batched:.2f} |")
    print(f"speed-up {t_naive / t_batched:.1f}x; identical answers {same}/{len(prompts)}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
