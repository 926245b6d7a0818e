"""Screenshot what a person sees after a retrain: the MLflow run page, its predictions table and the Prefect summary.

    .venv/bin/python docs/screenshot_ui.py [--home .loraflow] [--out docs]

Takes the latest retrain run in ``--home`` (run ``make demo`` first), starts ``loraflow ui`` on free loopback
ports against that home, opens the pages in Debian's headless Chromium through Playwright and writes
``mlflow-run.png``, ``mlflow-predictions.png`` and ``prefect-summary.png`` into ``--out``; then stops the UI with
SIGTERM. ``tests/test_browser.py`` drives the same functions after a tiny run and asserts on the page texts.
Needs ``apt-get install -y chromium`` (``tests/test_deployments.py::_chromium`` installs it for the tests).
"""

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


class Stack:
    """A running ``loraflow ui``: its process and the two base URLs."""

    def __init__(self, proc: subprocess.Popen, prefect: str, mlflow: str, log: Path):
        self.proc, self.prefect, self.mlflow, self.log = proc, prefect, mlflow, log
        self.api = f"{prefect}/api"

    def stop(self, timeout: float = 10) -> float:
        """SIGTERM ``loraflow ui``; returns the seconds until it and both servers' process groups are gone."""
        groups = server_groups(self.proc.pid)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        while time.monotonic() - t0 < timeout and any(_group_alive(g) for g in groups):
            time.sleep(0.1)
        return time.monotonic() - t0


def server_groups(pid: int) -> list[int]:
    """Process-group ids of ``pid``'s children (each server runs in its own session)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,pgid=", "-e"], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    return sorted({pgid for p, ppid, pgid in rows if ppid == pid})


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return any(s and not s.startswith("Z") for s in out.split())


@contextlib.contextmanager
def ui_stack(env: dict[str, str], log: Path) -> Iterator[Stack]:
    """``loraflow ui`` on free ports with ``env`` (its LORAFLOW_HOME); stopped with SIGTERM on exit."""
    from loraflow.commands.deploy import free_port

    pp, mp = free_port(), free_port()
    cmd = [sys.executable, "-m", "loraflow", "ui", "--prefect-port", str(pp), "--mlflow-port", str(mp)]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0  # the log is appended to: look only at this start's lines
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    stack = Stack(proc, f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{mp}", log)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops both" not in log.read_bytes()[start:].decode(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"loraflow ui did not come up:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield stack
    finally:
        if proc.poll() is None:
            stack.stop()


@contextlib.contextmanager
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _open(b, url: str, wait_text: str, height: int = 1000):
    page = b.new_page(viewport={"width": 1400, "height": height})
    page.goto(url, wait_until="load", timeout=90_000)
    page.get_by_text(wait_text, exact=False).first.wait_for(timeout=90_000)
    page.wait_for_timeout(1500)  # charts and tables settle after the first paint
    return page


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel (offline: of no use) beside every run page; close it for the picture."""
    with contextlib.suppress(Exception):
        page.get_by_role("button", name="Close", exact=True).first.click(timeout=3000)
        page.wait_for_timeout(500)


def mlflow_run_page(b, stack: Stack, exp_id: str, run_id: str, out: Path | None = None) -> str:
    """The run's overview (description, metrics table); returns its text."""
    page = _open(b, f"{stack.mlflow}/#/experiments/{exp_id}/runs/{run_id}", "Description", height=1500)
    _close_assistant(page)
    with contextlib.suppress(Exception):  # the description is folded after a few lines
        page.get_by_role("button", name="Expand description").first.click(timeout=3000)
        page.wait_for_timeout(500)
    if out:
        page.get_by_text("Description", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=str(out))
    text = page.inner_text("body")
    page.close()
    return text


def mlflow_artifact(b, stack: Stack, exp_id: str, run_id: str, path: str, out: Path | None = None) -> dict:
    """An artifact's preview: the page text, the image sizes drawn and the text and one computed background
    colour of each embedded HTML frame (to tell a styled page from a blank one)."""
    page = _open(b, f"{stack.mlflow}/#/experiments/{exp_id}/runs/{run_id}/artifacts/{path}", path)
    page.wait_for_timeout(2500)
    _close_assistant(page)
    if out:
        page.screenshot(path=str(out))
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.naturalHeight, e.src])")
    frames = []
    for f in page.frames[1:]:
        with contextlib.suppress(Exception):
            colour = f.evaluate("getComputedStyle(document.querySelector('td.pass') || document.body).backgroundColor")
            frames.append({"text": f.inner_text("body"), "pass_colour": colour})
    result = {"text": page.inner_text("body"), "images": images, "frames": frames}
    page.close()
    return result


def mlflow_model_version(b, stack: Stack, name: str, version: str) -> str:
    page = _open(b, f"{stack.mlflow}/#/models/{name}/versions/{version}", "Aliases")
    with contextlib.suppress(Exception):  # the alias chips arrive after the page frame; the test says if they never do
        page.get_by_text(re.compile(r"@\s*\w")).first.wait_for(timeout=30_000)
    text = page.inner_text("body")
    page.close()
    return text


def prefect_flow_run(b, stack: Stack, flow_run_id: str, tab: str | None = None) -> str:
    """The flow run's page (its Logs tab), or another tab of it; returns the text."""
    page = _open(b, f"{stack.prefect}/runs/flow-run/{flow_run_id}", "Task Runs")
    if tab:
        page.get_by_text(tab, exact=True).first.click()
        page.wait_for_timeout(3000)
    text = page.inner_text("body")
    page.close()
    return text


def prefect_artifact(b, stack: Stack, flow_run_id: str, out: Path | None = None) -> str:
    """The flow run's markdown summary artifact, rendered; returns its text."""
    (art,) = api(stack.api, "POST", "/artifacts/filter",
                 {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "type": {"any_": ["markdown"]}}})  # fmt: skip
    page = _open(b, f"{stack.prefect}/artifacts/artifact/{art['id']}", "Retrain", height=1400)
    if out:
        page.screenshot(path=str(out), full_page=True)
    text = page.inner_text("body")
    page.close()
    return text


def api(base: str, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{base}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def latest_run(home: Path) -> tuple[str, str, str]:
    """``(experiment id, run id, Prefect flow-run id)`` of the newest finished retrain run in ``home``."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    (run,) = c.search_runs(
        [e.experiment_id for e in c.search_experiments()],
        "attributes.status = 'FINISHED' and tags.`loraflow.register.version` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run.info.experiment_id, run.info.run_id, run.data.tags["prefect.flow_run_id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / ".loraflow")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    home = args.home.resolve()
    exp, run, flow_run = latest_run(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["LORAFLOW_HOME"] = str(home)
    with ui_stack(env, home / "logs" / "screenshot-ui.log") as stack, browser() as b:
        mlflow_run_page(b, stack, exp, run, args.out / "mlflow-run.png")
        mlflow_artifact(b, stack, exp, run, "eval/predictions.json", args.out / "mlflow-predictions.png")
        prefect_artifact(b, stack, flow_run, args.out / "prefect-summary.png")
        seconds = stack.stop()
    print(f"saved {', '.join(n for n in ('mlflow-run.png', 'mlflow-predictions.png', 'prefect-summary.png'))} "
          f"in {args.out}; loraflow ui stopped {seconds:.1f} s after SIGTERM")  # fmt: skip


if __name__ == "__main__":
    main()
