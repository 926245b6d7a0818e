"""Rebuild the held-out PII sets in this folder from their public CoNLL sources (provenance, not needed to run).

    git clone https://github.com/leondz/emerging_entities_17      # WNUT-17, CC-BY 4.0
    git clone https://github.com/GateNLP/broad_twitter_corpus     # BTC, CC-BY 4.0
    python bench/data/pii/convert.py emerging_entities_17 broad_twitter_corpus

Each document's tokens are joined with single spaces (the corpora ship tokens, not the original text); a
B-/I- run becomes one span ``{start_position, end_position, entity_type}`` with the corpus's own label in
upper case, the shape of presidio-research's ``synth_dataset_v2.json``.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read_conll(path: Path) -> list[list[tuple[str, str]]]:
    docs, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0].strip():
            if cur:
                docs.append(cur)
            cur = []
            continue
        cur.append((parts[0], parts[-1].strip()))
    if cur:
        docs.append(cur)
    return docs


def to_record(doc: list[tuple[str, str]]) -> dict:
    text, spans, pos, open_span = [], [], 0, None
    for tok, tag in doc:
        start = pos
        text.append(tok)
        pos += len(tok) + 1
        label = tag[2:].upper() if tag[:2] in ("B-", "I-") else None
        if open_span and (label is None or tag.startswith("B-") or label != open_span["entity_type"]):
            spans.append(open_span)
            open_span = None
        if label and open_span is None:
            open_span = {"start_position": start, "end_position": start + len(tok), "entity_type": label}
        elif label:
            open_span["end_position"] = start + len(tok)
    if open_span:
        spans.append(open_span)
    return {"full_text": " ".join(text), "spans": spans}


def main(wnut: str, btc: str) -> None:
    sources = {
        "wnut17_dev.json": Path(wnut) / "emerging.dev.conll",
        "wnut17_test.json": Path(wnut) / "emerging.test.annotated",
        "btc_f.json": Path(btc) / "f.conll",
        "btc_h.json": Path(btc) / "h.conll",
    }
    for name, path in sources.items():
        recs = [to_record(d) for d in read_conll(path)]
        if name.startswith("btc_"):
            recs = recs[:1000]  # half of a section keeps the file small; the order is the corpus's own
        (HERE / name).write_text(json.dumps(recs, ensure_ascii=False, separators=(",", ":")) + "\n")
        print(name, len(recs), "documents", sum(len(r["spans"]) for r in recs), "spans")


if __name__ == "__main__":
    main(*sys.argv[1:3])
