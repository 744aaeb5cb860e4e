"""First page ready time (issue 23 §10): seconds from starting the dashboard process to the first page's main
heading being visible in a real browser (Debian's chromium via Playwright).

Each run starts ``streamlit run Home.py`` on a free loopback port with a fresh temporary workspace (as
``tests/browser/app_server.py`` does), opens it and waits for the Analyze page's ``h1``. Also printed: when the
server first answered ``/_stcore/health``. Chromium is started before the clock (it is not the dashboard's time).

    .venv/bin/python bench/first_page.py [--runs 3] [--lang en]

Target (issue 23): <= 5 s on the 2-core machine. A benchmark, not a test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from app_server import dashboard, launch_browser  # noqa: E402

from core import i18n  # noqa: E402

WAIT_MS = 180_000  # the bound of the heading wait (a loaded 2-core machine)


def one_run(browser, lang: str) -> tuple[float, float]:
    """(seconds to the health answer, seconds to the visible heading), both from the process start."""
    heading = f"{i18n.t('app_title', lang)} · {i18n.t('nav_analyze', lang)}"
    with tempfile.TemporaryDirectory(prefix="uusic_first_page_") as workspace:
        return _timed(browser, {"UUSIC_WORKSPACE": workspace, "UUSIC_DEVICE": "cpu"}, lang, heading)


def _timed(browser, env: dict[str, str], lang: str, heading: str) -> tuple[float, float]:
    started = time.perf_counter()
    with dashboard(env, timeout=WAIT_MS / 1000) as url:
        healthy = time.perf_counter() - started
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        try:
            page = context.new_page()
            page.goto(f"{url}/?lang={lang}", timeout=WAIT_MS)
            page.get_by_role("heading", level=1, name=heading).wait_for(state="visible", timeout=WAIT_MS)
            ready = time.perf_counter() - started
        finally:
            context.close()
    return healthy, ready


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lang", default="en", choices=list(i18n.LANGUAGES))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ready_times = []
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            for index in range(1, args.runs + 1):
                healthy, ready = one_run(browser, args.lang)
                ready_times.append(ready)
                print(f"run {index}: health answered {healthy:.2f} s, first page heading visible {ready:.2f} s")
        finally:
            browser.close()
    print(f"first page ready (s): median {statistics.median(ready_times):.2f}, min {min(ready_times):.2f}, "
          f"max {max(ready_times):.2f} over {len(ready_times)} runs (target <= 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
