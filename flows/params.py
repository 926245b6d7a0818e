"""The retrain flow's parameters: what a person fills in on the Prefect UI's Run form.

The form shows what will run: each field's default is the value ``configs/demo.yaml`` (the ``config`` field's
default) gives it, and its description says so ("configs/demo.yaml: 16"). A field left at that value leaves the
chosen config's own value alone; a changed field overrides it. So picking another config file and nothing else
runs that file as written. Everything not here comes from the config file; ``overrides`` takes any other
``key.path=value``. (No ``from __future__ import annotations`` here: Prefect builds the form from the live
annotations.)
"""

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CONFIG = "configs/demo.yaml"
_ROOT = Path(__file__).resolve().parents[1]

# form field -> config key it overrides
CONFIG_KEYS = {
    "base_model": "train.base_model",
    "lora_r": "train.lora_r",
    "lora_alpha": "train.lora_alpha",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "learning_rate": "train.learning_rate",
    "gate_margin": "register.gate_margin",
}


@cache
def config_values(config: str = DEFAULT_CONFIG) -> dict[str, Any]:
    """The form fields' values in ``config`` (resolved with every stage's defaults), by form field name."""
    from flows.config import load_config

    path = Path(config)
    cfg = load_config(path if path.is_absolute() or path.exists() else _ROOT / path)
    out = {}
    for field, key in CONFIG_KEYS.items():
        section, name = key.split(".")
        out[field] = getattr(getattr(cfg, {"register": "register_"}.get(section, section)), name)
    out["max_steps"] = out["max_steps"] or 0  # the form has no None: 0 means "the epochs decide"
    return out


_D = config_values()


def _from(field: str, text: str) -> str:
    return f"{text} ({DEFAULT_CONFIG}: {_D[field]}; leave it to keep the chosen config's value)"


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(DEFAULT_CONFIG, description="Config file (YAML) to start from, relative to the project folder.")
    base_model: str = Field(
        _D["base_model"], description=_from("base_model", "Base model: a local folder, a model-cache name or a hub id")
    )
    lora_r: int = Field(_D["lora_r"], ge=1, le=512, description=_from("lora_r", "LoRA rank; higher: more capacity"))
    lora_alpha: int = Field(_D["lora_alpha"], ge=1, description=_from("lora_alpha", "LoRA alpha (scaling = alpha / r)"))
    epochs: float = Field(_D["epochs"], gt=0, description=_from("epochs", "Training epochs over the train split"))
    max_steps: int = Field(
        _D["max_steps"], ge=0, description=_from("max_steps", "Stop after this many optimizer steps; 0: epochs decide")
    )
    learning_rate: float = Field(
        _D["learning_rate"], gt=0, lt=1, description=_from("learning_rate", "Peak learning rate of the LoRA weights")
    )
    gate_margin: float = Field(
        _D["gate_margin"],
        ge=0,
        le=1,
        description=_from("gate_margin", "Accuracy points (0-1) the candidate must beat base and champion by"),
    )
    sources: list[str] = Field(
        default_factory=list,
        description="Extra training-data files (JSONL chat / Alpaca / prompt-completion, CSV, Parquet); empty: none.",
    )
    feedback_start: dt.date | None = Field(
        None, description="Backfill production feedback from this day (inclusive) before training; None: no backfill."
    )
    feedback_end: dt.date | None = Field(None, description="... up to this day (exclusive); None: no backfill.")
    dry_run: bool = Field(False, description="Run the data stages and stop before training.")
    overrides: list[str] = Field(
        default_factory=list, description="Any other config value, as key.path=value (e.g. train.max_length=256)."
    )

    def as_overrides(self) -> list[str]:
        """The fields changed from their form default, as ``--set`` style overrides applied after the config file;
        then ``overrides``."""
        out = []
        for field, key in CONFIG_KEYS.items():
            value = getattr(self, field)
            if value != _D[field]:
                out.append(f"{key}={'null' if field == 'max_steps' and value == 0 else value}")
        return out + list(self.overrides)
