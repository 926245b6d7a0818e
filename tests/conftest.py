"""Shared test fixtures: the real SmolLM2 tokenizer and a tiny random model that uses it.

``make test`` runs ``loraflow models prepare`` before pytest, so the model cache holds SmolLM2-135M-Instruct;
tests that need its tokenizer skip with a message when it is missing.
"""

from pathlib import Path

import pytest


def _model_cache() -> Path:
    from tasks.home import model_cache

    return model_cache()


@pytest.fixture(scope="session")
def base_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding only the real SmolLM2-135M-Instruct tokenizer files (with its ChatML template)."""
    from tasks.base_model import DEFAULT_BASE_MODEL

    src = _model_cache() / DEFAULT_BASE_MODEL
    if not (src / "tokenizer.json").exists():
        pytest.skip(
            f"the base model is not in the model cache ({src}): run `loraflow models prepare` "
            "(make test does this first)"
        )
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM (2 layers, hidden 16) with SmolLM2's tokenizer and vocab, saved once."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def mlflow_sqlite(tmp_path, monkeypatch):
    """A throwaway MLflow tracking store (sqlite) + artifact folder; yields (client, experiment_id)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    yield client, exp
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri = None  # back to MLFLOW_TRACKING_URI / the default once monkeypatch restores env
