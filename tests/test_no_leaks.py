"""Nothing leaked: planted PII canaries (names and street addresses included) and planted secrets appear nowhere
a run leaves them, read through each file's format (``tests/leakscan.py``): Parquet, SQLite (Prefect's database
with its logs, MLflow's store), JSON, CSV, logs; also the console output. The default variant runs the tiny
config on the tiny model; ``-m slow`` runs the whole demo config. A feedback-store password given to
``loraflow backfill`` is checked the same way.
"""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from leakscan import scan_texts, scan_tree

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a support-ticket router for Fernbank. Reply with the ticket's category only."
TICKETS = [
    ("Hi, I am Eleanor Whitfield and my card was stolen yesterday, please block it.", "card_lost_or_stolen"),
    ("My name is Tobias Marchetti-Quell, the new card has not arrived.", "card_not_arrived"),
    ("Send the replacement card to 42 Larkspur Avenue, Springfield, please.", "card_not_arrived"),
    ("I moved to 17 Quillfeather Road, Bristol BS8 4QT last month, update my address.", "account_details"),
    ("Please email me at quillon.vantreese.7731@example.org about the refund that never arrived.", "refund"),
    ("Call me on +44 20 7946 0321, my transfer has been pending for three days.", "transfer_pending"),
    ("My card 4539 5781 2468 1347 was declined at the supermarket today.", "card_declined"),
    ("I sent money to IBAN GB33BUKB20201555555555 by mistake, can you recall it?", "wrong_recipient"),
]
CANARIES = [
    "Eleanor Whitfield",
    "Whitfield",
    "Marchetti-Quell",
    "Larkspur Avenue",
    "Quillfeather Road",
    "quillon.vantreese.7731@example.org",
    "+44 20 7946 0321",
    "4539 5781 2468 1347",
    "GB33BUKB20201555555555",
]
SECRETS = {
    "LORAFLOW_EXTERNAL_API_KEY": "sk-planted-judge-key-5c1f9e77a2",
    "MLFLOW_TRACKING_TOKEN": "planted-mlflow-token-0b93d4",
}
DB_PASSWORD = "planted-db-password-71e2"


def test_the_scan_reads_through_compression_databases_and_escapes(tmp_path):
    """The scanner itself can fail: a canary inside snappy Parquet, SQLite, escaped JSON and UTF-16 is found."""
    needle = "Eleanor Whitfield"
    filler = " ".join(f"ticket {i} about a card" for i in range(2000))
    frame = pd.DataFrame({"detail": [json.dumps({"t": f"{filler} {needle}"})] * 3})
    frame.to_parquet(tmp_path / "a.parquet", compression="zstd")  # entropy-coded: no literal bytes survive
    assert needle.encode() not in (tmp_path / "a.parquet").read_bytes(), "the Parquet page should be compressed"
    con = sqlite3.connect(tmp_path / "b.db")
    con.execute("CREATE TABLE log (message TEXT)")
    con.execute("INSERT INTO log VALUES (?)", (f"hello {needle.upper()}",))
    con.commit()
    con.close()
    (tmp_path / "c.json").write_text(json.dumps({"m": "Eleanor\u00a0Whitfield".replace("\u00a0", " ")}))
    (tmp_path / "d.log").write_bytes(f"x {needle} y".encode("utf-16-le"))
    (tmp_path / "e.txt").write_text("card 4539578124681347")
    hits = scan_tree(tmp_path, [needle, "4539 5781 2468 1347", "never-planted"])
    assert sorted(hits[needle]) == ["a.parquet", "b.db", "c.json", "d.log"]
    assert hits["4539 5781 2468 1347"] == ["e.txt"]
    assert "never-planted" not in hits
    assert scan_texts(["no canary here"], [needle]) == set()


def _canary_file(path: Path) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
                                 {"role": "assistant", "content": label}]})
        for t, label in TICKETS
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(args: list[str], home: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(LORAFLOW_HOME=str(home), PYTHONUNBUFFERED="1", **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "loraflow", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def _prefect_log_rows(home: Path) -> int:
    """Rows in the Prefect database's ``log`` table: the Prefect API's logs the scan has read."""
    total = 0
    for db in home.rglob("*.db"):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='log'").fetchone():
                total += con.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        finally:
            con.close()
    return total


@pytest.fixture(scope="module", params=["tiny", pytest.param("demo", marks=pytest.mark.slow)])
def finished_run(request, tmp_path_factory):
    """One ``loraflow run`` on the canary file plus demo rows, with the planted secrets in its environment."""
    variant = request.param
    home = tmp_path_factory.mktemp("home")
    canary = _canary_file(tmp_path_factory.mktemp("input") / "canary.jsonl")
    env = dict(SECRETS)
    if variant == "tiny":
        model = request.getfixturevalue("tiny_model_dir")
        args = ["run", "--config", "configs/tiny.yaml", "--set", f"train.base_model={model}", "--set",
                f"data.sources=[{{path: {canary}}}, {{path: examples/demo/tickets_chat.jsonl, max_rows: 80}}]"]  # fmt: skip
    else:
        request.getfixturevalue("base_tokenizer_dir")  # skips without the prepared base model
        env["LORAFLOW_MODEL_CACHE"] = os.environ.get("LORAFLOW_MODEL_CACHE", str(ROOT / ".loraflow" / "models"))
        src = "[{path: %s}, {path: examples/demo/tickets_chat.jsonl}, {path: examples/demo/tickets_alpaca.jsonl}]"
        args = ["run", "--config", "configs/demo.yaml", "--set", f"data.sources={src % canary}"]
    run = _run(args, home, env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return variant, home, run.stdout + run.stderr


def test_no_canary_and_no_secret_anywhere_after_a_run(finished_run):
    variant, home, console = finished_run
    needles = [*CANARIES, *SECRETS.values()]
    hits = scan_tree(home, needles)
    files = hits.pop("__files__")
    in_console = scan_texts([console], needles)
    assert not hits and not in_console, {"files": hits, "console": sorted(in_console)}
    assert any(f.startswith("parquet=") for f in files) and any(f.startswith("sqlite=") for f in files), files
    assert _prefect_log_rows(home) > 0, "the Prefect API's logs were scanned"
    assert not list((home / "tmp").rglob("*.parquet")), "raw ingest output must be removed once scrubbed"
    print(f"leak scan ({variant}): {len(needles)} needles, files read: {', '.join(files)}; found: 0")


@pytest.fixture(scope="module")
def backfill_with_password(tmp_path_factory):
    """``loraflow backfill`` against an unreachable PostgreSQL whose URL carries a password."""
    home = tmp_path_factory.mktemp("home-backfill")
    url = f"postgresql+psycopg://loraflow:{DB_PASSWORD}@127.0.0.1:9/loraflow"
    proc = _run(["backfill", "--start", "2026-07-01", "--end", "2026-07-02", "--source", url], home, {})
    return home, proc


def test_a_store_password_is_not_printed(backfill_with_password):
    _, proc = backfill_with_password
    assert proc.returncode == 1
    assert not scan_texts([proc.stdout + proc.stderr], [DB_PASSWORD])


def test_a_store_password_is_not_stored_under_the_home(backfill_with_password):
    home, _ = backfill_with_password
    hits = scan_tree(home, [DB_PASSWORD])
    hits.pop("__files__")
    assert not hits, hits


def test_an_unreachable_store_fails_in_one_line(backfill_with_password):
    _, proc = backfill_with_password
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cannot be opened" in proc.stderr and "***" in proc.stderr  # names the store, password hidden
