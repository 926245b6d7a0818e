"""Dedup benchmark: removal precision / recall on one tuning and one held-out set per text length, and scale.

Run:  .venv/bin/python bench/dedup.py            (every part below, with its defaults: what `make bench` runs)
      .venv/bin/python bench/dedup.py quality [--sets dev-short heldout-queries] [--plot docs/dedup_pr_curve.png]
      .venv/bin/python bench/dedup.py scale [--sizes 100000 300000 1000000]

Quality: the four labelled sets of ``bench/dedup_sets.py`` (its docstring has the recipes): ``dev-short``
(BANKING77 + the dev recipe) and ``dev-long`` (State of the Union paragraphs + the dev long recipe) are the sets
the defaults were tuned on; ``heldout-queries`` (CLINC150 + another recipe, with number siblings) and
``heldout-long`` (movie-review excerpts of 40-150 words + another recipe, with partly overlapping excerpts) are
reported only. Records are ``user: text`` -> ``assistant: label`` with no source or timestamp, so the keep
order is the id order.

Ground truth: a cluster = a source and its copies. A removal is correct when the dropped row and the row it was
matched with (``detail.kept_id`` for loraflow, the first kept LSH hit for the baseline) are in the same cluster.
Precision = correct / removals; recall = correct / (rows - clusters).

Baselines, in the same run: normalised exact hashing (NFKC + case-fold + punctuation/whitespace collapsed:
the strongest plain hash), and bare ``datasketch.MinHashLSH`` (char 5-grams of the lower-cased text, 128
permutations, query-then-insert in data order), both at the threshold best (by F1) on the tuning set of the same
length class (what a user would carry over) and at its best threshold on the set itself (an oracle: favourable
to the baseline).

Scale: synthetic short records (templated banking-like sentences with random slot values, so all originals are
distinct) with exactly 10 % planted duplicates (half exact after normalisation, half with one perturbation),
written to Parquet and deduplicated by :func:`tasks.dedup.dedup_parquet` in a fresh subprocess; wall time and
peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) of that subprocess are reported.
"""

import argparse
import contextlib
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from dedup_sets import SEED, SETS, insert_word, typo  # noqa: E402

from tasks.core import record_id  # noqa: E402
from tasks.dedup import DedupConfig, dedup_normalise, deduplicate  # noqa: E402

# Each held-out set is scored beside the tuning set of its length class; the bare-MinHash threshold a user would
# pick is the one best on that tuning set.
PAIRS = {"heldout-queries": "dev-short", "heldout-long": "dev-long"}


def to_records(df: pd.DataFrame) -> pd.DataFrame:
    msgs = [
        [{"role": "user", "content": t}, {"role": "assistant", "content": c}]
        for t, c in zip(df.text, df.label, strict=True)
    ]
    return pd.DataFrame(
        {
            "id": [record_id(m) for m in msgs],
            "messages": msgs,
            "source": "bench",
            "created_at": "",
            "meta": [{"row": i} for i in range(len(df))],
        }
    )


def score(removed: list[tuple[int, int]], cluster: np.ndarray) -> tuple[float, float, int]:
    """(precision, recall, removals) from (dropped row, matched kept row) pairs."""
    should = len(cluster) - len(set(cluster.tolist()))
    ok = sum(b >= 0 and cluster[a] == cluster[b] for a, b in removed)  # b < 0: dropped without a kept match
    p = ok / len(removed) if removed else 1.0
    return p, ok / should, len(removed)


def run_loraflow(df: pd.DataFrame, cfg: DedupConfig) -> tuple[list[tuple[int, int]], float]:
    rec = to_records(df)
    t = time.perf_counter()
    out = deduplicate(rec, cfg)
    dt = time.perf_counter() - t
    first_row = {}
    for i, rid in enumerate(rec["id"]):
        first_row.setdefault(rid, i)
    kept_row = {rid: i for i, rid in zip(out.kept.index, out.kept["id"], strict=True)}
    pairs = []
    for qi, d in zip(out.quarantined.index, out.quarantined["detail"], strict=True):
        pos = int(json.loads(out.quarantined["record"][qi])["meta"]["row"])
        kid = json.loads(d)["kept_id"]
        pairs.append((pos, kept_row.get(kid, first_row.get(kid, -1))))
    return pairs, dt


def run_exact(df: pd.DataFrame) -> list[tuple[int, int]]:
    seen: dict[str, int] = {}
    pairs = []
    for i, t in enumerate(df.text):
        k = dedup_normalise(t)
        if k in seen:
            pairs.append((i, seen[k]))
        else:
            seen[k] = i
    return pairs


def baseline_signatures(df: pd.DataFrame, num_perm: int = 128):
    from datasketch import MinHash

    shingles = []
    for t in df.text:
        s = t.lower()
        shingles.append([s[i : i + 5].encode() for i in range(max(1, len(s) - 4))])
    return MinHash.bulk(shingles, num_perm=num_perm)


def run_minhash_lsh(sigs, threshold: float, num_perm: int = 128) -> list[tuple[int, int]]:
    """What a user writes with datasketch alone: query, drop on any hit, else insert."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = []
    for i, m in enumerate(sigs):
        hits = lsh.query(m)
        if hits:
            pairs.append((i, min(hits)))
        else:
            lsh.insert(i, m)
    return pairs


def minhash_sweep(df: pd.DataFrame) -> dict[float, tuple[float, float, int]]:
    """Bare datasketch MinHashLSH at every threshold from 0.30 to 0.95."""
    sigs = baseline_signatures(df)
    cluster = df["cluster"].to_numpy()
    return {float(t): score(run_minhash_lsh(sigs, float(t)), cluster) for t in np.round(np.arange(0.3, 0.951, 0.05), 2)}


def f1(r: tuple[float, float, int]) -> float:
    return 2 * r[0] * r[1] / max(1e-9, r[0] + r[1])


def evaluate_set(name: str) -> dict:
    """loraflow at its defaults, normalised exact hashing and bare MinHashLSH (whole sweep) on one set."""
    df, stats = SETS[name]()
    cluster = df["cluster"].to_numpy()
    pairs, dt = run_loraflow(df, DedupConfig(workers=1))
    sweep = minhash_sweep(df)
    best = max(sweep, key=lambda t: f1(sweep[t]))
    return {
        "stats": stats,
        "loraflow": score(pairs, cluster),
        "seconds": dt,
        "exact": score(run_exact(df), cluster),
        "minhash_sweep": sweep,
        "minhash_best_threshold": best,
    }


def _row(name: str, res: dict, results: dict) -> str:
    role = "tuning" if name.startswith("dev") else "**held out**"
    lf, ex, sw = res["loraflow"], res["exact"], res["minhash_sweep"]
    own = res["minhash_best_threshold"]
    # The threshold a user would carry over: the best one on the tuning set of the same length class.
    dev = results.get(PAIRS.get(name, name), res)["minhash_best_threshold"]
    return (
        f"| {name} | {role} | {res['stats']['rows']:,} | **{lf[0]:.3f}** | **{lf[1]:.3f}** | "
        f"{dev:.2f}: {sw[dev][0]:.3f} / {sw[dev][1]:.3f} | {own:.2f}: {sw[own][0]:.3f} / {sw[own][1]:.3f} | "
        f"{ex[0]:.3f} / {ex[1]:.3f} |"
    )


def quality(args) -> int:
    names = args.sets or list(SETS)
    results = {}
    for name in names:
        results[name] = evaluate_set(name)
        print(f"{name}: {json.dumps(results[name]['stats'])} ({results[name]['seconds']:.1f} s)", flush=True)
    print(
        "\n| set | role | rows | loraflow P | loraflow R | bare MinHash, threshold best on the tuning set: P / R "
        "| bare MinHash at its best threshold on this set: P / R | exact hash P / R |"
    )
    print("|---|---|---:|---:|---:|---|---|---|")
    for name in names:
        print(_row(name, results[name], results))
    held = [n for n in names if n.startswith("heldout")]
    met = {n: results[n]["loraflow"][0] >= 0.97 and results[n]["loraflow"][1] >= 0.95 for n in held}
    print(f"\ntargets on the held-out sets (P >= 0.97 and R >= 0.95): {met}")
    if "dev-short" in results:
        dev_curve(results["dev-short"], args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def dev_curve(res: dict, args) -> None:
    """loraflow's threshold sweep beside bare MinHash's on the tuning set of short texts (and the plot)."""
    df, _ = SETS["dev-short"]()
    cluster = df["cluster"].to_numpy()
    sweep = res["minhash_sweep"]
    curve = {}
    for th in np.round(np.arange(0.5, 0.951, 0.05), 2):
        curve[float(th)] = score(run_loraflow(df, DedupConfig(workers=1, threshold=float(th)))[0], cluster)
    print("\ndev-short (tuning set), whole trade-off:\n")
    print("| threshold | loraflow P | loraflow R | MinHashLSH P | MinHashLSH R |")
    print("|---|---|---|---|---|")
    for th in sorted(set(curve) | set(sweep)):
        a, b = curve.get(th), sweep.get(th)
        fa = f"{a[0]:.3f} | {a[1]:.3f}" if a else " | "
        fb = f"{b[0]:.3f} | {b[1]:.3f}" if b else " | "
        print(f"| {th:.2f} | {fa} | {fb} |")
    if args.plot:
        plot(curve, sweep, res["exact"], res["loraflow"], DedupConfig().threshold, args.plot)


def plot(curve: dict, sweep: dict, ex, lf, th: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    xs = sorted(curve)
    ax.plot([curve[t][1] for t in xs], [curve[t][0] for t in xs], "o-", label="loraflow (threshold sweep)")
    for t in xs[::2]:
        ax.annotate(f"{t:.2f}", (curve[t][1], curve[t][0]), fontsize=7, textcoords="offset points", xytext=(4, -9))
    ys = sorted(sweep)
    ax.plot(
        [sweep[t][1] for t in ys], [sweep[t][0] for t in ys], "s--", label="datasketch MinHashLSH (threshold sweep)"
    )
    for t in ys[::2]:
        ax.annotate(f"{t:.2f}", (sweep[t][1], sweep[t][0]), fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.plot([ex[1]], [ex[0]], "k^", label="normalised exact hash")
    ax.plot([lf[1]], [lf[0]], "r*", markersize=14, label=f"loraflow default ({th})")
    ax.axhline(0.97, color="grey", lw=0.6, ls=":")
    ax.axvline(0.95, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("recall (planted duplicates removed)")
    ax.set_ylabel("precision (removals that were duplicates)")
    ax.set_title("Near-duplicate removal, dev-short (perturbed BANKING77, tuning set)", fontsize=10)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0.4, 1.01)  # the 0.30 MinHashLSH point (P 0.18) is below the frame
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


# ------------------------------------------------------------------------------------------- scale
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do", "fa", "gu", "ha", "ji", "pe", "qu",
             "ri", "su", "te", "wo", "xa", "yo", "ze", "an", "el", "is", "on", "ur"]  # fmt: skip


def synthetic(n: int, dup_rate: float = 0.10, seed: int = SEED) -> tuple[pd.DataFrame, int]:
    """n records, exactly round(n * dup_rate) of them planted duplicates of another record.

    Originals are 6-12 pseudo-words drawn from a 20,000-word vocabulary (so two originals share almost no
    character 4-grams: they are distinct); half the duplicates differ from their original only in casing /
    punctuation (exact after normalisation), half by one typo or one inserted filler word (near duplicates).
    """
    rng = np.random.default_rng(seed)
    syl = np.array(SYLLABLES)
    vocab = ["".join(rng.choice(syl, size=rng.integers(2, 5))) for _ in range(20_000)]
    n_dup = round(n * dup_rate)
    n_orig = n - n_dup
    lengths = rng.integers(6, 13, size=n_orig)
    words = rng.integers(0, len(vocab), size=int(lengths.sum()))
    texts, k = [], 0
    for ln in lengths:
        texts.append(" ".join(vocab[w] for w in words[k : k + ln]) + "?")
        k += ln
    r = random.Random(seed)
    srcs = rng.integers(0, n_orig, size=n_dup)
    for j, s in enumerate(srcs):
        t = texts[s]
        if j % 2 == 0:
            t = r.choice([str.upper, str.capitalize, lambda x: x.rstrip("?") + "!!"])(t)
        else:
            t = r.choice([typo, insert_word])(r, t)
        texts.append(t)
    labels = [f"intent_{i % 77}" for i in range(n_orig)] + [f"intent_{s % 77}" for s in srcs]
    msgs = [
        json.dumps([{"role": "user", "content": t}, {"role": "assistant", "content": lab}])
        for t, lab in zip(texts, labels, strict=True)
    ]
    order = rng.permutation(n)
    df = pd.DataFrame(
        {
            # the id says where a row came from: planted duplicates are the ids >= n_orig
            "id": [f"{i:016x}" for i in order],
            "messages": [msgs[i] for i in order],
            "source": "synthetic",
            "created_at": "",
            "meta": "{}",
        }
    )
    return df, n_dup


def tree_rss_peak(proc: subprocess.Popen, every: float = 0.1) -> int:
    """Peak of the summed RSS of ``proc`` and all its descendants (the signature workers), sampled."""
    import psutil

    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(every)
    return peak


def scale(args) -> int:
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print("| records | planted duplicates | removed | wall time | peak RSS, all processes | peak RSS, main | rows/s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        src = work / f"synthetic-{n}.parquet"
        df, n_dup = synthetic(n)
        df.to_parquet(src, index=False)
        del df
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, __file__, "scale-one", str(src), str(work / f"out-{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak = tree_rss_peak(proc)
        out, err = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(err[-3000:])
            return 1
        proc.stdout = out
        res = json.loads(out.strip().splitlines()[-1])
        q = pd.read_parquet(res["quarantine"], columns=["id"])
        correct = int((q["id"].map(lambda x: int(x, 16)) >= n - n_dup).sum())
        print(
            f"| {n:,} | {n_dup:,} | {res['removed']:,} ({correct:,} planted) | {wall:.0f} s | {peak / 2**20:,.0f} MB | "
            f"{res['rss_self_mb']:,.0f} MB | {n / wall:,.0f} |",
            flush=True,
        )
    return 0


def scale_one(args) -> int:
    from tasks.dedup import dedup_parquet

    t = time.perf_counter()
    res = dedup_parquet(args.src, DedupConfig(), args.out)
    dt = time.perf_counter() - t
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": dt,
                "removed": res.counts["quarantined"],
                "quarantine": res.quarantine.uri,
                "counts": res.counts,
                "rss_self_mb": self_kb / 1024,
                "rss_children_mb": child_kb / 1024,
            }
        )
    )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    q = sub.add_parser("quality")
    q.add_argument("--plot", default=str(ROOT / "docs" / "dedup_pr_curve.png"))
    q.add_argument("--json")
    q.add_argument("--sets", nargs="+", choices=list(SETS), help="Only these sets (default: all four).")
    s = sub.add_parser("scale")
    s.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    s.add_argument("--workdir", default="/tmp/loraflow-dedup-bench")
    w = sub.add_parser("scale-one")
    w.add_argument("src")
    w.add_argument("out")
    args = ap.parse_args(argv)
    if args.mode is None:  # `make bench`: every part, each with its own defaults
        return quality(ap.parse_args(["quality"])) or scale(ap.parse_args(["scale"]))
    if args.mode == "quality":
        return quality(args)
    if args.mode == "scale":
        return scale(args)
    return scale_one(args)


if __name__ == "__main__":
    sys.exit(main())
