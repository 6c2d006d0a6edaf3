"""A real browser: JupyterLab on loopback, driven by Playwright in the system Chromium.

Runs the walkthrough notebook with the keepbook kernel, checks that the trust-vector widget
rendered with its claims and that the Keep's output appeared, and saves a screenshot under
build/.  `make test-browser` installs what it needs (Debian's chromium, JupyterLab, Playwright)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed: run `make test-browser`")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: run `make test-browser`")
if CHROMIUM is None:
    pytest.skip("no Chromium on this machine: `make test-browser` installs Debian's chromium",
                allow_module_level=True)

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from keepbook.kernel.kernelspec import install
    install(prefix=sys.prefix)
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "attestation-walkthrough.ipynb", root)
    port, token = _free_port(), secrets.token_hex(16)
    log = open(root / "lab.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False"] + (["--allow-root"] if os.geteuid() == 0 else []),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("JupyterLab did not start: " + (root / "lab.log").read_text()[-2000:])
            time.sleep(0.3)
    yield url, token
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def test_walkthrough_renders_trust_vector_widget(lab):
    url, token = lab
    shots = ROOT / "build"
    shots.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        try:
            page.goto(f"{url}/lab/tree/attestation-walkthrough.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            # wait until the keepbook kernel is connected and idle (status bar)
            page.wait_for_selector("text=keepbook (Python in a Keep) | Idle", timeout=90_000)
            page.click(".jp-Notebook")
            page.keyboard.press("Escape")
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_selector("text=Hello from inside the Keep!", timeout=240_000)
            widget = page.wait_for_selector(".keepbook-trust-vector", timeout=60_000)
            claims = page.locator(".keepbook-trust-vector .keepbook-claim")
            assert claims.count() >= 8
            text = widget.inner_text()
            for claim in ("report_data", "freshness", "key_binding", "signature", "chain", "measurement"):
                assert claim in text, claim
            assert "SIMULATED" in text
            page.wait_for_selector("text=sum 1..100 = 5050", timeout=120_000)
            widget.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "browser-trust-vector.png"), full_page=False)
            widget.screenshot(path=str(shots / "trust-vector-widget.png"))
        except Exception:
            page.screenshot(path=str(shots / "browser-failure.png"))
            raise
        finally:
            browser.close()
