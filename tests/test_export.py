"""Export a registered version: merged safetensors answers like the adapter; GGUF loads in llama.cpp and answers."""

import importlib.util
import json
from pathlib import Path

import pytest
from registered_model import PROMPTS, SYSTEM, chat_texts, register_tiny
from typer.testing import CliRunner

from tasks.core import StageError


def _greedy(model, tok, prompts):
    from tasks.evaluate import score_all

    texts = chat_texts(tok, prompts)
    free, _, _ = score_all(model, tok, texts, texts, 8, 2)
    return free


def test_merged_export_answers_like_the_adapter(mlflow_sqlite, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.export import export_version

    client, exp = mlflow_sqlite
    reg, adapter, run_id = register_tiny(client, exp, tiny_model_dir, tmp_path)
    res = export_version("tiny@champion", "merged", tmp_path / "merged")
    out = tmp_path / "merged"
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "loraflow-export.json"} <= set(res.files)
    assert not list(out.glob("adapter_*"))  # a plain model, no PEFT needed to load it

    tok = AutoTokenizer.from_pretrained(out)
    tok.padding_side = "left"
    end = tok.convert_tokens_to_ids("<|im_end|>")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == end and tok.eos_token == "<|im_end|>"  # the model stops at end of turn
    # The model's own system prompt replaces the template's built-in default.
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert SYSTEM in rendered and "SmolLM" not in rendered

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter)).eval()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[q], base.state_dict()[q])  # the adapter is in the weights
    expected = _greedy(with_adapter, tok, PROMPTS)
    assert _greedy(merged, tok, PROMPTS) == expected
    assert expected != _greedy(base, tok, PROMPTS)  # and it matters: the base alone answers differently

    tag = json.loads(client.get_model_version("tiny", reg.version).tags["export.merged"])
    assert tag["format"] == "merged" and tag["out_dir"] == str(out.resolve())
    (tmp_path / "dl").mkdir()
    logged = json.loads(
        Path(client.download_artifacts(run_id, "exports/merged.json", str(tmp_path / "dl"))).read_text()
    )
    assert logged["version"] == reg.version and logged["format"] == "merged"


def test_adapter_export_and_bad_input(mlflow_sqlite, tiny_model_dir, tmp_path):
    from loraflow.cli import _register_commands, app
    from tasks.export import export_version

    client, exp = mlflow_sqlite
    register_tiny(client, exp, tiny_model_dir, tmp_path)
    res = export_version("tiny/1", "adapter", tmp_path / "a")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(res.files)
    with pytest.raises(StageError, match="not one of adapter, merged, gguf"):
        export_version("tiny@champion", "onnx", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(StageError, match="not one of f16, q8_0"):
        export_version("tiny@champion", "gguf", tmp_path / "x", outtype="q4")

    _register_commands()
    result = CliRunner().invoke(app, ["export", "tiny@nope", "--format", "merged", "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and "no such registered model version" in result.output
    assert "Traceback" not in result.output


def _gguf_ready() -> str | None:
    from tasks.export import converter_dir

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sentencepiece") is None:
        return "llama-cpp-python / sentencepiece not installed: run `make export-tools`"
    if not (converter_dir() / "convert_hf_to_gguf.py").exists():
        return f"the GGUF converter is not unpacked under {converter_dir()}: run `make export-tools`"
    return None


def test_gguf_export_loads_in_llama_cpp_and_answers(mlflow_sqlite, tiny_model_dir, tmp_path):
    why = _gguf_ready()
    if why:
        pytest.skip(why)
    from llama_cpp import Llama

    from tasks.export import export_version

    client, exp = mlflow_sqlite
    reg, _, _ = register_tiny(client, exp, tiny_model_dir, tmp_path)
    res = export_version("tiny@champion", "gguf", tmp_path / "gguf", outtype="q8_0")
    gguf = tmp_path / "gguf" / res.gguf_file
    assert gguf.stat().st_size > 0 and res.outtype == "q8_0" and len(res.gguf_sha256) == 64
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert f"FROM ./{res.gguf_file}" in modelfile and SYSTEM in modelfile and 'stop "<|im_end|>"' in modelfile

    llm = Llama(model_path=str(gguf), n_threads=2, n_ctx=256, verbose=False)
    assert SYSTEM in llm.metadata["tokenizer.chat_template"]  # the chat template travels inside the GGUF
    assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == llm.tokenize(b"<|im_end|>", special=True)[0]
    out = llm.create_chat_completion([{"role": "user", "content": PROMPTS[0]}], max_tokens=8, temperature=0.0)
    assert isinstance(out["choices"][0]["message"]["content"], str)
    assert json.loads(client.get_model_version("tiny", reg.version).tags["export.gguf"])["gguf_file"] == res.gguf_file
