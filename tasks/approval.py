"""An owner's decision on a registered version from a shell: approve (move ``champion``), reject, roll back.

Every move of ``champion`` made here happens under :func:`tasks.register.champion_lock` (the same lock the gate
takes), records who and why in the version's tags, and appends to an alias history kept in the registered
model's ``loraflow.champion_history`` tag, which :func:`rollback` reads to find the previous champion.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from tasks.core import StageError

HISTORY_TAG = "loraflow.champion_history"
HISTORY_KEEP = 20  # a registered-model tag value is limited in size; older moves are in the version tags


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version(client, model: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model, str(version))
    except MlflowException:
        raise StageError(f"{model}/{version}: no such registered model version.") from None


def _champion(client, model: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None


def history(model: str) -> list[dict]:
    """The champion moves recorded by approve / rollback, oldest first."""
    tags = _client().get_registered_model(model).tags or {}
    try:
        return json.loads(tags.get(HISTORY_TAG, "[]"))
    except ValueError:
        return []


def _move(client, model: str, version: str, alias: str, action: str, by: str, reason: str) -> str | None:
    """Move the alias (caller holds the lock), append the history, tag the version; returns the previous one."""
    previous = _champion(client, model, alias)
    client.set_registered_model_alias(model, alias, version)
    entry = {"version": version, "previous": previous, "action": action, "by": by, "reason": reason, "at": _now()}
    moves = (history(model) + [entry])[-HISTORY_KEEP:]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(moves))
    for k, v in {"by": by, "reason": reason, "at": entry["at"], "previous_champion": previous or "none"}.items():
        client.set_model_version_tag(model, version, f"{action}.{k}", v[:4900])
    return previous


ANY_CHAMPION = object()


def decide(model: str, version: str, reviewer: str, reason: str, approve: bool = True, alias: str = "champion",
           expected_champion: "str | None | object" = ANY_CHAMPION):  # fmt: skip
    """Approve (``champion`` moves to the version) or reject (reason tagged, alias untouched).

    Args:
        expected_champion: compare-and-set: the champion the version was evaluated against (None: none); when
            the champion is another version by now, an approval is recorded as ``stale`` and nothing moves.

    Returns:
        ``{"model", "version", "decision", "previous_champion"}``.
    """
    from tasks.register import champion_lock, champion_moved

    if not reviewer.strip() or not reason.strip():
        raise StageError("approve: --reviewer and --reason must not be empty.")
    client = _client()
    _version(client, model, version)
    decision = "approved" if approve else "rejected"
    with champion_lock(model):
        now = _champion(client, model, alias)
        if approve and expected_champion is not ANY_CHAMPION and expected_champion != now:
            approve, decision = False, "stale"
            reason = f"{reason} ({champion_moved(expected_champion, now)})"
        if approve:
            previous = _move(client, model, str(version), alias, "approval", reviewer, reason)
        else:
            previous = now
            for k, v in {"by": reviewer, "reason": reason, "at": _now()}.items():
                client.set_model_version_tag(model, str(version), f"approval.{k}", v[:4900])
        client.set_model_version_tag(model, str(version), "approval", decision)
    return {"model": model, "version": str(version), "decision": decision, "previous_champion": previous}


def cached_base_hashes(cache: Path | None = None) -> set[str]:
    """sha256 of every model folder in the local model cache."""
    from tasks.base_model import weights_sha256
    from tasks.home import model_cache

    root = Path(cache) if cache is not None else model_cache()
    hashes = set()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / "config.json").exists():
            try:
                hashes.add(weights_sha256(folder))
            except StageError:  # a folder without weights is not a usable base model
                continue
    return hashes


def _previous_champion(client, model: str, current: str | None) -> str:
    # The move that made the current champion, not a rollback to it: rolling back twice goes further back.
    made = [m for m in history(model) if m["version"] == current and m["action"] != "rollback"]
    if made and made[-1]["previous"]:
        return made[-1]["previous"]
    if current is not None:  # moved by the gate, which tags the champion it beat on the version
        tags = _version(client, model, current).tags or {}
        prior = tags.get("loraflow.compared_with_champion")
        if tags.get("decision") == "promoted" and prior and prior != "none":
            return prior
    raise StageError(f"{model}: no previous champion is recorded; name one with --to VERSION.")


def rollback(model: str, by: str, reason: str, to: str | None = None, alias: str = "champion",
             cache: Path | None = None) -> dict:  # fmt: skip
    """Move ``champion`` back to the previous champion (or ``to``), refusing a base model not in the cache.

    Returns:
        ``{"model", "version", "previous_champion"}``.
    """
    from tasks.register import champion_lock

    client = _client()
    with champion_lock(model):
        current = _champion(client, model, alias)
        target = str(to) if to else _previous_champion(client, model, current)
        if target == current:
            raise StageError(f"{model}/{target} is already {alias}.")
        mv = _version(client, model, target)
        sha = (mv.tags or {}).get("base_model_sha256")
        if not sha or sha not in cached_base_hashes(cache):
            raise StageError(
                f"{model}/{target}: its base model (sha256 {sha or 'not tagged'}) is not in the local model cache; "
                "put that base model in the cache (loraflow models prepare) before rolling back to it."
            )
        previous = _move(client, model, target, alias, "rollback", by, reason)
    return {"model": model, "version": target, "previous_champion": previous}
