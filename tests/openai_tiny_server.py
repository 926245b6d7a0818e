"""A real OpenAI-compatible chat server over a local model, for the judge and external-baseline tests.

``python tests/openai_tiny_server.py MODEL_DIR PORT`` serves ``POST /v1/chat/completions`` on 127.0.0.1 with
FastAPI + uvicorn: the chat template, greedy decoding, the OpenAI response shape. When ``TINY_SERVER_KEY`` is
set, requests without ``Authorization: Bearer <that key>`` get HTTP 401 (so a test can tell the key was sent).
"""

import os
import sys

import torch
import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer


class ChatRequest(BaseModel):
    model: str
    messages: list[dict]
    max_tokens: int = 16
    temperature: float = 0.0


def build_app(model_dir: str) -> FastAPI:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def complete(req: ChatRequest, authorization: str | None = Header(None)):
        key = os.environ.get("TINY_SERVER_KEY")
        if key and authorization != f"Bearer {key}":
            raise HTTPException(status_code=401, detail="bad key")
        text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, max_new_tokens=req.max_tokens, do_sample=False, eos_token_id=end, pad_token_id=end
            )
        new = out[0, ids.shape[1] :].tolist()
        answer = tok.decode(new[: new.index(end)] if end in new else new, skip_special_tokens=True)
        return {
            "id": "chatcmpl-tiny",
            "object": "chat.completion",
            "model": req.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        }

    @app.get("/health")
    def health():
        return {"ok": True}

    return app


if __name__ == "__main__":
    uvicorn.run(build_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
