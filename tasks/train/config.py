"""The train stage's settings (:class:`TrainConfig`) and what it returns (:class:`TrainResult`)."""

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tasks.base_model import DEFAULT_BASE_MODEL
from tasks.core import StrictModel

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(StrictModel):
    """LoRA fine-tuning settings. Defaults are sized for a 135M model on a 2-core CPU."""

    base_model: str = Field(
        DEFAULT_BASE_MODEL,
        description="Base model: a local folder, a name in the model cache, or a hub id (needs a network).",
    )
    init_from: Literal["champion", "base"] = Field(
        "champion",
        description="champion: start from the current champion's adapter when it was trained on the same base "
        "model (same weights hash), else from a fresh LoRA; base: always a fresh LoRA on the base model.",
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
    use_dora: bool = Field(
        False,
        description="DoRA (weight-decomposed LoRA): learns a magnitude per output too. Often a little better at "
        "low rank; each step costs more (it recomputes the weight norm).",
    )
    use_rslora: bool = Field(
        False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r (helps at high rank)."
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
    group_by_length: bool = Field(
        True,
        description="Batch rows of similar length together (less padding, fewer wasted tokens per step); the "
        "order is still shuffled by the seed.",
    )
    packing: bool = Field(
        False,
        description="GPU only: padding-free batches (rows concatenated, attention kept per row by FlashAttention "
        "position ids). Needs CUDA and the flash-attn package; on CPU it would mix rows, so it is refused.",
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="LR schedule after warmup. Linear decay to 0 suits one short epoch."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of steps spent warming the LR up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    optim: Literal["adamw_torch", "adamw_torch_fused"] = Field(
        "adamw_torch", description="Optimizer (transformers' names). Both are AdamW; fused is one kernel per step."
    )
    seed: int = Field(42, description="Seed for LoRA init, data order and dropout.")
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Write a checkpoint (adapter, optimizer, scheduler, RNG state) and compute the val loss "
        "every N optimizer steps (None: about 4 times per run). A killed run resumes from the last one.",
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="Val loss every N steps (None: at every checkpoint). Must divide save_steps: the best "
        "checkpoint is picked by val loss.",
    )
    save_total_limit: int = Field(
        2,
        ge=1,
        description="Checkpoints kept on disk (oldest deleted first); the best one by val loss is always kept too.",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many val-loss evaluations in a row without improvement (None: never). "
        "Either way the adapter with the lowest val loss is the one saved.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0.0, description="A val loss must beat the best by more than this to count as an improvement."
    )
    resume: bool = Field(
        True,
        description="Resume from the last checkpoint of an interrupted run with the same data, config and base "
        "model (false: start over and discard it).",
    )
    logging_steps: int = Field(1, ge=1, description="Log train loss every N steps (each is an MLflow metric point).")
    max_val_rows: int | None = Field(
        256, ge=1, description="Val rows used for the val loss (None: all). Each eval costs a forward pass per row."
    )
    qlora: bool = Field(
        False, description="Load the base in 4-bit (bitsandbytes NF4) and train LoRA on top. CUDA only."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 where the hardware computes it natively (a CUDA GPU that supports it, a CPU with "
        "AVX-512 BF16 or AMX), else fp32. bf16 loads the frozen base in bf16 and autocasts; the LoRA weights "
        "and optimizer state stay fp32.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for training (None: torch's default, one per core)."
    )

    @model_validator(mode="after")
    def _cadence(self):
        if self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(
                f"train.save_steps ({self.save_steps}) must be a multiple of train.eval_steps ({self.eval_steps}): "
                "every checkpoint needs its val loss to be ranked"
            )
        return self


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
    best_step: int | None = None
    stopped_early: bool = False
    resumed_from_step: int | None = None
    init_from: str = "base"
    tokens_trained: int = 0
    usage: dict[str, float] = Field(default_factory=dict)
