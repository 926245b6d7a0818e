"""The training examples a record becomes, and the adapter folder training writes.

Each record becomes a conversational prompt-completion example: ``prompt`` = every message but the last,
``completion`` = the last (assistant) message (with ``data.prompt_template`` set, the rendered prompt string and
the answer + EOS instead: :func:`tasks.prompting.training_example`). TRL then computes the loss on the completion tokens only
(``completion_only_loss``), i.e. exactly ``<answer><|im_end|>\\n``: the model learns the answer and to stop.
(``assistant_only_loss`` on a ``messages`` dataset needs ``{% generation %}`` markers that SmolLM2's chat
template does not have.)

Only the adapter is written (``adapter_model.safetensors`` + ``adapter_config.json``) with the tokenizer files;
``adapter_config.json``'s ``base_model_name_or_path`` and ``loraflow-adapter.json`` name the base model folder
and the sha256 of its weights, so the adapter refers to its base rather than copying it.
"""

import json
import shutil
from pathlib import Path

from tasks.core import StageError

ADAPTER_MANIFEST = "loraflow-adapter.json"


def adapter_files(adapter_dir: str | Path) -> list[Path]:
    """The files that make up an adapter folder (as listed in its manifest; else the PEFT + tokenizer files)."""
    folder = Path(adapter_dir)
    manifest = folder / ADAPTER_MANIFEST
    if manifest.exists():
        names = json.loads(manifest.read_text()).get("files") or []
        if names:
            return [folder / n for n in names if (folder / n).is_file()]
    keep = ("adapter_", "tokenizer", "special_tokens", "chat_template", "vocab", "merges", ADAPTER_MANIFEST)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(keep))


def adapter_manifest(adapter_dir: str | Path) -> dict:
    """The adapter's ``loraflow-adapter.json`` (empty when it has none, e.g. an adapter made elsewhere)."""
    path = Path(adapter_dir) / ADAPTER_MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def to_prompt_completion(records, tokenizer=None, template: str | None = None) -> list[dict]:
    """Records → TRL prompt-completion rows (:func:`tasks.prompting.training_example`).

    Args:
        records: a frame with ``id`` and ``messages`` columns.
        tokenizer: the base model's tokenizer (needed for a prompt template: its EOS ends each answer).
        template: ``data.prompt_template`` (None / ``chat``: conversational rows, the chat template).

    Raises:
        StageError: a record does not end with a non-empty assistant message.
    """
    from tasks.prompting import training_example

    rows = []
    for rid, messages in zip(records["id"], records["messages"], strict=True):
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant" or not str(msgs[-1]["content"]).strip():
            raise StageError(
                f"record {rid} cannot be trained on: a training record must end with a non-empty assistant "
                "message after at least one prompt message (the validate stage should have quarantined it)."
            )
        rows.append(training_example(tokenizer, msgs, template))
    return rows


def save_adapter(model, tokenizer, staged: Path, out: Path, manifest: dict) -> list[str]:
    """Write the adapter + tokenizer into ``staged``, then move them into ``out``; returns the file names.

    Written into a fresh folder and moved in, so ``out`` never mixes this adapter with older files.
    """
    model.save_pretrained(str(staged), safe_serialization=True)
    tokenizer.save_pretrained(str(staged))
    (staged / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub says nothing true about this run
    files = sorted(p.name for p in staged.iterdir() if p.is_file())
    manifest = {**manifest, "files": [*files, ADAPTER_MANIFEST]}
    (staged / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    out.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        shutil.move(str(staged / name), str(out / name))
    return manifest["files"]
