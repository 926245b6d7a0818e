"""The registered version is a servable MLflow pyfunc: loaded through models:/NAME@alias, it answers chat prompts."""

import json

import pandas as pd
import pytest
from registered_model import LABELS, PROMPTS, SYSTEM, chat_texts, register_tiny

from tasks.core import StageError


def _reference_answers(base_dir, adapter_dir, prompts, constrained):
    """Greedy answers of base + adapter straight through PEFT and the evaluator's generator (what eval scored)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.evaluate import LabelTrie, label_token_ids, score_all

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.padding_side = "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir)).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    texts = chat_texts(tok, prompts)
    trie = LabelTrie(label_token_ids(tok, LABELS), end) if constrained else None
    free, constrained_answers, _ = score_all(model, tok, texts, texts, 6, 1, trie=trie)
    return constrained_answers if constrained else free


def test_registered_version_loads_and_predicts(mlflow_sqlite, tiny_model_dir, tmp_path):
    import mlflow

    client, exp = mlflow_sqlite
    reg, adapter, run_id = register_tiny(client, exp, tiny_model_dir, tmp_path)
    assert "challenger" in reg.aliases
    mv = client.get_model_version("tiny", reg.version)
    assert mv.source.endswith("/model")
    # The base model is referenced, never copied: the logged model holds the adapter and no base weights.
    logged = {f.path for f in client.list_artifacts(run_id, "model/artifacts/adapter")}
    assert "model/artifacts/adapter/adapter_model.safetensors" in logged
    assert not [f for f in logged if f.endswith("/model.safetensors")]

    model = mlflow.pyfunc.load_model("models:/tiny@challenger")
    sig = model.metadata.signature
    assert {c.name for c in sig.inputs.inputs} == {"messages", "prompt"} and sig.outputs.input_names() == ["answer"]
    out = model.predict({"prompt": PROMPTS[:4]})
    answers = list(out["answer"])
    assert len(answers) == 4 and all(a in LABELS for a in answers)  # classification: constrained to the labels
    assert answers == _reference_answers(tiny_model_dir, adapter, PROMPTS[:4], constrained=True)

    # Chat messages in, the model's system prompt added when the request has none; free generation on request.
    chat = [[{"role": "user", "content": PROMPTS[0]}], [{"role": "user", "content": PROMPTS[1]}]]
    free = model.predict(pd.DataFrame({"messages": chat}), params={"constrained": "false"})
    assert list(free["answer"]) == _reference_answers(tiny_model_dir, adapter, PROMPTS[:2], constrained=False)
    engine = model.unwrap_python_model().engine
    assert engine.with_system(chat[0])[0] == {"role": "system", "content": SYSTEM}
    assert engine.settings.max_new_tokens == 6 and engine.settings.labels == LABELS


def test_input_without_prompt_or_messages_is_refused():
    from tasks.serving_model import requests_from_input

    assert requests_from_input(["hi"]) == [[{"role": "user", "content": "hi"}]]
    with pytest.raises(StageError, match="row 1 has neither"):
        requests_from_input({"prompt": ["ok", ""]})


def test_other_base_weights_are_refused(mlflow_sqlite, tiny_model_dir, tmp_path):
    import mlflow.pyfunc
    import yaml

    from tasks.serving_model import ChatEngine, ServingSettings, download_version

    client, exp = mlflow_sqlite
    register_tiny(client, exp, tiny_model_dir, tmp_path)
    version = download_version("tiny@champion", tmp_path / "dl")
    assert json.loads((tmp_path / "dl").joinpath("model", "artifacts", "adapter", "adapter_config.json").read_text())
    flavor = yaml.safe_load((tmp_path / "dl" / "model" / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor[mlflow.pyfunc.MODEL_CONFIG]["base_model_sha256"] == version.settings.base_model_sha256
    wrong = ServingSettings(**{**version.settings.model_dump(), "base_model_sha256": "0" * 64})
    with pytest.raises(StageError, match="not on this machine"):
        ChatEngine(wrong, version.adapter_dir)
    with pytest.raises(StageError, match="no such registered model version"):
        download_version("tiny@nope")
