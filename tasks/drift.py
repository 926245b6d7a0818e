"""Drift between this run's training data and the champion's: how this quarter's data differs from what the
champion learned.

Three views, each a number per run (``drift.*`` metrics) and together ``drift/report.json``:

* **labels** (the last assistant turn): labels that appear, labels that vanish, and the total variation distance
  between the two label distributions (0: same mix, 1: disjoint);
* **length** of the user turns in words: both medians and the Kolmogorov-Smirnov statistic of the two
  distributions (the largest gap between their ECDFs);
* **domain classifier**: a TF-IDF + logistic-regression model trained to tell this run's rows the champion did not
  train on from the champion's rows, scored by
  cross-validated ROC AUC (0.5: indistinguishable; near 1: a different domain) — the check hamelsmu/ft-drift and
  Evidently's data-drift presets use.

Counts, label names and numbers only: the report never quotes a record.
"""

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.core import read_records

#: Rows per side for the domain classifier: enough for a stable AUC, bounded time on large data.
MAX_CLASSIFIER_ROWS = 2000


def _label(messages: list[dict[str, Any]]) -> str:
    return str(messages[-1].get("content", "")) if messages and messages[-1].get("role") == "assistant" else ""


def _user_text(messages: list[dict[str, Any]]) -> str:
    return " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")


def label_drift(current: list[str], reference: list[str]) -> dict[str, Any]:
    cur, ref = Counter(current), Counter(reference)
    labels = sorted(set(cur) | set(ref))
    p = np.array([cur[k] / max(len(current), 1) for k in labels])
    q = np.array([ref[k] / max(len(reference), 1) for k in labels])
    return {"new": sorted(set(cur) - set(ref)), "vanished": sorted(set(ref) - set(cur)),
            "tvd": float(0.5 * np.abs(p - q).sum())}  # fmt: skip


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest distance between the two ECDFs."""
    if not len(a) or not len(b):
        return 0.0
    grid = np.union1d(a, b)
    ecdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    ecdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(ecdf_a - ecdf_b).max())


def domain_auc(current: list[str], reference: list[str], seed: int = 0) -> float | None:
    """Cross-validated ROC AUC of a classifier telling current from reference texts (None: too few rows)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(seed)
    cur = [current[i] for i in rng.permutation(len(current))[:MAX_CLASSIFIER_ROWS]]
    ref = [reference[i] for i in rng.permutation(len(reference))[:MAX_CLASSIFIER_ROWS]]
    if min(len(cur), len(ref)) < 10:
        return None
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=1000))  # fmt: skip
    y = np.array([1] * len(cur) + [0] * len(ref))
    folds = min(5, len(cur), len(ref))
    return float(cross_val_score(model, cur + ref, y, cv=folds, scoring="roc_auc").mean())


def compare(current: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any]:
    """The drift report between two record frames (this run's train split and the champion's)."""
    cur_text = [_user_text(m) for m in current["messages"]]
    ref_text = [_user_text(m) for m in reference["messages"]]
    # The classifier sees only rows the champion did not train on: shared rows sit in both classes and would
    # push the AUC below 0.5 instead of measuring how the new data differs.
    new = ~current["id"].isin(set(reference["id"])) if "id" in current and "id" in reference else None
    new_text = cur_text if new is None else [t for t, n in zip(cur_text, new, strict=True) if n]
    cur_len = np.array([len(t.split()) for t in cur_text])
    ref_len = np.array([len(t.split()) for t in ref_text])
    return {
        "rows": {"current": len(current), "champion": len(reference)},
        "labels": label_drift([_label(m) for m in current["messages"]], [_label(m) for m in reference["messages"]]),
        "length_words": {
            "median_current": float(np.median(cur_len)) if len(cur_len) else 0.0,
            "median_champion": float(np.median(ref_len)) if len(ref_len) else 0.0,
            "ks": ks_statistic(cur_len, ref_len),
        },  # fmt: skip
        "new_rows": len(new_text),
        "domain_classifier_auc": domain_auc(new_text, ref_text),
    }


def metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as ``drift.*`` metrics."""
    out = {
        "drift.labels_new": float(len(report["labels"]["new"])),
        "drift.labels_vanished": float(len(report["labels"]["vanished"])),
        "drift.label_tvd": report["labels"]["tvd"],
        "drift.length_ks": report["length_words"]["ks"],
    }
    if report["domain_classifier_auc"] is not None:
        out["drift.domain_auc"] = report["domain_classifier_auc"]
    return out


def champion_train_split(champion_run_id: str) -> pd.DataFrame | None:
    """The champion's train split, from the dataset its run logged (None when the file is gone)."""
    from tasks import tracking

    run = tracking.client().get_run(champion_run_id)
    for d in run.inputs.dataset_inputs:
        if d.dataset.name.endswith("-train"):
            source = json.loads(d.dataset.source or "{}")
            uri = source.get("uri") or source.get("path") or ""
            path = Path(uri.removeprefix("file://"))
            if path.is_file():
                return read_records(path)
    return None


def log_drift(run_id: str, train_ref, champion_run_id: str | None) -> dict[str, Any] | None:
    """Compare this run's train split with the champion's; log ``drift.*`` and ``drift/report.json``."""
    from tasks import tracking

    reference = champion_train_split(champion_run_id) if champion_run_id else None
    if reference is None:
        return None
    report = compare(read_records(train_ref), reference)
    report["champion_run_id"] = champion_run_id
    tracking.log_metrics(run_id, metrics(report))
    tracking.json_artifact(run_id, report, "drift/report.json")
    return report
