"""The GPU training benchmark (bench/train_gpu.py): its smoke run on any machine, its real rows on a GPU."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_gpu_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lever_settings_differ_from_the_seed_recipe_only_where_named():
    bench = _bench()
    seed = bench.row_settings("seed", "lora-bf16", set(), cuda=True)
    assert seed == {
        "batch": 4,
        "accum": 4,
        "grad_ckpt": True,
        "dropout": 0.05,
        "optim": "adamw_torch",
        "liger": False,
        "packing": False,
    }
    no_ckpt = bench.row_settings("loraflow", "lora-bf16", {"no_ckpt"}, cuda=True)
    assert no_ckpt["grad_ckpt"] is False and no_ckpt["batch"] * no_ckpt["accum"] == bench.ROWS_PER_STEP
    micro = bench.row_settings("loraflow", "lora-bf16", {"microbatch"}, cuda=True)
    assert (micro["batch"], micro["accum"]) == (16, 1)
    # CUDA-only levers stay off on a CPU, whatever is asked.
    cpu = bench.row_settings("loraflow", "lora-bf16", set(bench.ALL_LEVERS), cuda=False)
    assert cpu["optim"] == "adamw_torch" and not cpu["liger"] and not cpu["packing"]


def test_smoke_run_measures_both_rows(tmp_path, capsys):
    bench = _bench()
    assert bench.main(["--smoke", "--precisions", "lora-bf16", "--work", str(tmp_path), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "train_gpu.json").read_text())["results"]
    assert [r["recipe"] for r in results] == ["seed", "loraflow"]
    for r in results:
        assert r["real_tokens"] > 0 and r["tokens_per_s"] > 0 and len(r["loss_curve"]) == r["steps"]
    # Same data, same order, same LoRA: the two loss curves start at the same loss.
    assert results[0]["loss_curve"][0] == pytest.approx(results[1]["loss_curve"][0], rel=0.02)
    assert "| loraflow lora-bf16 |" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_rows_qlora_and_bf16(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    bench = _bench()
    assert bench.main(["--steps", "5", "--work", str(tmp_path), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "train_gpu.json").read_text())["results"]
    assert {r["precision"] for r in results} == {"qlora", "lora-bf16"}
    assert all(r["peak_gb"] and r["mfu"] for r in results)
