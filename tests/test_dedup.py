"""Dedup + decontamination: expected outputs, with the negative cases next to the positive ones."""

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core import normalise_text, read_records, record_id, write_records
from tasks.dedup import (
    DedupConfig,
    char_shingle_hashes,
    dedup_normalise,
    dedup_parquet,
    dedup_task,
    deduplicate,
    exact_key,
    minhash_signatures,
    permutations,
    similarity,
)
from tasks.split import SplitConfig


def rec(text, label="card_arrival", source="s", created_at="", system=None):
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    if system:
        msgs.insert(0, {"role": "system", "content": system})
    return {"id": record_id(msgs), "messages": msgs, "source": source, "created_at": created_at, "meta": {}}


def frame(*rows):
    return pd.DataFrame(list(rows))


def outcome_table(out):
    """{id: (reason, kept_id, similarity)} of the quarantined rows."""
    q = out.quarantined
    return {
        i: (r, json.loads(d).get("kept_id"), json.loads(d).get("similarity"))
        for i, r, d in zip(q["id"], q["reason"], q["detail"], strict=True)
    }


def check_ledger(records, out):
    assert len(records) == len(out.kept) + len(out.quarantined)
    assert set(out.kept["id"]).isdisjoint(set(out.quarantined["id"])) or records["id"].duplicated().any()


CFG = DedupConfig(workers=1)

# ------------------------------------------------------------------------------------------- exact


def test_normalisation_folds_case_punctuation_space_and_compatibility_forms():
    assert dedup_normalise("  Hello,   WORLD!! ") == "hello world"
    assert dedup_normalise("ＨＥＬＬＯ　ｗｏｒｌｄ") == "hello world"  # full-width letters and space
    assert dedup_normalise("ﬁnance") == "finance"  # ligature
    assert dedup_normalise("我的卡，还没到？") == "我的卡还没到"  # no space is invented inside CJK text
    assert dedup_normalise("카드가, 안 와요") == "카드가 안 와요"  # Hangul is written with spaces: kept
    assert dedup_normalise(" \t?! ") == ""


def test_normalisation_builds_on_the_core_normalisation():
    # Whatever core folds (NFKC, case, whitespace), dedup folds the same way, and only punctuation on top.
    for text in ["Ｗｈｅｒｅ ｉｓ\u00a0my CARD", "ﬁnance  Team", "我的卡，还没到？", "Straße  Nº 5"]:
        assert dedup_normalise(text) == dedup_normalise(normalise_text(text))
    assert normalise_text("Where is my card?!") != normalise_text("where is my card")
    assert dedup_normalise("Where is my card?!") == dedup_normalise("where is my card")


def test_exact_key_is_what_dedup_calls_an_exact_duplicate():
    rows = [
        rec("Where is my card?"),
        rec("where is my card"),
        rec("Where is my card?", "other"),
        rec("Where's my PIN?"),
    ]
    keys = [exact_key(r["messages"]) for r in rows]
    assert keys[0] == keys[1] and len({keys[0], keys[2], keys[3]}) == 3
    assert exact_key(rows[0]["messages"], "prompt") == exact_key(rows[2]["messages"], "prompt")
    assert exact_key(rec("x", system="A")["messages"]) != exact_key(rec("x", system="B")["messages"])
    out = deduplicate(frame(rows[0], rows[1], rows[3]), DedupConfig(workers=1, near_duplicates=False))
    assert list(out.quarantined["reason"]) == ["exact_duplicate"]


def test_exact_duplicates_after_normalisation_keep_one():
    a = rec("Where is my card?")
    b = rec("where is my card")
    c = rec("WHERE   is my card ?!")
    d = rec("Ｗｈｅｒｅ ｉｓ ｍｙ ｃａｒｄ？")  # full-width look-alikes: NFKC makes them identical
    records = frame(a, b, c, d)
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert len(out.kept) == 1
    kept = out.kept["id"].iloc[0]
    table = outcome_table(out)
    assert {r for r, _, _ in table.values()} == {"exact_duplicate"}
    assert all(k == kept and s == 1.0 for _, k, s in table.values())
    assert out.metrics["dedup.exact_removed"] == 3


def test_different_texts_are_not_exact_duplicates():
    records = frame(rec("Where is my card?"), rec("Where is my new card?", "card_arrival"))
    out = deduplicate(records, DedupConfig(workers=1, near_duplicates=False))
    assert len(out.kept) == 2 and len(out.quarantined) == 0


# ------------------------------------------------------------------------------------------- near


def test_near_duplicates_removed_with_kept_id_and_similarity():
    base = rec("I am still waiting on my new card, when will it arrive?")
    typo = rec("I am stil waiting on my new card, when will it arive?")
    hi = rec("hi, I am still waiting on my new card when will it arrive thanks")
    records = frame(base, typo, hi)
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert len(out.kept) == 1
    kept = out.kept["id"].iloc[0]
    for reason, kept_id, sim in outcome_table(out).values():
        assert reason == "near_duplicate"
        assert kept_id == kept
        assert CFG.threshold <= sim < 1.0
    assert out.metrics["dedup.near_dups_removed"] == 2


def test_near_but_not_duplicate_is_kept():
    # Same template, different intent: one or two words apart, which is what makes them different questions.
    records = frame(
        rec("How do I top up my card with cash?", "top_up"),
        rec("How do I freeze my card with the app?", "card_freeze"),
        rec("Why was my card payment declined?", "declined_card_payment"),
        rec("Why was my transfer declined?", "declined_transfer"),
    )
    out = deduplicate(records, CFG)
    assert len(out.kept) == 4, outcome_table(out)


def test_a_changed_number_is_another_request_but_a_spelled_out_one_is_not():
    five = rec("Set a timer for 5 minutes please")
    seven = rec("Set a timer for 7 minutes please")
    spelled = rec("set a timer for five minutes please")
    out = deduplicate(frame(five, seven, spelled), CFG)
    assert seven["id"] in set(out.kept["id"])
    assert [r for r, _, _ in outcome_table(out).values()] == ["near_duplicate"]
    assert {five["id"], spelled["id"]} & set(out.quarantined["id"])
    off = deduplicate(frame(five, seven), DedupConfig(workers=1, number_guard_max_words=0))
    assert len(off.kept) == 1  # without the guard the two look alike: the guard is what keeps them


def test_a_test_row_leaks_into_a_train_row_that_changes_only_a_number():
    test_row = rec("I was charged 25 euros twice for one coffee, can you refund it?")
    train_row = rec("I was charged 40 euros twice for one coffee, can you refund it?")
    records = frame(test_row, train_row)
    out = deduplicate(records, CFG, is_test=pd.Series([True, False], index=records.index))
    assert outcome_table(out)[train_row["id"]][:2] == ("test_leak", test_row["id"])


SENTENCES = [
    "Thanks for getting in touch about the delayed refund on your account.",
    "Refunds usually reach the original card within five working days of approval.",
    "If it has been longer, the card issuer may still be processing the credit on their side.",
    "You can check the status at any time under Payments in the app.",
    "Please reply with the date of the purchase and we will trace it for you.",
    "We are sorry for the wait and appreciate your patience while we look into it.",
]


def test_long_texts_that_differ_by_a_sentence_are_near_duplicates_but_half_overlaps_are_not():
    reply = " ".join(SENTENCES[:5])  # ~75 words: above the old 40-word switch to word shingles
    edited = " ".join([SENTENCES[1], SENTENCES[0], SENTENCES[2], SENTENCES[4], SENTENCES[5]])  # swap, drop, add
    overlap = " ".join(SENTENCES[3:] + ["Our team is available around the clock by chat and by phone."])
    assert len(reply.split()) > 40
    records = frame(rec(reply, "refund"), rec(edited, "refund"), rec(overlap, "refund"))
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert [r for r, _, _ in outcome_table(out).values()] == ["near_duplicate"]
    assert rec(overlap, "refund")["id"] in set(out.kept["id"])


def test_a_copy_edited_twice_follows_the_row_it_was_edited_from():
    # Newest first: c is kept and b is dropped for c; a, too far from c on its own, is close to b and follows it.
    a = rec("could you tell me how long an international transfer to spain usually takes", created_at="2026-01-01")
    b = rec("hi, could you tell me how long an international transfer to spain takes", created_at="2026-02-01")
    c = rec("hi, could u tell me how long a international transfer to spain takes pls", created_at="2026-03-01")
    records = frame(a, b, c)
    cfg = DedupConfig(workers=1, threshold=0.8)
    sims = similarity(*(dedup_normalise(x["messages"][0]["content"]) for x in (a, c)), cfg)
    assert sims < cfg.threshold  # a and c alone would not be merged
    out = deduplicate(records, cfg)
    assert list(out.kept["id"]) == [c["id"]]
    assert {k for _, k, _ in outcome_table(out).values()} == {c["id"]}
    alone = deduplicate(records, DedupConfig(workers=1, threshold=0.8, follow_dropped=False))
    assert a["id"] in set(alone.kept["id"])


def test_lsh_candidates_are_verified_before_removal():
    # Pairs LSH proposes but whose verified similarity is below the threshold must survive: with an LSH
    # threshold far below the verification threshold there are many candidates and no removals.
    records = frame(
        rec("please send me a new card for my account"),
        rec("please send me a new pin for my account"),
        rec("please close my account for me now"),
    )
    out = deduplicate(records, DedupConfig(workers=1, lsh_threshold=0.1, threshold=0.95))
    assert len(out.kept) == 3
    assert out.metrics["dedup.candidate_pairs"] >= 1
    assert out.metrics["dedup.lsh_false_candidates"] == out.metrics["dedup.candidate_pairs"]


def test_unicode_homoglyph_is_a_near_not_an_exact_duplicate():
    latin = rec("I want to close my account today")
    cyrillic = rec("I want to close my \u0430ccount today")  # Cyrillic 'а': not folded by NFKC
    out = deduplicate(frame(latin, cyrillic), CFG)
    assert [r for r, _, _ in outcome_table(out).values()] == ["near_duplicate"]
    out = deduplicate(frame(latin, cyrillic), DedupConfig(workers=1, near_duplicates=False))
    assert len(out.kept) == 2


def test_cjk_texts_without_spaces_are_compared_by_characters():
    a = rec("我的卡还没有到，怎么办？", "card_arrival")
    b = rec("我的卡还没有到怎么办", "card_arrival")  # punctuation only: exact after normalisation
    c = rec("我的卡还没有到，怎么办啊", "card_arrival")  # one character more: near
    other = rec("我想取消我的订单", "cancel_transfer")
    records = frame(a, b, c, other)
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert other["id"] in set(out.kept["id"])
    assert len(out.kept) == 2
    # a/b are one exact group; whether the group's head or c is kept depends on the id order only.
    assert sorted(r for r, _, _ in outcome_table(out).values()) in (
        ["exact_duplicate", "near_duplicate"],
        ["near_duplicate", "near_duplicate"],
    )


def test_system_prompt_is_not_part_of_near_duplicate_text():
    # A long shared system prompt must not make different short questions look alike.
    system = "You are a helpful banking assistant. Answer with the intent label only. " * 5
    records = frame(
        rec("Where is my card?", system=system),
        rec("How do I change my PIN?", "change_pin", system=system),
    )
    out = deduplicate(records, CFG)
    assert len(out.kept) == 2


# ------------------------------------------------------------------------------------------- conflicts


def test_same_prompt_different_answer_is_a_conflict_not_a_duplicate():
    a = rec("Can I get a refund?", "request_refund", created_at="2026-01-01T00:00:00Z")
    b = rec("can i get a refund", "refund_not_showing_up", created_at="2026-03-01T00:00:00Z", source="curated")
    c = rec("Where is my card?", "card_arrival")
    records = frame(a, b, c)

    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert outcome_table(out) == {
        a["id"]: ("conflicting_target", None, None),
        b["id"]: ("conflicting_target", None, None),
    }
    assert out.metrics["dedup.conflict_groups"] == 1
    detail = json.loads(out.quarantined["detail"].iloc[0])
    assert detail["conflict_group_size"] == 2 and detail["distinct_targets"] == 2

    newest = deduplicate(records, DedupConfig(workers=1, conflict_policy="newest"))
    assert set(newest.kept["id"]) == {b["id"], c["id"]}
    assert outcome_table(newest)[a["id"]][:2] == ("conflicting_target", b["id"])

    a2 = dict(a, source="curated")
    b2 = dict(b, source="scraped")
    prio = deduplicate(
        frame(a2, b2, c), DedupConfig(workers=1, conflict_policy="source_priority", source_priority=["curated"])
    )
    assert set(prio.kept["id"]) == {a["id"], c["id"]}


def test_same_prompt_same_answer_is_a_duplicate_under_prompt_key():
    a = rec("Can I get a refund?", "request_refund", system="sys A")
    b = rec("can I get a refund", "request_refund", system="sys A")
    out = deduplicate(frame(a, b), DedupConfig(workers=1, key="prompt"))
    assert [r for r, _, _ in outcome_table(out).values()] == ["exact_duplicate"]


# ------------------------------------------------------------------------------------------- bad input


def test_empty_and_whitespace_keys_are_quarantined_not_crashing():
    rows = [rec(""), rec("   \n\t "), rec("?!..."), rec("Where is my card?")]
    records = frame(*rows)
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert list(out.quarantined["reason"]) == ["empty_key"] * 3
    assert list(out.kept["id"]) == [rows[3]["id"]]


def test_empty_input_and_single_row():
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in ("id", "messages", "source", "created_at", "meta")})
    out = deduplicate(empty, CFG)
    assert len(out.kept) == 0 and len(out.quarantined) == 0
    one = frame(rec("hello"))
    assert len(deduplicate(one, CFG).kept) == 1


def _long_text(rng, n_words=18_000):
    vocab = [f"w{i}" for i in range(3000)]
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def test_100kb_texts_use_word_shingles_and_are_deduplicated():
    rng = random.Random(0)
    a = _long_text(rng)
    assert len(a) > 100_000
    words = a.split()
    for k in range(0, len(words), 2000):  # one word in 2,000 changed
        words[k] = "changed"
    b = " ".join(words)
    c = _long_text(rng)
    records = frame(rec(a, "x"), rec(b, "x"), rec(c, "x"))
    out = deduplicate(records, CFG)
    check_ledger(records, out)
    assert len(out.kept) == 2
    assert rec(c, "x")["id"] in set(out.kept["id"])
    ((reason, _, sim),) = outcome_table(out).values()
    assert reason == "near_duplicate" and sim > 0.9


# ------------------------------------------------------------------------------------------- keep policy


def test_keep_policy_source_priority_then_newest_then_id():
    old_curated = rec("Where is my card?", source="curated", created_at="2025-01-01T00:00:00Z")
    new_scraped = rec("where is my card", source="scraped", created_at="2026-06-01T00:00:00Z")
    cfg = DedupConfig(workers=1, source_priority=["curated"])
    assert list(deduplicate(frame(new_scraped, old_curated), cfg).kept["id"]) == [old_curated["id"]]
    # no source priority: newest wins
    assert list(deduplicate(frame(old_curated, new_scraped), CFG).kept["id"]) == [new_scraped["id"]]
    # same source and time: smallest id wins
    x, y = rec("Where is my card?"), rec("where is my card!")
    assert list(deduplicate(frame(x, y), CFG).kept["id"]) == [min(x["id"], y["id"])]


def _perturbed_set(n=300, seed=1):
    rng = random.Random(seed)
    base = [f"question {i} about my {rng.choice(['card', 'pin', 'transfer', 'account'])} number {i * 7}"
            for i in range(n)]  # fmt: skip
    rows = [rec(t, f"l{i % 5}", source=rng.choice(["a", "b"]), created_at=f"2026-0{rng.randint(1, 9)}-01")
            for i, t in enumerate(base)]  # fmt: skip
    for _ in range(n // 3):
        i = rng.randrange(n)
        t = base[i].upper() if rng.random() < 0.5 else "hi, " + base[i] + " thanks"
        rows.append(rec(t, f"l{i % 5}", source=rng.choice(["a", "b"]), created_at=f"2026-0{rng.randint(1, 9)}-01"))
    return rows


def test_keep_policy_is_deterministic_and_independent_of_input_order():
    rows = _perturbed_set()
    cfg = DedupConfig(workers=1, source_priority=["b"])
    first = deduplicate(frame(*rows), cfg)
    again = deduplicate(frame(*rows), cfg)
    shuffled_rows = rows[:]
    random.Random(7).shuffle(shuffled_rows)
    shuffled = deduplicate(frame(*shuffled_rows), cfg)
    assert len(first.quarantined) > 0
    assert sorted(first.kept["id"]) == sorted(again.kept["id"]) == sorted(shuffled.kept["id"])
    assert outcome_table(first) == outcome_table(again) == outcome_table(shuffled)
    # every drop names a row that was actually kept
    kept = set(first.kept["id"])
    assert all(k in kept for _, k, _ in outcome_table(first).values())


# ------------------------------------------------------------------------------------------- decontamination


def test_decontamination_removes_planted_leaks_and_never_a_test_row():
    test_row = rec("How long does a transfer to Germany take?", "transfer_timing", created_at="2020-01-01")
    # The leaks rank *before* the test row by source and date, and are still the ones removed.
    exact_leak = rec("how long does a transfer to germany take", "transfer_timing", source="curated",
                     created_at="2026-01-01")  # fmt: skip
    near_leak = rec("hi, how long does a transfer to Germany take? thanks", "transfer_timing", source="curated",
                    created_at="2026-01-01")  # fmt: skip
    prompt_leak = rec("How long does a transfer to Germany take?", "other_label", source="curated")
    clean = rec("Can I order a second card?", "order_card")
    records = frame(test_row, exact_leak, near_leak, prompt_leak, clean)
    is_test = pd.Series([True, False, False, False, False], index=records.index)
    cfg = DedupConfig(workers=1, source_priority=["curated"])

    out = deduplicate(records, cfg, is_test=is_test)
    check_ledger(records, out)
    table = outcome_table(out)
    assert set(out.kept["id"]) == {test_row["id"], clean["id"]}
    assert {table[r["id"]][0] for r in (exact_leak, near_leak, prompt_leak)} == {"test_leak"}
    assert all(table[r["id"]][1] == test_row["id"] for r in (exact_leak, near_leak, prompt_leak))
    assert out.metrics["dedup.test_leaks"] == 3

    # Negative: without a test mask (or with decontamination off) they are ordinary duplicates / conflicts.
    plain = deduplicate(records, cfg)
    assert "test_leak" not in set(plain.quarantined["reason"])
    off = deduplicate(records, DedupConfig(workers=1, decontaminate=False), is_test=is_test)
    assert "test_leak" not in set(off.quarantined["reason"])


def test_test_rows_are_never_dropped_for_near_duplicates_of_each_other():
    a = rec("How long does a transfer to Germany take?")
    b = rec("hi, how long does a transfer to Germany take? thanks")
    records = frame(a, b)
    out = deduplicate(records, CFG, is_test=pd.Series([True, True], index=records.index))
    assert len(out.kept) == 2
    assert out.metrics["dedup.test_near_pairs_kept"] == 1


def test_long_text_ngram_overlap_with_test_is_a_leak():
    rng = random.Random(3)
    passage = _long_text(rng, 300)
    test_row = rec("Summarise this: " + passage, "summary A")
    # The train row quotes most of the test passage inside different surrounding text.
    leak = rec("Here is a document. " + " ".join(passage.split()[:240]) + " " + _long_text(rng, 120), "summary B")
    unrelated = rec(_long_text(rng, 300), "summary C")
    records = frame(test_row, leak, unrelated)
    out = deduplicate(records, CFG, is_test=pd.Series([True, False, False], index=records.index))
    table = outcome_table(out)
    assert table[leak["id"]][0] == "test_leak" and table[leak["id"]][1] == test_row["id"]
    assert unrelated["id"] in set(out.kept["id"])
    assert out.report["leaks_by_method"] == {"ngram": 1}


# ------------------------------------------------------------------------------------------- internals


def test_signatures_are_datasketch_minhash_signatures():
    from datasketch import MinHash

    perms = permutations(64, 3)
    texts = ["where is my card", "我的卡还没有到", "x"]
    hashes = [char_shingle_hashes(t, 4) for t in texts]
    sig = minhash_signatures(hashes, perms)
    for h, s in zip(hashes, sig, strict=True):
        m = MinHash(num_perm=64, seed=3, hashfunc=lambda v: v)
        m.update_batch([int(x) for x in h])
        assert np.array_equal(m.hashvalues, s)


def test_similarity_is_symmetric_and_bounded():
    a, b = "where is my card", "hi where is my crad"
    assert similarity(a, b, CFG) == pytest.approx(similarity(b, a, CFG))
    assert similarity(a, a, CFG) == 1.0
    assert 0.0 <= similarity(a, "completely different words", CFG) < 0.5


def test_streaming_parquet_path_matches_in_memory_and_keeps_the_ledger(tmp_path):
    rows = _perturbed_set(200, seed=4)
    records = frame(*rows)
    src = write_records(records, tmp_path / "in.parquet")
    cfg = DedupConfig(workers=1, batch_rows=128)
    res = dedup_parquet(src.uri, cfg, tmp_path / "out")
    mem = deduplicate(records, cfg)
    assert res.counts["rows_in"] == res.counts["kept"] + res.counts["quarantined"] == len(records)
    assert sorted(read_records(res.data)["id"]) == sorted(mem.kept["id"])
    q = pd.read_parquet(res.quarantine.uri)
    assert sorted(zip(q["id"], q["reason"], strict=True)) == sorted(
        zip(mem.quarantined["id"], mem.quarantined["reason"], strict=True)
    )
    report = json.loads(Path(res.report_uri).read_text())
    assert report["counts"] == res.counts and "cluster_size_histogram" in report


def test_dedup_task_streams_large_inputs_with_the_same_result(tmp_path):
    rows = _perturbed_set(150, seed=6)
    rows[0]["meta"] = {"split": "test"}
    ref = write_records(frame(*rows), tmp_path / "in.parquet")
    mem = dedup_task.fn(ref, DedupConfig(workers=1), SplitConfig(), str(tmp_path / "mem"))
    streamed = dedup_task.fn(ref, DedupConfig(workers=1, stream_min_rows=10, batch_rows=100), SplitConfig(),
                             str(tmp_path / "stream"))  # fmt: skip
    assert streamed.counts == mem.counts and mem.counts["quarantined"] > 0
    assert streamed.data.sha256 == mem.data.sha256  # the same kept content, written batch by batch
    assert Path(streamed.data.uri).name == Path(mem.data.uri).name
    qm, qs = pd.read_parquet(mem.quarantine.uri), pd.read_parquet(streamed.quarantine.uri)
    assert sorted(zip(qm["id"], qm["reason"], qm["detail"], strict=True)) == sorted(
        zip(qs["id"], qs["reason"], qs["detail"], strict=True)
    )


def test_process_pool_gives_the_same_result(tmp_path):
    rows = _perturbed_set(120, seed=5)
    records = frame(*rows)
    serial = deduplicate(records, DedupConfig(workers=1))
    pooled = deduplicate(records, DedupConfig(workers=2, parallel_min_rows=1, batch_rows=100))
    assert outcome_table(serial) == outcome_table(pooled)


def test_dedup_task_uses_the_split_test_mask(tmp_path):
    rows = [rec("Where is my card?"), rec("where is my card"), rec("How do I change my PIN?", "change_pin")]
    rows[0]["meta"] = {"split": "test"}
    records = frame(*rows)
    ref = write_records(records, tmp_path / "in.parquet")
    res = dedup_task.fn(ref, DedupConfig(workers=1), SplitConfig(), str(tmp_path))
    assert res.counts == {"rows_in": 3, "kept": 2, "quarantined": 1, "quarantined_test_leak": 1}
    report = json.loads(Path(res.report_uri).read_text())
    assert report["metrics"]["dedup.test_leaks"] == 1
    assert "Where is my card" not in Path(res.report_uri).read_text()  # ids only, never text


def test_cli_writes_kept_records_and_a_report(tmp_path):
    from typer import Typer
    from typer.testing import CliRunner

    from loraflow.commands.dedup import command

    app = Typer()
    app.command("dedup")(command)
    app.command("noop")(lambda: None)  # two commands: typer then dispatches on the command name

    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"prompt": "How do I reset my PIN?", "completion": "change_pin"},
                {"prompt": "how do i reset my pin", "completion": "change_pin"},
                {"instruction": "Classify", "input": "Where is my card?", "output": "card_arrival"},
                {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "x"}]},
            ]
        )
        + "\n{broken\n"
    )
    out, report = tmp_path / "out.jsonl", tmp_path / "r.json"
    result = CliRunner().invoke(app, ["dedup", str(src), str(out), "--report", str(report), "--threshold", "0.8"])
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 2
    r = json.loads(report.read_text())
    assert r["counts"]["rows_in"] == 5
    assert r["counts"]["quarantined_exact_duplicate"] == 1 and r["counts"]["quarantined_empty_key"] == 1
    assert r["config"]["threshold"] == 0.8
    assert "reset" not in report.read_text()
