"""MLflow tracking helpers: one run per flow run, everything logged by explicit run id.

Tasks log through ``MlflowClient`` with the run id they are given rather than MLflow's thread-local "active
run", so they behave the same whichever thread or process Prefect runs them in.
"""

import json
import os
import platform
import subprocess
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core import DatasetRef, StageResult, read_records

# MLflow 3 accepts param values up to 6,000 characters; longer ones are cut with a marker (and the full value
# is in the config artifact anyway).
_MAX_PARAM = 6000
_PACKAGES = (
    "loraflow",
    "prefect",
    "mlflow",
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "great-expectations",
    "presidio-analyzer",
    "presidio-anonymizer",
    "spacy",
    "datasketch",
    "pandas",
)


def client():
    import mlflow

    return mlflow.MlflowClient()


def start_run(experiment: str, run_name: str, tags: dict[str, str]) -> str:
    """Create (if needed) the experiment and a run in it; returns the run id. The caller ends it."""
    import mlflow

    from tasks.home import mlflow_artifact_root

    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        uri = mlflow.get_tracking_uri()
        kwargs = {"artifact_location": mlflow_artifact_root() + f"/{experiment}"} if uri.startswith("sqlite") else {}
        exp_id = c.create_experiment(experiment, **kwargs)
    else:
        exp_id = exp.experiment_id
        close_stale_runs(exp_id)
    return c.create_run(exp_id, run_name=run_name, tags={**tags, **_owner_tags()}).info.run_id


def _owner_tags() -> dict[str, str]:
    """Which process holds the run open, so a later run can tell a crashed one (dead pid) from a live one."""
    import socket

    from tasks.train.checkpoints import process_start_time

    return {
        "loraflow.host": socket.gethostname(),
        "loraflow.pid": str(os.getpid()),
        "loraflow.pid_started": str(process_start_time(os.getpid()) or ""),
    }


def close_stale_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host is gone (SIGKILL, OOM, power loss).

    Runs opened on other hosts, or before runs carried their owner, are left alone. Returns the run ids closed.
    """
    import socket

    from tasks.train.checkpoints import process_alive

    c, closed = client(), []
    for run in c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        if tags.get("loraflow.host") != socket.gethostname() or not tags.get("loraflow.pid"):
            continue
        started = float(tags["loraflow.pid_started"]) if tags.get("loraflow.pid_started") else None
        if process_alive(int(tags["loraflow.pid"]), started):
            continue
        c.set_tag(run.info.run_id, "loraflow.closed_reason", "its process ended without closing the run")
        c.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Close the run; a run failing because training was stopped by SIGTERM / Ctrl-C is KILLED, not FAILED."""
    import sys

    from tasks.train.interrupt import interrupted_by

    in_flight = sys.exc_info()[1]  # called from a ``finally``: the exception on its way out, if any
    if status == "FAILED" and (interrupted_by() is not None or isinstance(in_flight, KeyboardInterrupt)):
        status = "KILLED"
    client().set_terminated(run_id, status=status)


def log_params(run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v if len(v) <= _MAX_PARAM else v[: _MAX_PARAM - 12] + "...[cut]") for k, v in params.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        client().log_batch(run_id, params=items[i : i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    for i in range(0, len(items), 1000):
        client().log_batch(run_id, metrics=items[i : i + 1000])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    elif path.exists():
        client().log_artifact(run_id, str(path), artifact_path)


def log_stage(run_id: str, result: StageResult) -> None:
    """A stage's report as an artifact. Its counts go into one table (:func:`log_stage_table`), not into 40
    single-value metric charts that would bury the eval metrics and loss curves on the run page."""
    log_artifact(run_id, result.report_uri, "reports")


def log_dataset(run_id: str, ref: DatasetRef, name: str, context: str) -> None:
    """Log a split as an MLflow dataset input: its content digest, row count and where it lives."""
    import mlflow
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag

    df = read_records(ref)
    df["messages"] = [json.dumps(m, ensure_ascii=False) for m in df["messages"]]
    df["meta"] = [json.dumps(m, ensure_ascii=False) for m in df["meta"]]
    with warnings.catch_warnings():  # a local path matches two equivalent source kinds; MLflow warns, then picks one
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=ref.uri, name=name, digest=ref.sha256[:16])
    # The public to_dict() carries exactly the fields of the registry's Dataset entity (name, digest, source...).
    info = ds.to_dict()
    entity = DatasetEntity(
        name=info["name"],
        digest=info["digest"],
        source_type=info["source_type"],
        source=info["source"],
        schema=info.get("schema"),
        profile=info.get("profile"),
    )
    tags = [InputTag("mlflow.data.context", context)]
    client().log_inputs(run_id, datasets=[DatasetInput(entity, tags=tags)])


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_params() -> dict[str, str]:
    """Package versions, hardware and the code version: what a reviewer needs to reproduce a run."""
    out: dict[str, str] = {"code.git_commit": git_commit()}
    for pkg in _PACKAGES:
        try:
            out[f"pkg.{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    out["hw.platform"] = platform.platform()
    out["hw.python"] = platform.python_version()
    out["hw.cpu_count"] = str(os.cpu_count())
    try:
        import torch

        out["hw.cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        out["hw.torch_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return out


def json_artifact(run_id: str, data: Any, artifact_file: str) -> None:
    client().log_dict(run_id, data, artifact_file)


# --------------------------------------------------------------------------------------------- what a person sees


def set_description(run_id: str, markdown: str) -> None:
    """The run's description (the note the MLflow UI shows at the top of the run page)."""
    client().set_tag(run_id, "mlflow.note.content", markdown)


def run_url(run_id: str) -> str | None:
    """The run's page in the MLflow UI when the tracking server is HTTP; None for a local store."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith("http"):
        return None
    exp = client().get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


def ui_hint() -> str:
    """How to open a local tracking store: the exact ``loraflow ui`` line (with this home when it is not the default)."""
    home = os.environ.get("LORAFLOW_HOME")
    prefix = f"LORAFLOW_HOME={home} " if home else ""
    return f"`{prefix}loraflow ui`"


def run_link(run_id: str) -> str:
    """A Markdown link to the run when the server is HTTP; for a local store, the exact ``loraflow ui`` line and
    the link the run will have there (its default port)."""
    url = run_url(run_id)
    if url:
        return f"[{run_id}]({url})"
    exp = client().get_run(run_id).info.experiment_id
    local = f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}"
    return f"`{run_id}`: run {ui_hint()}, then open [{local}]({local})"


def flow_run_tags(flow_run_id: str, flow_run_name: str, ui_url: str | None) -> dict[str, str]:
    """Tags linking the MLflow run to its Prefect flow run; the URL only when a real UI URL exists (the
    embedded API has none, and Prefect then builds ``None/flow-runs/...``)."""
    tags = {"prefect.flow_run_id": flow_run_id, "prefect.flow_run_name": flow_run_name}
    if ui_url and ui_url.startswith("http"):
        tags["prefect.flow_run_url"] = ui_url
    return tags


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a step metric, the last value per step."""
    by_step = {m.step: m.value for m in sorted(client().get_metric_history(run_id, key), key=lambda m: m.timestamp)}
    return sorted(by_step.items())


def train_summary(run_id: str, train: dict[str, Any]) -> dict[str, Any]:
    """What the summary says about training: rows, steps, the best validation step and loss (from the run's
    ``val_loss`` history), final train loss, tokens/s, seconds and device."""
    from tasks.charts import best_step

    best = best_step(metric_history(run_id, "val_loss")) or (None, None)
    keys = ("train_rows", "val_rows", "steps", "train_loss", "tokens_per_s", "runtime_s", "device")
    return {**{k: train.get(k) for k in keys}, "best_step": best[0], "best_val_loss": best[1]}


def log_predictions(run_id: str, predictions_uri: str, artifact_file: str = "eval/predictions.json") -> int:
    """The predictions Parquet as an MLflow table (``log_table`` JSON), which the UI previews row by row; the
    Parquet is logged beside it for tools. Returns the rows logged."""
    import pandas as pd

    df = pd.read_parquet(predictions_uri)
    client().log_table(run_id, data=df, artifact_file=artifact_file)
    log_artifact(run_id, predictions_uri, "eval")
    return len(df)


def stage_rows(stages: list[StageResult], split: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per stage (``stage``, ``rows_in``, ``kept``, ``quarantined``, ``quarantined_<reason>``...); the
    split's row carries its ``train`` / ``val`` / ``test`` counts."""
    rows = [{"stage": r.stage, **r.counts} for r in stages]
    return rows + ([{"stage": "split", **split}] if split else [])


def log_stage_table(
    run_id: str,
    stages: list[StageResult],
    split: dict[str, int] | None = None,
    artifact_file: str = "reports/stage_counts.json",
) -> None:
    """Every stage's counts as one table the MLflow UI previews (one row per stage, one column per count)."""
    rows = stage_rows(stages, split)
    cols = sorted({k for r in rows for k in r if k != "stage"}, key=lambda k: (k not in _LEDGER, _LEDGER.get(k, 9), k))
    client().log_table(
        run_id, data={c: [r.get(c) for r in rows] for c in ["stage", *cols]}, artifact_file=artifact_file
    )


_LEDGER = {"rows_in": 0, "kept": 1, "quarantined": 2}


def log_charts(
    run_id: str,
    out_dir: str | Path,
    stages: list[StageResult],
    predictions_uri: str | None = None,
    classification: bool = True,
) -> list[str]:
    """Draw the run's pictures and log them under ``charts/``; returns the artifact paths logged.

    Loss curves from the run's ``train_loss`` / ``val_loss`` history, confusion matrices (base vs candidate) for
    classification, rows kept / quarantined per stage and PII entities by type. (The per-metric bars per model,
    :func:`tasks.charts.metric_bars`, are drawn by the evaluate stage into ``eval/`` beside its report.)
    """
    from tasks import charts

    out = Path(out_dir)
    made: list[Path] = []
    train, val = metric_history(run_id, "train_loss"), metric_history(run_id, "val_loss")
    if train or val:
        made.append(charts.loss_curves(train, val, out / "loss_curves.png"))
    if predictions_uri and classification:
        import pandas as pd

        cm = charts.confusion_matrices(pd.read_parquet(predictions_uri), out / "confusion_matrix.png")
        made += [cm] if cm else []
    if stages:
        made.append(charts.stage_counts([{"stage": r.stage, "counts": r.counts} for r in stages], out / "stages.png"))
    entities = _pii_entities(stages)
    if entities:
        made.append(charts.count_bars(entities, out / "pii_entities.png", "PII entities replaced, by type"))
    for path in made:
        log_artifact(run_id, path, "charts")
    return [f"charts/{p.name}" for p in made]


def _pii_entities(stages: list[StageResult]) -> dict[str, float]:
    for r in stages:
        if r.stage in ("scrub_pii", "pii") and Path(r.report_uri).exists():
            m = json.loads(Path(r.report_uri).read_text()).get("metrics") or {}
            return {k.rsplit(".", 1)[-1]: v for k, v in m.items() if ".entities." in k and v}
    return {}


_HTML_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1a1a1a;max-width:72rem}
h1{font-size:1.4rem;margin-bottom:.2rem} .sub{color:#555;margin-top:0}
table{border-collapse:collapse;width:100%;margin-top:1rem;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f5f7} td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#e6f4ea;color:#137333;font-weight:600} .warn{background:#fef7e0;color:#a15c00;font-weight:600}
.block{background:#fce8e6;color:#c5221f;font-weight:600} .desc{color:#555;font-size:.82rem}
.cards{display:flex;gap:1rem;margin-top:1rem} .card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem}
.card b{display:block;font-size:1.3rem}
"""


def validation_html(report: dict[str, Any]) -> str:
    """The data-contract result as one self-contained HTML page: inline CSS, no script, no font, no CDN (Great
    Expectations' Data Docs load theirs from CDNs and render blank offline)."""
    from html import escape

    c, s = report.get("contract", {}), report.get("summary", {})
    rows = []
    for r in report.get("rules", []):
        cls = "pass" if r["passed"] else ("block" if r["severity"] == "block" else "warn")
        verdict = (
            "passed"
            if r["passed"]
            else {"block": "BLOCKED", "quarantine": "rows quarantined"}.get(r["severity"], "warning")
        )
        ids = ", ".join(r.get("example_ids") or [])[:300]
        rows.append(
            f"<tr><td><b>{escape(r['rule'])}</b><div class=desc>{escape(r.get('description') or '')}</div></td>"
            f"<td>{escape(r['severity'])}</td><td>{escape(str(r['observed']))}</td>"
            f"<td>{escape(str(r['threshold']))}</td><td class={cls}>{verdict}</td>"
            f"<td class=n>{r['rows_affected']}</td><td class=desc>{escape(ids)}</td></tr>"
        )
    cards = "".join(
        f"<div class=card>{label}<b>{s.get(key, 0)}</b></div>"
        for key, label in (("rows_in", "rows in"), ("kept", "kept"), ("quarantined", "quarantined"))
    )
    blocked = report.get("blocked") or []
    verdict = f"blocked by {', '.join(blocked)}" if blocked else "passed (no blocking rule failed)"
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>Data contract {escape(c.get('name', '?'))}</title>"
        f"<style>{_HTML_STYLE}</style></head><body>"
        f"<h1>Data contract <code>{escape(c.get('name', '?'))}</code>: {escape(verdict)}</h1>"
        f"<p class=sub>{escape(c.get('path', ''))} · task {escape(str(c.get('task', '')))}</p><div class=cards>{cards}</div>"
        "<table><tr><th>rule</th><th>severity</th><th>observed</th><th>threshold</th><th>result</th>"
        f"<th>rows affected</th><th>example ids</th></tr>{''.join(rows)}</table></body></html>"
    )


def log_validation(run_id: str, report: dict[str, Any]) -> None:
    """A validate report's evidence: GX's result JSON, the rules JSON and ``validate/report.html`` (offline-safe,
    in place of GX's Data Docs folder, which needs CDNs and carries ~4 MB of fonts)."""
    arts = report.get("artifacts") or {}
    for key in ("gx_validation_results", "rules"):
        if key in arts:
            log_artifact(run_id, arts[key], "validate")
    if report.get("rules"):
        client().log_text(run_id, validation_html(report), "validate/report.html")


def metrics_markdown(metrics: dict[str, dict[str, float]]) -> list[str]:
    """``{model: {metric: value}}`` as a Markdown table, one row per metric, one column per model."""
    models = list(metrics)
    keys = sorted({k for m in models for k in metrics[m]})
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for k in keys:
        vals = [metrics[m].get(k) for m in models]
        lines.append(f"| {k} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
    return lines


def run_description(
    config: str,
    base_model: str,
    splits: dict[str, int],
    digests: dict[str, str],
    train: dict[str, Any] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
    decision: dict[str, Any] | None = None,
) -> str:
    """The run page's description: what was trained, on what, how it scored and what the gate decided."""
    lines = [f"**LoRA retrain** of `{base_model}` from `{config}`.", ""]
    data = ", ".join(
        f"{k} {splits[k]} rows (`{digests.get(k, '')[:12]}`)" for k in ("train", "val", "test") if k in splits
    )
    lines += [f"**Data**: {data}.", ""]
    if train:
        lines += [
            f"**Training**: {train['steps']} steps on {train['train_rows']} rows, {train['tokens_per_s']:.0f} tokens/s"
            f" ({train['device']}); final train loss {train.get('train_loss') or float('nan'):.4f}, val loss "
            f"{train.get('val_loss') or float('nan'):.4f}.",
            "",
        ]
    if metrics:
        lines += ["**Test set**:", "", *metrics_markdown(metrics), ""]
    if decision:
        verdict = "promoted to champion" if decision["promoted"] else "not promoted"
        lines += [f"**Decision**: {decision['model_name']} version {decision['version']} {verdict}."]
        lines += [f"- {r}" for r in decision["reasons"]]
    else:
        lines += ["**Decision**: none (stopped before registration)."]
    lines += ["", "Charts: `charts/`; predictions: `eval/predictions.json`; data contract: `validate/report.html`."]
    return "\n".join(lines)


def version_description(
    metrics: dict[str, dict[str, float]],
    promoted: bool,
    reasons: list[str],
    digests: dict[str, str],
    base_model: str,
    run_id: str,
) -> str:
    """A model version's description: decision and reasons, the metrics table, the data it was trained and tested on."""
    lines = [f"**{'Promoted to champion' if promoted else 'Not promoted'}** (run `{run_id}`).", ""]
    lines += [f"- {r}" for r in reasons] + ["", *metrics_markdown(metrics), ""]
    lines += [f"- base model: `{base_model}`"]
    lines += [f"- {k} data sha256: `{v}`" for k, v in digests.items() if v]
    return "\n".join(lines)
