"""Nothing lost: a generated corpus of malformed inputs (``tests/fuzz_corpus.py``) through ingest and the
``scrub``, ``dedup``, ``validate`` and ``prepare`` commands. Never a traceback, only documented exit codes, and an
exact ledger: every input row is kept or quarantined (with file, line and reason), counted against the number of
rows the generator wrote. Fixed seed (``derandomize``); ``-m slow`` runs ten times the inputs.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fuzz_corpus import CANARY, Case, cases, jsonl_file, jsonl_rows
from hypothesis import HealthCheck, given, settings

REPO = Path(__file__).resolve().parents[1]
KEY = b"fuzz-test-record-id-key-32-bytes"
DEFAULT_INPUTS = 1200  # files through ingest in `make test`; each JSONL file holds 1-8 generated lines
STATS: Counter = Counter()


def _settings(n: int):
    return settings(
        max_examples=n,
        derandomize=True,  # the fixed seed: the same corpus on every run and machine
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _where(q) -> list[tuple[str, int]]:
    return [(json.loads(d)["file"], json.loads(d)["line"]) for d in q["detail"]]


def check_ingest(case: Case, folder: Path) -> None:
    """Read one generated input with ingest's reader; assert the outcome and its ledger."""
    from tasks.core import StageError, write_records
    from tasks.ingest import SourceConfig, load_source
    from tasks.messages import messages_problem

    path = case.write(folder)
    STATS["inputs"] += 1
    STATS[f"kind_{case.kind}"] += 1
    for k in case.line_kinds:
        STATS[f"line_{k}"] += 1
    try:
        out = load_source(SourceConfig(path=str(path)), key=KEY)
    except StageError as e:
        assert case.may_refuse, f"{case.kind} refused although it holds records: {e}"
        assert CANARY not in str(e), "an error message quotes the input"
        STATS["refused_whole_source"] += 1
        return
    kept, q = out.kept, out.quarantined
    rows_in = out.report["rows_in"]
    if case.rows is not None:
        assert rows_in == case.rows, f"rows_in {rows_in} but the generator wrote {case.rows} rows"
    assert len(kept) + len(q) == rows_in, f"ledger: {len(kept)} kept + {len(q)} quarantined != {rows_in} rows in"
    STATS["rows"] += rows_in
    STATS["rows_quarantined"] += len(q)
    if len(q):
        assert set(q["stage"]) == {"ingest"} and all(q["reason"].astype(bool))
        assert q["record"].isna().all(), "ingest quarantines before scrubbing: no record text"
        assert not any(CANARY in d for d in q["detail"]), "a quarantine detail quotes the raw input"
        assert all(f == str(path) for f, _ in _where(q))
    if case.kind == "jsonl":
        lines = sorted([m["line"] for m in kept["meta"]] + [line for _, line in _where(q)])
        assert lines == list(range(1, rows_in + 1)), "every line is kept or quarantined exactly once"
    for msgs in kept["messages"]:
        assert messages_problem(msgs, check_text=False) is None
    if len(kept):
        write_records(kept, folder / "kept.parquet")  # what the flow does next: must not fail on any text


@pytest.mark.parametrize(
    "n",
    [pytest.param(DEFAULT_INPUTS, id="default"), pytest.param(10 * DEFAULT_INPUTS, marks=pytest.mark.slow, id="x10")],
)
def test_ingest_keeps_or_quarantines_every_generated_row(n, tmp_path):
    STATS.clear()

    @_settings(n)
    @given(case=cases())
    def run(case: Case) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            check_ingest(case, Path(d))

    run()
    assert STATS["inputs"] >= n
    print("fuzz corpus:", json.dumps(dict(sorted(STATS.items()))))


def test_a_10_mb_line_is_read_and_counted(tmp_path):
    big = json.dumps({"prompt": "card " * 2_100_000 + CANARY, "completion": "x"}).encode()
    body = big + b"\n" + b'{"prompt": "truncated' + b"\n"
    check_ingest(Case("jsonl", ".jsonl", body, rows=jsonl_rows(body)), tmp_path)


# --------------------------------------------------------------------------------------------- the commands


def _invoke(name: str, *args):
    import typer
    from typer.testing import CliRunner

    from loraflow.commands import dedup, scrub, validate

    app = typer.Typer()
    app.command()({"scrub": scrub.command, "dedup": dedup.command, "validate": validate.command}[name])
    return CliRunner().invoke(app, [str(a) for a in args])


def _no_traceback(res, codes: set[int]) -> None:
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"uncaught {type(res.exception).__name__}: {res.exception}") from res.exception
    assert res.exit_code in codes, res.output
    assert "Traceback" not in res.output
    if res.exit_code:
        assert "error:" in res.output, res.output


def check_command(name: str, case: Case, folder: Path, contract: Path) -> None:
    """One generated input through ``loraflow <name>``: documented exit code, ledger against the generator."""
    path = case.write(folder / "in")
    report = folder / "report.json"
    out = folder / "out.jsonl"
    STATS[f"{name}_inputs"] += 1
    if name == "validate":
        res = _invoke(name, path, "--contract", contract, "--report", report)
        _no_traceback(res, {0, 1, 2})
    else:
        res = _invoke(name, path, out, "--report", report)
        _no_traceback(res, {0, 1})
    if res.exit_code or not report.exists():
        return
    data = json.loads(report.read_text())
    if name == "validate":
        s = data["summary"]
        rows_in, accounted = s["rows_in"] + data["unreadable_lines"], s["kept"] + s["quarantined"]
        accounted += data["unreadable_lines"]
    else:
        c = data["counts"]
        rows_in, accounted = c["rows_in"], c["kept"] + c["quarantined"] + c["quarantined_at_read"]
        assert len(out.read_text(encoding="utf-8").splitlines()) == c["kept"]
    if case.rows is not None:
        assert rows_in == case.rows, f"{name}: rows_in {rows_in} but the generator wrote {case.rows}"
    assert accounted == rows_in, f"{name}: ledger {accounted} != {rows_in}"
    STATS[f"{name}_ledgers_checked"] += 1


@pytest.fixture(scope="module")
def fuzz_contract(tmp_path_factory) -> Path:
    """A row-level contract without token rules (no tokenizer needed)."""
    rules = [
        {"rule": r, "description": f"Fuzz rule {r}.", "severity": "quarantine"}
        for r in ("required_fields", "role_order", "assistant_not_empty", "no_residual_pii", "clean_text")
    ]
    doc = {"contract": "fuzz", "description": "Fuzz corpus contract.", "task": "generation", "rules": rules}
    path = tmp_path_factory.mktemp("contracts") / "fuzz.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("name", "n"),
    [("scrub", 120), ("dedup", 120), ("validate", 60)]
    + [pytest.param(c, 10 * n, marks=pytest.mark.slow, id=f"{c}-x10") for c, n in (("scrub", 120), ("dedup", 120))],
)
def test_commands_on_the_generated_corpus(name, n, tmp_path, fuzz_contract):
    @_settings(n)
    @given(case=cases())
    def run(case: Case) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            check_command(name, case, Path(d), fuzz_contract)

    STATS.clear()
    run()
    assert STATS[f"{name}_inputs"] >= n and STATS[f"{name}_ledgers_checked"] >= n // 4, dict(STATS)
    print(f"{name}:", json.dumps(dict(sorted(STATS.items()))))


def test_real_cli_processes_on_fuzzed_files(tmp_path):
    """A handful of real ``loraflow`` processes (entry point, logging, exit codes) on generated JSONL files."""
    from hypothesis import find

    case = find(jsonl_file(), lambda c: len(set(c.line_kinds)) >= 5 and "good" in c.line_kinds, settings=_settings(500))
    path = case.write(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    for args in (
        ["scrub", path, tmp_path / "s.jsonl", "--report", tmp_path / "s.json"],
        ["dedup", path, tmp_path / "d.jsonl", "--report", tmp_path / "d.json"],
        ["validate", path, "--contract", "tiny"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "loraflow", *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out[-3000:]
        assert proc.returncode in (0, 1, 2), out[-3000:]
        if proc.returncode:
            assert "error:" in out
    for name in ("s", "d"):
        counts = json.loads((tmp_path / f"{name}.json").read_text())["counts"]
        assert counts["rows_in"] == case.rows
        assert counts["kept"] + counts["quarantined"] + counts["quarantined_at_read"] == case.rows


# --------------------------------------------------------------------------------------------- loraflow prepare

PREPARE_INPUTS = 24  # generated inputs through the whole data pipeline in `make test` (~2 s each once warm)

#: One process runs ``loraflow prepare`` (typer's test runner) once per generated config. Prefect is imported
#: first so that its console log handler writes to this process's stderr, which the test scans for tracebacks,
#: and not to the first runner call's captured (then closed) stream.
PREPARE_WORKER = r"""
import json, sys, traceback
from tasks.home import configure_environment
configure_environment()
import flows.retrain
from typer.testing import CliRunner
from loraflow.cli import app

results = []
for config in json.loads(open(sys.argv[1]).read()):
    res = CliRunner().invoke(app, ["prepare", "--config", config, "--set", "train.base_model=" + sys.argv[2]])
    exc = res.exception
    crash = None
    if exc is not None and not isinstance(exc, SystemExit):
        crash = "".join(traceback.format_exception(exc))
    results.append({"code": res.exit_code, "output": res.output, "crash": crash})
print("RESULT=" + json.dumps(results))
"""
COUNT_LINE = re.compile(r"^\s+(\w+)\s+rows_in=(\d+)\s+kept=(\d+)\s+quarantined=(\d+)", re.MULTILINE)


def _prepare_config(case: Case, folder: Path, n: int, contract: Path) -> Path:
    """The generated input as the only source of a data config (a project of its own: ``fuzz-<n>``)."""
    path = case.write(folder / f"in-{n}")
    cfg = {"name": f"fuzz-{n}", "data": {"sources": [{"path": str(path)}]}, "include_feedback": False,
           "validate": {"contract": str(contract)}, "split": {"val_fraction": 0.1, "test_fraction": 0.15}}  # fmt: skip
    config = folder / f"fuzz-{n}.yaml"
    config.write_text(json.dumps(cfg))
    return config


def check_prepare(case: Case, res: dict, project: Path) -> None:
    """One ``loraflow prepare`` on a generated input: exit 0 or 1 with one error line, and every stage's ledger
    exact, ingest's against the generator's own row count."""
    assert res["crash"] is None, res["crash"]
    assert res["code"] in (0, 1) and "Traceback" not in res["output"], res["output"][-3000:]
    assert CANARY not in res["output"], "prepare's output quotes the input"
    STATS["prepare_inputs"] += 1
    if res["code"]:
        assert "error:" in res["output"], res["output"][-3000:]
        STATS["prepare_refused"] += 1
        return
    counts = {m[0]: tuple(map(int, m[1:])) for m in COUNT_LINE.findall(res["output"])}
    assert list(counts) == ["ingest", "pii", "dedup", "validate"], res["output"][-3000:]
    if case.rows is not None:
        assert counts["ingest"][0] == case.rows, f"ingest rows_in {counts['ingest'][0]} != {case.rows} generated"
    kept_before = None
    for stage, (rows_in, kept, quarantined) in counts.items():
        assert rows_in == kept + quarantined, f"{stage}: ledger {kept} + {quarantined} != {rows_in}"
        assert kept_before is None or rows_in == kept_before, f"{stage} read {rows_in} rows, {kept_before} came"
        kept_before = kept
    (q_file,) = (project / "ingest").glob("*.quarantine.parquet")
    q = pd.read_parquet(q_file)
    assert len(q) == counts["ingest"][2] and not any(CANARY in d for d in q["detail"])
    assert all(json.loads(d)["line"] >= 1 and json.loads(d)["file"] for d in q["detail"]) and all(q["reason"])
    (split_report,) = (project / "split").glob("split-*.report.json")
    split = json.loads(split_report.read_text())["counts"]
    assert split["rows_in"] == kept_before == sum(split[k] for k in ("train", "val", "test", "sampled_out"))
    STATS["prepare_ledgers_checked"] += 1
    STATS["prepare_rows"] += counts["ingest"][0]


@pytest.mark.parametrize(
    "n",
    [pytest.param(PREPARE_INPUTS, id="default"),
     pytest.param(10 * PREPARE_INPUTS, marks=pytest.mark.slow, id="x10")],
)  # fmt: skip
@pytest.mark.timeout(3600)  # one Prefect server and MLflow store start, then ~2 s per input (minutes under load)
def test_prepare_on_the_generated_corpus(n, tmp_path, fuzz_contract, tiny_model_dir):
    generated: list[tuple[Case, Path]] = []

    @_settings(n)
    @given(case=cases())
    def collect(case: Case) -> None:
        generated.append((case, _prepare_config(case, tmp_path / "inputs", len(generated), fuzz_contract)))

    collect()
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([str(config) for _, config in generated]))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LORAFLOW_TEST_PAUSE"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", PREPARE_WORKER, str(jobs), str(tiny_model_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60 * n)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[max(0, proc.stderr.index("Traceback") - 200) :][:3000]
    results = json.loads(proc.stdout.split("RESULT=")[1])
    STATS.clear()
    for (case, config), res in zip(generated, results, strict=True):
        check_prepare(case, res, home / "data" / config.stem)
    assert not list((home / "tmp").glob("*.parquet")), "raw ingest output left under the home"
    # Most generated files hold no readable record (refused with one error line); some must get through.
    assert STATS["prepare_inputs"] >= n and STATS["prepare_ledgers_checked"] >= n // 8, dict(STATS)
    print("prepare:", json.dumps(dict(sorted(STATS.items()))))
