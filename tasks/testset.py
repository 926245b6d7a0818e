"""The frozen, versioned test set of a project (per config ``name``): what makes quarter-to-quarter comparisons fair.

The first retrain freezes test set v1 from the hash rule of :mod:`tasks.split`. Each later retrain

* keeps every frozen id in the test split, whatever the split fractions, salt, caps or ``split: test`` sources say
  now (a cap that would leave a frozen row out stops the run with a clear message);
* splits every id an earlier retrain already split by the rule *that* retrain used (recorded in the state), so old
  rows never change split — an old train row never becomes test, an old test row never becomes train or val;
* splits only new ids by the current rule, so test rows are added from new data only.

State lives under ``<LORAFLOW_HOME>/testsets/<project>/``: ``v<N>.json`` (the frozen ids, their content digests,
every id seen and the rules), updated under a cross-process lock. A run plans its assignment before dedup
(:func:`plan_assignment`, written content-addressed so the data stages' cache keys stay stable when nothing
changed) and records what it tested on after split (:func:`record_test_set`), which returns the manifest logged to
MLflow as ``test_set/manifest.json``: ``project``, ``version``, ``count``, ``sha256`` of the sorted ids, ``ids``.
"""

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from pydantic import BaseModel, Field

from tasks.core import StageError, atomic_write_text, read_records
from tasks.home import loraflow_home

SPLITS = ("train", "val", "test")


class SplitRule(BaseModel):
    """The hash rule one retrain split new ids with."""

    salt: str
    val_fraction: float
    test_fraction: float
    has_test_source: bool = Field(description="A source was marked `split: test` (the hash then makes no test).")


class TestSetState(BaseModel):
    """A project's frozen test set and the ids earlier retrains split, with the rule each id was split by."""

    __test__ = False  # not a pytest class

    project: str
    version: int
    ids: list[str] = Field(description="Every frozen test id, sorted; only ever grows.")
    digests: dict[str, str] = Field(default_factory=dict, description="Content digest of each test row.")
    rules: list[SplitRule] = Field(default_factory=list, description="The rules earlier retrains used.")
    seen: dict[str, int] = Field(default_factory=dict, description="Each id split before -> index into rules.")


def unit(record_id: str, salt: str) -> float:
    """Map an id to [0, 1) with a salted SHA-256 (uniform, stable across machines and Python versions)."""
    digest = hashlib.sha256(f"{salt}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def rule_split(record_id: str, rule: SplitRule) -> str:
    u = unit(record_id, rule.salt)
    test = 0.0 if rule.has_test_source else rule.test_fraction
    return "test" if u < test else "val" if u < test + rule.val_fraction else "train"


def state_dir(project: str) -> Path:
    return loraflow_home() / "testsets" / re.sub(r"[^A-Za-z0-9._-]+", "_", project)


def load_state(project: str) -> TestSetState | None:
    """The latest recorded state of ``project``'s test set, or None before its first retrain."""
    versions = sorted(state_dir(project).glob("v*.json"), key=lambda p: int(p.stem[1:]))
    return TestSetState.model_validate_json(versions[-1].read_text()) if versions else None


def plan_assignment(ids: list[str], hints: list[str | None], rule: SplitRule, state: TestSetState | None) -> dict:
    """Each id's split under the frozen set, the recorded rules and (for new ids) ``rule``."""
    frozen = set(state.ids) if state else set()
    splits = {}
    for rid, hint in zip(ids, hints, strict=True):
        if rid in frozen or hint == "test":
            splits[rid] = "test"
        elif state is not None and rid in state.seen:
            splits[rid] = rule_split(rid, state.rules[state.seen[rid]])
        else:
            splits[rid] = rule_split(rid, rule)
    return splits


def test_order(test_ids: list[str], frozen: set[str], salt: str) -> list[str]:
    """The order a test-row cap takes rows in: every frozen row first, then the rest by a fixed hash."""
    return sorted(test_ids, key=lambda rid: (rid not in frozen, unit(rid, f"{salt}:test-sample"), rid))


def check_cap(frozen_present: int, max_test_rows: int | None, version: int) -> None:
    """A test-row cap below the frozen rows present would drop them from evaluation: a config error."""
    if max_test_rows is not None and frozen_present > max_test_rows:
        raise StageError(
            f"split.max_test_rows={max_test_rows} would leave out frozen test rows: test set v{version} has "
            f"{frozen_present} rows in this data, and every one stays in the test split so each quarter's "
            f"models are compared on the same rows. Raise split.max_test_rows to at least {frozen_present} or "
            "remove it."
        )


def write_plan(ref, split_cfg, project: str, out_dir: str | Path) -> str:
    """Plan the split of the records in ``ref`` and write it content-addressed; returns the file path.

    The plan holds only what decides the split's output (each id's split and the test rows' order), so when
    nothing changed it is the same file as last run's and the data stages' cache keys stay the same.
    """
    records = pd.read_parquet(ref.uri, columns=["id", "meta"])
    hints = [(json.loads(m) if isinstance(m, str) else (m or {})).get("split") for m in records["meta"]]
    rule = SplitRule(salt=split_cfg.salt, val_fraction=split_cfg.val_fraction,
                     test_fraction=split_cfg.test_fraction, has_test_source="test" in hints)  # fmt: skip
    state = load_state(project)
    splits = plan_assignment(records["id"].tolist(), hints, rule, state)
    frozen = set(state.ids) & set(splits) if state else set()
    check_cap(len(frozen), split_cfg.max_test_rows, state.version if state else 0)
    plan = {"rule": rule.model_dump(), "splits": dict(sorted(splits.items()))}
    if split_cfg.max_test_rows is not None:  # only a cap reads the order: without one it must not change the key
        plan["test_order"] = test_order([rid for rid, s in splits.items() if s == "test"], frozen, split_cfg.salt)
    text = json.dumps(plan, sort_keys=True)
    path = Path(out_dir) / "testset" / f"plan-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if not path.exists():
        atomic_write_text(path, text)
    return str(path)


def read_plan(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _digest(messages: Any) -> str:
    text = messages if isinstance(messages, str) else json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest(state: TestSetState) -> dict[str, Any]:
    """What the run logs as ``test_set/manifest.json``."""
    ids = sorted(state.ids)
    return {"project": state.project, "version": state.version, "count": len(ids),
            "sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "ids": ids}  # fmt: skip


def record_test_set(project: str, plan_path: str | Path, test_ref) -> dict[str, Any]:
    """Add this run's test rows and planned ids to the project's state (under a lock); returns the manifest.

    The version goes up only when the frozen ids change; two retrains finishing together both land.
    """
    plan = read_plan(plan_path)
    pool_ids = list(plan["splits"])
    test = read_records(test_ref)
    folder = state_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):
        state = load_state(project) or TestSetState(project=project, version=0, ids=[])
        rule = SplitRule.model_validate(plan["rule"])
        if rule not in state.rules:
            state.rules.append(rule)
        index = state.rules.index(rule)
        for rid in pool_ids:
            state.seen.setdefault(rid, index)
        new = sorted(set(test["id"]) - set(state.ids))
        digests = dict(zip(test["id"], (_digest(m) for m in test["messages"]), strict=True))
        if new or state.version == 0:
            state.version += 1
            state.ids = sorted(set(state.ids) | set(new))
        state.digests.update({rid: digests[rid] for rid in new})
        atomic_write_text(folder / f"v{state.version}.json", state.model_dump_json())
    return manifest(state)


def log_test_set(run_id: str, manifest: dict[str, Any]) -> None:
    """The manifest as ``test_set/manifest.json`` and the version / digest / size as run tags."""
    from tasks import tracking

    tracking.json_artifact(run_id, manifest, "test_set/manifest.json")
    tracking.client().set_tag(run_id, "loraflow.test_set.version", str(manifest["version"]))
    tracking.client().set_tag(run_id, "loraflow.test_set.sha256", manifest["sha256"])
    tracking.client().set_tag(run_id, "loraflow.test_set.count", str(manifest["count"]))


def tag_version(model_name: str, version: str, run_id: str) -> None:
    """Copy the run's test-set tags onto its registered version: which test set the version was evaluated on."""
    from tasks import tracking

    tags = tracking.client().get_run(run_id).data.tags
    for key, value in tags.items():
        if key.startswith("loraflow.test_set."):
            tracking.client().set_model_version_tag(model_name, version, key, value)
