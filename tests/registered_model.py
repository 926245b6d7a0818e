"""Test helper: a LoRA adapter on the tiny model, registered as a servable MLflow version (no training needed).

The adapter's LoRA weights are random (``init_lora_weights=False``), so it answers differently from its base: a
merged export or a served model that dropped the adapter would be caught.
"""

import json
from pathlib import Path

from chat_records import SYSTEM, chat_records

from tasks.core import write_records

LABELS = ["billing", "card_lost", "refund"]
PROMPTS = [
    "I was charged twice for my order",
    "My card is gone, I think it was stolen",
    "Please give me my money back",
    "Why is there an extra fee on my bill?",
    "I lost my wallet with the card inside",
    "The item broke, I want a refund",
]


def chat_texts(tok, prompts: list[str]) -> list[str]:
    """Each prompt as the rendered chat (system prompt + user turn) the model answers."""
    return [
        tok.apply_chat_template(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in prompts
    ]


def make_adapter(base_dir: Path, out: Path, train_ref=None) -> Path:
    """A random-weight LoRA adapter for ``base_dir`` with a loraflow manifest naming the train split."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.base_model import weights_sha256

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():  # random init is small; make the adapter's effect clearly visible in greedy answers
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(50.0)
    peft.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "README.md")
    manifest = {
        "base_model": str(base_dir),
        "base_model_name": base_dir.name,
        "base_model_sha256": weights_sha256(base_dir),
        "train": train_ref.model_dump() if train_ref is not None else None,
        "files": [*files, "loraflow-adapter.json"],
    }
    (out / "loraflow-adapter.json").write_text(json.dumps(manifest))
    return out


def register_tiny(client, experiment_id: str, base_dir: Path, tmp_path: Path, name: str = "tiny"):
    """Register a tiny adapter (champion + challenger); returns (registration, adapter_dir, run_id)."""
    from tasks.base_model import weights_sha256
    from tasks.evaluate import EvalResult
    from tasks.register import RegisterConfig, register_candidate
    from tasks.train import TrainResult

    records = chat_records([(p, LABELS[i % 3]) for i, p in enumerate(PROMPTS)])
    train_ref = write_records(records, tmp_path / "train.parquet")
    adapter = make_adapter(base_dir, tmp_path / "adapter", train_ref)
    report = tmp_path / "eval_report.json"
    report.write_text(json.dumps({"max_new_tokens": 6, "test": {"sha256": "t" * 64}}))
    train = TrainResult(
        adapter_dir=str(adapter),
        base_model=str(base_dir),
        base_model_sha256=weights_sha256(base_dir),
        train_rows=len(records),
        val_rows=0,
        steps=1,
        train_loss=None,
        val_loss=None,
        runtime_s=0.0,
        tokens_per_s=0.0,
        trainable_params=1,
        device="cpu/fp32",
    )
    metrics = {"base": {"accuracy_constrained": 0.1}, "candidate": {"accuracy_constrained": 0.9}}
    evaluation = EvalResult(
        metrics=metrics, predictions_uri="p", predictions_csv_uri="c", report_uri=str(report), rows=6, labels=3
    )
    run_id = client.create_run(experiment_id).info.run_id
    reg = register_candidate(run_id, train, evaluation, RegisterConfig(), name, train_ref.sha256)
    return reg, adapter, run_id


__all__ = ["LABELS", "PROMPTS", "SYSTEM", "chat_texts", "make_adapter", "register_tiny"]
