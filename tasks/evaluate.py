"""Evaluate the base model, the candidate adapter and the current champion on the same frozen test split.

For a classification config every model answers each test prompt twice, with batched greedy generation:

- **free**: whatever the model writes, compared with the target after trimming whitespace (exact match);
- **constrained**: decoding restricted to the label set by a token trie (``prefix_allowed_tokens_fn``): at
  each step only tokens that continue some label (or end a complete one) are allowed, so every answer is a
  valid label. This is how a classifier is served, and it is the gate's default metric.

Plus ``valid_label_rate`` (share of free answers that are a label) and ``test_loss`` (mean cross-entropy on the
answer tokens, the same tokens training learns). A generation config reports free exact match and test loss.

The base model is loaded once; adapters are attached with PEFT (``load_adapter`` / ``set_adapter``) and the
base is scored with adapters disabled, never reloaded. Prompts are left-padded and sorted by length per batch.

Outputs: a predictions table (id, model, prompt, target, prediction, prediction_constrained, correct,
correct_constrained) as Parquet and CSV -- the prompts are the already-scrubbed test records -- and a JSON
report. Heavy imports happen inside the functions.
"""

import json
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import task
from pydantic import BaseModel, Field

from tasks.base_model import resolve_base_model
from tasks.core import DatasetRef, StageError, StrictModel, atomic_write_parquet, read_records


class EvalConfig(StrictModel):
    """How candidate, base and champion are compared on the test split."""

    task: Literal["classification", "generation"] = Field(
        "classification",
        description="classification: the answer is one label (accuracy, constrained decoding); generation: "
        "free text (exact match and test loss only).",
    )
    labels: list[str] | None = Field(
        None,
        description="The label set for constrained decoding (None: the distinct assistant answers in the data).",
    )
    constrained: bool = Field(
        True, description="Also decode constrained to the label set (classification only). Costs one more pass."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on generated tokens for free generation (None: longest label + 4 for classification, "
        "64 for generation). Every token is one forward step of the whole batch.",
    )
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch (left-padded).")
    max_rows: int | None = Field(
        None, ge=1, description="Evaluate a seeded sample of at most this many test rows (None: all)."
    )
    seed: int = Field(0, description="Seed of the max_rows sample.")
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads during evaluation.")


class EvalResult(BaseModel):
    """Metrics per model name and where the predictions table and report are."""

    metrics: dict[str, dict[str, float]]
    predictions_uri: str
    predictions_csv_uri: str
    report_uri: str
    rows: int
    labels: int
    skipped: dict[str, str] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------- label trie


class LabelTrie:
    """Token trie over the labels, each followed by the end-of-turn token.

    ``allowed(prefix)`` returns the tokens that may follow ``prefix`` (a list of generated token ids); after a
    complete label + end token only the end token is allowed (the row is finished and just pads).
    """

    def __init__(self, sequences: list[list[int]], end_id: int):
        self.root: dict = {}
        self.end_id = end_id
        for seq in sequences:
            node = self.root
            for tok in [*seq, end_id]:
                node = node.setdefault(tok, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self.root
        for i, tok in enumerate(prefix):
            if tok == self.end_id and tok in node:
                return [self.end_id]
            if tok not in node:
                return [self.end_id]  # cannot happen under constraint; finish the row
            node = node[tok]
            if i == len(prefix) - 1 and not node:
                return [self.end_id]
        return list(node.keys()) or [self.end_id]


def label_token_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    """How each label is tokenized as an answer: the same tokens training puts after ``assistant\\n``."""
    return [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]


# --------------------------------------------------------------------------------------------- core


def _prompt_texts(tokenizer, prompts: list[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i : i + size]


def generate_answers(
    model, tokenizer, prompt_texts: list[str], max_new_tokens: int, batch_size: int, trie: LabelTrie | None = None
) -> list[str]:
    """Greedy answers for each prompt text (batched, left-padded, shortest prompts batched together)."""
    import torch

    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    enc_all = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts]
    order = sorted(range(len(enc_all)), key=lambda i: len(enc_all[i]))
    answers: list[str] = [""] * len(enc_all)
    for idx in _batches(order, batch_size):
        width = max(len(enc_all[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = enc_all[i]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        kwargs = {}
        if trie is not None:

            def allowed(batch_id, sent, _w=width):
                return trie.allowed(sent[_w:].tolist())

            kwargs["prefix_allowed_tokens_fn"] = allowed
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=end_id,
                pad_token_id=pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
                **kwargs,
            )
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            if end_id in new:
                new = new[: new.index(end_id)]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return answers


def score_all(
    model,
    tokenizer,
    prompt_texts: list[str],
    full_texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    trie: LabelTrie | None = None,
) -> tuple[list[str], list[str] | None, float]:
    """Free answers, constrained answers (when ``trie``) and answer loss, sharing one prompt prefill per batch.

    The prompt (minus its last token) is run once with the KV cache on; free and constrained generation each
    continue from a copy of that cache, and the answer loss feeds the last prompt token + the answer tokens on
    top of it. Same results as :func:`generate_answers` + :func:`answer_loss` (a test checks it), at about a
    third of the prompt compute.
    """
    import copy

    import torch

    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_id
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts]
    answers_ids = [
        tokenizer(f[len(p) :], add_special_tokens=False)["input_ids"] if f.startswith(p) else []
        for p, f in zip(prompt_texts, full_texts, strict=True)
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    free: list[str] = [""] * len(prompts)
    constrained: list[str] | None = [""] * len(prompts) if trie is not None else None
    total_loss, total_tokens = 0.0, 0

    def decode(out, width: int, idx: list[int], into: list[str]) -> None:
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            if end_id in new:
                new = new[: new.index(end_id)]
            into[i] = tokenizer.decode(new, skip_special_tokens=True).strip()

    for idx in _batches(order, batch_size):
        n, width = len(idx), max(len(prompts[i]) for i in idx)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        gen = {
            "input_ids": ids,
            "attention_mask": mask,
            "do_sample": False,
            "num_beams": 1,
            "eos_token_id": end_id,
            "pad_token_id": pad_id,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        with torch.inference_mode():
            prefill = model(
                input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True
            ).past_key_values
            out = model.generate(**gen, past_key_values=copy.deepcopy(prefill), max_new_tokens=max_new_tokens)
            decode(out, width, idx, free)
            if trie is not None:

                def allowed(batch_id, sent, _w=width):
                    return trie.allowed(sent[_w:].tolist())

                out = model.generate(
                    **gen,
                    past_key_values=copy.deepcopy(prefill),
                    max_new_tokens=trie_max(trie),
                    prefix_allowed_tokens_fn=allowed,
                )
                decode(out, width, idx, constrained)
            # Answer loss: last prompt token + answer tokens (right-padded) on top of the prompt cache.
            alen = max(len(answers_ids[i]) for i in idx)
            if alen == 0:
                continue
            tail = torch.full((n, alen + 1), pad_id, dtype=torch.long)
            tail_mask = torch.zeros((n, alen + 1), dtype=torch.long)
            labels = torch.full((n, alen), -100, dtype=torch.long)
            for row, i in enumerate(idx):
                a = answers_ids[i]
                tail[row, 0] = ids[row, -1]
                tail_mask[row, 0] = 1
                if a:
                    tail[row, 1 : 1 + len(a)] = torch.tensor(a)
                    tail_mask[row, 1 : 1 + len(a)] = 1
                    labels[row, : len(a)] = torch.tensor(a)
            tail_pos = pos[:, -1:] + torch.arange(alen + 1).unsqueeze(0)
            logits = (
                model(
                    input_ids=tail,
                    attention_mask=torch.cat([mask[:, :-1], tail_mask], dim=1),
                    position_ids=tail_pos,
                    past_key_values=prefill,
                    use_cache=True,
                )
                .logits[:, :-1]
                .float()
            )
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total_loss += float(loss)
            total_tokens += int((labels != -100).sum())
    return free, constrained, (total_loss / total_tokens if total_tokens else float("nan"))


def answer_loss(model, tokenizer, prompt_texts: list[str], full_texts: list[str], batch_size: int) -> float:
    """Mean cross-entropy per answer token (answer = full text minus prompt, i.e. ``label<|im_end|>\\n``)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = []
    for p, f in zip(prompt_texts, full_texts, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(f[len(p) :], add_special_tokens=False)["input_ids"] if f.startswith(p) else []
        seqs.append((p_ids, c_ids))
    order = sorted(range(len(seqs)), key=lambda i: sum(map(len, seqs[i])))
    total, count = 0.0, 0
    for idx in _batches(order, batch_size):
        width = max(len(seqs[i][0]) + len(seqs[i][1]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, i in enumerate(idx):
            p_ids, c_ids = seqs[i]
            n = len(p_ids) + len(c_ids)
            ids[row, :n] = torch.tensor(p_ids + c_ids)
            mask[row, :n] = 1
            labels[row, len(p_ids) : n] = (
                torch.tensor(c_ids, dtype=torch.long) if c_ids else labels[row, len(p_ids) : n]
            )
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(loss)
        count += int((shift_labels != -100).sum())
    return total / count if count else float("nan")


def _adapter_base_sha(adapter_dir: str) -> str | None:
    manifest = Path(adapter_dir) / "loraflow-adapter.json"
    if manifest.exists():
        return json.loads(manifest.read_text()).get("base_model_sha256")
    return None


def evaluate_models(
    test: DatasetRef,
    base_model: str,
    adapters: dict[str, str | None],
    cfg: EvalConfig,
    out_dir: str,
    labels: list[str] | None = None,
    label_sources: list[DatasetRef] | None = None,
) -> EvalResult:
    """Score each named model on the test split and write the predictions table and report.

    Args:
        test: the frozen test split.
        base_model: the base model (folder, model-cache name or hub id) every adapter was trained on.
        adapters: model name → adapter folder, or None for the base model as-is
            (e.g. ``{"base": None, "candidate": ".../adapter", "champion": ".../champion"}``).
        cfg: evaluation settings.
        out_dir: folder for ``predictions.parquet``, ``predictions.csv`` and ``eval_report.json``.
        labels: label set for constrained decoding when ``cfg.labels`` is unset.
        label_sources: with neither ``cfg.labels`` nor ``labels``, the label set is the distinct assistant
            answers of these splits (pass the train split) together with the test split's.

    Returns:
        :class:`EvalResult` with ``metrics[name] = {"accuracy", "accuracy_constrained", "valid_label_rate",
        "test_loss"}``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_base_model(base_model)
    df = read_records(test)
    if len(df) == 0:
        raise StageError(f"the test split {test.uri} is empty: there is nothing to evaluate the models on.")
    if cfg.max_rows is not None and len(df) > cfg.max_rows:
        df = df.sample(n=cfg.max_rows, random_state=cfg.seed)
    df = df.sort_values("id", kind="stable").reset_index(drop=True)
    prompts = [[{"role": m["role"], "content": m["content"]} for m in msgs[:-1]] for msgs in df["messages"]]
    targets = [str(msgs[-1]["content"]).strip() for msgs in df["messages"]]
    classification = cfg.task == "classification"
    label_set: list[str] = []
    if classification:
        derived = set(targets)
        for ref in label_sources or []:
            derived.update(str(m[-1]["content"]).strip() for m in read_records(ref)["messages"] if m)
        label_set = sorted(set(cfg.labels or labels or derived))

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model.eval()
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id

    prompt_texts = _prompt_texts(tokenizer, prompts)
    full_texts = [
        tokenizer.apply_chat_template([*p, {"role": "assistant", "content": t}], tokenize=False)
        for p, t in zip(prompts, targets, strict=True)
    ]
    trie = None
    if classification:
        label_ids = label_token_ids(tokenizer, label_set)
        trie = LabelTrie(label_ids, end_id)
        longest = max(len(x) for x in label_ids) + 1
        max_new = cfg.max_new_tokens or longest + 3
    else:
        max_new = cfg.max_new_tokens or 64
    labels_lookup = set(label_set)

    peft_model = None
    metrics: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    tables = []
    for name, adapter in adapters.items():
        t0 = time.perf_counter()
        if adapter is not None:
            sha = _adapter_base_sha(adapter)
            if sha is not None and sha != base.sha256:
                skipped[name] = f"adapter was trained on base weights {sha[:12]}, this run's base is {base.sha256[:12]}"
                continue
            if not (Path(adapter) / "adapter_config.json").exists():
                skipped[name] = f"no adapter_config.json in {adapter}"
                continue
            if peft_model is None:
                from peft import PeftModel

                peft_model = PeftModel.from_pretrained(model, adapter, adapter_name=name, is_trainable=False)
                peft_model.eval()
            else:
                peft_model.load_adapter(adapter, adapter_name=name, is_trainable=False)
            peft_model.set_adapter(name)
            scored = peft_model
            ctx = _nullcontext()
        else:
            scored = peft_model if peft_model is not None else model
            ctx = peft_model.disable_adapter() if peft_model is not None else _nullcontext()
        with ctx:
            free, constrained, loss = score_all(
                scored,
                tokenizer,
                prompt_texts,
                full_texts,
                max_new,
                cfg.batch_size,
                trie=trie if classification and cfg.constrained else None,
            )
        correct = [p == t for p, t in zip(free, targets, strict=True)]
        m = {"accuracy": sum(correct) / len(df), "test_loss": float(loss)}
        if classification:
            m["valid_label_rate"] = sum(p in labels_lookup for p in free) / len(df)
        table = pd.DataFrame(
            {
                "id": df["id"],
                "model": name,
                "prompt": [p[-1]["content"] if p else "" for p in prompts],
                "target": targets,
                "prediction": free,
                "correct": correct,
            }
        )
        if constrained is not None:
            correct_c = [p == t for p, t in zip(constrained, targets, strict=True)]
            m["accuracy_constrained"] = sum(correct_c) / len(df)
            table["prediction_constrained"] = constrained
            table["correct_constrained"] = correct_c
        metrics[name] = {k: round(v, 6) for k, v in m.items()}
        timings[name] = round(time.perf_counter() - t0, 2)
        tables.append(table)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    pq = out / "predictions.parquet"
    atomic_write_parquet(predictions, pq)
    csv = out / "predictions.csv"
    predictions.to_csv(csv, index=False)
    report = {
        "stage": "evaluate",
        "test": test.model_dump(),
        "rows": len(df),
        "task": cfg.task,
        "labels": len(label_set),
        "base_model": base.path,
        "base_model_sha256": base.sha256,
        "adapters": adapters,
        "metrics": metrics,
        "seconds": timings,
        "skipped": skipped,
        "max_new_tokens": max_new,
    }
    report_path = out / "eval_report.json"
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return EvalResult(
        metrics=metrics,
        predictions_uri=str(pq),
        predictions_csv_uri=str(csv),
        report_uri=str(report_path),
        rows=len(df),
        labels=len(label_set),
        skipped=skipped,
    )


def trie_max(trie: LabelTrie | None) -> int:
    """Longest path in the trie (label tokens + end token): the constrained pass needs no more steps."""

    def depth(node: dict) -> int:
        return 1 + max((depth(c) for c in node.values()), default=0) if node else 0

    return max(1, depth(trie.root)) if trie is not None else 1


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@task(name="evaluate")
def evaluate_task(
    test: DatasetRef,
    base_model: str,
    adapters: dict[str, str | None],
    cfg: EvalConfig,
    out_dir: str,
    labels: list[str] | None = None,
    label_sources: list[DatasetRef] | None = None,
) -> EvalResult:
    """Prefect wrapper around :func:`evaluate_models` (no caching: adapters change every run)."""
    return evaluate_models(test, base_model, adapters, cfg, out_dir, labels=labels, label_sources=label_sources)
