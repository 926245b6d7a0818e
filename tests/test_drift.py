"""Drift: label mix, length distribution and a domain classifier, from two record frames."""

import numpy as np
import pandas as pd

from tasks.drift import compare, ks_statistic, metrics


def _frame(texts, labels, prefix="b"):
    msgs = [
        [{"role": "user", "content": t}, {"role": "assistant", "content": lab}]
        for t, lab in zip(texts, labels, strict=True)
    ]
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(msgs))], "messages": msgs})


def test_same_data_shows_no_drift_and_new_data_does():
    rng = np.random.default_rng(0)
    words = ["card", "lost", "refund", "transfer", "pending", "fee", "account", "blocked"]
    base_texts = [" ".join(rng.choice(words, 6)) for _ in range(200)]
    base = _frame(base_texts, [f"l{i % 4}" for i in range(200)])
    same = compare(base, base)
    assert same["labels"] == {"new": [], "vanished": [], "tvd": 0.0} and same["length_words"]["ks"] == 0.0
    assert same["new_rows"] == 0 and same["domain_classifier_auc"] is None  # nothing new to tell apart
    halves = compare(base.iloc[:100], base.iloc[100:])  # two samples of one distribution: indistinguishable
    assert 0.3 < halves["domain_classifier_auc"] < 0.7 and halves["labels"]["tvd"] < 0.1

    other_words = ["crypto", "wallet", "staking", "nft", "mortgage", "overdraft", "pension", "isa"]
    new_texts = [" ".join(rng.choice(other_words, 14)) for _ in range(200)]
    drifted = compare(_frame(new_texts, [f"l{i % 3}" if i % 5 else "crypto" for i in range(200)], "n"), base)
    assert drifted["labels"]["new"] == ["crypto"] and drifted["labels"]["vanished"] == ["l3"]
    assert drifted["labels"]["tvd"] > 0.2 and drifted["length_words"]["ks"] > 0.9
    assert drifted["domain_classifier_auc"] > 0.95
    m = metrics(drifted)
    assert m["drift.labels_new"] == 1.0 and m["drift.domain_auc"] > 0.95


def test_ks_statistic():
    assert ks_statistic(np.array([1, 2, 3]), np.array([1, 2, 3])) == 0.0
    assert ks_statistic(np.array([1, 1]), np.array([5, 5])) == 1.0
