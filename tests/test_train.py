"""LoRA training on a tiny random model: the adapter learns, the base does not change, only adapter files land."""

import json

import pytest
from chat_records import chat_records as _records
from safetensors.torch import load_file

from tasks.core import StageError, write_records
from tasks.train import TrainConfig, adapter_files, to_prompt_completion, train_adapter


@pytest.fixture()
def splits(tmp_path):
    train = _records(
        [(f"my card {i} was declined", "card_declined") for i in range(6)]
        + [(f"refund {i} not here", "refund_not_received") for i in range(6)]
    )
    val = _records([("card refused at shop", "card_declined"), ("where is my refund", "refund_not_received")])
    return write_records(train, tmp_path / "train.parquet"), write_records(val, tmp_path / "val.parquet")


def test_prompt_completion_split_is_last_assistant_turn():
    rows = to_prompt_completion(_records([("hello", "greeting")]))
    assert rows[0]["completion"] == [{"role": "assistant", "content": "greeting"}]
    assert [m["role"] for m in rows[0]["prompt"]] == ["system", "user"]


def test_record_without_assistant_answer_is_a_stage_error():
    bad = _records([("hello", "x")])
    bad.at[0, "messages"] = bad.at[0, "messages"][:2]
    with pytest.raises(StageError, match="must end with a non-empty assistant message"):
        to_prompt_completion(bad)


def test_lora_trains_adapter_only(tiny_model_dir, splits, tmp_path):
    base_before = load_file(str(tiny_model_dir / "model.safetensors"))
    logs = []
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        max_steps=4,
        batch_size=4,
        learning_rate=5e-2,
        lora_r=4,
        lora_alpha=8,
        max_length=64,
        eval_steps=2,
        max_val_rows=2,
        warmup_ratio=0.0,
    )
    out = tmp_path / "adapter"
    res = train_adapter(*splits, cfg, str(out), on_log=lambda d, step: logs.append((step, d)))

    assert res.steps == 4 and res.train_rows == 12 and res.val_rows == 2
    assert res.trainable_params > 0 and res.val_loss is not None and res.train_loss is not None
    # Only the adapter and tokenizer files: no copy of the base weights.
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "loraflow-adapter.json", "tokenizer.json"} <= names
    assert not any(n.startswith("model") for n in names), names
    assert {p.name for p in adapter_files(out)} == names
    # The adapter refers to its base by path and hash.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    manifest = json.loads((out / "loraflow-adapter.json").read_text())
    assert manifest["base_model_sha256"] == res.base_model_sha256 and len(res.base_model_sha256) == 64
    # LoRA B starts at zero: after training it must not be.
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)
    assert not any("lora" not in k for k in adapter), "adapter file must hold only LoRA weights"
    # The base weights on disk are untouched.
    base_after = load_file(str(tiny_model_dir / "model.safetensors"))
    assert base_before.keys() == base_after.keys()
    assert all((base_before[k] == base_after[k]).all() for k in base_before)
    # Every log reached on_log, with the flow's metric names.
    keys = {k for _, d in logs for k in d}
    assert "train_loss" in keys and "val_loss" in keys and "loss" not in keys
    assert sorted({s for s, d in logs if "train_loss" in d}) == [1, 2, 3, 4]


def test_qlora_on_cpu_is_a_clear_error(tiny_model_dir, splits, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = TrainConfig(base_model=str(tiny_model_dir), qlora=True, max_steps=1)
    with pytest.raises(StageError, match="needs a CUDA GPU"):
        train_adapter(*splits, cfg, str(tmp_path / "a"))


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="lora_rank"):
        TrainConfig(lora_rank=8)


def test_lora_layers_limits_adapter_to_top_layers(tiny_model_dir, splits, tmp_path):
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        max_steps=1,
        batch_size=4,
        lora_r=2,
        lora_layers=1,
        max_length=64,
        target_modules=["q_proj"],
        max_val_rows=1,
    )
    res = train_adapter(*splits, cfg, str(tmp_path / "a"))
    keys = load_file(str(tmp_path / "a" / "adapter_model.safetensors")).keys()
    assert keys and all(".layers.1." in k and "q_proj" in k for k in keys), sorted(keys)
    assert res.trainable_params == 2 * 16 + 16 * 2  # A (r x in 16) + B (out 16 x r) for q_proj of layer 1 only


def test_train_task_streams_losses_to_mlflow(tiny_model_dir, splits, tmp_path, mlflow_sqlite):
    from tasks.train import train_task

    client, exp = mlflow_sqlite
    run_id = client.create_run(exp).info.run_id
    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=3, batch_size=4, max_length=64, max_val_rows=2)
    res = train_task.fn(*splits, cfg, str(tmp_path / "a"), run_id)
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert steps == [1, 2, 3]
    val = client.get_metric_history(run_id, "val_loss")
    assert val and val[-1].step == res.steps and val[-1].value == pytest.approx(res.val_loss)
