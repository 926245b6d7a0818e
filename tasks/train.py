"""Train a LoRA adapter on the train split with TRL's ``SFTTrainer`` and PEFT, validating on the val split.

Each record becomes a conversational prompt-completion example: ``prompt`` = every message but the last,
``completion`` = the last (assistant) message. TRL then computes the loss on the completion tokens only
(``completion_only_loss``), i.e. exactly ``<answer><|im_end|>\\n``: the model learns the answer and to stop.
(``assistant_only_loss`` on a ``messages`` dataset needs ``{% generation %}`` markers that SmolLM2's chat
template does not have.)

Only the adapter is written (``adapter_model.safetensors`` + ``adapter_config.json``) with the tokenizer files;
``adapter_config.json``'s ``base_model_name_or_path`` and ``loraflow-adapter.json`` name the base model folder
and the sha256 of its weights, so the adapter refers to its base rather than copying it.

Heavy imports (torch, transformers, peft, trl, datasets) happen inside the functions.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from prefect import task
from pydantic import BaseModel, Field

from tasks.base_model import DEFAULT_BASE_MODEL, resolve_base_model
from tasks.core import DatasetRef, StageError, StrictModel, read_records

ADAPTER_MANIFEST = "loraflow-adapter.json"


def adapter_files(adapter_dir: str | Path) -> list[Path]:
    """The files that make up an adapter folder (as listed in its manifest; else the PEFT + tokenizer files)."""
    folder = Path(adapter_dir)
    manifest = folder / ADAPTER_MANIFEST
    if manifest.exists():
        names = json.loads(manifest.read_text()).get("files") or []
        if names:
            return [folder / n for n in names if (folder / n).is_file()]
    keep = ("adapter_", "tokenizer", "special_tokens", "chat_template", "vocab", "merges", ADAPTER_MANIFEST)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(keep))


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(StrictModel):
    """LoRA fine-tuning settings. Defaults are sized for a 135M model on a 2-core CPU."""

    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: a local folder, a name in the model cache, or a hub id (needs a network).",
    )
    lora_r: int = Field(16, ge=1, le=512, description="LoRA rank. Higher: more capacity, memory and time per step.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha / r (2x here).")
    lora_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input. 0: ~14 % faster steps on CPU; raise if it overfits.",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(ALL_LINEAR),
        description="Modules that get LoRA weights. All 7 projections (4.9M params at r16) learn fastest per step.",
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="Only put LoRA on the top N transformer layers (None: all). Fewer layers: the backward pass "
        "stops earlier (faster steps), less capacity.",
    )
    learning_rate: float = Field(
        1e-3, gt=0, lt=1, description="Peak LR. LoRA on a small model takes 5e-4..2e-3; TRL's 2e-5 barely moves it."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the train split (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(16, ge=1, description="Rows per device step. Larger: fewer, slower steps, same tokens/s.")
    grad_accum: int = Field(
        1, ge=1, description="Steps accumulated per optimizer update (effective batch = batch x accum)."
    )
    max_length: int = Field(
        256,
        ge=8,
        description="Tokens per example; longer rows are cut at the end (the answer would be lost: keep rows short).",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="LR schedule after warmup. Linear decay to 0 suits one short epoch."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps spent warming the LR up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    seed: int = Field(42, description="Seed for LoRA init, data order and dropout.")
    eval_steps: int | None = Field(
        None, ge=1, description="Compute val loss every N steps (None: about 4 times per run, and at the end)."
    )
    logging_steps: int = Field(1, ge=1, description="Log train loss every N steps (each is an MLflow metric point).")
    max_val_rows: int | None = Field(
        256, ge=1, description="Val rows used for the val loss (None: all). Each eval costs a forward pass per row."
    )
    qlora: bool = Field(
        False, description="Load the base in 4-bit (bitsandbytes NF4) and train LoRA on top. CUDA only."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a CUDA GPU that supports it, fp32 on CPU (bf16 on CPU: see the docs)."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for training (None: torch's default, one per core)."
    )


class TrainResult(BaseModel):
    """What training returns: where the adapter is and how the run went (never the model itself)."""

    adapter_dir: str
    base_model: str
    base_model_sha256: str
    train_rows: int
    val_rows: int
    steps: int
    train_loss: float | None
    val_loss: float | None
    runtime_s: float
    tokens_per_s: float
    trainable_params: int
    device: str


# --------------------------------------------------------------------------------------------- data


def to_prompt_completion(records) -> list[dict]:
    """Records → ``{"prompt": [...], "completion": [last assistant message]}`` rows.

    Raises:
        StageError: a record does not end with a non-empty assistant message.
    """
    rows = []
    for rid, messages in zip(records["id"], records["messages"], strict=True):
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant" or not str(msgs[-1]["content"]).strip():
            raise StageError(
                f"record {rid} cannot be trained on: a training record must end with a non-empty assistant "
                "message after at least one prompt message (the validate stage should have quarantined it)."
            )
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    return rows


# --------------------------------------------------------------------------------------------- device


def pick_device(cfg: TrainConfig) -> tuple[str, str]:
    """Return (device, precision) for this machine and config, or raise a clear error for QLoRA on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.qlora:
        if not cuda:
            raise StageError(
                "train.qlora=true needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. Set "
                "train.qlora=false to train plain LoRA on the CPU."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise StageError(
                "train.qlora=true needs bitsandbytes: install the GPU extra (`pip install 'loraflow[gpu]'`)."
            ) from None
    if cfg.precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    else:
        precision = cfg.precision
    return ("cuda" if cuda else "cpu"), precision


# --------------------------------------------------------------------------------------------- training


def _load_model(path: str, cfg: TrainConfig, device: str, precision: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _lora_config(cfg: TrainConfig, num_layers: int):
    from peft import LoraConfig

    layers = None
    if cfg.lora_layers is not None and cfg.lora_layers < num_layers:
        layers = list(range(num_layers - cfg.lora_layers, num_layers))
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def train_adapter(
    train: DatasetRef,
    val: DatasetRef,
    cfg: TrainConfig,
    out_dir: str,
    on_log: Callable[[dict, int], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter and save only the adapter (+ tokenizer) into ``out_dir``.

    Args:
        train: training records (chat messages ending with the assistant answer).
        val: validation records; their loss is computed during training and at the end.
        cfg: training settings.
        out_dir: folder for the adapter files (created; same-named files in it are replaced). The files
            written are listed in its ``loraflow-adapter.json``.
        on_log: called as ``on_log(logs, step)`` for every log line the trainer emits. ``logs`` uses
            ``train_loss`` for the step's training loss and ``val_loss`` for the validation loss (plus
            ``learning_rate``, ``grad_norm``...).

    Returns:
        A :class:`TrainResult` with the adapter folder, the base model's path and hash, losses and speed.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    base = resolve_base_model(cfg.base_model)
    train_df = read_records(train)
    val_df = read_records(val)
    if len(train_df) == 0:
        raise StageError(f"the train split {train.uri} is empty: nothing to fine-tune on.")
    if cfg.max_val_rows is not None and len(val_df) > cfg.max_val_rows:
        val_df = val_df.sample(n=cfg.max_val_rows, random_state=cfg.seed)
    train_ds = Dataset.from_list(to_prompt_completion(train_df))
    val_ds = Dataset.from_list(to_prompt_completion(val_df)) if len(val_df) else None

    device, precision = pick_device(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = _load_model(base.path, cfg, device, precision)
    model.config.use_cache = False
    lora = _lora_config(cfg, model.config.num_hidden_layers)

    rows_per_step = cfg.batch_size * cfg.grad_accum
    planned_steps = cfg.max_steps or max(1, int(-(-len(train_ds) * cfg.epochs // rows_per_step)))
    eval_steps = cfg.eval_steps or max(1, planned_steps // 4)

    class _Relay(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or on_log is None or "train_runtime" in logs:
                return
            out = {}
            for key, value in logs.items():
                if not isinstance(value, int | float):
                    continue
                out[{"loss": "train_loss", "eval_loss": "val_loss"}.get(key, key)] = float(value)
            if out:
                on_log(out, int(state.global_step))

    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="loraflow-train-"))
    try:
        args = SFTConfig(
            output_dir=str(work),
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.epochs,
            max_steps=cfg.max_steps or -1,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size * 2,
            gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=int(round(cfg.warmup_ratio * planned_steps)),
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            data_seed=cfg.seed,
            logging_steps=cfg.logging_steps,
            eval_strategy="steps" if val_ds is not None else "no",
            eval_steps=eval_steps,
            save_strategy="no",
            report_to="none",
            # TRL's defaults are for GPUs: checkpointing re-runs forwards (slower), bf16 needs a device for it.
            gradient_checkpointing=False,
            bf16=precision == "bf16",
            fp16=False,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
            dataloader_pin_memory=device == "cuda",
            completion_only_loss=True,
            disable_tqdm=False,
            dataset_num_proc=None,
            remove_unused_columns=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_Relay()],
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        train_tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
        t0 = time.perf_counter()
        output = trainer.train()
        runtime = time.perf_counter() - t0
        steps = int(output.global_step)
        val_loss = None
        if val_ds is not None:
            # The final val loss is logged once per step: reuse the periodic eval when it ran at the last step;
            # otherwise evaluate() reports it through _Relay (no second on_log call here).
            at_end = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == steps]
            val_loss = float(at_end[-1]) if at_end else float(trainer.evaluate()["eval_loss"])
        train_loss = _last_train_loss(trainer.state.log_history)
        seen_rows = (
            min(steps * rows_per_step, len(train_ds) * cfg.epochs) if cfg.max_steps else len(train_ds) * cfg.epochs
        )
        seen_tokens = train_tokens * seen_rows / max(1, len(train_ds))

        # Written into a fresh folder and moved in, so out_dir never mixes this adapter with older files.
        staged = work / "adapter"
        trainer.model.peft_config["default"].base_model_name_or_path = base.path
        trainer.model.save_pretrained(str(staged), safe_serialization=True)
        tokenizer.save_pretrained(str(staged))
        (staged / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub says nothing true about this run
        files = sorted(p.name for p in staged.iterdir() if p.is_file())
        manifest = {
            "base_model": base.path,
            "base_model_name": base.name,
            "base_model_sha256": base.sha256,
            "lora_config": cfg.model_dump(),
            "train": train.model_dump(),
            "val": val.model_dump(),
            "files": [*files, ADAPTER_MANIFEST],
        }
        (staged / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        out.mkdir(parents=True, exist_ok=True)
        for name in manifest["files"]:
            shutil.move(str(staged / name), str(out / name))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return TrainResult(
        adapter_dir=str(out),
        base_model=base.path,
        base_model_sha256=base.sha256,
        train_rows=len(train_ds),
        val_rows=len(val_ds) if val_ds is not None else 0,
        steps=steps,
        train_loss=train_loss,
        val_loss=val_loss,
        runtime_s=round(runtime, 2),
        tokens_per_s=round(seen_tokens / runtime, 1) if runtime > 0 else 0.0,
        trainable_params=int(trainable),
        device=f"{device}/{precision}",
    )


def _last_train_loss(history: list[dict]) -> float | None:
    """Mean of the last (up to) 10 logged step losses: a less noisy end-of-training loss than the last step."""
    losses = [h["loss"] for h in history if "loss" in h and "train_runtime" not in h]
    if not losses:
        return None
    tail = losses[-10:]
    return float(sum(tail) / len(tail))


@task(name="train")
def train_task(
    train: DatasetRef, val: DatasetRef, cfg: TrainConfig, out_dir: str, mlflow_run_id: str | None = None
) -> TrainResult:
    """Prefect wrapper: train and stream ``train_loss`` / ``val_loss`` per step into the MLflow run."""
    on_log = None
    if mlflow_run_id:
        import mlflow

        client = mlflow.MlflowClient()

        def on_log(logs: dict, step: int) -> None:
            for key in ("train_loss", "val_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    client.log_metric(mlflow_run_id, key, logs[key], step=step)

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.stderr.flush()
    return train_adapter(train, val, cfg, out_dir, on_log=on_log)
