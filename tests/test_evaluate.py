"""Evaluation: exact-match accuracy, label-constrained decoding, valid-label rate, test loss, outputs."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from chat_records import SYSTEM
from chat_records import chat_records as _records

from tasks.core import StageError, write_records
from tasks.evaluate import EvalConfig, LabelTrie, evaluate_models, label_token_ids


def test_label_trie_allows_only_label_continuations():
    end = 99
    trie = LabelTrie([[1, 2, 3], [1, 4], [5]], end_id=end)
    assert sorted(trie.allowed([])) == [1, 5]
    assert sorted(trie.allowed([1])) == [2, 4]
    assert trie.allowed([1, 2]) == [3]
    assert trie.allowed([1, 2, 3]) == [end]
    assert trie.allowed([5]) == [end]
    assert trie.allowed([5, end]) == [end]  # finished rows only pad
    # A label that is a prefix of another may stop or go on.
    trie2 = LabelTrie([[7], [7, 8]], end_id=end)
    assert sorted(trie2.allowed([7])) == [8, end]
    # Once one path is left, the rest of the label is forced (and decoding skips the forward passes for it).
    assert trie.forced([]) is None and trie.forced([1]) is None
    assert trie.forced([1, 2]) == [3] and trie.forced([1, 4]) == [] and trie.forced([5]) == []
    assert trie2.forced([7]) is None and trie2.forced([7, 8]) == []
    assert trie.forced([6]) is None  # off the trie: not forced


def test_label_tokens_match_the_training_answer_tokens(base_tokenizer_dir):
    """The trie must use the tokens training puts after ``assistant\\n`` or a trained model could not be matched."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    for label in ["card_declined", "Refund_not_showing_up", "verify_my_identity"]:
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": label}], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert f_ids[: len(p_ids)] == p_ids
        assert (
            f_ids[len(p_ids) : len(p_ids) + len(label_token_ids(tok, [label])[0])] == label_token_ids(tok, [label])[0]
        )


def test_evaluate_base_and_adapter_on_tiny_model(tiny_model_dir, tmp_path):
    labels = ["card_declined", "refund_not_received", "transfer_failed"]
    test = _records([(f"ticket {i}", labels[i % 3]) for i in range(9)])
    ref = write_records(test, tmp_path / "test.parquet")
    cfg = EvalConfig(batch_size=4, max_new_tokens=6)
    res = evaluate_models(ref, str(tiny_model_dir), {"base": None}, cfg, str(tmp_path / "eval"))

    assert res.rows == 9 and res.labels == 3
    m = res.metrics["base"]
    assert set(m) == {"accuracy", "accuracy_constrained", "valid_label_rate", "test_loss"}
    table = pd.read_parquet(res.predictions_uri)
    assert len(table) == 9 and set(table["model"]) == {"base"}
    assert list(pd.read_csv(res.predictions_csv_uri).columns) == list(table.columns)
    # Constrained decoding can only emit labels, even from a random model.
    assert set(table["prediction_constrained"]) <= set(labels)
    # The metrics are the table's own counts.
    assert m["accuracy"] == pytest.approx(table["correct"].mean())
    assert m["accuracy_constrained"] == pytest.approx((table["prediction_constrained"] == table["target"]).mean())
    assert m["valid_label_rate"] == pytest.approx(table["prediction"].isin(labels).mean())
    assert m["test_loss"] > 0
    report = json.loads(Path(res.report_uri).read_text())
    assert report["metrics"] == res.metrics and report["rows"] == 9


def test_single_label_constrained_is_always_right(tiny_model_dir, tmp_path):
    """With one label the trie leaves no choice: constrained accuracy is exactly 1, free accuracy is what it is."""
    test = _records([(f"ticket {i}", "card_declined") for i in range(5)])
    ref = write_records(test, tmp_path / "test.parquet")
    res = evaluate_models(ref, str(tiny_model_dir), {"base": None}, EvalConfig(batch_size=2), str(tmp_path / "e"))
    assert res.metrics["base"]["accuracy_constrained"] == 1.0
    assert res.metrics["base"]["accuracy"] < 1.0  # a random model does not write the label by itself


def test_adapter_for_other_base_is_skipped_not_scored(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "loraflow-adapter.json").write_text(json.dumps({"base_model_sha256": "0" * 64}))
    ref = write_records(_records([("t", "a"), ("u", "b")]), tmp_path / "test.parquet")
    res = evaluate_models(
        ref, str(tiny_model_dir), {"base": None, "champion": str(adapter)}, EvalConfig(), str(tmp_path / "e")
    )
    assert "champion" not in res.metrics and "trained on base weights" in res.skipped["champion"]


def test_empty_test_split_is_a_stage_error(tiny_model_dir, tmp_path):
    ref = write_records(_records([("t", "a")]).iloc[:0], tmp_path / "test.parquet")
    with pytest.raises(StageError, match="empty"):
        evaluate_models(ref, str(tiny_model_dir), {"base": None}, EvalConfig(), str(tmp_path / "e"))


def test_adapters_attach_and_detach_without_reloading(tiny_model_dir, tmp_path):
    """Base scored before and after an adapter is attached gives the same numbers; the adapter changes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    ref = write_records(_records([(f"ticket {i}", ["a_label", "b_label"][i % 2]) for i in range(4)]), tmp_path / "t.pq")
    res = evaluate_models(
        ref,
        str(tiny_model_dir),
        {"base": None, "candidate": str(adapter), "base_again": None},
        EvalConfig(batch_size=4, max_new_tokens=4),
        str(tmp_path / "e"),
    )
    assert res.metrics["base"] == res.metrics["base_again"]
    assert res.metrics["candidate"]["test_loss"] != pytest.approx(res.metrics["base"]["test_loss"], abs=1e-6)
    # The forgetting check ran on the shipped regression set: a random adapter changes the answer loss.
    assert res.forgetting is not None and res.forgetting != pytest.approx(0.0, abs=1e-6)


def _per_row_reference(model, tok, prompt: str, full: str, max_new: int, trie=None) -> tuple[str, float, int]:
    """Plain HF calls, one row at a time, no padding and no shared cache: (answer, summed answer loss, tokens)."""
    import torch

    end = tok.convert_tokens_to_ids("<|im_end|>")
    p_ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    kwargs = {}
    if trie is not None:
        kwargs["prefix_allowed_tokens_fn"] = lambda b, sent: trie.allowed(sent[p_ids.shape[1] :].tolist())
    with torch.inference_mode():
        out = model.generate(
            input_ids=p_ids, max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=end, **kwargs
        )
        new = out[0, p_ids.shape[1] :].tolist()
        answer = tok.decode(new[: new.index(end)] if end in new else new, skip_special_tokens=True).strip()
        a_ids = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids[0].tolist() + a_ids])
        logits = model(input_ids=ids).logits[0, p_ids.shape[1] - 1 : -1].float()
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(a_ids), reduction="sum")
    return answer, float(loss), len(a_ids)


def test_shared_prefill_matches_separate_passes(tiny_model_dir, base_tokenizer_dir):
    """score_all (batched, left-padded, one prompt prefill per batch) gives what plain per-row HF calls give."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.evaluate import score_all

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    labels = ["card_declined", "refund_not_received", "transfer_failed"]
    msgs = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x " * (1 + i * 3) + "help"}]
        for i in range(7)
    ]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    fulls = [
        tok.apply_chat_template([*m, {"role": "assistant", "content": labels[i % 3]}], tokenize=False)
        for i, m in enumerate(msgs)
    ]
    trie = LabelTrie(label_token_ids(tok, labels), tok.convert_tokens_to_ids("<|im_end|>"))
    free, constrained, loss = score_all(model, tok, prompts, fulls, 5, 3, trie=trie)
    ref = [_per_row_reference(model, tok, p, f, 5) for p, f in zip(prompts, fulls, strict=True)]
    ref_c = [_per_row_reference(model, tok, p, f, 6, trie=trie)[0] for p, f in zip(prompts, fulls, strict=True)]
    assert free == [r[0] for r in ref]
    assert constrained == ref_c
    assert set(constrained) <= set(labels)
    assert loss == pytest.approx(sum(r[1] for r in ref) / sum(r[2] for r in ref), rel=1e-4)
    # Loss only (the forgetting check) is the same number without generating.
    assert score_all(model, tok, prompts, fulls, 5, 3, generate=False)[2] == pytest.approx(loss, rel=1e-6)


def test_rows_that_finish_early_leave_the_batch_with_the_same_answers(base_tokenizer_dir):
    """Rows stop at their own end token at different steps (and leave the batch): still per-row generate's answers."""
    from collections import Counter

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasks.evaluate import score_all

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    # Large random weights: unlike the shared tiny model, each prompt gets its own continuation.
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, initializer_range=1.0)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    msgs = [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"ticket {i} " * (i % 3 + 1)}]
        for i in range(6)
    ]
    prompts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]

    def per_row(end: int | None) -> list[list[int]]:
        rows = []
        for p in prompts:
            ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=end, pad_token_id=0)
            new = out[0, ids.shape[1] :].tolist()
            rows.append(new[: new.index(end)] if end in new else new)
        return rows

    # As "end token", the token most rows write (but not all): rows stop at different steps, one runs all 8.
    seen = Counter(t for row in per_row(None) for t in set(row))
    end = next(t for t, c in seen.most_common() if c < len(prompts))
    reference = per_row(end)
    lengths = sorted(len(r) for r in reference)
    assert lengths[0] < 8 == lengths[-1] and len(set(lengths)) >= 3, lengths  # stops at different steps
    free, _, _ = score_all(model, tok, prompts, prompts, 8, 6, loss=False, end_id=end)
    assert free == [tok.decode(r, skip_special_tokens=True).strip() for r in reference]


# --------------------------------------------------------------------------------------------- metric suites


def test_text_metrics_score_the_best_reference_and_all_references():
    from tasks.evaluate.metrics import text_metrics

    refs = [["the cat sat on the mat", "a cat was sitting on a mat"], ["dogs bark loudly at night"]]
    perfect, stats = text_metrics(["a cat was sitting on a mat", "dogs bark loudly at night"], refs)
    assert perfect["rougeL"] == pytest.approx(1.0)  # the second reference of item 1 is matched exactly
    assert perfect["bleu"] == pytest.approx(1.0) and perfect["chrf"] == pytest.approx(1.0)
    assert list(stats["rougeL"].values) == pytest.approx([1.0, 1.0])
    worse, _ = text_metrics(["a cat", "cats meow"], refs)
    assert 0.0 <= worse["rougeL"] < perfect["rougeL"] and 0.0 <= worse["chrf"] < 1.0 and 0.0 <= worse["bleu"] < 1.0
    # Only the first reference: the same prediction scores lower than against both.
    single, _ = text_metrics(["a cat was sitting on a mat", "dogs bark loudly at night"], [refs[0][:1], refs[1]])
    assert single["rougeL"] < perfect["rougeL"]


def test_json_metrics_parse_schema_fields_and_exact_match():
    from tasks.evaluate.metrics import json_metrics

    schema = {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["Play", "Rate"]}}}
    ref = [
        '{"intent": "Play", "slots": {"artist": "Abba", "service": "spotify"}}',
        '{"intent": "Rate", "slots": {"object": "book"}}',
        '{"intent": "Play", "slots": {}}',
        '{"intent": "Rate", "slots": {"object": "novel"}}',
    ]
    pred = [
        '{"intent": "Play", "slots": {"artist": "abba ", "service": "youtube"}}',  # intent + 1 of 2 slots
        '```json\n{"intent": "Rate", "slots": {"object": "book"}}\n```',  # fenced, exact
        "Play some music",  # not JSON
        '{"intent": "Other", "slots": {"object": "novel", "rating": "5"}}',  # parses, fails the schema
    ]
    m, stats = json_metrics(pred, ref, schema)
    assert m["json_valid"] == 0.75 and m["schema_valid"] == 0.5 and m["exact_match"] == 0.25
    assert m["intent_accuracy"] == 0.5
    # Fields: reference leaves 3+2+1+2 = 8; predicted leaves 3+2+0+3 = 8; right: 2 (intent, artist) + 2 + 0 + 1.
    assert m["field_precision"] == pytest.approx(5 / 8) and m["field_recall"] == pytest.approx(5 / 8)
    assert m["field_f1"] == pytest.approx(5 / 8) and stats["field_f1"].reduce() == pytest.approx(5 / 8)
    # Slots only: reference 2+1+0+1 = 4, predicted 2+1+0+2 = 5, right 1+1+0+1 = 3.
    assert m["slots_f1"] == pytest.approx(2 * 3 / 9)


def test_paired_bootstrap_interval_contains_the_difference_and_mcnemar():
    import numpy as np

    from tasks.evaluate.metrics import ItemStats
    from tasks.evaluate.significance import candidate_intervals, mcnemar_p

    rng = np.random.default_rng(0)
    cand = (rng.random(200) < 0.8).astype(float)
    base = (rng.random(200) < 0.5).astype(float)
    res = candidate_intervals(
        {"candidate": {"accuracy": ItemStats(cand, "mean")}, "base": {"accuracy": ItemStats(base, "mean")}}
    )["base"]["accuracy"]
    assert res["low"] <= res["diff"] <= res["high"]
    assert res["diff"] == pytest.approx(cand.mean() - base.mean(), abs=1e-6)
    assert res["low"] > 0 and res["mcnemar_p"] < 0.001
    same = candidate_intervals({"candidate": {"a": ItemStats(cand, "mean")}, "b": {"a": ItemStats(cand, "mean")}})
    assert same["b"]["a"]["diff"] == 0 and same["b"]["a"]["low"] == 0 and same["b"]["a"]["high"] == 0
    assert mcnemar_p(cand, cand) == 1.0


def test_max_new_tokens_follows_the_answer_lengths():
    from tasks.evaluate.generation import max_new_from_lengths

    assert max_new_from_lengths([10] * 99 + [40]) == math.ceil(10 * 1.25) + 4
    assert max_new_from_lengths([10] * 50 + [40] * 50) == 54
    assert max_new_from_lengths([10_000]) == 512


def test_fewshot_pick_is_deterministic_and_diverse():
    from tasks.evaluate.baselines import pick_fewshot, with_fewshot

    pool = _records([(f"ticket {i}", ["a", "b", "c"][i % 3]) for i in range(30)])
    one = pick_fewshot(pool, 3, seed=0)
    assert one == pick_fewshot(pool.sample(frac=1.0, random_state=5), 3, seed=0)  # input order does not matter
    assert one != pick_fewshot(pool, 3, seed=1)
    assert {e["assistant"] for e in pick_fewshot(pool, 3, seed=0, pick="diverse")} == {"a", "b", "c"}
    msgs = with_fewshot([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], one)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2 + ["user"]
    assert msgs[-1]["content"] == "q"


def test_generation_eval_groups_references_and_scores_fewshot(tiny_model_dir, tmp_path):
    """Several references per prompt become one item; base_fewshot is scored from the train split; outputs."""
    test = _records([(f"mr {i // 3}", f"Game {i // 3} is a fun game, version {i % 3}.") for i in range(12)])
    train = _records([(f"train mr {i}", f"Train game {i} is good.") for i in range(10)])
    test_ref = write_records(test, tmp_path / "test.parquet")
    train_ref = write_records(train, tmp_path / "train.parquet")
    cfg = EvalConfig(task="generation", batch_size=4, fewshot_k=2, forgetting_set=None, bootstrap=50)
    res = evaluate_models(
        test_ref, str(tiny_model_dir), {"base": None}, cfg, str(tmp_path / "e"), label_sources=[train_ref]
    )
    assert res.rows == 4  # 4 distinct prompts, 3 references each
    assert list(res.metrics) == ["base", "base_fewshot"]
    for m in res.metrics.values():
        assert {"rougeL", "chrf", "bleu", "test_loss", "rougeL_first50_single_ref"} <= set(m)
        assert all(0.0 <= m[k] <= 1.0 for k in ("rougeL", "chrf", "bleu"))
    table = pd.read_parquet(res.predictions_uri)
    assert len(table) == 8 and all(len(json.loads(r)) == 3 for r in table["references"])
    report = json.loads(Path(res.report_uri).read_text())
    from transformers import AutoTokenizer

    from tasks.evaluate.generation import max_new_from_lengths

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_lengths = [len(tok(f"Train game {i} is good.", add_special_tokens=False)["input_ids"]) + 1 for i in range(10)]
    assert report["fewshot_ids_k"] == 2 and report["max_new_tokens"] == max_new_from_lengths(train_lengths)
    md = Path(res.report_md_uri).read_text()
    assert "## Side by side" in md and "base_fewshot" in md
    assert res.chart_uri and Path(res.chart_uri).stat().st_size > 1000


def test_regression_set_formats_and_errors(tmp_path):
    from tasks.evaluate.forgetting import load_regression_set

    path = tmp_path / "general.jsonl"
    path.write_text(
        '{"instruction": "Add", "input": "2 and 3", "output": "5"}\n'
        '{"prompt": "Capital of France?", "completion": "Paris"}\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    pairs = load_regression_set(str(path), limit=10)
    assert [a for _, a in pairs] == ["5", "Paris", "hello"]
    assert pairs[0][0] == [{"role": "user", "content": "Add\n\n2 and 3"}]
    from tasks.evaluate.config import DEFAULT_FORGETTING_SET
    from tasks.evaluate.forgetting import default_set_missing

    if not default_set_missing(DEFAULT_FORGETTING_SET):  # the shared Self-Instruct seeds beside the checkout
        assert len(load_regression_set(DEFAULT_FORGETTING_SET, limit=7)) == 7
    path.write_text('{"prompt": "x", "completion": "y"}\n{broken\n')
    with pytest.raises(StageError, match="line 2"):
        load_regression_set(str(path), limit=10)
    with pytest.raises(StageError, match="does not exist"):
        load_regression_set(str(tmp_path / "missing.jsonl"), limit=10)
