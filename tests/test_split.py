import pandas as pd

from tasks.core import record_id
from tasks.split import SplitConfig, assign_splits, split_records


def _frame(texts, meta=None):
    rows = []
    for i, t in enumerate(texts):
        msgs = [{"role": "user", "content": t}, {"role": "assistant", "content": f"l{i % 4}"}]
        rows.append({"id": record_id(msgs), "messages": msgs, "source": "s", "created_at": "", "meta": (meta or {})})
    return pd.DataFrame(rows)


def test_split_is_a_function_of_the_id_only():
    df = _frame([f"text {i}" for i in range(2000)])
    cfg = SplitConfig(val_fraction=0.1, test_fraction=0.1)
    first = dict(zip(df["id"], assign_splits(df, cfg), strict=True))
    # more data next quarter, in another order: no existing row changes split
    bigger = pd.concat([_frame([f"new {i}" for i in range(500)]), df.iloc[::-1]], ignore_index=True)
    second = dict(zip(bigger["id"], assign_splits(bigger, cfg), strict=True))
    assert all(second[k] == v for k, v in first.items())
    shares = pd.Series(list(first.values())).value_counts(normalize=True)
    assert 0.07 < shares["test"] < 0.13 and 0.07 < shares["val"] < 0.13


def test_a_test_source_is_the_test_set_and_hash_only_splits_the_rest():
    train = _frame([f"train {i}" for i in range(300)])
    test = _frame([f"test {i}" for i in range(40)], meta={"split": "test"})
    parts = split_records(pd.concat([train, test], ignore_index=True), SplitConfig(val_fraction=0.2))
    assert set(parts["test"]["id"]) == set(test["id"])
    assert len(parts["val"]) > 30 and len(parts["train"]) + len(parts["val"]) == 300


def test_caps_sample_train_evenly_and_test_deterministically():
    df = _frame([f"t {i}" for i in range(1000)])
    cfg = SplitConfig(test_fraction=0.3, max_train_rows=200, max_test_rows=50, seed=3)
    a, b = split_records(df, cfg), split_records(df, cfg)
    assert len(a["train"]) == 200 and len(a["test"]) == 50
    assert a["test"]["id"].tolist() == b["test"]["id"].tolist()
    labels = a["train"]["messages"].map(lambda m: m[-1]["content"]).value_counts()
    assert labels.max() - labels.min() <= 1  # stratified: 4 labels, 50 each
