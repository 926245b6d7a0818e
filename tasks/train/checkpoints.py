"""Where an interrupted training run's checkpoints live, and cleaning up what crashed runs left.

Checkpoints go to ``<root>/<key>/checkpoint-<step>/`` where ``key`` hashes everything that decides the
training result: the train and val splits' content digests, the train config (minus settings that do not
change the result), the base model's weights hash and the warm-start adapter's hash. The same retrain started
again after a kill therefore finds its own checkpoints, and a different one never picks them up.
"""

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

from tasks.train.config import TrainConfig

OWNER_FILE = "owner.json"
# Settings that change speed or bookkeeping but not the weights a run ends with.
_NOT_IN_KEY = {"resume", "torch_threads", "logging_steps", "save_total_limit"}


def checkpoint_key(
    train_sha: str, val_sha: str, cfg: TrainConfig, base_sha: str, init_sha: str = "", template: str | None = None
) -> str:
    payload = {
        "train": train_sha,
        "val": val_sha,
        "config": cfg.model_dump(exclude=_NOT_IN_KEY),
        "base": base_sha,
        "init": init_sha,
    }
    if template not in (None, "chat"):  # another prompt layout is another training run (chat keys stay as they were)
        payload["template"] = template
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def last_checkpoint(folder: Path) -> tuple[str, int] | None:
    """The newest complete checkpoint in ``folder`` as (path, step), or None."""
    best = None
    for sub in folder.glob("checkpoint-*"):
        state = sub / "trainer_state.json"
        if not (sub.is_dir() and state.exists() and (sub / "adapter_model.safetensors").exists()):
            continue  # a checkpoint cut short by a kill lacks its state file: skip it
        try:
            step = int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, json.JSONDecodeError):
            continue
        if best is None or step > best[1]:
            best = (str(sub), step)
    return best


def claim(folder: Path) -> None:
    """Record this process as the folder's owner (so a cleanup elsewhere knows it is alive)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid())}
    (folder / OWNER_FILE).write_text(json.dumps(owner))


def release(folder: Path) -> None:
    """Give the folder up after a failure: keep it when it holds a checkpoint to resume from, else remove it."""
    if last_checkpoint(folder) is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        (folder / OWNER_FILE).unlink(missing_ok=True)


def owner_alive(folder: Path) -> bool:
    """True when the folder's owner process still runs on this host (unknown hosts count as alive)."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    return process_alive(int(owner.get("pid", -1)), owner.get("started"))


def process_alive(pid: int, started: float | None = None) -> bool:
    """True when ``pid`` runs and (if given) started at ``started``: a reused pid is not the same process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or abs((process_start_time(pid) or 0) - started) < 2


def process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 (psutil missing, or the process just ended: no start time to compare)
        return None


def clean_stale(root: Path, max_age_days: float = 14.0) -> list[str]:
    """Remove scratch folders (``tmp-*``) whose owner died, and checkpoints nobody resumed for ``max_age_days``.

    Returns the folders removed.
    """
    removed = []
    if not root.is_dir():
        return removed
    cutoff = time.time() - max_age_days * 86400
    for sub in root.iterdir():
        if not sub.is_dir() or owner_alive(sub):
            continue
        if sub.name.startswith("tmp-") or sub.stat().st_mtime < cutoff:
            shutil.rmtree(sub, ignore_errors=True)
            removed.append(str(sub))
    return removed
