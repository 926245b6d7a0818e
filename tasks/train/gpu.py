"""Device-specific training pieces: the device and precision, QLoRA loading, padding-free packing.

Kept apart from the trainer so the GPU benchmark can load a model exactly as training does.
"""

import importlib.util

from tasks.core import StageError
from tasks.train.config import TrainConfig


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_device(cfg: TrainConfig) -> tuple[str, str]:
    """Return (device, precision) for this machine and config, or raise a clear error for what cannot run here."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.qlora:
        if not cuda:
            raise StageError(
                "train.qlora=true needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. Set "
                "train.qlora=false to train plain LoRA on the CPU."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise StageError(
                "train.qlora=true needs bitsandbytes: install the GPU extra (`pip install 'loraflow[gpu]'`)."
            )
    if cfg.packing and not (cuda and flash_attn_installed()):
        raise StageError(
            "train.packing=true needs a CUDA GPU with the flash-attn package: packed rows keep their own "
            "attention only through FlashAttention's per-sequence positions (elsewhere rows would attend to each "
            "other). Set train.packing=false."
        )
    if cfg.precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    else:
        precision = cfg.precision
    return ("cuda" if cuda else "cpu"), precision


def load_model(path: str, cfg: TrainConfig, precision: str):
    """The base model for training: full precision or bf16, 4-bit NF4 for QLoRA, FlashAttention for packing."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.bfloat16 if precision == "bf16" else torch.float32}
    if cfg.packing:
        kwargs["attn_implementation"] = "flash_attention_2"
    if not cfg.qlora:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
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


def packing_args(cfg: TrainConfig) -> dict:
    """SFTConfig settings for packing: padding-free batches whose rows FlashAttention keeps apart."""
    if not cfg.packing:
        return {}
    return {"padding_free": True}
