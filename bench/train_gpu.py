"""GPU training throughput: the seeds' TRL + PEFT recipe vs loraflow's GPU path, side by side in one run.

    python bench/train_gpu.py --steps 30                 # on the GPU machine: QLoRA and bf16 LoRA, seed vs loraflow
    python bench/train_gpu.py --smoke                    # anywhere (CPU): a tiny model, 2 steps, every row runs

Same model shape (Llama-3.2-1B: 16 layers, hidden 2048, random weights: speed does not depend on their values),
same 4,000 synthetic Alpaca-template rows of 40-600 words and 8k BPE tokenizer as
``../shared/bench/seed_recipe_gpu.py``, same LoRA (r16 / alpha 32 on q,k,v,o), same rows per optimizer step (16)
and the same number of steps, the same shuffled data order. Each row reports real tokens/s (padding excluded:
counted from the attention masks the collator hands the model), peak GPU memory, s/step, model FLOPs utilisation
(6 x params x tokens/s over the GPU's dense bf16 peak) and the loss curve.

The rows, per precision (``qlora``: 4-bit NF4 base, ``lora-bf16``: bf16 base):

- ``seed``: exactly the seed recipe: batch 4 x grad-accum 4, TRL's defaults (gradient checkpointing on),
  lora_dropout 0.05, no packing.
- ``loraflow``: the base model loaded by ``tasks.train.gpu.load_model`` (the train stage's own loader), then
  each lever the train stage uses on a GPU: no gradient checkpointing, one micro-batch of 16 (no accumulation),
  fused AdamW, lora_dropout 0, Liger kernels when ``liger-kernel`` is installed, padding-free packing when
  ``flash-attn`` is installed. ``--levers`` runs one extra row per lever so each one's gain shows.

Absolute numbers only from the GPU machine; the smoke run proves the script, not the speed.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, NVIDIA's H200 datasheet (H100 SXM: the same)
ROWS_PER_STEP = 16


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """The seed probe's rows: an instruction, a 20-300-word ticket and a 20-300-word resolution of random words."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    return [
        {
            "text": "### Instruction:\nYou are a helpful customer support agent.\n### Ticket:\n"
            f"{text(rng.randint(20, 300))}\n### Resolution:\n{text(rng.randint(20, 300))}"
        }
        for _ in range(n)
    ]


def build_tokenizer(rows: list[dict], folder: Path, vocab: int = 8000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.json"
    if not path.exists():
        tk = Tokenizer(models.BPE(unk_token="<unk>"))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<pad>", "<eos>"])
        tk.train_from_iterator((r["text"] for r in rows[:2000]), trainer)
        tk.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path), unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def build_model(folder: Path, smoke: bool) -> Path:
    """A random-weight Llama: the 1B shape on the GPU, a 2-layer toy for the smoke run; saved once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    if smoke:
        cfg = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=8000,
            max_position_embeddings=2048,
        )
    else:
        cfg = LlamaConfig(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    return folder


def train_gpu_module():
    """``tasks.train.gpu``, the train stage's own GPU loader; on a machine without Prefect (the bare GPU image),
    imported without running ``tasks/train/__init__.py`` (which imports Prefect for the task wrapper)."""
    import importlib
    import types

    try:
        return importlib.import_module("tasks.train.gpu")
    except ImportError:
        root = Path(__file__).resolve().parents[1] / "tasks" / "train"
        bare = types.ModuleType("tasks.train")
        bare.__path__ = [str(root)]
        sys.modules["tasks.train"] = bare
        return importlib.import_module("tasks.train.gpu")


def row_settings(recipe: str, precision: str, levers: set[str], cuda: bool) -> dict:
    """The trainer settings of one row: the seed recipe, or loraflow's GPU path with ``levers`` switched on."""
    if recipe == "seed":
        return {
            "batch": 4,
            "accum": 4,
            "grad_ckpt": True,
            "dropout": 0.05,
            "optim": "adamw_torch",
            "liger": False,
            "packing": False,
        }
    import importlib.util

    return {
        "batch": 16 if "microbatch" in levers else 4,
        "accum": 1 if "microbatch" in levers else 4,
        "grad_ckpt": "no_ckpt" not in levers,
        "dropout": 0.0,
        "optim": "adamw_torch_fused" if "fused" in levers and cuda else "adamw_torch",
        "liger": "liger" in levers and cuda and importlib.util.find_spec("liger_kernel") is not None,
        "packing": "packing" in levers and cuda and train_gpu_module().flash_attn_installed(),
    }


ALL_LEVERS = ("no_ckpt", "microbatch", "fused", "liger", "packing")


def load_base(model_dir: Path, precision: str, recipe: str, packing: bool, cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM

    if recipe == "loraflow":
        gpu = train_gpu_module()
        cfg = gpu.TrainConfig(qlora=precision == "qlora", packing=packing, precision="bf16" if cuda else "fp32")
        model = gpu.load_model(str(model_dir), cfg, "bf16" if cuda else "fp32")
        return model.to("cuda") if cuda and precision != "qlora" else model
    kw: dict = {"dtype": torch.bfloat16 if cuda else torch.float32}
    if precision == "qlora":
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    if cuda:
        kw["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(model_dir, **kw)


def run_row(name: str, recipe: str, precision: str, settings: dict, model_dir: Path, tok, rows, steps, max_len, work):
    """Train one row; returns its measurements."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    model = load_base(model_dir, precision, recipe, settings["packing"], cuda)
    args = SFTConfig(
        output_dir=str(work / name),
        per_device_train_batch_size=settings["batch"],
        gradient_accumulation_steps=settings["accum"],
        learning_rate=2e-4,
        max_steps=steps,
        logging_steps=1,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        save_strategy="no",
        max_length=max_len,
        seed=0,
        data_seed=0,
        gradient_checkpointing=settings["grad_ckpt"],
        optim=settings["optim"],
        use_liger_kernel=settings["liger"],
        packing=settings["packing"],
        padding_free=settings["packing"],
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    peft_cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=settings["dropout"],
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft_cfg
    )
    counted = {"tokens": 0}
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        mask = batch.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting_collator
    trainer.train_dataloader = None
    params = sum(p.numel() for p in trainer.model.parameters())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    tps = counted["tokens"] / seconds
    out = {
        "row": name,
        "recipe": recipe,
        "precision": precision,
        "settings": settings,
        "steps": steps,
        "real_tokens": counted["tokens"],
        "tokens_per_s": round(tps, 1),
        "s_per_step": round(seconds / steps, 3),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu": round(6 * params * tps / H200_BF16_PEAK, 4) if cuda else None,
        "loss_curve": [round(x, 4) for x in losses],
        "final_loss": round(losses[-1], 4) if losses else None,
    }
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| row | tokens/s | x seed | peak GB | s/step | MFU | final loss | loss vs seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    seeds = {r["precision"]: r for r in results if r["recipe"] == "seed"}
    for r in results:
        s = seeds.get(r["precision"])
        ratio = r["tokens_per_s"] / s["tokens_per_s"] if s else float("nan")
        dloss = (r["final_loss"] - s["final_loss"]) / s["final_loss"] if s and s["final_loss"] else float("nan")
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(
            f"| {r['row']} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {peak} | {r['s_per_step']:.3f} | "
            f"{mfu} | {r['final_loss']} | {100 * dloss:+.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per row (16 rows each)")
    ap.add_argument("--precisions", default="qlora,lora-bf16", help="comma list of qlora, lora-bf16")
    ap.add_argument("--levers", action="store_true", help="also one row per lever, to show each one's gain")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 32 rows: runs on a CPU")
    ap.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/loraflow-train-gpu")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for results.json (default: $OUT)")
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    work = Path(a.work) / ("smoke" if a.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    steps, n_rows, max_len = (2, 32, 128) if a.smoke else (a.steps, 4000, 1024)
    rows = synthetic_rows(n_rows)
    tok = build_tokenizer(rows, work)
    model_dir = build_model(work / "model", a.smoke)
    precisions = [p for p in a.precisions.split(",") if p and (cuda or p != "qlora")]
    plan = []
    for precision in precisions:
        plan.append((f"seed {precision}", "seed", precision, set()))
        if a.levers:
            plan += [(f"loraflow {precision} +{lever}", "loraflow", precision, {lever}) for lever in ALL_LEVERS]
        plan.append((f"loraflow {precision}", "loraflow", precision, set(ALL_LEVERS)))
    results = []
    for name, recipe, precision, levers in plan:
        settings = row_settings(recipe, precision, levers, cuda)
        res = run_row(name, recipe, precision, settings, model_dir, tok, rows, steps, max_len, work)
        print("RESULT", json.dumps(res), flush=True)
        results.append(res)
    device = torch.cuda.get_device_name(0) if cuda else "CPU (smoke: proves the script, not the speed)"
    print(f"\n{device}, {steps} steps x {ROWS_PER_STEP} rows, max_length {max_len}, load {os.getloadavg()[0]:.1f}\n")
    print(table(results))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "train_gpu.json").write_text(json.dumps({"device": device, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
