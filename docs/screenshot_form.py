"""Screenshot the Prefect UI's Run form of the ``retrain`` deployment → ``docs/retrain-form.png``.

    .venv/bin/python docs/screenshot_form.py [--out docs/retrain-form.png]

Starts a throwaway Prefect server on a free loopback port (SQLite in a temporary PREFECT_HOME), registers the
deployments (``deployments.deploy.deploy_all``), opens ``/deployments/deployment/<id>/run`` in Debian's headless
Chromium through Playwright and saves the page. Needs ``apt-get install -y chromium`` (the ``server`` test
fixture installs it); nothing is installed from here.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def deployment_id(api_url: str, flow: str, name: str) -> str:
    with urllib.request.urlopen(f"{api_url}/deployments/name/{flow}/{name}", timeout=30) as r:
        return json.load(r)["id"]


def capture_form(ui_url: str, dep_id: str, out: str | Path, width: int = 1280, height: int = 2300) -> str:
    """Open the deployment's Run form, wait for the fields, save a PNG; returns the page's visible text.

    The form scrolls inside its own container, so the viewport is made tall enough to hold every field.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{ui_url}/deployments/deployment/{dep_id}/run", wait_until="networkidle", timeout=90_000)
            page.get_by_text("Learning Rate", exact=False).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # let the last fields settle
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()


def register(api_url: str, env: dict[str, str]) -> None:
    code = "from deployments.deploy import deploy_all; deploy_all()"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PREFECT_API_URL": api_url}, check=True,
                   capture_output=True, timeout=300)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "retrain-form.png")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from loraflow.commands.deploy import free_port, start_prefect_server, stop

    with tempfile.TemporaryDirectory(prefix="lf-shot-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(PREFECT_HOME=f"{tmp}/prefect", LORAFLOW_HOME=f"{tmp}/home")
        port = free_port()
        server = start_prefect_server("127.0.0.1", port, env=env, log=Path(tmp) / "server.log")
        try:
            api = f"http://127.0.0.1:{port}/api"
            register(api, env)
            text = capture_form(f"http://127.0.0.1:{port}", deployment_id(api, "retrain", "retrain"), args.out)
        finally:
            stop(server)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes); fields seen: "
          f"{sum(1 for line in text.splitlines() if line.endswith('(Optional)'))}")  # fmt: skip


if __name__ == "__main__":
    main()
