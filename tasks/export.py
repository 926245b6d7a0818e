"""Export a registered version as something other servers load: the adapter, a merged model, or a GGUF file.

- ``adapter``: the PEFT adapter folder as registered (safetensors + tokenizer), for anything that attaches
  adapters itself (vLLM ``--enable-lora``, PEFT).
- ``merged``: base + adapter merged with PEFT's ``merge_and_unload`` into a safetensors folder with the tokenizer,
  its chat template and a ``generation_config.json`` whose EOS is the end-of-turn token (so transformers and vLLM
  stop where training taught the model to stop). The template's built-in default system message (SmolLM2
  injects "You are a helpful AI assistant named SmolLM...") is replaced by the model's own system prompt.
- ``gguf``: the merged folder converted with llama.cpp's ``convert_hf_to_gguf.py`` (f16 or q8_0; the chat
  template and EOS travel inside the GGUF), plus a ``Modelfile`` for Ollama beside it. The converter comes from
  the llama-cpp-python **sdist on PyPI**, which vendors llama.cpp: :func:`ensure_converter` fetches it once with
  ``pip download`` into ``$LORAFLOW_HOME/tools`` (``make export-tools`` does this and installs the ``export``
  extra); nothing is fetched from anywhere else.

Every export writes ``loraflow-export.json`` into its folder, is logged to the version's MLflow run
(``exports/<format>.json``) and tagged on the version (``export.<format>``). Heavy imports stay inside functions.
"""

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tasks.core import StageError, file_sha256
from tasks.home import loraflow_home

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
EXPORT_MANIFEST = "loraflow-export.json"
# The members of the sdist the converter needs (conversion/ exists in newer llama.cpp trees only).
_CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
_SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

Format = Literal["adapter", "merged", "gguf"]


class ExportResult(BaseModel):
    """What an export wrote."""

    model_name: str
    version: str
    format: str
    out_dir: str
    files: list[str]
    gguf_file: str | None = None
    gguf_sha256: str | None = None
    outtype: str | None = None
    seconds: float


def tools_dir() -> Path:
    return loraflow_home() / "tools"


def converter_dir() -> Path:
    """Where the llama.cpp converter of :data:`LLAMA_CPP_SDIST` is unpacked."""
    return tools_dir() / f"llama.cpp-{LLAMA_CPP_SDIST.split('==')[1]}"


def ensure_converter(quiet: bool = False) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` and ``gguf-py/``; fetches the sdist from PyPI once.

    Raises:
        StageError: pip cannot download the sdist (no package index), or it lacks the converter.
    """
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").exists() and (target / "gguf-py").is_dir():
        return target
    sdists = tools_dir() / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    archives = sorted(sdists.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        if not quiet:
            print(f"downloading the {LLAMA_CPP_SDIST} sdist from the package index (77 MB, once) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
        proc = subprocess.run([*cmd, LLAMA_CPP_SDIST, "-d", str(sdists)], capture_output=True, text=True)
        archives = sorted(sdists.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise StageError(
                f"could not download the {LLAMA_CPP_SDIST} sdist with pip (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-300:]} -- the GGUF converter ships inside it; check the package index."
            )
    staging = Path(tempfile.mkdtemp(prefix="llama-cpp-", dir=tools_dir()))
    try:
        with tarfile.open(archives[-1]) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[1].startswith(_CONVERTER_MEMBERS) and (member.isfile() or member.isdir()):
                    member.name = parts[1]
                    tar.extract(member, staging, filter="data")
        if not (staging / "convert_hf_to_gguf.py").exists():
            raise StageError(f"{archives[-1].name} holds no vendor/llama.cpp/convert_hf_to_gguf.py.")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------- formats


def _system_template(template: str, system_prompt: str | None) -> str:
    """The chat template with its built-in default system message replaced by the model's own system prompt."""
    if not system_prompt or _SMOLLM_DEFAULT_SYSTEM not in template:
        return template
    escaped = system_prompt.replace("\\", "\\\\").replace("'", "\\'")
    return template.replace(_SMOLLM_DEFAULT_SYSTEM, escaped)


def write_merged(version, out: Path) -> list[str]:
    """Merge the adapter into its base and save a transformers/vLLM-loadable safetensors folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tasks.evaluate.generation import end_token_id
    from tasks.prompting import is_chat
    from tasks.serving_model import find_base_model

    settings = version.settings
    if not is_chat(settings.prompt_template):  # the exported files carry a chat template, not this prompt layout
        raise StageError(
            f"{version.model_name} version {version.version} was trained with data.prompt_template="
            f"{settings.prompt_template!r}: export writes the chat template only; serve it with `loraflow serve-model`."
        )
    base = find_base_model(settings)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, version.adapter_dir).merge_and_unload()
    end_id = end_token_id(tokenizer)
    merged.config.eos_token_id = end_id
    merged.generation_config = GenerationConfig(
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id,
        bos_token_id=tokenizer.bos_token_id,
        do_sample=False,
        max_new_tokens=settings.max_new_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    if tokenizer.chat_template:
        tokenizer.chat_template = _system_template(tokenizer.chat_template, settings.system_prompt)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end_id)
    tokenizer.save_pretrained(out)
    (out / "loraflow-serving.json").write_text(json.dumps(settings.model_dump(), indent=2))
    return sorted(p.name for p in out.iterdir() if p.is_file())


def modelfile(gguf_name: str, settings) -> str:
    """An Ollama Modelfile for the GGUF: ChatML template, stop at end of turn, greedy, the system prompt."""
    lines = [
        f"FROM ./{gguf_name}",
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
        '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""',
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {settings.max_new_tokens}",
    ]
    if settings.system_prompt:
        lines.append('SYSTEM """' + settings.system_prompt.replace('"""', '"') + '"""')
    return "\n".join(lines) + "\n"


def write_gguf(version, out: Path, outtype: str) -> tuple[Path, list[str]]:
    """Merge, convert to GGUF with llama.cpp's converter, write the Modelfile; returns (gguf path, files)."""
    import os

    converter = ensure_converter()
    out.mkdir(parents=True, exist_ok=True)
    gguf = out / f"{version.model_name}-v{version.version}-{outtype}.gguf"
    with tempfile.TemporaryDirectory(prefix="loraflow-merged-") as tmp:
        write_merged(version, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(converter / "gguf-py")}
        cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), tmp, "--outfile", str(gguf)]
        proc = subprocess.run([*cmd, "--outtype", outtype], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not gguf.exists():
        hint = " (pip install 'loraflow[export]' for sentencepiece)" if "sentencepiece" in proc.stderr else ""
        raise StageError(f"convert_hf_to_gguf.py failed (exit {proc.returncode}){hint}: {proc.stderr.strip()[-500:]}")
    (out / "Modelfile").write_text(modelfile(gguf.name, version.settings))
    return gguf, sorted(p.name for p in out.iterdir() if p.is_file())


def export_version(ref: str, fmt: Format, out_dir: str | Path, outtype: str = "f16") -> ExportResult:
    """Export ``NAME@ALIAS`` or ``NAME/VERSION`` in ``fmt`` into ``out_dir``; log it to the run, tag the version.

    Args:
        ref: the registered version.
        fmt: ``adapter``, ``merged`` or ``gguf``.
        out_dir: destination folder (created; an existing export there is replaced file by file).
        outtype: GGUF weight type, ``f16`` or ``q8_0`` (gguf only).

    Raises:
        StageError: unknown version, format or outtype; the base model is missing; the converter failed.
    """
    import mlflow

    from tasks.serving_model import download_version

    if fmt not in ("adapter", "merged", "gguf"):
        raise StageError(f"export format {fmt!r} is not one of adapter, merged, gguf.")
    if fmt == "gguf" and outtype not in ("f16", "q8_0"):
        raise StageError(f"GGUF outtype {outtype!r} is not one of f16, q8_0.")
    t0 = time.perf_counter()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="loraflow-export-") as tmp:
        version = download_version(ref, tmp)
        gguf = None
        if fmt == "adapter":
            out.mkdir(parents=True, exist_ok=True)
            for f in Path(version.adapter_dir).iterdir():
                if f.is_file():
                    shutil.copy2(f, out / f.name)
            files = sorted(p.name for p in out.iterdir() if p.is_file())
        elif fmt == "merged":
            files = write_merged(version, out)
        else:
            gguf, files = write_gguf(version, out, outtype)
    result = ExportResult(
        model_name=version.model_name,
        version=version.version,
        format=fmt,
        out_dir=str(out.resolve()),
        files=[*sorted(set(files) | {EXPORT_MANIFEST})],
        gguf_file=gguf.name if gguf else None,
        gguf_sha256=file_sha256(gguf) if gguf else None,
        outtype=outtype if fmt == "gguf" else None,
        seconds=round(time.perf_counter() - t0, 2),
    )
    (out / EXPORT_MANIFEST).write_text(result.model_dump_json(indent=2))
    client = mlflow.MlflowClient()
    summary = {k: v for k, v in result.model_dump().items() if k not in ("files",)}
    if version.run_id:
        client.log_dict(version.run_id, result.model_dump(), f"exports/{fmt}.json")
    client.set_model_version_tag(result.model_name, result.version, f"export.{fmt}", json.dumps(summary)[:5000])
    return result
