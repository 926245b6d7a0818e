"""Benchmark: do the merged and GGUF exports of a registered version answer like its adapter?

    LORAFLOW_HOME=... .venv/bin/python bench/export_gguf.py loraflow-demo@champion [--outtype f16] [--rows N]

Needs ``make export-tools`` (llama-cpp-python + the converter). Exports the version as ``merged`` and ``gguf``
into a temporary folder, then answers every prompt of the version's frozen test split (named in the run's
``eval/eval_report.json``) three ways, all greedy and unconstrained, with the model's system prompt: base +
adapter through PEFT (what evaluation scored), the merged safetensors model through transformers, and the GGUF
through llama-cpp-python's chat completion (the chat template embedded in the file). Prints a markdown table:
agreement with the adapter, and exact-match accuracy against the test targets for each.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_prompts(version, rows: int | None):
    import mlflow

    from tasks.core import read_records

    with tempfile.TemporaryDirectory() as tmp:
        report = json.loads(
            Path(mlflow.MlflowClient().download_artifacts(version.run_id, "eval/eval_report.json", tmp)).read_text()
        )
    df = read_records(report["test"]["uri"]).sort_values("id").reset_index(drop=True)
    if rows:
        df = df.head(rows)
    prompts = [[{"role": m["role"], "content": m["content"]} for m in msgs[:-1]] for msgs in df["messages"]]
    targets = [str(msgs[-1]["content"]).strip() for msgs in df["messages"]]
    return prompts, targets


def hf_answers(model, tok, prompts, max_new: int) -> list[str]:
    from tasks.evaluate import score_all

    tok.padding_side = "left"
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    free, _, _ = score_all(model, tok, texts, texts, max_new, 16)
    return free


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="NAME@ALIAS or NAME/VERSION")
    ap.add_argument("--outtype", default="f16", choices=["f16", "q8_0"])
    ap.add_argument("--rows", type=int, default=None, help="Only the first N test rows (by id).")
    args = ap.parse_args()

    from tasks.home import configure_environment

    configure_environment()
    import torch
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.export import export_version
    from tasks.serving_model import download_version, find_base_model

    torch.set_num_threads(os.cpu_count() or 2)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    version = download_version(args.model, work / "version")
    prompts, targets = test_prompts(version, args.rows)
    settings = version.settings
    with_system = [
        p if any(m["role"] == "system" for m in p) else [{"role": "system", "content": settings.system_prompt}, *p]
        for p in prompts
    ]
    max_new = settings.max_new_tokens
    times = {}

    t0 = time.perf_counter()
    merged_res = export_version(args.model, "merged", work / "merged")
    gguf_res = export_version(args.model, "gguf", work / "gguf", outtype=args.outtype)
    times["export merged + gguf"] = time.perf_counter() - t0

    base = find_base_model(settings)
    tok = AutoTokenizer.from_pretrained(base)
    t0 = time.perf_counter()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), version.adapter_dir).eval()
    adapter = hf_answers(peft, tok, with_system, max_new)
    times["adapter"] = time.perf_counter() - t0
    del peft

    t0 = time.perf_counter()
    mtok = AutoTokenizer.from_pretrained(merged_res.out_dir)
    merged = hf_answers(AutoModelForCausalLM.from_pretrained(merged_res.out_dir).eval(), mtok, with_system, max_new)
    times["merged"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    llm = Llama(model_path=str(Path(gguf_res.out_dir) / gguf_res.gguf_file), n_ctx=1024, verbose=False)
    gguf = [
        llm.create_chat_completion(p, max_tokens=max_new, temperature=0.0)["choices"][0]["message"]["content"].strip()
        for p in with_system
    ]
    times["gguf"] = time.perf_counter() - t0

    n = len(prompts)

    def agree(xs):
        return sum(a == b for a, b in zip(xs, adapter, strict=True)) / n

    def acc(xs):
        return sum(a == t for a, t in zip(xs, targets, strict=True)) / n

    print(f"\n{args.model} (v{version.version}), {n} test prompts, greedy, max_new_tokens={max_new}\n")
    print("| answers from | agreement with adapter | accuracy (free) | seconds |")
    print("|---|---:|---:|---:|")
    print(f"| base + adapter (PEFT) | 100.0 % | {acc(adapter):.1%} | {times['adapter']:.0f} |")
    print(f"| merged safetensors (transformers) | {agree(merged):.1%} | {acc(merged):.1%} | {times['merged']:.0f} |")
    print(f"| GGUF {args.outtype} (llama-cpp-python) | {agree(gguf):.1%} | {acc(gguf):.1%} | {times['gguf']:.0f} |")
    print(f"\nexport merged + gguf: {times['export merged + gguf']:.0f} s; GGUF {gguf_res.gguf_file}")
    diffs = [(a, g) for a, g in zip(adapter, gguf, strict=True) if a != g][:5]
    if diffs:
        print("first disagreements (adapter → gguf): " + "; ".join(f"{a!r} → {g!r}" for a, g in diffs))


if __name__ == "__main__":
    main()
