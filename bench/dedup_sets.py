"""The dedup benchmark's labelled near-duplicate sets: one tuning ("dev") set per text length, two held out.

| set | originals (real text) | copies made by | used for |
|---|---|---|---|
| ``dev-short`` | BANKING77 train queries (``../shared/data``) | the dev recipe (:func:`perturb`) | tuning |
| ``dev-long`` | State of the Union paragraphs, 40-150 words (``bench/data/dedup``) | the dev long recipe | tuning |
| ``heldout-queries`` | CLINC150 test queries (``bench/data/dedup``) | the held-out query recipe | reporting only |
| ``heldout-long`` | movie-review excerpts, 40-150 words (``bench/data/dedup``) | the held-out long recipe | reporting only |

Every set: originals that are *twins* of one another are thinned out first (see :func:`twin_free_originals`),
some originals get 1-3 perturbed copies (a cluster = an original and its copies), and "merely similar"
negatives stay in: originals that differ from another only in a number (held-out queries also get planted
number siblings: "set a timer for 5 minutes" / "... for 7 minutes" are two rows to keep), and, in the long
sets, partly overlapping excerpts of one document. Nothing in the held-out recipes was used to choose a
default: they were written after the defaults and only measured (docs/BENCHMARKS.md says how often).
"""

import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.dedup import dedup_normalise

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data" / "dedup"
BANKING77 = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"
SEED = 0

# ------------------------------------------------------------------------------------------- dev recipe (tuned on)
FILLERS = ["please", "just", "actually", "really", "now", "again", "so", "maybe"]
PREFIXES = ["hi, ", "hi ", "hello, ", "hey ", "thanks, ", "ok so ", "excuse me, ", "good morning! "]
SUFFIXES = [" thanks", " thank you!", " thx", " please", " pls help"]
KEYBOARD = {
    "a": "qsz", "b": "vgn", "c": "xdv", "d": "sfe", "e": "wrd", "f": "dgr", "g": "fht", "h": "gjy", "i": "uok",
    "j": "hku", "k": "jli", "l": "kop", "m": "nj", "n": "bmh", "o": "ipl", "p": "ol", "q": "wa", "r": "etf",
    "s": "adw", "t": "ryg", "u": "yij", "v": "cbf", "w": "qes", "x": "zcs", "y": "tuh", "z": "xa",
}  # fmt: skip


def typo(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    cand = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
    if not cand:
        return t
    i = rng.choice(cand)
    w = words[i]
    pos = [k for k, c in enumerate(w) if c.isalpha()]
    k = rng.choice(pos[:-1] or pos)
    kind = rng.choice(["swap", "drop", "double", "neighbour"])
    if kind == "swap" and k + 1 < len(w):
        w = w[:k] + w[k + 1] + w[k] + w[k + 2 :]
    elif kind == "drop":
        w = w[:k] + w[k + 1 :]
    elif kind == "double":
        w = w[:k] + w[k] + w[k:]
    else:
        c = w[k].lower()
        w = w[:k] + rng.choice(KEYBOARD.get(c, c)) + w[k + 1 :]
    words[i] = w
    return " ".join(words)


def casing(rng: random.Random, t: str) -> str:
    return rng.choice([str.lower, str.upper, str.capitalize, str.title])(t)


def punctuation(rng: random.Random, t: str) -> str:
    kind = rng.choice(["strip", "add", "comma", "double"])
    core = t.rstrip("?.!")
    if kind == "strip":
        return core
    if kind == "add":
        return core + rng.choice(["?", "!", ".", "??", "?!"])
    if kind == "comma":
        w = t.split(" ", 1)
        return w[0] + "," + (" " + w[1] if len(w) > 1 else "")
    return t + t[-1] if t and t[-1] in "?.!" else t + "?"


def insert_word(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    return " ".join(words)


def delete_word(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    if len(words) < 4:
        return t
    del words[rng.randrange(len(words))]
    return " ".join(words)


def swap_words(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    if len(words) < 3:
        return t
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def prefix(rng: random.Random, t: str) -> str:
    return rng.choice(PREFIXES) + (t[:1].lower() + t[1:] if rng.random() < 0.5 else t)


def suffix(rng: random.Random, t: str) -> str:
    return t.rstrip() + rng.choice(SUFFIXES)


OPS = [typo, casing, punctuation, insert_word, delete_word, swap_words, prefix, suffix]


def perturb(rng: random.Random, text: str) -> str:
    for _ in range(rng.choices([1, 2], [0.6, 0.4])[0]):
        text = rng.choice(OPS)(rng, text)
    return text


# ------------------------------------------------------------------------------------------- held-out query recipe
CONTRACTIONS = [("what is", "what's"), ("i am", "i'm"), ("do not", "don't"), ("can not", "can't"),
                ("i would", "i'd"), ("it is", "it's"), ("is not", "isn't"), ("i have", "i've"),
                ("you are", "you're"), ("let us", "let's"), ("where is", "where's"), ("how is", "how's")]  # fmt: skip
SPELLINGS = [("color", "colour"), ("favorite", "favourite"), ("canceled", "cancelled"), ("center", "centre"),
             ("traveling", "travelling"), ("check", "cheque"), ("theater", "theatre"), ("meter", "metre")]  # fmt: skip
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve"]  # fmt: skip
HELD_PREFIXES = ["quick question: ", "um ", "yo ", "so basically ", "hey there, ", "question - "]
HELD_SUFFIXES = [" asap", " :)", " ??", " plz", " thank u", " if possible"]


def _sub_once(rng: random.Random, t: str, pairs: list[tuple[str, str]]) -> str:
    low = t.lower()
    options = [(a, b) for a, b in pairs if re.search(rf"\b{a}\b", low)] + [
        (b, a) for a, b in pairs if re.search(rf"\b{re.escape(b)}\b", low)
    ]
    if not options:
        return t
    a, b = rng.choice(options)
    return re.sub(rf"\b{re.escape(a)}\b", b, t, count=1, flags=re.IGNORECASE)


def contraction(rng: random.Random, t: str) -> str:
    return _sub_once(rng, t, CONTRACTIONS)


def spelling(rng: random.Random, t: str) -> str:
    return _sub_once(rng, t, SPELLINGS)


def number_format(rng: random.Random, t: str) -> str:
    """A small number written the other way: "5" <-> "five" (the same request)."""
    digits = [m for m in re.finditer(r"\b([0-9]|1[0-2])\b", t)]
    words = [m for m in re.finditer(rf"\b({'|'.join(NUMBER_WORDS)})\b", t, flags=re.IGNORECASE)]
    if digits and (not words or rng.random() < 0.5):
        m = rng.choice(digits)
        return t[: m.start()] + NUMBER_WORDS[int(m.group())] + t[m.end() :]
    if words:
        m = rng.choice(words)
        return t[: m.start()] + str(NUMBER_WORDS.index(m.group().lower())) + t[m.end() :]
    return t


def run_on(rng: random.Random, t: str) -> str:
    gaps = [m.start() for m in re.finditer(" ", t)]
    if not gaps:
        return t
    k = rng.choice(gaps)
    return t[:k] + t[k + 1 :]


def repeat_word(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    i = rng.randrange(len(words))
    return " ".join(words[: i + 1] + words[i:])


def drop_article(rng: random.Random, t: str) -> str:
    words = t.split(" ")
    cand = [i for i, w in enumerate(words) if w.lower() in {"the", "a", "an", "my", "your"}]
    if not cand or len(words) < 4:
        return t
    del words[rng.choice(cand)]
    return " ".join(words)


def two_typos(rng: random.Random, t: str) -> str:
    return typo(rng, typo(rng, t))


def held_prefix(rng: random.Random, t: str) -> str:
    return rng.choice(HELD_PREFIXES) + t


def held_suffix(rng: random.Random, t: str) -> str:
    return t + rng.choice(HELD_SUFFIXES)


HELD_OPS = [contraction, spelling, number_format, run_on, repeat_word, drop_article, two_typos, held_prefix,
            held_suffix]  # fmt: skip


def perturb_heldout(rng: random.Random, text: str) -> str:
    for _ in range(rng.choices([1, 2, 3], [0.5, 0.35, 0.15])[0]):
        text = rng.choice(HELD_OPS)(rng, text)
    return text


def number_sibling(rng: random.Random, t: str) -> str | None:
    """The same request about another quantity (a different row, not a duplicate), or None without numbers."""
    nums = list(re.finditer(r"\d+", t))
    if not nums:
        return None
    m = rng.choice(nums)
    v = int(m.group())
    new = v + rng.choice([1, 2, 3, 5, 10]) if v < 50 or rng.random() < 0.5 else max(0, v - rng.choice([1, 10]))
    return t[: m.start()] + str(new) + t[m.end() :]


# ------------------------------------------------------------------------------------------- long recipes


def _sentences(row: dict) -> list[str]:
    return list(row["sentences"])


def long_dev(rng: random.Random, sents: list[str], pool: list[str]) -> str:
    """Dev long recipe: 1-3 of drop a sentence, add one from another paragraph, swap two adjacent ones, one
    typo, recased, re-spaced."""
    s = sents[:]
    for _ in range(rng.choices([1, 2, 3], [0.5, 0.3, 0.2])[0]):
        op = rng.choice(["drop", "add", "swap_adjacent", "typo", "case", "spacing"])
        if op == "drop" and len(s) > 3:
            del s[rng.randrange(len(s))]
        elif op == "add":
            s.insert(rng.randrange(len(s) + 1), rng.choice(pool))
        elif op == "swap_adjacent" and len(s) > 1:
            i = rng.randrange(len(s) - 1)
            s[i], s[i + 1] = s[i + 1], s[i]
        elif op == "typo":
            i = rng.randrange(len(s))
            s[i] = typo(rng, s[i])
        elif op == "case":
            s = [x.lower() for x in s] if rng.random() < 0.5 else [x.upper() for x in s]
    sep = "\n" if rng.random() < 0.3 else " "
    return sep.join(s)


def long_heldout(rng: random.Random, sents: list[str], pool: list[str]) -> str:
    """Held-out long recipe: 1-3 of swap two sentences anywhere, drop one, add one from another document, a
    typo, a sign-off line; never used for tuning."""
    s = sents[:]
    for _ in range(rng.choices([1, 2, 3], [0.4, 0.4, 0.2])[0]):
        op = rng.choice(["swap", "drop", "add", "typo", "signoff"])
        if op == "swap" and len(s) > 2:
            i, j = rng.sample(range(len(s)), 2)
            s[i], s[j] = s[j], s[i]
        elif op == "drop" and len(s) > 3:
            del s[rng.randrange(len(s))]
        elif op == "add":
            s.insert(rng.randrange(len(s) + 1), rng.choice(pool))
        elif op == "typo":
            i = rng.randrange(len(s))
            s[i] = two_typos(rng, s[i])
        elif op == "signoff":
            s.append(rng.choice(["hope this helps!", "just my two cents.", "thanks for reading.", "(edited)"]))
    return " ".join(s)


# ------------------------------------------------------------------------------------------- sets


def _numbers(text: str) -> tuple[str, ...]:
    return tuple(sorted(re.findall(r"\d+", text)))


def twin_free_originals(texts: list[str], rng: random.Random) -> list[int]:
    """Seeded greedy subset of originals with no word-level twin.

    Twins: word-level Levenshtein distance (after normalisation) of at most ``max(3, 0.4 x the longer length in
    words)``, the distance a planted copy can have from its source, *and* the same numbers: two real rows that
    differ in a number are different requests and stay, as the "merely similar" negatives a verifier must keep.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    vocab: dict[str, int] = {}
    words = [dedup_normalise(t).split() for t in texts]
    # One code point per word: character Levenshtein on these strings is word-level Levenshtein.
    enc = ["".join(chr(0x4E00 + vocab.setdefault(w, len(vocab))) for w in ws) for ws in words]
    nw = np.array([len(w) for w in words])
    dist = process.cdist(enc, enc, scorer=Levenshtein.distance, workers=-1, dtype=np.int32, score_cutoff=64)
    limit = np.maximum(3, np.ceil(0.4 * np.maximum(nw[:, None], nw[None, :])))
    twin = dist <= limit
    np.fill_diagonal(twin, False)
    nums = [_numbers(t) for t in texts]
    order = list(range(len(texts)))
    rng.shuffle(order)
    taken = np.zeros(len(texts), dtype=bool)
    for i in order:
        if not any(taken[j] and nums[i] == nums[j] for j in np.flatnonzero(twin[i])):
            taken[i] = True
    return sorted(np.flatnonzero(taken).tolist())


def _frame(rows: list[tuple[str, str, int]], rng: random.Random) -> pd.DataFrame:
    rng.shuffle(rows)
    text, label, cluster = zip(*rows, strict=True)
    return pd.DataFrame({"text": text, "label": label, "cluster": cluster})


def _with_copies(pool: pd.DataFrame, n_sources: int, rng: random.Random, make) -> list[tuple[str, str, int]]:
    rows = [(t, c, k) for k, (t, c) in enumerate(zip(pool["text"], pool["label"], strict=True))]
    for k in rng.sample(range(len(pool)), min(n_sources, len(pool))):
        for _ in range(rng.choices([1, 2, 3], [0.6, 0.3, 0.1])[0]):
            rows.append((make(rng, k), pool["label"][k], k))
    return rows


def dev_short(n_sources: int = 2000) -> tuple[pd.DataFrame, dict]:
    """BANKING77 train, the dev recipe: what the defaults were tuned on."""
    rng = random.Random(SEED)
    raw = pd.read_csv(BANKING77).rename(columns={"category": "label"})
    pool = raw.iloc[twin_free_originals(raw["text"].tolist(), rng)].reset_index(drop=True)
    rows = _with_copies(pool, n_sources, rng, lambda r, k: perturb(r, pool["text"][k]))
    rows += _number_siblings(pool, rng, 100)
    df = _frame(rows, rng)
    stats = {"source_rows": len(raw), "originals": len(pool), "rows": len(df)}
    return df, {**stats, "number_siblings": int((df["cluster"] >= len(pool)).sum())}


def _number_siblings(pool: pd.DataFrame, rng: random.Random, n: int) -> list[tuple[str, str, int]]:
    """Planted rows that differ from an original only in a number: their own clusters (to keep)."""
    with_numbers = [k for k, t in enumerate(pool["text"]) if re.search(r"\d", t)]
    rows = []
    for j, k in enumerate(rng.sample(with_numbers, min(n, len(with_numbers)))):
        sib = number_sibling(rng, pool["text"][k])
        if sib is not None:
            rows.append((sib, pool["label"][k], len(pool) + j))
    return rows


def heldout_queries(n_sources: int = 1500, n_siblings: int = 300) -> tuple[pd.DataFrame, dict]:
    """CLINC150 test queries, the held-out query recipe, plus planted number siblings (kept: not duplicates)."""
    rng = random.Random(SEED + 1)
    raw = pd.read_json(DATA / "clinc150_queries.jsonl", lines=True).rename(columns={"intent": "label"})
    pool = raw.iloc[twin_free_originals(raw["text"].tolist(), rng)].reset_index(drop=True)
    rows = _with_copies(pool, n_sources, rng, lambda r, k: perturb_heldout(r, pool["text"][k]))
    rows += _number_siblings(pool, rng, n_siblings)
    df = _frame(rows, rng)
    stats = {"source_rows": len(raw), "originals": len(pool), "rows": len(df)}
    return df, {**stats, "number_siblings": int((df["cluster"] >= len(pool)).sum())}


def _long_set(file: str, recipe, seed: int, n_sources: int) -> tuple[pd.DataFrame, dict]:
    rng = random.Random(seed)
    docs = [json.loads(line) for line in (DATA / file).read_text().splitlines()]
    pool_sents = [s for d in docs for s in d["sentences"]]
    pool = pd.DataFrame({"text": [" ".join(d["sentences"]) for d in docs], "label": [str(d["doc"]) for d in docs]})
    rows = _with_copies(pool, n_sources, rng, lambda r, k: recipe(r, _sentences(docs[k]), pool_sents))
    words = [len(t.split()) for t, _, _ in rows]
    stats = {"originals": len(pool), "rows": len(rows), "words_min": min(words), "words_max": max(words)}
    return _frame(rows, rng), stats


def _cut(sents: list[str], prefix: bool) -> list[str]:
    """At most half of a paragraph's words (at least one sentence): its first sentences, or its last ones."""
    words = [len(x.split()) for x in sents]
    seq = words if prefix else words[::-1]
    k = max(1, max(i for i in range(len(seq) + 1) if sum(seq[:i]) <= sum(seq) / 2))
    return sents[:k] if prefix else sents[len(sents) - k :]


def dev_long(n_sources: int = 250, n_composites: int = 100) -> tuple[pd.DataFrame, dict]:
    """State of the Union paragraphs (public domain), the dev long recipe: tuned on.

    Its "merely similar" negatives: composites of the first half (by words) of one paragraph and the second half
    of the next one of the same speech (about half of each in common; kept as a row of its own).
    """
    df, stats = _long_set("state_union_paragraphs.jsonl", long_dev, SEED + 2, n_sources)
    rng = random.Random(SEED + 4)
    docs = [json.loads(line) for line in (DATA / "state_union_paragraphs.jsonl").read_text().splitlines()]
    pairs = [k for k in range(len(docs) - 1) if docs[k]["doc"] == docs[k + 1]["doc"]]
    extra = []
    for j, k in enumerate(rng.sample(pairs, min(n_composites, len(pairs)))):
        a, b = docs[k]["sentences"], docs[k + 1]["sentences"]
        text = " ".join(_cut(a, prefix=True) + _cut(b, prefix=False))
        extra.append({"text": text, "label": str(docs[k]["doc"]), "cluster": len(docs) + j})
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True).sample(frac=1.0, random_state=SEED)
    stats.update(composites=len(extra), rows=len(df))
    return df.reset_index(drop=True), stats


def heldout_long(n_sources: int = 300) -> tuple[pd.DataFrame, dict]:
    """Movie-review excerpts (some partly overlapping), the held-out long recipe: reported only."""
    return _long_set("movie_review_excerpts.jsonl", long_heldout, SEED + 3, n_sources)


SETS = {"dev-short": dev_short, "dev-long": dev_long, "heldout-queries": heldout_queries, "heldout-long": heldout_long}
