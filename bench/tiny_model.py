"""Save the tiny random model of tests/conftest.py (2 layers, width 16, SmolLM2's tokenizer) to a folder.

    .venv/bin/python bench/tiny_model.py .loraflow/models/SmolLM2-135M-Instruct /tmp/tiny-model

For runs of the whole flow that only check its mechanics (bench/quarters.py with configs/tiny.yaml).
"""

import sys


def main(src: str, out: str) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
