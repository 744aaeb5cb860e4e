"""Dashboard first result (issue 27): seconds from ``make run`` (``streamlit run Home.py``) to the first analysis
result on screen, in a real browser (Debian's chromium via Playwright), as whole processes, several runs.

Each run starts the dashboard with a fresh temporary workspace but the converted model already cached (one cache
folder per tree, filled before the timed runs as ``make setup`` does: ``core.engine.prepare_backend``, or building
the engine in a tree without it; then one
untimed start per tree, so that every ``.pyc`` is compiled), opens the Analyze page, draws a random sample as soon
as the page offers the button, clicks Run and stops the clock when this run's id is on the page (what
``bench/click_to_result.py`` waits for; ``marker_s``) and every shown chart and image has been drawn (``DRAWN``: the
run id can come before the chart library has drawn). Chromium is started before the clock. Printed per run: health
answered, first page heading, the clicks on "random sample" and on Run, the first result (all from the process
start), click → result, and the CPU seconds the dashboard process and Chromium had used by then (their own work,
whatever the machine's load); then median / min / max.

An older tree to compare with (read-only for the repository): ``git archive HEAD | tar -x -C /tmp/uusic_old``,
then ``--tree old=/tmp/uusic_old``; the trees take turns within each run. Each tree is started with its own
``tests/browser/app_server.py`` (same interpreter). A benchmark: it prints numbers, it asserts nothing.

    .venv/bin/python bench/first_result.py --runs 3 --tree old=/tmp/uusic_old --out /tmp/first_result.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import load_average, tree_args  # noqa: E402
from lean import torch_mapped  # noqa: E402

from core import i18n  # noqa: E402

LANG = "en"
# the result is on screen when every shown chart has drawn its plot and every shown image has loaded (the run id
# can be on the page while the chart library is still loading or drawing)
DRAWN = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(
    c => !c.offsetParent || c.querySelector('.main-svg'))
  && [...document.images].every(i => i.complete || !i.offsetParent)
  && document.querySelector('[data-testid="stPlotlyChart"], [data-testid="stImage"]') !== null"""
WAIT_MS = 180_000  # the bound of every wait (a loaded 2-core machine)
KEYS = ("health_s", "first_page_s", "sample_click_s", "run_click_s", "marker_s", "first_result_s", "click_to_result_s",
        "server_cpu_s", "browser_cpu_s")


def harness(label: str, tree: Path):
    """``tree``'s own ``tests/browser/app_server.py`` (its ``dashboard`` starts ``streamlit run Home.py`` there)."""
    spec = importlib.util.spec_from_file_location(f"app_server_{label}",
                                                  tree / "tests" / "browser" / "app_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# what `make setup` runs (scripts/setup.sh); a tree from before it existed converts when its engine is built
SETUP = """try:
    from core.engine import prepare_backend
except ImportError:
    from core.engine import Engine
    print(Engine().backend)
else:
    print(prepare_backend())"""


def fill_cache(tree: Path, cache: Path) -> str:
    """Convert the default model into ``cache`` as ``make setup`` does (untimed); returns its one line."""
    env = {**os.environ, "UUSIC_CACHE_DIR": str(cache), "UUSIC_DEVICE": "cpu",
           "UUSIC_WORKSPACE": tempfile.mkdtemp(prefix="uusic_first_result_setup_")}
    done = subprocess.run([sys.executable, "-c", SETUP], cwd=tree, env=env, capture_output=True, text=True, check=True)
    shutil.rmtree(env["UUSIC_WORKSPACE"], ignore_errors=True)
    return done.stdout.strip().splitlines()[-1]


def one_run(browser, server, cache: Path) -> dict:
    """One dashboard start with a fresh workspace: the timings of :data:`KEYS`, in seconds."""
    workspace = tempfile.mkdtemp(prefix="uusic_first_result_")
    env = {"UUSIC_WORKSPACE": workspace, "UUSIC_CACHE_DIR": str(cache), "UUSIC_DEVICE": "cpu"}
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    try:
        before = cpu_seconds()
        started = time.perf_counter()
        with server.dashboard(env, timeout=WAIT_MS / 1000) as url:
            row = {"health_s": time.perf_counter() - started}
            row.update(_first_result(context.new_page(), url, started, server.wait_idle))
            after = cpu_seconds()
            row.update(server_cpu_s=after["server"], browser_cpu_s=after["browser"] - before["browser"],
                       torch=server_has_torch())
    finally:
        context.close()
        shutil.rmtree(workspace, ignore_errors=True)
    return row


def _children() -> dict[str, list[psutil.Process]]:
    """This bench's running children: the dashboard (``server``) and Chromium's processes (``browser``)."""
    found: dict[str, list[psutil.Process]] = {"server": [], "browser": []}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            kind = "server" if "streamlit" in command else "browser" if "chrom" in command else None
            if kind:
                found[kind].append(child)
    return found


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the dashboard and by Chromium: their own work, whatever the
    machine's load."""
    used = {}
    for kind, processes in _children().items():
        used[kind] = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                used[kind] += times.user + times.system
    return used


def server_has_torch() -> bool:
    """Whether the running dashboard has torch loaded (``libtorch_cpu`` mapped: :func:`lean.torch_mapped`)."""
    return any(torch_mapped(process.pid) for process in _children()["server"])


def _first_result(page, url: str, started: float, wait_idle) -> dict:
    """Open the Analyze page, draw a random sample, click Run; the times from ``started``."""
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/?lang={LANG}")
    heading = f"{i18n.t('app_title', LANG)} · {i18n.t('nav_analyze', LANG)}"
    page.get_by_role("heading", level=1, name=heading).wait_for(state="visible")
    row = {"first_page_s": time.perf_counter() - started}
    random_button = page.get_by_role("button", name=i18n.t("random_button", LANG))
    random_button.wait_for(state="visible")
    wait_idle(page, timeout=WAIT_MS, start_within=1)  # the page's first run is over: the click is not lost in a rerun
    row["sample_click_s"] = time.perf_counter() - started
    random_button.click()
    run_button = page.get_by_role("button", name=i18n.t("run", LANG))
    run_button.wait_for(state="visible")
    wait_idle(page, timeout=WAIT_MS, start_within=1)
    marker = page.get_by_text(re.compile(rf"{re.escape(i18n.t('run_id', LANG, n=1))}$"))
    clicked = time.perf_counter()
    row["run_click_s"] = clicked - started
    run_button.click()
    marker.wait_for(state="attached")  # the run id sits in the folded technical details
    row["marker_s"] = time.perf_counter() - started
    page.wait_for_function(DRAWN, timeout=WAIT_MS)  # and what it shows is drawn, not only sent
    done = time.perf_counter()
    row.update(first_result_s=done - started, click_to_result_s=done - clicked)
    return row


def summary(label: str, rows: list[dict]) -> str:
    parts = [f"{label} ({len(rows)} runs):"]
    for key in KEYS:
        values = [r[key] for r in rows]
        parts.append(f"{key} median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})")
    return "  ".join(parts)


def ratio(rows: list[dict], new: str, old: str) -> str:
    """The medians of ``old`` over ``new`` (> 1: ``new`` is faster), per timing."""
    parts = []
    for key in KEYS:
        medians = [statistics.median(r[key] for r in rows if r["tree"] == label) for label in (old, new)]
        parts.append(f"{key} x{medians[0] / medians[1]:.2f}" if medians[1] else f"{key} -")
    return f"{old} / {new} (medians): " + "  ".join(parts)


def measure(trees: list[tuple[str, Path]], runs: int, caches: dict[str, Path]) -> list[dict]:
    """Untimed cache fill and start per tree, then ``runs`` rounds with the trees taking turns."""
    from playwright.sync_api import sync_playwright

    servers = {label: harness(label, tree) for label, tree in trees}
    rows: list[dict] = []
    with sync_playwright() as playwright:
        browser = servers[trees[0][0]].launch_browser(playwright)
        try:
            for label, tree in trees:
                print(f"{label}: setup: {fill_cache(tree, caches[label])}", flush=True)
                print(f"{label}: untimed first start: {_fmt(one_run(browser, servers[label], caches[label]))}",
                      flush=True)
            for run in range(1, runs + 1):
                for label, _tree in trees:
                    row = {"tree": label, "run": run, "load_at_start": load_average(),
                           **one_run(browser, servers[label], caches[label])}
                    rows.append(row)
                    print(f"run {run} {label}: {_fmt(row)}", flush=True)
        finally:
            browser.close()
    return rows


def _fmt(row: dict) -> str:
    return "  ".join(f"{key} {row[key]:.2f}" for key in KEYS) + f"  torch {'loaded' if row['torch'] else 'no'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    tree_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the raw rows as JSON here")
    args = parser.parse_args(argv)
    trees = ([] if args.skip_this else [("this", ROOT)]) + args.tree
    caches = {label: Path(tempfile.mkdtemp(prefix="uusic_first_result_cache_")) for label, _ in trees}
    start_load = load_average()
    print(f"{os.cpu_count()} CPUs, load average at start: {start_load}", flush=True)
    try:
        rows = measure(trees, args.runs, caches)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    end_load = load_average()
    print(f"load average at end: {end_load}")
    for label, _tree in trees:
        print(summary(label, [r for r in rows if r["tree"] == label]))
    for label, _tree in trees[1:]:
        print(ratio(rows, trees[0][0], label))
    print("target (issue 27): first_result_s <= 4 s")
    if args.out:
        args.out.write_text(json.dumps({"load_at_start": start_load, "load_at_end": end_load, "rows": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
