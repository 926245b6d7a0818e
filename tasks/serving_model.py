"""The registered model as MLflow serves it: a pyfunc that loads the base by path + sha256 and attaches the adapter.

``mlflow.transformers.log_model`` with a PEFT model on a *local* base folder saves the full base weights; this
custom :class:`LoraChatModel` keeps only the adapter in the model's artifacts and records the base model's path,
cache name and weight hash in its ``model_config``. At load time the base is found (the recorded path, else the
same name in this machine's model cache), its hash is checked, and the adapter is attached with PEFT, so::

    mlflow.pyfunc.load_model("models:/loraflow-demo@champion").predict({"prompt": ["My card was declined"]})

answers with the training data's system prompt and the evaluated generation settings (greedy, end-of-turn stop,
for a classification model constrained to the label set).

The pyfunc is logged as "models from code": MLflow stores this file beside the model and runs it at load time
(the :func:`mlflow.models.set_model` call at the bottom); it needs the loraflow package importable.
Heavy imports (torch, transformers, peft, mlflow) happen inside the functions.
"""

import json
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from tasks.core import StageError

MODEL_ARTIFACT = "model"
ADAPTER_KEY = "adapter"
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "pandas", "loraflow"]


class ServingSettings(BaseModel):
    """What a served model needs beyond its weights: where the base is, how to prompt, how to generate."""

    base_model: str = Field(description="Base model folder recorded at training time.")
    base_model_name: str = Field(description="Base model name in the model cache (found there on another host).")
    base_model_sha256: str = Field(description="sha256 of the base weights; loading refuses any other weights.")
    system_prompt: str | None = Field(None, description="Prepended when a request has no system message.")
    task: str = Field("generation", description="classification or generation (as evaluated).")
    labels: list[str] = Field(default_factory=list, description="Label set for constrained decoding.")
    max_new_tokens: int = Field(64, ge=1, description="Cap on generated tokens per answer.")
    constrained: bool = Field(False, description="Decode constrained to the label set by default.")
    prompt_template: str = Field(
        "chat",
        description="How messages become the prompt: the training run's data.prompt_template (chat, alpaca, ...).",
    )


class ChatAnswer(BaseModel):
    """One generated answer with its token counts and time."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


# --------------------------------------------------------------------------------------------- settings


def settings_from_training(
    adapter_dir: str | Path, base_model: str, base_sha256: str, labels: int, max_new_tokens: int | None
) -> ServingSettings:
    """Serving settings from what training and evaluation saw.

    The system prompt is the most frequent system message of the train split (named in the adapter's
    manifest); for a classification model (``labels`` > 0) the label set is the train split's distinct answers.

    Args:
        adapter_dir: the adapter folder (its ``loraflow-adapter.json`` names the train split).
        base_model: base model folder.
        base_sha256: sha256 of its weights.
        labels: size of the evaluated label set (0: a generation model).
        max_new_tokens: the evaluated free-generation cap (None: longest label + 4, or 64).
    """
    from tasks.core import read_records

    manifest_path = Path(adapter_dir) / "loraflow-adapter.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    train_uri = (manifest.get("train") or {}).get("uri")
    systems: Counter[str] = Counter()
    answers: set[str] = set()
    if train_uri and Path(train_uri).exists():
        for msgs in read_records(train_uri)["messages"]:
            systems.update(m["content"] for m in msgs[:1] if m.get("role") == "system")
            if msgs and msgs[-1].get("role") == "assistant":
                answers.add(str(msgs[-1]["content"]).strip())
    classification = labels > 0
    label_list = sorted(answers) if classification else []
    if max_new_tokens is None:
        max_new_tokens = 64
    return ServingSettings(
        base_model=base_model,
        base_model_name=manifest.get("base_model_name") or Path(base_model).name,
        base_model_sha256=base_sha256,
        system_prompt=systems.most_common(1)[0][0] if systems else None,
        task="classification" if classification else "generation",
        labels=label_list,
        max_new_tokens=max_new_tokens,
        constrained=classification and bool(label_list),
        prompt_template=manifest.get("prompt_template") or "chat",
    )


def find_base_model(settings: ServingSettings) -> str:
    """The base model folder on this host whose weights hash to ``settings.base_model_sha256``.

    Raises:
        StageError: neither the recorded folder nor the model cache holds those weights.
    """
    from tasks.base_model import resolve_base_model
    from tasks.home import model_cache

    tried = []
    for candidate in (settings.base_model, settings.base_model_name):
        try:
            found = resolve_base_model(candidate)
        except StageError:
            tried.append(candidate)
            continue
        if found.sha256 == settings.base_model_sha256:
            return found.path
        tried.append(f"{found.path} (weights {found.sha256[:12]})")
    raise StageError(
        f"the base model this adapter was trained on (weights sha256 {settings.base_model_sha256[:12]}...) is not "
        f"on this machine: tried {', '.join(tried)}; model cache {model_cache()}. Run `loraflow models prepare` "
        "or point LORAFLOW_MODEL_CACHE at a cache holding it."
    )


# --------------------------------------------------------------------------------------------- engine


class ChatEngine:
    """Base model + adapter in memory, answering chat requests one at a time (what a server thread calls)."""

    def __init__(self, settings: ServingSettings, adapter_dir: str | Path):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tasks.evaluate import LabelTrie, label_token_ids
        from tasks.evaluate.generation import end_token_id

        self.settings = settings
        base = find_base_model(settings)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
        self.end_id = end_token_id(self.tokenizer, settings.prompt_template)
        self.trie = (
            LabelTrie(label_token_ids(self.tokenizer, settings.labels), self.end_id) if settings.labels else None
        )

    def with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The request's messages, with the model's system prompt first when the request has none."""
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if self.settings.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.settings.system_prompt})
        return msgs

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The text the model continues for a request: the training run's prompt template over its messages."""
        from tasks.prompting import render_prompt

        return render_prompt(self.tokenizer, self.with_system(messages), self.settings.prompt_template)

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        constrained: bool | None = None,
    ) -> ChatAnswer:
        """Generate one answer (greedy unless ``temperature`` > 0; stops at the end-of-turn token)."""
        import torch

        from tasks.evaluate import trie_max

        t0 = time.perf_counter()
        text = self.prompt_text(messages)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        use_trie = self.trie if (self.settings.constrained if constrained is None else constrained) else None
        kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": float(temperature), "top_p": None, "top_k": None}
        width = ids.shape[1]
        if use_trie is not None:
            kwargs["prefix_allowed_tokens_fn"] = lambda _b, sent: use_trie.allowed(sent[width:].tolist())
        limit = max_new_tokens or self.settings.max_new_tokens
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=min(limit, trie_max(use_trie)) if use_trie is not None else limit,
                num_beams=1,
                eos_token_id=self.end_id,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id,
                **kwargs,
            )
        new = out[0, width:].tolist()
        if self.end_id in new:
            new = new[: new.index(self.end_id)]
        answer = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return ChatAnswer(
            text=answer, prompt_tokens=width, completion_tokens=len(new), seconds=time.perf_counter() - t0
        )


# --------------------------------------------------------------------------------------------- pyfunc


def _is_str_list(value: Any) -> bool:
    return (
        hasattr(value, "__len__")
        and not isinstance(value, str | dict)
        and all(isinstance(v, str) and v.strip() for v in value)
        and len(value) > 0
    )


def requests_from_input(model_input: Any) -> list[list[dict[str, str]]]:
    """Chat requests from a pyfunc input: a DataFrame / dict / list with a ``messages`` or ``prompt`` column.

    ``messages`` is a list of ``{role, content}`` per row; ``prompt`` is one user turn. A plain string or a
    list of strings is read as prompts. MLflow turns a dict of lists (``{"prompt": ["a", "b"]}``) into one row
    holding the list: each string of it is one request.
    """
    if isinstance(model_input, str):
        model_input = [model_input]
    if isinstance(model_input, list) and all(isinstance(x, str) for x in model_input):
        model_input = {"prompt": model_input}
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    out = []
    for i, row in enumerate(frame.to_dict("records")):
        msgs = row.get("messages")
        if msgs is not None and not (isinstance(msgs, float) and pd.isna(msgs)) and len(msgs):
            out.append([{"role": str(m["role"]), "content": str(m["content"])} for m in msgs])
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            out.append([{"role": "user", "content": row["prompt"]}])
        elif _is_str_list(row.get("prompt")):
            out.extend([{"role": "user", "content": p}] for p in row["prompt"])
        else:
            raise StageError(f"input row {i} has neither `messages` (a list of role/content) nor a `prompt` string.")
    return out


def signature():
    """Inputs ``messages`` (chat) or ``prompt`` (one user turn); output ``answer``; generation params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(
        inputs=Schema(
            [ColSpec(Array(message), "messages", required=False), ColSpec("string", "prompt", required=False)]
        ),
        outputs=Schema([ColSpec("string", "answer")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", 0),
                ParamSpec("temperature", "double", 0.0),
                ParamSpec("constrained", "string", "default"),
            ]
        ),
    )


def _mlflow_python_model_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


# ``model_input: pd.DataFrame``: the hint MLflow accepts without inferring a signature (it is given explicitly).
class LoraChatModel(_mlflow_python_model_base()):
    """MLflow pyfunc: chat prompts in, answers out, base model found by hash, adapter from the artifacts."""

    def load_context(self, context):
        self.engine = ChatEngine(ServingSettings(**context.model_config), context.artifacts[ADAPTER_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        params = params or {}
        constrained = {"true": True, "false": False}.get(str(params.get("constrained", "default")).lower())
        answers = [
            self.engine.answer(
                msgs,
                max_new_tokens=int(params.get("max_new_tokens") or 0) or None,
                temperature=float(params.get("temperature") or 0.0),
                constrained=constrained,
            ).text
            for msgs in requests_from_input(model_input)
        ]
        return pd.DataFrame({"answer": answers})


# --------------------------------------------------------------------------------------------- logging


def save_pyfunc(adapter_files: list[Path], settings: ServingSettings, dst: str | Path) -> Path:
    """Write the pyfunc model folder (MLmodel, this code, the adapter) into ``dst``; the base is not copied."""
    import mlflow.pyfunc

    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix="loraflow-pyfunc-") as tmp:
        adapter = Path(tmp) / ADAPTER_KEY
        adapter.mkdir()
        for f in adapter_files:
            shutil.copy2(f, adapter / f.name)
        example = {"prompt": ["Hello, can you help me?"]}
        mlflow.pyfunc.save_model(
            path=str(dst),
            python_model=__file__,
            artifacts={ADAPTER_KEY: str(adapter)},
            model_config=settings.model_dump(),
            signature=signature(),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    return dst


def log_pyfunc(run_id: str, adapter_files: list[Path], settings: ServingSettings) -> str:
    """Save the pyfunc and log it to the run under ``model/``; returns its artifact URI (the version source)."""
    import mlflow

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="loraflow-model-") as tmp:
        folder = save_pyfunc(adapter_files, settings, Path(tmp) / MODEL_ARTIFACT)
        client.log_artifacts(run_id, str(folder), artifact_path=MODEL_ARTIFACT)
    return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"


class ServedVersion(BaseModel):
    """A registry version downloaded for export or serving."""

    model_name: str
    version: str
    run_id: str | None
    model_dir: str
    adapter_dir: str
    settings: ServingSettings


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` → (name, alias, None); ``NAME/VERSION`` → (name, None, version).

    Raises:
        StageError: neither form.
    """
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise StageError(f"model reference {ref!r} is neither NAME@ALIAS (loraflow-demo@champion) nor NAME/VERSION.")


def download_version(ref: str, dst: str | Path | None = None) -> ServedVersion:
    """Download a registered version (``NAME@ALIAS`` or ``NAME/VERSION``) and read its serving settings.

    Raises:
        StageError: the model, alias or version does not exist, or the version holds no adapter.
    """
    import mlflow
    import mlflow.pyfunc
    import yaml
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        raise StageError(
            f"{ref}: no such registered model version in {mlflow.get_tracking_uri()} (check the name, the alias "
            "or the version; `loraflow ui` lists them)."
        ) from None
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="loraflow-version-"))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst)))
    mlmodel = local / "MLmodel"
    if not mlmodel.exists():
        raise StageError(
            f"{ref} (version {mv.version}) is an adapter folder without an MLmodel file (registered before "
            "versions became pyfunc models): retrain to register a servable version."
        )
    flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
    config = flavor.get(mlflow.pyfunc.MODEL_CONFIG) or {}
    adapter = local / "artifacts" / ADAPTER_KEY
    if not (adapter / "adapter_config.json").exists():
        raise StageError(f"{ref} (version {mv.version}) holds no adapter under artifacts/{ADAPTER_KEY}.")
    return ServedVersion(
        model_name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        model_dir=str(local),
        adapter_dir=str(adapter),
        settings=ServingSettings(**config),
    )


def _set_model() -> None:
    import mlflow.models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mlflow.models.set_model(LoraChatModel())


_set_model()
