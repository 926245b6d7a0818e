"""The owner's "ship it" inside the flow run: a scorecard and a typed approval form in the Prefect UI.

With ``register.require_approval`` the register stage leaves a candidate that passed the automatic gate as
``challenger`` (``Registration.awaiting_approval``). :func:`await_approval` then

1. persists a checkpoint in the MLflow run (``approval/pending.json``, tag ``loraflow.approval=pending``): the
   registration, the metrics and the intervals, all the decision needs;
2. stops the flow run with the scorecard as the form's description and :class:`ApprovalInput` as the form:
   **suspend** when the run belongs to a deployment (the process exits; resuming reschedules the run, a worker
   starts the flow again, :func:`pending_approval` finds the checkpoint and the flow comes straight back here —
   no stage runs twice, nothing is retrained), else **pause** (Prefect can reschedule only deployment runs that
   are not subflows: ``loraflow run`` or the quarterly flow's retrain subflow wait in their process);
3. applies the answer through :func:`tasks.approval.decide`, a compare-and-set under the champion lock: approve
   moves ``champion`` only while the champion is still the one the candidate beat; reject or timeout leave it
   ``challenger``. Who decided and why go into the version's tags and description and the run's tags.

A suspended run that times out is failed by the Prefect server itself (no loraflow code runs then): the version
keeps ``approval=pending`` with ``approval.deadline`` in the past, and :func:`expire_pending` (called by the next
approval of that model and by ``loraflow approve``) records the timeout on it.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.input import RunInput
from pydantic import Field

from tasks.register import RegisterConfig, Registration

CHECKPOINT = "approval/pending.json"
PAUSE_KEY = "loraflow-approval"  # one approval per flow run: the re-run after a resume finds it already fired
STATE_TAG = "loraflow.approval"


class ApprovalInput(RunInput):
    """The form on the suspended run's Resume button."""

    approve: bool = Field(False, description="Approve: champion moves to this version. Leave off to reject.")
    reviewer: str = Field(min_length=1, description="Who decides (kept in the version's tags and description).")
    reason: str = Field(min_length=1, description="Why (kept in the version's tags and description).")


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:+.4f}"


def scorecard_markdown(run_id: str, registration: Registration, checkpoint: dict[str, Any], cfg: RegisterConfig) -> str:
    """The form's description: what the owner approves, on what evidence."""
    from tasks.tracking import metrics_markdown, run_link

    reg, key = registration, cfg.gate_metric
    lines = [f"## Approve {reg.model_name} version {reg.version} as `{cfg.champion_alias}`?", ""]
    champ = f"version {reg.previous_champion}" if reg.previous_champion else "none yet"
    lines += [f"The automatic gate passed on `{key}` (margin {cfg.gate_margin}). Current champion: {champ}.", ""]
    lines += ["### Test-set metrics", "", *metrics_markdown(checkpoint["metrics"]), ""]
    lines += ["### Gate", "", *[f"- {r}" for r in reg.reasons], ""]
    intervals = {other: m[key] for other, m in (checkpoint.get("intervals") or {}).items() if key in m}
    if intervals:
        lines += [f"Paired bootstrap interval of candidate − other on `{key}`:", "",
                  "| vs | diff | low | high |", "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {o} | {_fmt(i.get('diff'))} | {_fmt(i.get('low'))} | {_fmt(i.get('high'))} |"
                  for o, i in intervals.items()]  # fmt: skip
        lines.append("")
    review = {k: v for k, v in _client().get_run(run_id).data.metrics.items() if k.startswith("review.")}
    lines += ["### Human review", ""]
    if review:
        lines += ["| metric | value |", "|---|---:|", *[f"| {k} | {v:.3f} |" for k, v in sorted(review.items())]]
    else:
        lines.append(f"No blind review imported yet (`loraflow review export {run_id}`, then `review import`).")
    lines += ["", f"MLflow run: {run_link(run_id)}", "",
              f"Decide by {checkpoint['deadline']} (register.approval_timeout_hours={cfg.approval_timeout_hours:g});"
              " after that the version stays challenger."]  # fmt: skip
    return "\n".join(lines)


def pending_approval(experiment: str, flow_run_id: str) -> dict[str, Any] | None:
    """The checkpoint this flow run left before it was suspended, or None (a fresh run: do the work)."""
    import mlflow

    client = _client()
    exp = client.get_experiment_by_name(experiment)
    if exp is None or flow_run_id in ("", "local"):
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`{STATE_TAG}` = 'pending'",
        max_results=1,
    )
    if not runs:
        return None
    return json.loads(mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/{CHECKPOINT}"))


def _save_checkpoint(run_id: str, registration: Registration, metrics, intervals, cfg: RegisterConfig) -> dict:
    deadline = datetime.now(UTC) + timedelta(hours=cfg.approval_timeout_hours)
    checkpoint = {"run_id": run_id, "registration": registration.model_dump(), "metrics": metrics,
                  "intervals": intervals or {}, "deadline": deadline.isoformat(timespec="seconds")}  # fmt: skip
    client = _client()
    client.log_text(run_id, json.dumps(checkpoint, indent=2), CHECKPOINT)
    client.set_tag(run_id, STATE_TAG, "pending")
    for k, v in {"approval": "pending", "approval.deadline": checkpoint["deadline"]}.items():
        client.set_model_version_tag(registration.model_name, registration.version, k, v)
    return checkpoint


def _wait_for_answer(description: str, timeout_s: int) -> ApprovalInput | None:
    """Suspend (a deployment run, not a subflow) or pause, with the form; None when the pause timed out."""
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run, suspend_flow_run

    form = ApprovalInput.with_initial_data(description=description)
    flow_run = FlowRunContext.get().flow_run
    if flow_run.deployment_id is not None and flow_run.parent_task_run_id is None:
        return suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=PAUSE_KEY)
    try:
        return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=max(1, min(10, timeout_s // 4)),
                              key=PAUSE_KEY)  # fmt: skip
    except FlowPauseTimeout:
        return None


def _describe(registration: Registration, decision: dict[str, Any], by: str, reason: str) -> None:
    """The decision at the top of the version's description, and in the run's tags."""
    client = _client()
    mv = client.get_model_version(registration.model_name, registration.version)
    verdict = {"approved": "Approved as champion", "rejected": "Rejected: stays challenger",
               "timeout": "No decision in time: stays challenger",
               "stale": "Approved, but the champion changed meanwhile: stays challenger"}[decision["decision"]]  # fmt: skip
    head = f"**{verdict}** by {by}: {reason}"
    client.update_model_version(registration.model_name, registration.version, f"{head}\n\n{mv.description or ''}")
    for k, v in {STATE_TAG: decision["decision"], f"{STATE_TAG}.by": by, f"{STATE_TAG}.reason": reason}.items():
        if decision.get("run_id"):  # a version registered by hand may have no run
            client.set_tag(decision["run_id"], k, v[:4900])


def record_timeout(registration: Registration, run_id: str, hours: float) -> dict[str, Any]:
    """No decision before the deadline: the version stays challenger, tagged with why."""
    from tasks.approval import decide

    reason = f"no decision within {hours:g} h (register.approval_timeout_hours)"
    out = decide(registration.model_name, registration.version, "timeout", reason, approve=False)
    _client().set_model_version_tag(registration.model_name, registration.version, "approval", "timeout")
    out.update(decision="timeout", run_id=run_id)
    _describe(registration, out, "nobody", reason)
    return out


def expire_pending(model_name: str) -> list[str]:
    """Record the timeout on every version of ``model_name`` still pending past its deadline (suspended runs
    whose deadline passed are failed by the Prefect server, which runs no loraflow code); returns them."""
    client = _client()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    expired = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        tags = mv.tags or {}
        if tags.get("approval") == "pending" and tags.get("approval.deadline", now) < now:
            reg = Registration(model_name=model_name, version=str(mv.version), aliases=[], promoted=False,
                               reasons=[], source=mv.source or "")  # fmt: skip
            record_timeout(reg, mv.run_id, _hours(tags))
            expired.append(str(mv.version))
    return expired


def _hours(tags: dict[str, str]) -> float:
    try:
        return float(tags.get("approval.timeout_hours", "nan"))
    except ValueError:
        return float("nan")


def await_approval(cfg: RegisterConfig, run_id: str, registration: Registration, metrics=None, intervals=None,
                   checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Checkpoint, show the scorecard and form, wait, and apply the owner's decision; returns it.

    Args:
        cfg: the register stage's config (aliases, gate, timeout).
        run_id: the MLflow run of the retrain.
        registration: the register stage's result (``awaiting_approval``).
        metrics: ``EvalResult.metrics``; intervals: ``EvalResult.intervals`` (first pass).
        checkpoint: what :func:`pending_approval` found (a run re-started after its resume).

    Returns:
        ``{"model", "version", "decision", "previous_champion", "run_id", "reviewer", "reason"}``.
    """
    from tasks.approval import decide

    expire_pending(registration.model_name)
    if checkpoint is None:
        checkpoint = _save_checkpoint(run_id, registration, metrics, intervals, cfg)
        _client().set_model_version_tag(registration.model_name, registration.version, "approval.timeout_hours",
                                        f"{cfg.approval_timeout_hours:g}")  # fmt: skip
    timeout_s = max(1, int(cfg.approval_timeout_hours * 3600))
    answer = _wait_for_answer(scorecard_markdown(run_id, registration, checkpoint, cfg), timeout_s)
    if answer is None:
        return record_timeout(registration, run_id, cfg.approval_timeout_hours)
    out = decide(registration.model_name, registration.version, answer.reviewer, answer.reason,
                 approve=answer.approve, alias=cfg.champion_alias,
                 expected_champion=registration.previous_champion)  # fmt: skip
    out.update(run_id=run_id, reviewer=answer.reviewer, reason=answer.reason)
    _describe(registration, out, answer.reviewer, answer.reason)
    return out


def _with_decision(result: dict[str, Any], decision: dict[str, Any], cfg: RegisterConfig) -> dict[str, Any]:
    approved = decision["decision"] == "approved"
    aliases = [a for a in result.get("aliases", [cfg.challenger_alias]) if a != cfg.champion_alias]
    return {**result, "approval": decision, "promoted": approved,
            "aliases": aliases + [cfg.champion_alias] * approved}  # fmt: skip


def with_approval(result: dict[str, Any], cfg: RegisterConfig, registration: Registration, evaluation) -> dict:
    """The flow's result once the owner decided (or the time ran out): ``approval``, ``promoted``, ``aliases``."""
    run_id = result["mlflow_run_id"]
    decision = await_approval(cfg, run_id, registration, evaluation.metrics, evaluation.intervals)
    return _with_decision(result, decision, cfg)


def resume_approval(cfg: RegisterConfig, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The re-started flow of a resumed suspension: straight to the decision, from the checkpoint; returns the
    flow's result (the first pass's keys, from the checkpoint, and ``approval``)."""
    registration = Registration.model_validate(checkpoint["registration"])
    decision = await_approval(cfg, checkpoint["run_id"], registration, checkpoint=checkpoint)
    result = {"mlflow_run_id": checkpoint["run_id"], "model_name": registration.model_name,
              "version": registration.version, "aliases": registration.aliases, "eval": checkpoint["metrics"],
              "resumed": True}  # fmt: skip
    return _with_decision(result, decision, cfg)
