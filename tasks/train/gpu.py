"""Device-specific training pieces: the device and precision, QLoRA loading, padding-free packing.

Kept apart from the trainer so the GPU benchmark can load a model exactly as training does.
"""

import importlib.util
from contextlib import contextmanager

from tasks.core import StageError
from tasks.train.config import TrainConfig


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX), read from /proc/cpuinfo.

    On such CPUs oneDNN runs bf16 matmuls about twice as fast as fp32 (``bench/train.py --compare-trl``: 1.7x
    tokens/s on the demo); elsewhere bf16 is emulated and slower, so ``auto`` keeps fp32 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


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
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
        precision = "bf16" if native else "fp32"
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


@contextmanager
def labelled_positions_only(device: str):
    """While training on the CPU, TRL's fused LM head scores only the positions that carry a label.

    TRL's SFTTrainer computes the loss through a chunked LM head (``trl.trainer.utils.add_fused_lm_head``). On
    CUDA/XPU it projects only the hidden states whose label is not -100 (the completion tokens); on every other
    device it projects all positions, so that graph compilers (Neuron, XLA) see one tile shape per batch. The CPU
    runs eagerly and recompiles nothing, and with ``completion_only_loss`` the prompt positions it projects are
    thrown away: for a classifier most of the LM head's work, and on a 135M model with a 49k vocabulary the LM
    head is a large share of a step (``bench/train.py --compare-trl`` on the demo: 1.57x → 2.54x plain TRL's
    tokens/s). This scores the labelled positions only, on the CPU too, with TRL's own code path (the one it runs
    on CUDA): the same loss, gradients and logged metrics (``tests/test_train.py``).
    """
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    if device != "cpu" or not callable(original):
        yield
        return
    trl_utils._use_triton = lambda dev: dev.type == "cpu" or original(dev)
    try:
        yield
    finally:
        trl_utils._use_triton = original
