from pathlib import Path

import pytest
import yaml

from flows.config import apply_overrides, flatten, load_config
from flows.params import RetrainParams
from tasks.core import StageError

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert cfg.data.sources, path
    first_lines = path.read_text().splitlines()[:4]
    assert any("loraflow run --config configs/" in line for line in first_lines), f"{path.name}: say how to run it"


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/demo.yaml", ["train.lora_r=8", "train.learning_rate=1e-4", "split.seed=7"])
    assert cfg.train.lora_r == 8 and cfg.train.learning_rate == pytest.approx(1e-4) and cfg.split.seed == 7
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}


def test_every_problem_is_reported_at_once_with_its_key_path():
    with pytest.raises(StageError) as err:
        load_config("configs/demo.yaml", ["train.lora_rr=8", "split.val_fraction=2", "train.lora_r=zero"])
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "train.lora_rr: unknown key" in msg
    assert "split.val_fraction" in msg and "train.lora_r" in msg


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(StageError, match="not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"trian": {}}))
    with pytest.raises(StageError, match="trian: unknown key"):
        load_config(bad)


def test_form_fields_become_overrides_and_flatten_gives_mlflow_params():
    p = RetrainParams(lora_r=4, learning_rate=0.01, gate_margin=0.05, overrides=["train.max_steps=3"])
    assert p.as_overrides() == [
        "train.lora_r=4",
        "train.learning_rate=0.01",
        "register.gate_margin=0.05",
        "train.max_steps=3",
    ]
    flat = flatten(load_config("configs/demo.yaml", p.as_overrides()).dump())
    assert flat["train.lora_r"] == "4" and flat["train.max_steps"] == "3"
    assert flat["validate.contract"] == "demo"
    assert any(k.startswith("pii.") for k in flat) and any(k.startswith("dedup.") for k in flat)
