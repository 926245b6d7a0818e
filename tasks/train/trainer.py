"""Fine-tune a LoRA adapter with TRL's ``SFTTrainer``: checkpoints, resume, early stopping, best adapter out.

Heavy imports (torch, transformers, peft, trl, datasets) happen inside the functions.
"""

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tasks import cost
from tasks.base_model import resolve_base_model
from tasks.core import DatasetRef, StageError, file_sha256, read_records
from tasks.train import checkpoints as ckpt
from tasks.train.adapter import adapter_manifest, save_adapter, to_prompt_completion
from tasks.train.callbacks import callbacks_for
from tasks.train.config import TrainConfig, TrainResult
from tasks.train.gpu import labelled_positions_only, load_model, packing_args, pick_device
from tasks.train.interrupt import TrainingInterrupted, interrupted_by, requested, stop_on_signals

OnLog = Callable[[dict, int], None]


def training_datasets(train: DatasetRef, val: DatasetRef, cfg: TrainConfig, base_path: str, template: str | None):
    from datasets import Dataset

    from tasks.prompting import is_chat

    train_df = read_records(train)
    val_df = read_records(val)
    if len(train_df) == 0:
        raise StageError(f"the train split {train.uri} is empty: nothing to fine-tune on.")
    if cfg.max_val_rows is not None and len(val_df) > cfg.max_val_rows:
        val_df = val_df.sample(n=cfg.max_val_rows, random_state=cfg.seed)
    if cfg.early_stopping_patience and not len(val_df):
        raise StageError("train.early_stopping_patience needs val rows to watch, and the val split is empty.")
    tokenizer = None
    if not is_chat(template):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_ds = Dataset.from_list(to_prompt_completion(train_df, tokenizer, template))
    # Val rows shortest first: the val passes are not length-grouped, so an unsorted batch pads every row to its
    # longest one. The val loss is a mean over the same rows either way (batches grouped differently).
    val_rows = sorted(to_prompt_completion(val_df, tokenizer, template), key=lambda r: len(str(r)))
    val_ds = Dataset.from_list(val_rows) if val_rows else None
    return train_ds, val_ds


def lora_config(cfg: TrainConfig, num_layers: int):
    """PEFT's ``LoraConfig`` for the settings (DoRA and rsLoRA are flags on it)."""
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
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def planned_steps(cfg: TrainConfig, train_rows: int) -> int:
    rows_per_step = cfg.batch_size * cfg.grad_accum
    return cfg.max_steps or max(1, int(-(-train_rows * cfg.epochs // rows_per_step)))


def sft_config(cfg: TrainConfig, work: Path, steps: int, has_val: bool, device: str, precision: str):
    """The ``SFTConfig``: the train settings, plus checkpoint/eval cadence and best-adapter selection."""
    from trl import SFTConfig

    save_steps = cfg.save_steps or cfg.eval_steps or max(1, steps // 4)
    return SFTConfig(
        output_dir=str(work),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size * 2,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(round(cfg.warmup_ratio * steps)),
        weight_decay=cfg.weight_decay,
        optim=cfg.optim,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_val else "no",
        eval_steps=cfg.eval_steps or save_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,  # optimizer, scheduler and RNG state too: a resumed run continues exactly
        load_best_model_at_end=has_val,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        report_to="none",
        # TRL's defaults are for GPUs: checkpointing re-runs forwards (slower), bf16 needs a device for it.
        gradient_checkpointing=False,
        bf16=precision == "bf16",
        fp16=False,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        completion_only_loss=True,
        disable_tqdm=True,  # tasks.progress draws the bar (readable in logs too)
        dataset_num_proc=None,
        remove_unused_columns=True,
        **packing_args(cfg),
    )


def _base_and_peft(base_path: str, cfg: TrainConfig, precision: str, init_adapter: str | None):
    """The model to train and the ``peft_config`` for SFTTrainer (None when the champion's adapter is loaded)."""
    model = load_model(base_path, cfg, precision)
    model.config.use_cache = False
    if init_adapter is None:
        return model, lora_config(cfg, model.config.num_hidden_layers)
    from peft import PeftModel

    # from_pretrained loads adapters frozen by default: a warm start must train them.
    model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    if not any(p.requires_grad for p in model.parameters()):
        raise StageError(f"the warm-start adapter {init_adapter} loaded without trainable parameters.")
    return model, None


def warm_start_adapter(cfg: TrainConfig, champion_adapter: str | None, base_sha: str) -> str | None:
    """The champion adapter to start from, or None (init_from=base, no champion, or another base model)."""
    if cfg.init_from != "champion" or not champion_adapter:
        return None
    if adapter_manifest(champion_adapter).get("base_model_sha256") != base_sha:
        print(f"train: champion adapter {champion_adapter} was trained on another base model: starting fresh")
        return None
    return champion_adapter


def train_adapter(
    train: DatasetRef,
    val: DatasetRef,
    cfg: TrainConfig,
    out_dir: str,
    on_log: OnLog | None = None,
    checkpoint_root: str | None = None,
    champion_adapter: str | None = None,
    prompt_template: str | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter; save the one with the lowest val loss (+ tokenizer) into ``out_dir``.

    Args:
        train: training records (chat messages ending with the assistant answer).
        val: validation records; their loss is computed at every checkpoint and picks the adapter saved.
        cfg: training settings.
        out_dir: folder for the adapter files (created; same-named files in it are replaced). The files
            written are listed in its ``loraflow-adapter.json``.
        on_log: called as ``on_log(logs, step)`` for every log line the trainer emits. ``logs`` uses
            ``train_loss`` for the step's training loss and ``val_loss`` for the validation loss (plus
            ``learning_rate``, ``grad_norm``...).
        checkpoint_root: where checkpoints live while training (default ``$LORAFLOW_HOME/checkpoints``); a
            run with the same data, config and base model resumes from its last checkpoint there.
        champion_adapter: the current champion's adapter folder: with ``init_from=champion`` (and the same
            base model weights) training starts from it instead of a fresh LoRA.
        prompt_template: ``data.prompt_template`` (None / ``chat``: the chat template); recorded in the
            adapter's manifest, where evaluation and serving read it.

    Returns:
        A :class:`TrainResult` with the adapter folder, the base model's path and hash, losses and speed.

    Raises:
        TrainingInterrupted: SIGTERM / SIGINT arrived; a checkpoint was written at the step boundary.
    """
    from tasks.home import loraflow_home

    base = resolve_base_model(cfg.base_model)
    train_ds, val_ds = training_datasets(train, val, cfg, base.path, prompt_template)
    device, precision = pick_device(cfg)
    init = warm_start_adapter(cfg, champion_adapter, base.sha256)
    root = Path(checkpoint_root) if checkpoint_root else loraflow_home() / "checkpoints"
    folder = _claim_checkpoint_folder(root, train, val, cfg, base.sha256, init, prompt_template)
    try:
        with cost.Meter("train") as meter, stop_on_signals():
            result, trainer = _fit(base, train_ds, val_ds, cfg, device, precision, folder, init, on_log)
    except BaseException:
        ckpt.release(folder)
        raise
    if requested():
        step = int(trainer.state.global_step)
        last = ckpt.last_checkpoint(folder)
        ckpt.release(folder)
        hint = "run the same command again to resume from it"
        raise TrainingInterrupted(interrupted_by() or 15, step, last[0] if last else None, hint)
    result.update(usage=meter.usage, init_from="champion" if init else "base")
    staged = folder / "adapter"
    trainer.model.peft_config["default"].base_model_name_or_path = base.path
    manifest = {
        "base_model": base.path,
        "base_model_name": base.name,
        "base_model_sha256": base.sha256,
        "lora_config": cfg.model_dump(),
        "train": train.model_dump(),
        "val": val.model_dump(),
        "best_step": result["best_step"],
        "init_from": init or "base",
        "prompt_template": prompt_template or "chat",
    }
    save_adapter(trainer.model, trainer.processing_class, staged, Path(out_dir), manifest)
    shutil.rmtree(folder, ignore_errors=True)  # done: nothing left to resume
    return TrainResult(adapter_dir=str(Path(out_dir)), base_model=base.path, base_model_sha256=base.sha256, **result)


def _claim_checkpoint_folder(root: Path, train, val, cfg, base_sha256: str, init, prompt_template) -> Path:
    """This run's checkpoint folder (keyed on data, config, base and warm start), claimed by this process."""
    for gone in ckpt.clean_stale(root):
        print(f"train: removed {gone} (left by a run that is no longer alive)")
    init_sha = file_sha256(Path(init) / "adapter_model.safetensors") if init else ""
    folder = root / ckpt.checkpoint_key(train.sha256, val.sha256, cfg, base_sha256, init_sha, prompt_template)
    if folder.exists() and ckpt.owner_alive(folder):
        # Two retrains started together on the same data and config: train beside the other one, in a folder
        # of this process's own (no resume for it), instead of failing one of them.
        folder = folder.with_name(f"{folder.name}-pid{os.getpid()}")
    if not cfg.resume:
        shutil.rmtree(folder, ignore_errors=True)
    ckpt.claim(folder)
    return folder


def build_trainer(base, train_ds, val_ds, cfg, device, precision, folder: Path, init, on_log=None):
    """TRL's ``SFTTrainer`` over the prompt-completion rows (tokenized by TRL here), untrained."""
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, peft_config = _base_and_peft(base.path, cfg, precision, init)
    steps_planned = planned_steps(cfg, len(train_ds))
    trainer = SFTTrainer(
        model=model,
        args=sft_config(cfg, folder, steps_planned, val_ds is not None, device, precision),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks_for(cfg, on_log, check_grads=init is not None),
    )
    # disable_tqdm makes the Trainer print every log dict as raw text beside our bar: the Relay callback logs them.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _fit(base, train_ds, val_ds, cfg, device, precision, folder: Path, init, on_log) -> tuple[dict, object]:
    """Build the trainer, resume if a checkpoint exists, train; returns (TrainResult fields, trainer)."""
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    trainer = build_trainer(base, train_ds, val_ds, cfg, device, precision, folder, init, on_log)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    resume = ckpt.last_checkpoint(folder) if cfg.resume else None
    if resume:
        print(f"train: resumed from step {resume[1]} ({resume[0]})", flush=True)
    t0 = time.perf_counter()
    with labelled_positions_only(device):
        output = trainer.train(resume_from_checkpoint=resume[0] if resume else None)
    runtime = time.perf_counter() - t0
    steps = int(output.global_step)
    done_here = steps - (resume[1] if resume else 0)
    rows_per_step = cfg.batch_size * cfg.grad_accum
    tokens = sum(lengths) / len(lengths) * min(done_here * rows_per_step, len(lengths) * cfg.epochs)
    cost.add_tokens("trained", int(tokens))
    state = trainer.state
    best = state.best_model_checkpoint
    fields = {
        "train_rows": len(train_ds),
        "val_rows": len(val_ds) if val_ds is not None else 0,
        "steps": steps,
        "train_loss": last_train_loss(state.log_history),
        "val_loss": float(state.best_metric) if state.best_metric is not None else None,
        "runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens / runtime, 1) if runtime > 0 else 0.0,
        "trainable_params": int(trainable),
        "device": f"{device}/{precision}",
        "best_step": int(best.rsplit("-", 1)[-1]) if best else None,
        "stopped_early": bool(cfg.early_stopping_patience) and steps < state.max_steps and not requested(),
        "resumed_from_step": resume[1] if resume else None,
        "tokens_trained": int(tokens),
    }
    return fields, trainer


def last_train_loss(history: list[dict]) -> float | None:
    """Mean of the last (up to) 10 logged step losses: a less noisy end-of-training loss than the last step."""
    losses = [h["loss"] for h in history if "loss" in h and "train_runtime" not in h]
    if not losses:
        return None
    tail = losses[-10:]
    return float(sum(tail) / len(tail))
