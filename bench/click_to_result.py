"""Dashboard click-to-result in a real browser (Debian's chromium via Playwright) for the served model.

Starts ``streamlit run Home.py`` on a free loopback port with a temporary workspace, draws a random sample,
then times N clicks on "Run" until the result (the resource panel) is on screen. Prints median / min / max.

    .venv/bin/python bench/click_to_result.py [--runs 5] [--task segmentation --group thyroid --dataset DDTI]

Target (issue "Clinician dashboard"): median ≤ 1.5 s on this CPU with the demo model. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from app_server import dashboard, launch_browser, wait_idle  # noqa: E402

from core import catalog, i18n  # noqa: E402
from core.settings import Settings  # noqa: E402

LANG = "en"


def _choose(page, task: str, group: str, dataset: str) -> None:
    page.get_by_role("radiogroup", name="语言 / Language").get_by_text("English", exact=True).click()
    page.get_by_text(i18n.t("demo_banner", LANG)).wait_for()
    wait_idle(page)
    page.get_by_text(i18n.task_name(task, LANG), exact=True).first.click()
    wait_idle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text=i18n.t("organ", LANG)).click()
    page.get_by_role("option", name=i18n.group_name(group, LANG), exact=True).click()
    wait_idle(page)
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=i18n.t("dataset", LANG))
    if dataset not in box.inner_text():
        box.click()
        page.get_by_role("option", name=dataset, exact=True).click()
        wait_idle(page)


def measure(task: str, group: str, dataset: str, runs: int, data_root: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    env = {"UUSIC_WORKSPACE": tempfile.mkdtemp(prefix="uusic_bench_"), "UUSIC_DEVICE": "cpu"}
    if data_root:
        env["UUSIC_DATA_ROOT"] = str(data_root)
    timings, engine_times = [], []
    with dashboard(env) as url, sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(url)
        wait_idle(page)
        _choose(page, task, group, dataset)
        page.get_by_role("button", name=i18n.t("random_button", LANG)).click()
        run_button = page.get_by_role("button", name=i18n.t("run", LANG))
        run_button.wait_for()
        wait_idle(page)
        for index in range(runs + 1):  # the first click loads the model: reported apart
            # each run gets a new history id, shown in the resource panel: wait for this run's id
            marker = page.get_by_text(re.compile(rf"{re.escape(i18n.t('run_id', LANG, n=index + 1))}$"))
            started = time.perf_counter()
            run_button.click()
            marker.wait_for(state="attached")  # the run id sits in the folded technical details
            elapsed = time.perf_counter() - started
            wait_idle(page)
            metric = page.locator('[data-testid="stMetric"]').filter(has_text=i18n.t("inference_time", LANG))
            engine_ms = float((re.findall(r"\d+(?:\.\d+)?", metric.text_content() or "") or ["0"])[-1])
            if index == 0:
                first = elapsed
            else:
                timings.append(elapsed)
                engine_times.append(engine_ms / 1000)
        browser.close()
    return {"first": first, "timings": timings, "engine": engine_times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--task", default="segmentation", choices=catalog.TASKS)
    parser.add_argument("--group", default="thyroid")
    parser.add_argument("--dataset", default=None, help="default: the catalog's demo pick for the group")
    parser.add_argument("--data-root", type=Path, default=None, help="default: UUSIC_DATA_ROOT or bundled samples")
    args = parser.parse_args(argv)
    dataset = args.dataset or catalog.default_dataset(args.task, args.group).name
    settings = Settings.from_env()
    result = measure(args.task, args.group, dataset, args.runs, args.data_root)
    median = statistics.median(result["timings"])
    print(f"model weights dir: {settings.weights_dir}  data root: {args.data_root or settings.data_root}")
    print(f"click-to-result {args.task}/{dataset} in chromium, {args.runs} runs (CPU):")
    print(f"  first click (loads the model): {result['first']:.3f} s")
    print(f"  median {median:.3f} s   min {min(result['timings']):.3f} s   max {max(result['timings']):.3f} s")
    print(f"  engine inference_time_sec median {statistics.median(result['engine']):.3f} s "
          f"-> UI overhead {median - statistics.median(result['engine']):.3f} s")
    print(f"  target <= 1.5 s: {'met' if median <= 1.5 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
