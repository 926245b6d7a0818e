"""Benchmark: validate 100,000 records against a data contract through Great Expectations.

    .venv/bin/python bench/validate.py [--rows 100000] [--contract banking77] [--data-docs]

The records are BANKING77 queries (``../shared/data/banking77/train.csv``) repeated with a ticket-number suffix
so that they stay distinct, wrapped as chat records (system, user, assistant = intent), with ~1 % planted
violations (unknown intents, empty answers, e-mail addresses, control characters, over-long tickets). Tokens are
counted with the base model's tokenizer from the model cache (SmolLM2-135M-Instruct), or with a stand-in
word-level tokenizer when the cache is empty (the table says which). Prints a markdown table.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEM = "Classify the banking customer query into one of 77 intents. Reply with the intent only."


def make_records(n: int, seed: int = 0):
    import pandas as pd

    from tasks.core import record_id

    src = pd.read_csv(REPO / "../shared/data/banking77/train.csv")
    rng = random.Random(seed)
    texts, labels = src["text"].tolist(), src["category"].tolist()
    rows, planted = [], {"unknown_label": 0, "empty_answer": 0, "email": 0, "control_char": 0, "overlong": 0}
    for i in range(n):
        j = i % len(texts)
        user, label = f"{texts[j]} (ticket {i})", labels[j]
        r = rng.random()
        if r < 0.003:
            label, planted["unknown_label"] = label + "_typo", planted["unknown_label"] + 1
        elif r < 0.005:
            label, planted["empty_answer"] = " ", planted["empty_answer"] + 1
        elif r < 0.007:
            user, planted["email"] = user + f" mail me at someone{i}@example.org", planted["email"] + 1
        elif r < 0.008:
            user, planted["control_char"] = user + " \x07", planted["control_char"] + 1
        elif r < 0.009:
            user, planted["overlong"] = user + " please" * 400, planted["overlong"] + 1
        msgs = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": label},
        ]
        rows.append({"id": record_id(msgs), "messages": msgs, "source": "bench", "created_at": "", "meta": {}})
    return pd.DataFrame(rows), planted


def tokenizer_path() -> tuple[str, str]:
    from tasks.home import model_cache

    folder = model_cache() / "SmolLM2-135M-Instruct"
    if (folder / "tokenizer.json").exists():
        return str(folder), "SmolLM2-135M-Instruct (BPE, 49k vocab)"
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([SYSTEM], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(out)
    return str(out), "stand-in word-level tokenizer (model cache empty)"


def plain_gx(records, labels: list[str]) -> tuple[float, float, int]:
    """The plain-library way: GX expectations written straight over the text columns (what a user without the
    derived columns would write). Fewer checks (no token counts, no Luhn / IBAN checksums, no role order) and its
    results quote the failing text. Returns (seconds, result JSON MB, failing-row count)."""
    import pandas as pd

    from tasks.validate import GxRun

    t0 = time.perf_counter()
    flat = pd.DataFrame(
        {
            "id": records["id"],
            "text": ["\n".join(m["content"] for m in msgs) for msgs in records["messages"]],
            "answer": [msgs[-1]["content"] for msgs in records["messages"]],
        }
    )
    run = GxRun(None)
    E = run.ns.gx.expectations
    suite = [
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"[\w.+-]+@[\w-]+\.[\w.]+"),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"(?:\d[ -]?){13,19}"),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"[\x00-\x08\x0b\x0c\x0e-\x1f]"),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=1000),
        E.ExpectColumnValuesToBeInSet(column="answer", value_set=labels),
        E.ExpectColumnValuesToBeUnique(column="text"),
        E.ExpectTableRowCountToBeBetween(min_value=3000),
    ]
    gx = run.ns.gx
    vd = run.ctx.validation_definitions.add(
        gx.ValidationDefinition(
            name="plain",
            data=run.batch,
            suite=run.ctx.suites.add(gx.ExpectationSuite(name="plain", expectations=suite)),
        )
    )
    result = vd.run(
        batch_parameters={"dataframe": flat},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]},
    )
    seconds = time.perf_counter() - t0
    mb = len(json.dumps(result.to_json_dict(), default=str)) / 1e6
    failing = len({i["id"] for r in result.results for i in (r.result.get("unexpected_index_list") or [])})
    return seconds, mb, failing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--contract", default="banking77")
    ap.add_argument("--data-docs", action="store_true", help="Also render GX Data Docs (HTML).")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as configure_environment() sets it for a run

    t0 = time.perf_counter()
    records, planted = make_records(args.rows)
    t_make = time.perf_counter() - t0

    t0 = time.perf_counter()
    from tasks.pii import get_engine
    from tasks.validate import ValidateConfig, gx_namespace, load_tokenizer, validate

    tok, tok_name = tokenizer_path()
    gx_namespace()
    load_tokenizer(tok)
    get_engine()  # the PII stage's engine, which the residual-PII rule runs (loads spaCy once)
    t_imports = time.perf_counter() - t0

    cfg = ValidateConfig(contract=args.contract, data_docs=args.data_docs)
    with tempfile.TemporaryDirectory() as art:
        t0 = time.perf_counter()
        out = validate(records, cfg, tok, artifacts_dir=art)
        t_validate = time.perf_counter() - t0
        gx_json_mb = Path(out.report["artifacts"]["gx_validation_results"]).stat().st_size / 1e6

    by_reason = out.quarantined["reason"].value_counts().to_dict()
    labels = json.loads((REPO / "../shared/data/banking77/categories.json").read_text())
    t_plain, plain_mb, plain_failing = plain_gx(records, labels)
    tm = out.report["timings"]
    pii_s = out.report["derived_stats"].get("residual_pii_s", 0.0)
    pii_texts = int(out.report["derived_stats"].get("residual_pii_texts", 0))
    other_s = tm["derived_columns_s"] - pii_s
    print(f"# validate: {args.rows:,} records, contract `{args.contract}`, {len(out.report['rules'])} rules\n")
    par = os.environ["TOKENIZERS_PARALLELISM"]
    print(
        f"tokenizer: {tok_name}; TOKENIZERS_PARALLELISM={par}; cores: {os.cpu_count()}; data docs: {args.data_docs}\n"
    )
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| build the records (not part of validation) | {t_make:.1f} |")
    print(f"| import GX + load tokenizer + PII engine (once per process) | {t_imports:.1f} |")
    print(f"| derived columns (chat template, tokens, text / JSON / role checks) | {other_s:.1f} |")
    print(f"| of which: residual PII with the PII stage's engine ({pii_texts:,} distinct texts) | {pii_s:.1f} |")
    print(f"| GX validation runs + quarantine + result JSON ({gx_json_mb:.1f} MB) | {tm['great_expectations_s']:.1f} |")
    print(f"| Data Docs | {tm['data_docs_s']:.1f} |")
    print(f"| **validate() total** | **{t_validate:.1f}** |")
    print(f"| **total incl. imports** | **{t_validate + t_imports:.1f}** |")
    print()
    print("| same records, plain GX over the raw text (7 expectations, no tokens/checksums/roles) | seconds |")
    print("|---|---:|")
    print(
        f"| flatten + GX run, result JSON {plain_mb:.1f} MB quoting the failing text, {plain_failing:,} rows flagged | {t_plain:.1f} |"
    )
    print()
    print(f"planted: {json.dumps(planted)}")
    print(f"quarantined: {json.dumps(by_reason)} (kept {len(out.kept):,})")
    print(f"rows/s: {args.rows / t_validate:,.0f}")


if __name__ == "__main__":
    main()
