"""History, Batch and Models & System in a real browser (Playwright + /usr/bin/chromium; issue 12, issue 11 §6).

The app is started by ``test_browser``'s fixtures (its own workspace, the bundled data root and demo weights);
the runs to re-open are made beforehand through the real service on the same workspace. Screenshots (English:
the test machine's chromium has no CJK font) go to ``docs/screenshots/history_*.png``.
"""

# ruff: noqa: F811 - pytest fixtures imported from test_browser are parameters here

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import pytest

from core import i18n
from core.settings import PROJECT_ROOT, Settings

sys.path.insert(0, str(Path(__file__).parent))
from app_server import CHROMIUM, wait_idle, wait_settled

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(300)]
pytest.importorskip("playwright.sync_api")
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from test_browser import _data_root, app_url, browser, pick_option, workspace  # noqa: E402,F401 - the app

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
WAIT = 60_000
LAST_PLOT = "[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')].pop()"


@pytest.fixture(scope="module")
def runs(workspace, app_url):
    """Through the real service on the app's workspace: a classification run, two segmentation runs of one image
    (the newest with a user-given spacing) and a segmentation run of another image whose mask is then removed
    (masks are named after the image, so the removed one must not be the kept runs' image)."""
    if not (PROJECT_ROOT / "weights" / "models.json").is_file():
        pytest.skip("the runs are made with the shipped demo weights")
    from core.service import AnalysisService

    service = AnalysisService(Settings(workspace=workspace, data_root=_data_root(), device="cpu"))
    made = {"classification": service.analyze(
        {**service.random_sample("classification", "BUSI"), "task": "classification", "dataset_name": "BUSI"},
        source="api")}
    sample = {**service.random_sample("segmentation", "DDTI"), "task": "segmentation", "dataset_name": "DDTI",
              "original_name": "neck scan.png"}
    made["earlier"] = service.analyze(sample, source="api")
    made["segmentation"] = service.analyze({**sample, "pixel_spacing_mm": 0.1, "pixel_spacing_source": "user"},
                                           source="dashboard")
    other = next(s for s in (service.random_sample("segmentation", "DDTI") for _ in range(200))
                 if s["img_path_relative"] != sample["img_path_relative"])  # its mask file is not shared with these
    gone = service.analyze({**other, "task": "segmentation", "dataset_name": "DDTI",
                            "original_name": "gone scan.png"}, source="api")
    Path(gone.mask_path).unlink()
    made["gone"] = gone
    return made


@pytest.fixture()
def tab(browser, app_url, runs):
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    context.set_default_timeout(WAIT)
    page = context.new_page()
    yield page
    context.close()


def open_page(page, app_url: str, name: str, lang: str) -> None:
    page.goto(f"{app_url}/{name}?lang={lang}")
    page.get_by_text(i18n.t("demo_banner", lang)).wait_for(state="visible", timeout=3 * WAIT)
    wait_idle(page)


def pick(page, box_index: int, option: re.Pattern) -> None:
    """Choose ``option`` in the ``box_index``-th select box."""
    wait_settled(page)  # images and charts settle after the run
    pick_option(page, page.locator('[data-testid="stSelectbox"]').nth(box_index), option)


def server_folders(workspace: Path) -> list[str]:
    folders = {str(workspace), str(_data_root()), str(PROJECT_ROOT), str(PROJECT_ROOT / "weights")}
    return sorted(folders | {str(Path(f).resolve()) for f in folders})


def assert_no_server_path(page, workspace: Path) -> None:
    html, text = page.content(), page.locator("body").inner_text()
    for folder in server_folders(workspace):
        assert folder not in html and folder not in text, folder


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_history_reopens_a_segmentation_run_with_its_measurements(tab, app_url, runs, lang):
    open_page(tab, app_url, "history", lang)
    run = runs["segmentation"]
    pick(tab, 3, re.compile(rf"^#{run.run_id} "))  # the three filters, then the run to re-open
    tab.get_by_text(i18n.t("measurements", lang), exact=True).wait_for()
    table = tab.locator('[data-testid="stTable"]').first.inner_text()
    area = run.measurements["area_px"]
    assert i18n.measure_label("area", lang) in table and i18n.measure_label("longest_diameter", lang) in table
    assert f"{area:,.1f} px²" in table and f"{area * 0.01:,.2f} mm²" in table
    assert i18n.t("h_spacing", lang, spacing="0.1", source=i18n.t("cl_source_user", lang)) in tab.inner_text("body")
    assert "neck scan.png" in tab.inner_text("body")  # the user's file name
    assert tab.locator('[data-testid="stImage"]').count() >= 2  # image and overlay
    tab.get_by_role("button", name=i18n.t("h_report_make", lang)).wait_for()  # visible (it may paint after the run)
    if lang == "en":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.set_viewport_size({"width": 1366, "height": 2200})
        wait_settled(tab)  # data grids paint after the run
        tab.screenshot(path=str(SCREENSHOTS / "history_reopen.png"))


def test_history_compares_two_runs_with_linked_zoom(tab, app_url, runs):
    open_page(tab, app_url, "history", "en")
    pick(tab, 3, re.compile(rf"^#{runs['segmentation'].run_id} "))
    tab.get_by_text(i18n.t("h_compare_with", "en")).wait_for()
    earlier = runs["earlier"]
    pick(tab, 4, re.compile(rf"^#{earlier.run_id} "))  # filters (3), re-open, then "compare with"
    chart = tab.locator('[data-testid="stPlotlyChart"]').last
    chart.locator(".js-plotly-plot").wait_for()
    tab.wait_for_function(f"() => {{ const d = {LAST_PLOT}; return d && d._fullLayout && d._fullLayout.xaxis2; }}")
    ranges = "d => [d._fullLayout.xaxis.range.slice(), d._fullLayout.xaxis2.range.slice()]"
    before = chart.locator(".js-plotly-plot").evaluate(ranges)
    chart.scroll_into_view_if_needed()
    box = chart.locator(".nsewdrag").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    tab.mouse.move(x, y)
    tab.mouse.down()
    for step in range(1, 6):  # drag (pan) the first image
        tab.mouse.move(x - 15 * step, y - 10 * step)
    tab.mouse.up()
    moved = (f"first => {{ const x = {LAST_PLOT}._fullLayout.xaxis.range; "
             "return x[0] !== first[0] || x[1] !== first[1]; }")
    linked = (f"() => {{ const l = {LAST_PLOT}._fullLayout; "
              "return l.xaxis.range[0] === l.xaxis2.range[0] && l.xaxis.range[1] === l.xaxis2.range[1]; }")
    with contextlib.suppress(PlaywrightTimeout):  # the asserts below say which of the two did not happen
        tab.wait_for_function(moved, arg=before[0], timeout=WAIT / 2)
        tab.wait_for_function(linked, timeout=WAIT / 2)
    after = chart.locator(".js-plotly-plot").evaluate(ranges)
    assert after[0] != before[0], "the drag did not move the first image"
    assert after[0] == after[1], "the second image did not follow the first (zoom / pan not linked)"
    numbers = tab.locator('[data-testid="stTable"]').last.inner_text()
    assert f"#{earlier.run_id}" in numbers and f"#{runs['segmentation'].run_id}" in numbers
    tab.set_viewport_size({"width": 1366, "height": 2600})
    wait_settled(tab)
    tab.screenshot(path=str(SCREENSHOTS / "history_compare.png"))


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_no_server_path_on_history_batch_and_models_pages(tab, app_url, runs, workspace, lang):
    open_page(tab, app_url, "history", lang)
    assert_no_server_path(tab, workspace)
    pick(tab, 3, re.compile(rf"^#{runs['gone'].run_id} "))  # a run whose mask is gone: the error state
    tab.get_by_text(i18n.t("reopen_unavailable", lang, message="")[:6]).first.wait_for()
    tab.get_by_text(i18n.t("h_raw_json", lang)).click()  # the raw record too
    wait_idle(tab)
    assert_no_server_path(tab, workspace)
    open_page(tab, app_url, "batch", lang)
    assert_no_server_path(tab, workspace)
    tab.get_by_text(i18n.t("batch_json", lang), exact=True).click()
    wait_idle(tab)
    bad = tab.locator('input[type="file"]').last
    bad.set_input_files(files=[{"name": "bad.json", "mimeType": "application/json",
                                "buffer": f'[{{"img_path_relative": "{workspace}/x.png"}}]'.encode()}])
    wait_idle(tab)
    tab.get_by_role("button", name=i18n.t("batch_run", lang)).last.click()
    tab.get_by_text(i18n.t("batch_failed_all", lang, n=1)).wait_for()
    tab.locator('[data-testid="stDataFrame"]').first.wait_for()  # the failure table (it names the entry)
    wait_settled(tab)  # its cells paint after the run
    assert_no_server_path(tab, workspace)
    open_page(tab, app_url, "models", lang)
    assert_no_server_path(tab, workspace)
    # the engineering detail (device, versions, paths) is folded under "technical details": open it too
    tab.locator('[data-testid="stExpander"] summary').filter(has_text=i18n.t("m_technical", lang)).click()
    tab.get_by_text(i18n.t("paths", lang), exact=True).wait_for()
    assert_no_server_path(tab, workspace)
    body = tab.inner_text("body")
    assert i18n.t("m_cuda", lang, value=i18n.t("m_no", lang)) in body or \
        i18n.t("m_cuda", lang, value=i18n.t("m_yes", lang)) in body
    if lang == "zh":
        assert "CUDA available" not in body and i18n.t("model_desc_uusic-demo-unet", "zh")[:8] in body


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_history_at_800_px_cuts_no_label(tab, app_url, runs, lang):
    tab.set_viewport_size({"width": 800, "height": 1400})
    open_page(tab, app_url, "history", lang)
    pick(tab, 3, re.compile(rf"^#{runs['segmentation'].run_id} "))
    tab.get_by_text(i18n.t("measurements", lang), exact=True).wait_for()
    shown, cut = tab.evaluate("""() => {
        const labels = [...document.querySelectorAll(
            '[data-testid="stWidgetLabel"] p, [data-testid="stTable"] th, [data-testid="stCaptionContainer"],'
            + ' [data-testid="stMetricLabel"] p, [data-testid="stTable"] td, [data-testid="stSelectbox"] div[value]')]
            .filter(e => e.offsetParent !== null);
        return [labels.length, labels.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)];
    }""")
    assert shown >= 8, "the labels to check were not found"
    assert not cut, f"cut labels at 800 px: {cut}"
    if lang == "en":
        wait_settled(tab)
        tab.screenshot(path=str(SCREENSHOTS / "history_800px.png"), full_page=True)
