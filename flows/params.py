"""The retrain flow's parameters: what a person fills in on the Prefect UI's Run form.

Everything not here comes from the config file; ``overrides`` takes any other ``key.path=value``. Each field has
a description and a default, so Prefect renders a typed form from this model. (No ``from __future__ import
annotations`` here: Prefect builds the form from the live annotations.)
"""

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str = Field(
        "configs/demo.yaml", description="Config file (YAML) to start from, relative to the project folder."
    )
    base_model: str | None = Field(
        None, description="Base model: a local folder, a model-cache name or a hub id. Empty: the config's."
    )
    lora_r: int | None = Field(None, ge=1, le=512, description="LoRA rank. Higher: more capacity and memory.")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha (scaling = alpha / r).")
    epochs: float | None = Field(None, gt=0, description="Training epochs over the train split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Peak learning rate of the LoRA weights.")
    sources: list[str] | None = Field(
        None, description="Extra training-data files (JSONL chat / Alpaca / prompt-completion, CSV, Parquet)."
    )
    feedback_start: dt.date | None = Field(
        None, description="Backfill production feedback from this day (inclusive) before training."
    )
    feedback_end: dt.date | None = Field(None, description="... up to this day (exclusive).")
    gate_margin: float | None = Field(
        None, ge=0, le=1, description="Accuracy points (0-1) the candidate must beat base and champion by."
    )
    dry_run: bool = Field(False, description="Run the data stages and stop before training.")
    overrides: list[str] = Field(
        default_factory=list, description="Any other config value, as key.path=value (e.g. train.max_length=256)."
    )

    def as_overrides(self) -> list[str]:
        """The form's fields as ``--set`` style overrides, applied after the config file."""
        mapping = {
            "base_model": "train.base_model",
            "lora_r": "train.lora_r",
            "lora_alpha": "train.lora_alpha",
            "epochs": "train.epochs",
            "max_steps": "train.max_steps",
            "learning_rate": "train.learning_rate",
            "gate_margin": "register.gate_margin",
        }
        out = [f"{path}={getattr(self, field)}" for field, path in mapping.items() if getattr(self, field) is not None]
        return out + list(self.overrides)
