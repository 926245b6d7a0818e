"""The pairwise judge and the external baseline against a real local OpenAI-compatible server (not a mock)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from chat_records import chat_records

from tasks.core import write_records
from tasks.evaluate import EvalConfig, ExternalModelConfig, JudgeConfig, evaluate_models
from tasks.evaluate.judge import _combine, judge_pairwise, parse_verdict

SECRET = "sk-loraflow-test-3f9c2a7e51"


def test_verdicts_and_position_swap():
    assert parse_verdict("A") == "A" and parse_verdict(" b, because") == "B" and parse_verdict("tie") == "TIE"
    assert parse_verdict("no idea") == "TIE"
    # Candidate is A in the first call and B in the second: a judge that always says "A" is biased, not a fan.
    assert _combine("A", "A") == 0.5
    assert _combine("A", "B") == 1.0 and _combine("B", "A") == 0.0
    assert _combine("A", "TIE") == 1.0 and _combine("TIE", "A") == 0.0 and _combine("TIE", "TIE") == 0.5


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TINY_SERVER_KEY": SECRET}
    script = Path(__file__).parent / "openai_tiny_server.py"
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                pytest.fail("the tiny OpenAI-compatible server exited")
            time.sleep(0.5)
        else:
            pytest.fail("the tiny OpenAI-compatible server did not start")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _files_text(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.server
def test_judge_calls_caches_caps_and_never_stores_the_key(tiny_server, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    monkeypatch.setenv("LORAFLOW_JUDGE_API_KEY", SECRET)
    prompts = [f"Describe game {i}" for i in range(4)]
    cand = ["A fun racing game.", "Same answer", "A puzzle game from 2010.", "Shooter."]
    other = ["A racing game.", "Same answer", "A game.", "A first-person shooter for PC."]
    cfg = JudgeConfig(url=tiny_server, model="tiny", max_calls=50)
    first = judge_pairwise(prompts, cand, other, cfg)
    assert first["calls"] == 6  # 3 differing items x 2 orders; the identical pair is a tie without a call
    assert first["items"] == 4 and first["not_judged"] == 0
    assert first["win_rate"] + first["tie_rate"] + first["loss_rate"] == pytest.approx(1.0)
    assert first["win_rate_low"] <= first["win_rate"] <= first["win_rate_high"]
    again = judge_pairwise(prompts, cand, other, cfg)
    assert again["calls"] == 0 and again["cached"] == 6
    assert {k: again[k] for k in ("win_rate", "tie_rate", "loss_rate")} == {
        k: first[k] for k in ("win_rate", "tie_rate", "loss_rate")
    }
    capped = judge_pairwise(
        [p + "!" for p in prompts], cand, other, JudgeConfig(url=tiny_server, model="tiny", max_calls=2)
    )
    assert capped["calls"] == 2 and capped["not_judged"] == 2
    assert (home / "cache" / "judge").is_dir()
    assert SECRET not in _files_text(home)
    # The server really checks the key: without it every call is refused, and the error does not quote a key.
    monkeypatch.delenv("LORAFLOW_JUDGE_API_KEY")
    refused = judge_pairwise(["new prompt"], ["x"], ["y"], cfg)
    assert "401" in refused["error"] and SECRET not in str(refused)


@pytest.mark.server
def test_evaluate_with_external_baseline_and_judge(tiny_server, tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLOW_HOME", str(home))
    monkeypatch.setenv("LORAFLOW_JUDGE_API_KEY", SECRET)
    monkeypatch.setenv("LORAFLOW_EXTERNAL_API_KEY", SECRET)
    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    test = write_records(chat_records([(f"game {i}", f"Game {i} is fun.") for i in range(4)]), tmp_path / "t.pq")
    cfg = EvalConfig(
        task="generation",
        max_new_tokens=6,
        batch_size=4,
        forgetting_set=None,
        judge=JudgeConfig(url=tiny_server, model="tiny-judge"),
        external=ExternalModelConfig(url=tiny_server, model="tiny-external"),
    )
    res = evaluate_models(
        test, str(tiny_model_dir), {"base": None, "candidate": str(adapter)}, cfg, str(tmp_path / "e")
    )
    assert set(res.metrics) == {"base", "candidate", "external"}
    assert 0.0 <= res.metrics["external"]["rougeL"] <= 1.0
    assert res.judge["against"] in ("base", "external") and res.judge["items"] == 4
    assert "external" in res.intervals and "rougeL" in res.intervals["external"]
    assert SECRET not in _files_text(home) and SECRET not in _files_text(tmp_path / "e")
