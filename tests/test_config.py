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


def test_extends_lays_the_file_over_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {"name": "base", "data": {"sources": [{"path": "a.jsonl"}]}, "train": {"lora_r": 8, "epochs": 2}}
        )
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "mid.yaml").write_text(yaml.safe_dump({"extends": "../base.yaml", "train": {"lora_r": 4}}))
    (sub / "top.yaml").write_text(yaml.safe_dump({"extends": "mid.yaml", "name": "top"}))
    cfg = load_config(sub / "top.yaml", ["train.epochs=3"])
    assert cfg.name == "top" and cfg.train.lora_r == 4 and cfg.train.epochs == 3  # chain, then the overrides
    assert [s.path for s in cfg.data.sources] == ["a.jsonl"]
    (tmp_path / "list.yaml").write_text(
        yaml.safe_dump({"extends": "base.yaml", "data": {"sources": [{"path": "b.jsonl"}, {"path": "c.jsonl"}]}})
    )
    assert [s.path for s in load_config(tmp_path / "list.yaml").data.sources] == ["b.jsonl", "c.jsonl"]


def test_extends_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(StageError, match="cycle"):
        load_config(a)
    a.write_text("extends: missing.yaml\n")
    with pytest.raises(StageError, match=r"missing.yaml does not exist \(extended by"):
        load_config(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(StageError, match="must name one config file"):
        load_config(a)


def test_production_is_an_override_of_the_demo():
    root = CONFIGS[0].parent
    assert yaml.safe_load((root / "production.yaml").read_text())["extends"] == "demo.yaml"
    demo, prod = (flatten(load_config(root / f).dump()) for f in ("demo.yaml", "production.yaml"))
    changed = {k for k in demo.keys() | prod.keys() if demo.get(k) != prod.get(k)}
    assert changed == {"name", "split.max_train_rows", "train.learning_rate", "train.batch_size", "train.max_val_rows"}
    assert prod["data.sources"] == demo["data.sources"] and prod["pii.allow_list"] == demo["pii.allow_list"]
