"""Screenshot the approval form of a retrain suspended for the owner's decision → ``docs/approval-form.png``.

Taken by ``tests/test_approval_gate.py`` (a real Prefect server, a process worker and a tiny retrain with
``register.require_approval=true``); to refresh the picture in docs:

    LORAFLOW_SHOTS_DIR=docs .venv/bin/python -m pytest tests/test_approval_gate.py -k screenshot

Opens the flow run's page in Debian's headless Chromium through Playwright, presses **Resume** and saves the
form (the scorecard Markdown above the typed fields). Needs ``apt-get install -y chromium``.
"""

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def capture_approval_form(ui_url: str, flow_run_id: str, out: str | Path, width: int = 1280, height: int = 1800) -> str:
    """Open the suspended run, open its Resume form, wait for the fields, save a PNG; returns the visible text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}", wait_until="networkidle", timeout=90_000)
            page.get_by_role("button", name="Resume").first.click(timeout=60_000)
            page.get_by_text("Reviewer", exact=False).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1500)  # the Markdown and the last fields settle
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.inner_text("body")
        finally:
            browser.close()
