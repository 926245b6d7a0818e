"""LoRA training on a tiny random model: the adapter learns, the base does not change, only adapter files land;
checkpoints, early stopping on the best val loss, resume after SIGKILL, SIGTERM, DoRA / rsLoRA, warm start."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chat_records import chat_records as _records
from safetensors.torch import load_file

from tasks.core import StageError, write_records
from tasks.train import TrainConfig, adapter_files, to_prompt_completion, train_adapter


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Checkpoints default to $LORAFLOW_HOME/checkpoints: keep them out of the real home."""
    monkeypatch.setenv("LORAFLOW_HOME", str(tmp_path / "home"))


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


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, tiny_model_dir, splits, tmp_path):
    import torch

    from tasks.train import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, want in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(gpu, "cpu_has_bf16", lambda native=native: native)
        assert gpu.pick_device(TrainConfig()) == ("cpu", want)
        assert gpu.pick_device(TrainConfig(precision="fp32")) == ("cpu", "fp32")
    # bf16 on the CPU trains for real: the base runs in bf16, the LoRA weights (and the saved adapter) stay fp32.
    cfg = TrainConfig(base_model=str(tiny_model_dir), max_steps=2, batch_size=4, lora_r=4, lora_alpha=8,
                      max_length=64, max_val_rows=2, precision="bf16")  # fmt: skip
    res = train_adapter(*splits, cfg, str(tmp_path / "adapter"))
    assert res.device == "cpu/bf16" and res.val_loss is not None and res.val_loss == res.val_loss
    assert {t.dtype for t in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).values()} == {
        torch.float32
    }


def test_lm_head_on_labelled_positions_gives_the_same_loss_and_gradients(tiny_model_dir, splits, tmp_path):
    """The CPU shortcut (only completion positions through the LM head) changes the work, not the result."""
    import torch

    from tasks.base_model import resolve_base_model
    from tasks.train.gpu import labelled_positions_only
    from tasks.train.trainer import build_trainer, training_datasets

    cfg = TrainConfig(base_model=str(tiny_model_dir), batch_size=4, lora_r=4, lora_alpha=8, max_length=64,
                      precision="fp32")  # fmt: skip
    base = resolve_base_model(str(tiny_model_dir))
    train_ds, val_ds = training_datasets(*splits, cfg, base.path, None)
    trainer = build_trainer(base, train_ds, val_ds, cfg, "cpu", "fp32", tmp_path / "ck", None)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert (batch["labels"] == -100).float().mean() > 0.3  # prompts are masked: there is work to skip
    model = trainer.model.train()

    def loss_and_grads():
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_loss, full_grads = loss_and_grads()
    calls = []
    import trl.trainer.utils as trl_utils

    with labelled_positions_only("cpu"):
        patched = trl_utils._use_triton
        trl_utils._use_triton = lambda dev: calls.append(dev) or patched(dev)
        try:
            compact_loss, compact_grads = loss_and_grads()
        finally:
            trl_utils._use_triton = patched
        assert patched(torch.device("cpu")) is True
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored
    assert calls, "the fused LM head did not consult the switch: TRL's code path changed"
    assert compact_loss == pytest.approx(full_loss, rel=1e-5)
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name, g in full_grads.items():
        torch.testing.assert_close(compact_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


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


def _tiny_cfg(tiny_model_dir, **kw) -> TrainConfig:
    base = dict(base_model=str(tiny_model_dir), batch_size=4, lora_r=4, lora_alpha=8, max_length=64, max_val_rows=4)
    return TrainConfig(**{**base, **kw})


@pytest.fixture()
def conflicting_splits(tmp_path):
    """Val rows contradict the train rows: val loss falls while the format is learnt, then rises."""
    train = _records(
        [(f"my card {i} was declined", "card_declined") for i in range(8)]
        + [(f"refund {i} not here", "refund_not_received") for i in range(8)]
    )
    val = _records([("my card 1 was declined", "refund_not_received"), ("refund 1 not here", "card_declined")])
    return write_records(train, tmp_path / "train.parquet"), write_records(val, tmp_path / "val.parquet")


def test_best_adapter_is_the_val_loss_minimum_and_early_stopping_stops(tiny_model_dir, conflicting_splits, tmp_path):
    logs = []
    cfg = _tiny_cfg(
        tiny_model_dir, max_steps=40, learning_rate=5e-2, save_steps=1, early_stopping_patience=3, warmup_ratio=0.0
    )
    res = train_adapter(
        *conflicting_splits, cfg, str(tmp_path / "a"), on_log=lambda d, s: logs.append((s, d)),
        checkpoint_root=str(tmp_path / "ck"),
    )  # fmt: skip
    curve = {s: d["val_loss"] for s, d in logs if "val_loss" in d}
    assert sorted(curve) == list(range(1, res.steps + 1)), "val loss at every checkpoint"
    best = min(curve, key=curve.get)
    assert res.best_step == best and res.val_loss == pytest.approx(curve[best])
    assert res.stopped_early and res.steps < 40
    # Patience 3: training ran exactly three evaluations past the best one.
    assert res.steps == best + 3
    assert json.loads((tmp_path / "a" / "loraflow-adapter.json").read_text())["best_step"] == best
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir()), "checkpoints removed when done"


def test_no_early_stopping_runs_every_step_and_keeps_at_most_the_limit(tiny_model_dir, splits, tmp_path):
    seen = []

    def on_log(d, step):
        if "val_loss" in d:
            seen.append(sorted(p.name for p in (tmp_path / "ck").glob("*/checkpoint-*")))

    cfg = _tiny_cfg(tiny_model_dir, max_steps=6, save_steps=2, save_total_limit=1)
    res = train_adapter(*splits, cfg, str(tmp_path / "a"), on_log=on_log, checkpoint_root=str(tmp_path / "ck"))
    assert res.steps == 6 and not res.stopped_early and res.best_step in (2, 4, 6)
    # At each eval, at most the limit plus the best checkpoint are on disk (+ the one about to be written).
    assert all(len(names) <= 3 for names in seen), seen


def test_dora_and_rslora_are_config_values(tiny_model_dir, splits, tmp_path):
    for flag in ("use_dora", "use_rslora"):
        out = tmp_path / flag
        train_adapter(*splits, _tiny_cfg(tiny_model_dir, max_steps=2, **{flag: True}), str(out))
        assert json.loads((out / "adapter_config.json").read_text())[flag] is True
        keys = load_file(str(out / "adapter_model.safetensors")).keys()
        assert any("lora_magnitude_vector" in k for k in keys) == (flag == "use_dora"), sorted(keys)[:4]


def test_packing_on_cpu_is_a_clear_error(tiny_model_dir, splits, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(StageError, match="packing=true needs a CUDA GPU with the flash-attn"):
        train_adapter(*splits, _tiny_cfg(tiny_model_dir, packing=True, max_steps=1), str(tmp_path / "a"))


@pytest.mark.gpu
def test_qlora_trains_and_saves_an_adapter_on_gpu(tiny_model_dir, splits, tmp_path):
    res = train_adapter(*splits, _tiny_cfg(tiny_model_dir, qlora=True, max_steps=3), str(tmp_path / "a"))
    assert res.steps == 3 and res.device.startswith("cuda")
    adapter = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)


def _worker(job: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = Path(__file__).with_name("train_worker.py")
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env,
    )  # fmt: skip


def _wait_for_checkpoint(root: Path, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Block until a complete checkpoint exists under root; returns its step."""
    from tasks.train.checkpoints import last_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        for folder in root.glob("*"):
            found = last_checkpoint(folder)
            if found:
                return found[1]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _job(tiny_model_dir, splits, tmp_path, **extra) -> dict:
    cfg = dict(base_model=str(tiny_model_dir), batch_size=4, lora_r=4, lora_alpha=8, max_length=64, max_val_rows=2,
               max_steps=24, save_steps=4)  # fmt: skip
    return {"cfg": cfg, "train": splits[0].model_dump(), "val": splits[1].model_dump(), "out": str(tmp_path / "a"),
            "root": str(tmp_path / "ck"), "sleep_s": 0.3, **extra}  # fmt: skip


def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(tiny_model_dir, splits, tmp_path, mlflow_sqlite):
    client, _ = mlflow_sqlite
    job = _job(tiny_model_dir, splits, tmp_path, mlflow_uri=os.environ["MLFLOW_TRACKING_URI"])
    proc = _worker(job)
    _wait_for_checkpoint(tmp_path / "ck", proc)
    proc.kill()
    out = proc.communicate()[0]
    killed_run = next(line.split()[1] for line in out.splitlines() if line.startswith("RUN "))
    assert client.get_run(killed_run).info.status == "RUNNING", "SIGKILL leaves the run open"
    from tasks.train.checkpoints import last_checkpoint

    step = max(last_checkpoint(f)[1] for f in (tmp_path / "ck").glob("*") if last_checkpoint(f))
    assert 4 <= step < 24

    again = _worker(job)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out
    assert f"resumed from step {step}" in out
    res = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    assert res["steps"] == 24 and res["resumed_from_step"] == step
    # The new run closed the one whose process was killed.
    assert client.get_run(killed_run).info.status == "KILLED"
    assert client.get_run(killed_run).data.tags["loraflow.closed_reason"]


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint_and_a_killed_run(
    tiny_model_dir, splits, tmp_path, mlflow_sqlite
):
    client, _ = mlflow_sqlite
    proc = _worker(_job(tiny_model_dir, splits, tmp_path, mlflow_uri=os.environ["MLFLOW_TRACKING_URI"]))
    first = _wait_for_checkpoint(tmp_path / "ck", proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out
    stopped = [line for line in out.splitlines() if line.startswith("STOPPED ")]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0] and "resume" in stopped[0]
    run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("RUN "))
    assert client.get_run(run_id).info.status == "KILLED"
    from tasks.train.checkpoints import last_checkpoint

    steps = [last_checkpoint(f)[1] for f in (tmp_path / "ck").glob("*") if last_checkpoint(f)]
    assert steps and first <= max(steps) < 24
    assert f"step {max(steps)}" in stopped[0], "the checkpoint is written at the step where training stopped"


def test_warm_start_from_champion_trains_the_loaded_adapter(tiny_model_dir, splits, tmp_path):
    first = train_adapter(*splits, _tiny_cfg(tiny_model_dir, max_steps=2, learning_rate=5e-2), str(tmp_path / "c"))
    assert first.init_from == "base"
    before = load_file(str(tmp_path / "c" / "adapter_model.safetensors"))
    cfg = _tiny_cfg(tiny_model_dir, max_steps=2, learning_rate=5e-2, init_from="champion")
    res = train_adapter(*splits, cfg, str(tmp_path / "w"), champion_adapter=str(tmp_path / "c"))
    assert res.init_from == "champion" and res.trainable_params == first.trainable_params > 0
    after = load_file(str(tmp_path / "w" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before), "the champion's weights were trained further"
    fresh = train_adapter(
        *splits, cfg.model_copy(update={"init_from": "base"}), str(tmp_path / "b"), champion_adapter=str(tmp_path / "c")
    )
    assert fresh.init_from == "base"


def test_progress_prints_a_few_lines_in_a_log():
    import io

    from tasks.progress import progress

    buf = io.StringIO()
    bar = progress(total=200, desc="train", unit="step", stream=buf)
    for _ in range(200):
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert 5 <= len(lines) <= 13 and "\r" not in buf.getvalue()
    assert lines[-1].startswith("train: 100%") and "200/200" in lines[-1]


def test_cost_metrics_price_cpu_and_gpu_seconds():
    from tasks.cost import CostConfig, add_tokens, cost_metrics

    add_tokens("generated", 7)
    m = cost_metrics(CostConfig(cpu_core_hour_usd=3.6, gpu_hour_usd=36.0), cpu_s=100.0, gpu_s=10.0)
    assert m["cost.estimate"] == pytest.approx(100 / 3600 * 3.6 + 10 / 3600 * 36.0)
    assert m["cost.tokens_generated"] >= 7 and m["cost.peak_rss_mb"] > 0
