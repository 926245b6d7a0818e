"""Blind A/B human review of a run's test predictions: export a scorecard sheet, import it back into MLflow.

The sheet holds, per sampled test row, the already-scrubbed prompt, the reference and two outputs A / B (the
candidate and its opponent, sides shuffled per row), with scorecard columns from :class:`ReviewConfig`'s rubric.
No model name or version is in the sheet: items are opaque hashes and the unblinding key is an artifact of the
run (``review/key.json``). Import validates every cell before anything is logged, unblinds with the key, and
logs win rate (ties count half) with a Wilson interval, per-criterion means and reviewer agreement.
"""

import csv
import hashlib
import io
import json
import math
import random
import re
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.core import StageError, StrictModel

KEY_ARTIFACT = "review/key.json"
SIDES = ("A", "B")
OPPONENTS = ("champion", "base_fewshot", "base")


class Criterion(StrictModel):
    """One scorecard column: an integer score per output, a single choice per item, or free text."""

    name: str = Field(description="Column name in the sheet (scores get one column per side: name_A, name_B).")
    description: str = Field("", description="What the reviewer judges; written into the sheet's instructions.")
    kind: Literal["score", "choice", "text"] = Field(description="score: integer per output; choice/text: per item.")
    low: int = Field(1, description="Lowest allowed score (kind=score).")
    high: int = Field(5, description="Highest allowed score (kind=score).")
    choices: list[str] = Field(default_factory=list, description="Allowed values (kind=choice).")


def default_rubric() -> list[Criterion]:
    """Correctness and brand fit per output, a preference between the two, and a free comment."""
    return [
        Criterion(name="correct", kind="score", description="Is the output correct for the prompt? 1 (no) - 5."),
        Criterion(name="on_brand", kind="score", description="Tone and wording fit the brand? 1 (no) - 5."),
        Criterion(name="preferred", kind="choice", choices=["A", "B", "tie"], description="Which output is better?"),
        Criterion(name="comment", kind="text", description="Optional free comment."),
    ]


class ReviewConfig(StrictModel):
    """How a blind review sheet is sampled and scored."""

    rows: int = Field(50, ge=1, description="Test rows sampled into the sheet.")
    seed: int = Field(0, description="Seed of the row sample and of the per-row side shuffle.")
    rubric: list[Criterion] = Field(default_factory=default_rubric, description="Scorecard columns.")
    preference: str = Field("preferred", description="The choice criterion (A|B|tie) the win rate is read from.")


# --------------------------------------------------------------------------------------------- helpers


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _columns(cfg: ReviewConfig) -> list[str]:
    cols = ["sheet", "item", "prompt", "reference", "output_A", "output_B"]
    for c in cfg.rubric:
        cols += [f"{c.name}_{s}" for s in SIDES] if c.kind == "score" else [c.name]
    return cols


def _load_predictions(run_id: str):
    """The run's predictions table (long: one row per test row and model) from its MLflow artifacts."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="loraflow-review-") as tmp:
        for path in ("eval/predictions.parquet", "eval/predictions.json"):
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            except Exception:  # not logged under this name: try the other layout
                continue
            if path.endswith(".parquet"):
                return pd.read_parquet(local)
            data = json.loads(Path(local).read_text())
            return pd.DataFrame(data["data"], columns=data["columns"])
    raise StageError(f"run {run_id} has no eval/predictions.parquet or eval/predictions.json artifact to review.")


def _opponent(df) -> str:
    """The champion when it was evaluated, else the prompt baseline with the most correct answers."""
    models = set(df["model"])
    if "champion" in models:
        return "champion"
    baselines = [m for m in ("base_fewshot", "base") if m in models]
    if not baselines:
        raise StageError("the predictions hold no champion or prompt baseline (base_fewshot, base) to compare.")
    if "correct" not in df.columns:
        return baselines[0]
    return max(baselines, key=lambda m: (float(df.loc[df["model"] == m, "correct"].astype(float).mean()), m))


def _item_id(sheet: str, row_id: str) -> str:
    return hashlib.sha256(f"{sheet}:{row_id}".encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- export


def export_sheet(run_id: str, out: str | Path, cfg: ReviewConfig | None = None) -> dict:
    """Write the blind sheet (CSV) for ``run_id`` and log its unblinding key to the run.

    Returns:
        ``{"path", "rows", "sheet"}``: the sheet written, its row count and its opaque id.
    """
    cfg = cfg or ReviewConfig()
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise StageError(f"{out}: only .csv sheets are supported (openpyxl is not installed for .xlsx).")
    df = _load_predictions(run_id)
    opponent = _opponent(df)
    cand = df[df["model"] == "candidate"].drop_duplicates("id").set_index("id")
    opp = df[df["model"] == opponent].drop_duplicates("id").set_index("id")
    ids = sorted(set(cand.index) & set(opp.index), key=str)
    if not ids:
        raise StageError(f"run {run_id}: no test row has both a candidate and a {opponent} prediction.")
    rng = random.Random(cfg.seed)
    sample = sorted(rng.sample(ids, min(cfg.rows, len(ids))), key=str)
    sheet = hashlib.sha256(f"{run_id}:{cfg.seed}:{cfg.rows}".encode()).hexdigest()[:10]
    _refuse_new_key_over_reviews(run_id, sheet)
    rows, key_items = [], {}
    for rid in sample:
        sides = ["candidate", opponent]
        rng.shuffle(sides)
        item = _item_id(sheet, str(rid))
        key_items[item] = {"row_id": str(rid), "A": sides[0], "B": sides[1]}
        pred = {"candidate": cand.loc[rid, "prediction"], opponent: opp.loc[rid, "prediction"]}
        rows.append({"sheet": sheet, "item": item, "prompt": cand.loc[rid, "prompt"],
                     "reference": cand.loc[rid].get("target", ""), "output_A": pred[sides[0]],
                     "output_B": pred[sides[1]]})  # fmt: skip
    rows.sort(key=lambda r: r["item"])  # the order says nothing about the rows' source order either
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(cfg), restval="")
        writer.writeheader()
        writer.writerows(rows)
    champion_version = _champion_version_of(run_id) if opponent == "champion" else None
    key = {"sheet": sheet, "run_id": run_id, "seed": cfg.seed, "candidate": "candidate", "opponent": opponent,
           "opponent_version": champion_version, "config": cfg.model_dump(), "items": key_items}  # fmt: skip
    client = _client()
    client.log_text(run_id, json.dumps(key, indent=2), KEY_ARTIFACT)
    client.set_tag(run_id, "review.sheet", sheet)
    return {"path": str(out), "rows": len(rows), "sheet": sheet}


def _refuse_new_key_over_reviews(run_id: str, sheet: str) -> None:
    """A run keeps one key: a different sheet may replace it only while no review was imported against it."""
    tags = _client().get_run(run_id).data.tags
    earlier = tags.get("review.sheet")
    if earlier and earlier != sheet and _reviewer_sheets(run_id):
        raise StageError(
            f"run {run_id} already has imported reviews of sheet {earlier}; export with the same --rows and --seed "
            "to get that sheet again."
        )


def _champion_version_of(run_id: str) -> str | None:
    tags = _client().get_run(run_id).data.tags
    return tags.get("loraflow.register.compared_with_champion")


# --------------------------------------------------------------------------------------------- import


def _read_sheet(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise StageError(f"{path}: no such sheet.")
    if path.suffix.lower() != ".csv":
        raise StageError(f"{path}: only .csv sheets can be imported.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [{k: (v or "").strip() for k, v in r.items() if k is not None} for r in csv.DictReader(f)]


def find_run(sheet: str) -> str:
    """The MLflow run whose exported sheet carries this opaque id."""
    client = _client()
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`review.sheet` = '{sheet}'", max_results=2)
    if not runs:
        raise StageError(f"sheet {sheet!r}: no MLflow run exported it (was it written by `loraflow review export`?).")
    return runs[0].info.run_id


def _load_key(run_id: str) -> dict:
    import mlflow

    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{KEY_ARTIFACT}"))
    except Exception:  # the run was never exported for review
        raise StageError(f"run {run_id} has no {KEY_ARTIFACT}: export a sheet first.") from None


def _check_cell(value: str, c: Criterion, line: int, col: str) -> str | None:
    if value == "" or c.kind == "text":
        return None
    if c.kind == "choice":
        allowed = {v.lower(): v for v in c.choices}
        if value.lower() not in allowed:
            return f"row {line}, column {col}: {value!r} is not one of {'|'.join(c.choices)}"
        return None
    if not re.fullmatch(r"-?\d+(\.0+)?", value) or not c.low <= int(float(value)) <= c.high:
        return f"row {line}, column {col}: {value!r} is not an integer from {c.low} to {c.high}"
    return None


def validate_sheet(rows: list[dict[str, str]], key: dict, path: Path) -> list[dict[str, str]]:
    """Every cell checked before anything is logged; returns the reviewed rows (fully blank rows skipped).

    Raises:
        StageError: naming the first bad cell's row (line in the file), column and allowed values.
    """
    cfg = ReviewConfig.model_validate(key["config"])
    missing = [c for c in _columns(cfg) if rows and c not in rows[0]]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}; export a fresh sheet.")
    judged = [(c, f"{c.name}_{s}") for c in cfg.rubric if c.kind == "score" for s in SIDES]
    judged += [(c, c.name) for c in cfg.rubric if c.kind == "choice"]
    reviewed, seen = [], set()
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        if r["sheet"] != key["sheet"] or r["item"] not in key["items"]:
            raise StageError(f"{path}: row {line}, column item: {r['item']!r} is not an item of sheet {key['sheet']}.")
        if r["item"] in seen:
            raise StageError(f"{path}: row {line}, column item: item {r['item']} appears twice.")
        seen.add(r["item"])
        for c, col in judged:
            error = _check_cell(r[col], c, line, col)
            if error:
                raise StageError(f"{path}: {error}.")
        filled = [col for _, col in judged if r[col] != ""]
        if filled and len(filled) != len(judged):
            empty = next(col for _, col in judged if r[col] == "")
            raise StageError(f"{path}: row {line}, column {empty}: empty while the row is partly scored.")
        if filled:
            reviewed.append(r)
    if not reviewed:
        raise StageError(f"{path}: no row is scored.")
    return reviewed


def unblind(rows: list[dict[str, str]], key: dict, reviewer: str) -> list[dict]:
    """One judgement per row with the sides replaced by the models they were: scores per model, the winner."""
    cfg = ReviewConfig.model_validate(key["config"])
    out = []
    for r in rows:
        sides = key["items"][r["item"]]
        j = {"item": r["item"], "reviewer": reviewer}
        for c in cfg.rubric:
            if c.kind == "score":
                for s in SIDES:
                    j[f"{c.name}.{sides[s]}"] = int(float(r[f"{c.name}_{s}"]))
        pick = r[cfg.preference].lower()
        j["winner"] = "tie" if pick == "tie" else sides[pick.upper()]
        out.append(j)
    return out


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (ties counted as half a success)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(judgements: list[dict], key: dict) -> dict[str, float]:
    """The ``review.*`` metrics over every reviewer's judgements."""
    cand = key["candidate"]
    n = len(judgements)
    wins = sum(1.0 if j["winner"] == cand else 0.5 if j["winner"] == "tie" else 0.0 for j in judgements)
    low, high = wilson(wins, n)
    metrics = {"review.rows": float(n), "review.win_rate": wins / n, "review.win_rate_low": low,
               "review.win_rate_high": high}  # fmt: skip
    score_keys = sorted({k for j in judgements for k in j if k not in ("item", "reviewer", "winner")})
    for k in score_keys:
        values = [j[k] for j in judgements if k in j]
        metrics[f"review.{k}.mean"] = sum(values) / len(values)
    reviewers = sorted({j["reviewer"] for j in judgements})
    metrics["review.reviewers"] = float(len(reviewers))
    if len(reviewers) >= 2:
        metrics.update(agreement(judgements, reviewers[0], reviewers[1]))
    return metrics


def agreement(judgements: list[dict], first: str, second: str) -> dict[str, float]:
    """Share of items both reviewers gave the same winner, and Cohen's kappa, over the items both judged."""
    a = {j["item"]: j["winner"] for j in judgements if j["reviewer"] == first}
    b = {j["item"]: j["winner"] for j in judgements if j["reviewer"] == second}
    both = sorted(set(a) & set(b))
    if not both:
        return {"review.agreement.items": 0.0}
    observed = sum(a[i] == b[i] for i in both) / len(both)
    labels = set(a.values()) | set(b.values())
    expected = sum(
        (sum(a[i] == v for i in both) / len(both)) * (sum(b[i] == v for i in both) / len(both)) for v in labels
    )
    kappa = 1.0 if expected >= 1.0 else (observed - expected) / (1 - expected)
    return {"review.agreement.items": float(len(both)), "review.agreement": observed, "review.kappa": kappa}


def _reviewer_sheets(run_id: str) -> dict[str, str]:
    import mlflow

    client = _client()
    out = {}
    for f in client.list_artifacts(run_id, "review"):
        if f.path.endswith(".csv"):
            out[Path(f.path).stem] = mlflow.artifacts.load_text(f"runs:/{run_id}/{f.path}")
    return out


def import_sheet(path: str | Path, reviewer: str = "reviewer", run_id: str | None = None) -> dict:
    """Validate, unblind and log a filled sheet; re-importing the same sheet for a reviewer changes nothing.

    Returns:
        ``{"run_id", "changed", "metrics"}``.
    """
    path = Path(path)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", reviewer) or reviewer in ("key", "feedback"):
        raise StageError(f"reviewer {reviewer!r}: use letters, digits, '.', '_' or '-' (not 'key' or 'feedback').")
    rows = _read_sheet(path)
    if not rows:
        raise StageError(f"{path}: the sheet has no rows.")
    run_id = run_id or find_run(rows[0].get("sheet", ""))
    key = _load_key(run_id)
    validate_sheet(rows, key, path)
    text = path.read_text(encoding="utf-8-sig")
    sheets = _reviewer_sheets(run_id)
    if sheets.get(reviewer) == text:
        return {"run_id": run_id, "changed": False, "metrics": {}}
    sheets[reviewer] = text
    judgements = []
    for name, body in sorted(sheets.items()):
        parsed = [
            {k: (v or "").strip() for k, v in r.items() if k is not None} for r in csv.DictReader(io.StringIO(body))
        ]
        judgements += unblind(validate_sheet(parsed, key, Path(f"review/{name}.csv")), key, name)
    metrics = summarize(judgements, key)
    client = _client()
    client.log_text(run_id, text, f"review/{reviewer}.csv")
    client.log_dict(run_id, _feedback_table(judgements), "review/feedback.json")  # replaced whole, not appended
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    return {"run_id": run_id, "changed": True, "metrics": metrics}


def _feedback_table(judgements: list[dict]) -> dict[str, list]:
    """Per-item feedback (unblinded scores and winner per reviewer) in MLflow's table JSON layout."""
    cols = sorted({k for j in judgements for k in j}, key=lambda k: (k not in ("item", "reviewer", "winner"), k))
    return {"columns": cols, "data": [[j.get(c) for c in cols] for j in judgements]}
