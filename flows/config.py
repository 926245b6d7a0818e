"""The retrain flow's configuration: the stage configs, composed, loaded from YAML with ``--set`` overrides.

Each stage owns its config (``tasks/pii/`` defines ``PiiConfig``...); this module only composes them and turns
every problem — unknown keys, wrong types, bad values, in the file or in an override — into one message that
lists them all with their key paths.
"""

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from tasks.core import StageError, StrictModel
from tasks.cost import CostConfig
from tasks.dedup import DedupConfig
from tasks.evaluate import EvalConfig
from tasks.ingest import IngestConfig, SourceConfig
from tasks.pii import PiiConfig
from tasks.register import RegisterConfig
from tasks.split import SplitConfig
from tasks.train import TrainConfig
from tasks.validate import ValidateConfig


class RetrainConfig(StrictModel):
    name: str = Field(
        "loraflow-demo",
        description="Project name: the MLflow experiment and, unless register.model_name says otherwise, the "
        "registered model.",
    )
    data: IngestConfig
    include_feedback: bool = Field(
        True, description="Also train on the backfilled production-feedback partitions under the loraflow home."
    )
    pii: PiiConfig = Field(default_factory=PiiConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    # `validate` and `register` would shadow BaseModel / ABCMeta methods: stored as validate_ / register_, spelled
    # plainly in YAML, overrides and MLflow params.
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    register_: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    cost: CostConfig = Field(default_factory=CostConfig)

    model_config = {**StrictModel.model_config, "populate_by_name": True}

    def dump(self) -> dict[str, Any]:
        """The resolved config as plain data, keyed as in the YAML file."""
        return json.loads(self.model_dump_json(by_alias=True))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise StageError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` items on nested dicts (values parsed as YAML: numbers, booleans, lists)."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    return data


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"{origin}: {err.error_count()} problem(s) in the config:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not a setting of this section)" if e["type"] == "extra_forbidden" else e["msg"]
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_data(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as plain data, with its ``extends:`` chain resolved.

    ``extends: demo.yaml`` (relative to the file that says it) loads that file first and lays this one over it,
    so an override file holds only what changes. Chains are allowed; a cycle is an error.
    """
    path = Path(path)
    if not path.exists():
        origin = f" (extended by {_seen[-1]})" if _seen else ""
        raise StageError(f"config file {path} does not exist{origin}")
    if path.resolve() in _seen:
        chain = " → ".join(str(p) for p in (*_seen, path.resolve()))
        raise StageError(f"config file {path}: `extends` forms a cycle ({chain})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StageError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise StageError(f"config file {path} must be a mapping of sections (data:, train:, ...)")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise StageError(f"config file {path}: `extends` must name one config file (got {parent!r})")
    base = read_config_data(path.parent / parent, (*_seen, path.resolve()))
    return _merge(base, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RetrainConfig:
    """Load a YAML config (``extends:`` resolved), apply overrides, validate; every problem is reported at once."""
    data = apply_overrides(read_config_data(path), list(overrides or []))
    try:
        return RetrainConfig.model_validate(data)
    except ValidationError as e:
        origin = f"{path}" + (f" with overrides {overrides}" if overrides else "")
        raise StageError(format_validation_error(e, origin)) from None


def load_stage_config(path: str | Path | None, section: str) -> Any:
    """One stage's config from a retrain config file (``pii``, ``dedup``...), or that stage's defaults."""
    if not path:
        return RetrainConfig.model_fields[section].default_factory()
    return getattr(load_config(path), section)


def resolve_config(config: str | Path, overrides: list[str], sources: list[str] | None) -> RetrainConfig:
    """The config file plus the run's overrides, extra source files and (when enabled) the feedback partitions."""
    from tasks.backfill import feedback_source

    cfg = load_config(config, overrides)
    extra = [SourceConfig(path=p) for p in sources or []]
    if cfg.include_feedback:
        extra.append(feedback_source())
    if extra:
        cfg.data.sources = [*cfg.data.sources, *extra]
    return cfg


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lora_r": 16}}`` → ``{"train.lora_r": "16"}`` (lists as JSON), for MLflow params."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = data if isinstance(data, str) else json.dumps(data, default=str)
    return out
