"""Start the dashboard (``streamlit run Home.py``) on a free loopback port and open Debian's chromium on it.

Shared by ``tests/browser/test_browser.py`` and ``bench/click_to_result.py``. Never downloads a browser.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def dashboard(env_overrides: dict[str, str], *, timeout: float = 60.0, log_path: Path | None = None):
    """Run the dashboard in a subprocess; yields its base URL; stops it (by pid) afterwards."""
    port = free_port()
    env = {**os.environ, **env_overrides}
    env.pop("UUSIC_API_URL", None) if "UUSIC_API_URL" not in env_overrides else None
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed when the server stops
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode} (log: {log_path})")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if log_path:
            log.close()


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_idle(page, timeout: float = 30_000, start_within: float = 800) -> None:
    """Wait until Streamlit has finished the script run a click started (``data-test-script-state`` of the root).

    A run that has not started within ``start_within`` ms is taken as no run at all."""
    # playwright's TimeoutError: the run was quicker than the poll, or there was none
    with contextlib.suppress(Exception):
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="running"]', timeout=start_within)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


# Every image loaded and every data grid drawn (its canvas), so a screenshot or a look at the page sees what a person
# would: a state to wait for instead of a fixed pause (issue 20). A grid inside a folded expander draws nothing until
# it is opened (and a lazy image loads only when shown): only shown grids and images are waited for.
PAINTED = """() => [...document.images].every(i => i.complete || !i.offsetParent)
  && [...document.querySelectorAll('[data-testid="stDataFrame"]')].every(
    d => !d.offsetParent || d.getBoundingClientRect().top >= window.innerHeight || d.querySelector('canvas'))"""
# (a grid below the viewport is not painted until it is scrolled to: it is not waited for)


def wait_settled(page, timeout: float = 60_000) -> None:
    """Wait until the script run is over and its images and data grids have painted."""
    wait_idle(page, timeout=timeout)
    page.wait_for_function(PAINTED, timeout=timeout)
