"""Leak scan for canary tests: is any planted PII string anywhere under a folder?"""

import json
from collections.abc import Iterable
from pathlib import Path


def find_leaks(root: str | Path, needles: Iterable[str]) -> dict[str, list[str]]:
    """Scan every file under ``root`` (bytes, also UTF-16 and JSON-escaped forms) for each needle.

    Returns {needle: [paths that contain it]} for the needles found; an empty dict means no leak. For the
    canary test: plant unique PII strings in the input, run the pipeline, assert ``find_leaks(home, ...) == {}``.
    """
    forms: dict[str, list[bytes]] = {}
    for n in needles:
        fs = {n.encode(), n.encode("utf-16-le"), json.dumps(n)[1:-1].encode(), n.casefold().encode()}
        forms[n] = [f for f in fs if f]
    hits: dict[str, list[str]] = {}
    for p in Path(root).rglob("*"):
        if not p.is_file() or p.is_symlink():
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        low = data.lower()
        for n, fs in forms.items():
            if any(f in data or f.lower() in low for f in fs):
                hits.setdefault(n, []).append(str(p))
    return hits
