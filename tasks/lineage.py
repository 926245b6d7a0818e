"""Lineage: which run, config, base model, sources and rows made a registered model version — never any text.

Each retrain logs ``lineage/rows.parquet`` (one row per record id and stage outcome: ``id, stage, outcome,
reason``; quarantined rows by stage and reason, then the split each surviving id went to) and
``lineage/sources.json`` (each source with its row count and content digest). :func:`describe` and
:func:`where_is` read them back for ``loraflow lineage``.
"""

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core import StageError, StageResult, read_records

ROW_COLUMNS = ["id", "stage", "outcome", "reason"]


def row_table(stages: list[StageResult], assignment_ref) -> pd.DataFrame:
    """Every id's path: quarantined by which stage and rule, or the split it ended in."""
    frames = []
    for result in stages:
        q = read_records(result.quarantine)
        if len(q):
            frames.append(pd.DataFrame({"id": q["id"], "stage": result.stage, "outcome": "quarantined",
                                        "reason": q["reason"]}))  # fmt: skip
    a = read_records(assignment_ref)
    frames.append(pd.DataFrame({"id": a["id"], "stage": "split", "outcome": a["split"], "reason": a["reason"]}))
    return pd.concat(frames, ignore_index=True)[ROW_COLUMNS].astype(str)


def log_lineage(run_id: str, stages: list[StageResult], assignment_ref) -> None:
    """Log the row table and the sources (with digests) of this run."""
    from tasks import tracking

    ingest = next((r for r in stages if r.stage == "ingest"), None)
    sources = json.loads(Path(ingest.report_uri).read_text()).get("sources", {}) if ingest else {}
    with tempfile.TemporaryDirectory(prefix="loraflow-lineage-") as tmp:
        path = Path(tmp) / "rows.parquet"
        row_table(stages, assignment_ref).to_parquet(path, index=False)
        tracking.log_artifact(run_id, path, "lineage")
    tracking.json_artifact(run_id, sources, "lineage/sources.json")


def resolve(ref: str):
    """``MODEL@ALIAS`` or ``MODEL/VERSION`` → the registered model version (StageError when there is none)."""
    from mlflow.exceptions import MlflowException

    from tasks import tracking

    client = tracking.client()
    try:
        if "@" in ref:
            name, alias = ref.rsplit("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" in ref:
            name, version = ref.rsplit("/", 1)
            return client.get_model_version(name, version)
    except MlflowException as e:
        raise StageError(f"lineage: no model version {ref!r} in the registry ({e.message.splitlines()[0]}).") from None
    raise StageError(f"lineage: {ref!r} is neither MODEL@ALIAS nor MODEL/VERSION.")


def _artifact(run_id: str, path: str) -> Path | None:
    from mlflow.exceptions import MlflowException

    from tasks import tracking

    try:
        return Path(tracking.client().download_artifacts(run_id, path, tempfile.mkdtemp(prefix="loraflow-lineage-")))
    except (MlflowException, OSError):
        return None


def describe(ref: str) -> dict[str, Any]:
    """The version's run, config, base model, sources, per-stage counts, splits and test set."""
    from tasks import tracking

    mv = resolve(ref)
    run = tracking.client().get_run(mv.run_id)
    params, tags = run.data.params, run.data.tags
    sources_file = _artifact(mv.run_id, "lineage/sources.json")
    counts_file = _artifact(mv.run_id, "reports/quarantine_counts.json")
    return {
        "model": f"{mv.name}/{mv.version}",
        "aliases": list(mv.aliases or []),
        "run_id": mv.run_id,
        "config": tags.get("loraflow.config", ""),
        "base_model": {"name": params.get("base_model.name"), "sha256": params.get("base_model.sha256")},
        "sources": json.loads(sources_file.read_text()) if sources_file else {},
        "stages": json.loads(counts_file.read_text()) if counts_file else {},
        "splits": _split_counts(mv.run_id),
        "train_sha256": (mv.tags or {}).get("train_dataset_sha256"),
        "test_set": {
            k.removeprefix("loraflow.test_set."): v
            for k, v in (mv.tags or {}).items()
            if k.startswith("loraflow.test_set.")
        },  # fmt: skip
        "compared_with_champion": (mv.tags or {}).get("loraflow.compared_with_champion"),
        "decision": (mv.tags or {}).get("decision"),
    }


def _split_counts(run_id: str) -> dict[str, int]:
    path = _artifact(run_id, "lineage/rows.parquet")
    if path is None:
        return {}
    table = pd.read_parquet(path)
    return {k: int(v) for k, v in table.loc[table["stage"] == "split", "outcome"].value_counts().items()}


def rows(ref: str) -> pd.DataFrame:
    """The version's row table (``lineage/rows.parquet`` of its run)."""
    mv = resolve(ref)
    path = _artifact(mv.run_id, "lineage/rows.parquet")
    if path is None:
        raise StageError(f"lineage: run {mv.run_id} of {ref} logged no lineage/rows.parquet (an older retrain).")
    return pd.read_parquet(path)


def where_is(ref: str, row_id: str) -> list[dict[str, str]]:
    """Where one record went in the run that made ``ref``: each stage outcome for that id (may be several)."""
    table = rows(ref)
    hits = table[table["id"] == row_id]
    return hits.to_dict("records")


def format_description(d: dict[str, Any]) -> str:
    """The description as plain lines for a terminal."""
    lines = [f"model        {d['model']}  aliases: {', '.join(d['aliases']) or 'none'}  decision: {d['decision']}",
             f"run          {d['run_id']}", f"config       {d['config']}",
             f"base model   {d['base_model']['name']}  sha256 {d['base_model']['sha256']}",
             f"test set     v{d['test_set'].get('version', '?')}  {d['test_set'].get('count', '?')} ids  "
             f"sha256 {d['test_set'].get('sha256', '?')}",
             f"compared with champion: {d['compared_with_champion']}", "sources:"]  # fmt: skip
    for name, s in d["sources"].items():
        lines.append(f"  {name:<24} rows_in={s.get('rows_in')} kept={s.get('kept')} sha256 {s.get('sha256')}")
    lines.append("stages:")
    for stage, c in d["stages"].items():
        lines.append(
            f"  {stage:<10} rows_in={c.get('rows_in')} kept={c.get('kept')} quarantined={c.get('quarantined')}"
        )
    lines.append("splits:      " + " ".join(f"{k}={v}" for k, v in sorted(d["splits"].items())))
    lines.append(f"train split  sha256 {d['train_sha256']}")
    return "\n".join(lines)
