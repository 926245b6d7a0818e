"""Rebuild the dedup benchmark's committed text subsets from their public sources (not needed to run the bench).

Usage: python bench/data/dedup/build_dedup_data.py CLINC_DATA_FULL_JSON NLTK_MOVIE_REVIEWS_DIR NLTK_STATE_UNION_DIR

Sources and licences: see bench/data/dedup/README.md. Output: clinc150_queries.jsonl, movie_review_excerpts.jsonl,
state_union_paragraphs.jsonl next to this file, each deterministic (sorted inputs, no randomness).
"""

import glob
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _detok(s: str) -> str:
    """Undo the movie-review corpus's tokenisation (" , " -> ", ", "( x )" -> "(x)")."""
    s = re.sub(r" ([,.!?;:)])", r"\1", s.strip())
    s = re.sub(r"\( ", "(", s)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)


def _window(sents: list[str], start: int) -> list[str] | None:
    out, n = [], 0
    for s in sents[start:]:
        w = len(s.split())
        if n + w > 150:
            break
        out.append(s)
        n += w
        if n >= 40 and len(out) >= 3:
            return out
    return None


def clinc(path: str) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return [{"text": t, "intent": i} for t, i in data["test"]]


def movie_reviews(root: str, docs: int = 600) -> list[dict]:
    """One 40-150-word excerpt (3+ consecutive sentences) per review; for every 4th review a second excerpt
    starting where the first half of its words ends (sharing at most about half of its text: similar, not a
    duplicate; one sharing more would be what a copy with one sentence dropped and one added is)."""
    rows = []
    for k, f in enumerate(sorted(glob.glob(f"{root}/*/*.txt"))[:docs]):
        sents = [_detok(line) for line in Path(f).read_text().splitlines() if line.strip()]
        a = _window(sents, 0)
        if a is None:
            continue
        rows.append({"doc": k, "part": 0, "sentences": a})
        if k % 4 == 0:
            words = [len(x.split()) for x in a]
            half = next(i for i in range(len(a) + 1) if sum(words[:i]) >= sum(words) / 2)
            b = _window(sents, max(1, half))
            if b is not None and b != a:
                rows.append({"doc": k, "part": 1, "sentences": b})
    return rows


def state_union(root: str, paragraphs: int = 600) -> list[dict]:
    rows = []
    for f in sorted(glob.glob(f"{root}/*.txt")):
        for line in Path(f).read_text(encoding="latin-1").splitlines():
            sents = [s.strip() for s in _SENT.split(line.strip()) if s.strip()]
            if 40 <= len(line.split()) <= 150 and len(sents) >= 3:
                rows.append({"doc": Path(f).stem, "sentences": sents})
    step = max(1, len(rows) // paragraphs)
    return rows[::step][:paragraphs]


def main(clinc_json: str, reviews_dir: str, union_dir: str) -> None:
    for name, rows in (
        ("clinc150_queries.jsonl", clinc(clinc_json)),
        ("movie_review_excerpts.jsonl", movie_reviews(reviews_dir)),
        ("state_union_paragraphs.jsonl", state_union(union_dir)),
    ):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(name, len(rows))


if __name__ == "__main__":
    main(*sys.argv[1:4])
