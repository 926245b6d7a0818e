"""Metric suites by task, from maintained libraries; per-item statistics for the paired bootstrap.

- **generation**: ROUGE-L F (``rouge-score``, stemmed; the best over the prompt's references), chrF and BLEU
  (``sacrebleu``, corpus level, every reference of the prompt). All fractions in [0, 1].
- **json**: ``json_valid`` (the answer parses as one JSON object), ``schema_valid`` (and validates against the
  JSON Schema, ``jsonschema``), ``field_precision`` / ``field_recall`` / ``field_f1`` (micro, over every leaf
  ``path = value`` of the reference object; list items count one each), ``exact_match`` (the whole object), and
  per top-level key ``<key>_accuracy`` (a scalar, e.g. ``intent_accuracy``) or ``<key>_f1`` (an object, e.g.
  ``slots_f1``).
- **classification**: exact match of free answers, and of constrained answers when decoded.

Every metric comes with per-item statistics (``ItemStats``): a column of per-item values averaged (``mean``), or
``(tp, predicted, reference)`` counts summed into a micro F1 (``f1``), so a bootstrap can resample the items and
recompute the corpus number exactly as it is reported.
"""

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ItemStats:
    """Per-item statistics of one metric and how they reduce to the corpus value."""

    values: np.ndarray  # (n,) for "mean"; (n, 3) tp / predicted / reference counts for "f1"
    kind: str  # "mean" | "f1"

    def reduce(self, idx: np.ndarray | None = None) -> float:
        v = self.values if idx is None else self.values[idx]
        if self.kind == "mean":
            return float(v.mean()) if len(v) else float("nan")
        tp, pred, ref = v.sum(axis=0) if len(v) else (0, 0, 0)
        return 2 * tp / (pred + ref) if pred + ref else 1.0


# --------------------------------------------------------------------------------------------- generation


def text_metrics(predictions: list[str], references: list[list[str]]) -> tuple[dict[str, float], dict[str, ItemStats]]:
    """ROUGE-L (best reference per item), corpus chrF and BLEU (all references); per-item ROUGE-L and chrF."""
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = np.array(
        [
            max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
            for p, refs in zip(predictions, references, strict=True)
        ]
    )
    width = max(len(r) for r in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    chrf_items = np.array(
        [sacrebleu.sentence_chrf(p, refs).score / 100 for p, refs in zip(predictions, references, strict=True)]
    )
    metrics = {
        "rougeL": float(rouge.mean()),
        "chrf": sacrebleu.corpus_chrf(predictions, streams).score / 100,
        "bleu": sacrebleu.corpus_bleu(predictions, streams).score / 100,
    }
    return metrics, {"rougeL": ItemStats(rouge, "mean"), "chrf_sentence": ItemStats(chrf_items, "mean")}


def single_reference_rouge(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F of each prediction against one reference (how a single-reference recipe scores)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return float(np.mean(scores)) if scores else float("nan")


# --------------------------------------------------------------------------------------------- json


def parse_json_object(text: str) -> dict | None:
    """The answer as a JSON object, or None. A surrounding Markdown code fence is tolerated, nothing else."""
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0]
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def leaf_fields(obj: Any, prefix: str = "") -> Counter:
    """``{"a": {"b": "x", "c": ["y", "z"]}}`` → ``Counter({"a.b=x": 1, "a.c=y": 1, "a.c=z": 1})``."""
    out: Counter = Counter()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += leaf_fields(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for v in obj:
            out += leaf_fields(v, prefix)
    else:
        value = obj.strip().casefold() if isinstance(obj, str) else json.dumps(obj)
        out[f"{prefix}={value}"] += 1
    return out


def _f1_counts(pred: Counter, ref: Counter) -> list[int]:
    return [sum((pred & ref).values()), sum(pred.values()), sum(ref.values())]


def json_metrics(
    predictions: list[str], references: list[str], schema: dict | None = None
) -> tuple[dict[str, float], dict[str, ItemStats]]:
    """Parse rate, schema validity, field-level P/R/F1, exact match and per-top-level-key scores."""
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(schema)(schema)
    refs = [parse_json_object(r) or {} for r in references]
    preds = [parse_json_object(p) for p in predictions]
    valid = np.array([p is not None for p in preds], dtype=float)
    schema_ok = np.array([p is not None and (validator is None or validator.is_valid(p)) for p in preds], dtype=float)
    exact = np.array([p == r for p, r in zip(preds, refs, strict=True)], dtype=float)
    fields = np.array([_f1_counts(leaf_fields(p or {}), leaf_fields(r)) for p, r in zip(preds, refs, strict=True)])
    stats = {
        "json_valid": ItemStats(valid, "mean"),
        "schema_valid": ItemStats(schema_ok, "mean"),
        "exact_match": ItemStats(exact, "mean"),
        "field_f1": ItemStats(fields.reshape(-1, 3), "f1"),
    }
    for key in sorted({k for r in refs for k in r}):
        if any(isinstance(r.get(key), dict | list) for r in refs):
            counts = [
                _f1_counts(leaf_fields((p or {}).get(key, {}), key), leaf_fields(r.get(key, {}), key))
                for p, r in zip(preds, refs, strict=True)
            ]
            stats[f"{key}_f1"] = ItemStats(np.array(counts).reshape(-1, 3), "f1")
        else:
            hits = [p is not None and p.get(key) == r.get(key) for p, r in zip(preds, refs, strict=True)]
            stats[f"{key}_accuracy"] = ItemStats(np.array(hits, dtype=float), "mean")
    metrics = {name: s.reduce() for name, s in stats.items()}
    tp, npred, nref = fields.reshape(-1, 3).sum(axis=0) if len(fields) else (0, 0, 0)
    metrics["field_precision"] = float(tp / npred) if npred else 0.0
    metrics["field_recall"] = float(tp / nref) if nref else 1.0
    return metrics, stats


# --------------------------------------------------------------------------------------------- classification


def classification_metrics(
    free: list[str], targets: list[str], labels: set[str], constrained: list[str] | None
) -> tuple[dict[str, float], dict[str, ItemStats]]:
    """Free and constrained exact match, and the share of free answers that are a label."""
    correct = np.array([p == t for p, t in zip(free, targets, strict=True)], dtype=float)
    stats = {"accuracy": ItemStats(correct, "mean")}
    metrics = {"accuracy": float(correct.mean()), "valid_label_rate": float(np.mean([p in labels for p in free]))}
    if constrained is not None:
        c = np.array([p == t for p, t in zip(constrained, targets, strict=True)], dtype=float)
        stats["accuracy_constrained"] = ItemStats(c, "mean")
        metrics["accuracy_constrained"] = float(c.mean())
    return metrics, stats
