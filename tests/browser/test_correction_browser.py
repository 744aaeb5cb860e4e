"""The correction loop in a real browser (Playwright + /usr/bin/chromium; issue 26 "Done when").

A Fetal_HC sample (with its pixel spacing) is analysed through the real service on the app's workspace; the browser
re-opens it on History, turns on mask editing, adds a rectangle outside the model's mask and erases one inside it
(placed by their numbers), and saves. The stored mask, the areas in px and mm² and the history row are then checked
through the service: they change by exactly the drawn pixels. A second visit shows both versions (model and v1).
Screenshot: ``docs/screenshots/correction_panel.png`` (1366×768, English).
"""

# ruff: noqa: F811 - pytest fixtures imported from test_browser are parameters here

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from core import i18n
from core.settings import PROJECT_ROOT, Settings

sys.path.insert(0, str(Path(__file__).parent))
from app_server import CHROMIUM, wait_idle, wait_settled

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(480)]
playwright_api = pytest.importorskip("playwright.sync_api")

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from test_browser import _data_root, app_url, browser, pick_option, workspace  # noqa: E402,F401 - the app

SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "correction_panel.png"
WAIT = 60_000
ADD, ERASE = (60, 40), (40, 30)  # (width, height) in px of the rectangles drawn


def _free_box(mask: np.ndarray, size: tuple[int, int], start: tuple[int, int], inside: bool) -> tuple[int, ...]:
    """(x0, y0, x1, y1), inclusive, of a ``size`` rectangle all inside (``inside``) or all outside the mask, the
    nearest one to ``start`` on a 10 px grid."""
    h, w = mask.shape
    candidates = [(x, y) for y in range(0, h - size[1], 10) for x in range(0, w - size[0], 10)]
    for x, y in sorted(candidates, key=lambda p: abs(p[0] - start[0]) + abs(p[1] - start[1])):
        block = mask[y:y + size[1], x:x + size[0]]
        if block.all() if inside else not block.any():
            return x, y, x + size[0] - 1, y + size[1] - 1
    pytest.skip("the model's mask leaves no room for the rectangles")


@pytest.fixture(scope="module")
def case(workspace, app_url):
    """A Fetal_HC run analysed through the service (source "dashboard"), its model mask and the two rectangles."""
    if not (PROJECT_ROOT / "weights" / "models.json").is_file():
        pytest.skip("the run is made with the shipped demo weights")
    if not any((_data_root() / "segmentation" / "Fetal_HC" / "imgs").glob("*")):
        pytest.skip("no Fetal_HC sample under the data root")
    from core.service import AnalysisService

    service = AnalysisService(Settings(workspace=workspace, data_root=_data_root(), device="cpu", backend="torch"))
    sample = service.random_sample("segmentation", "Fetal_HC")
    run = service.analyze({**sample, "task": "segmentation", "dataset_name": "Fetal_HC"}, source="dashboard")
    model = service.run_mask(run.run_id)
    assert model.any() and run.measurements["pixel_spacing_mm"], "a real mask with a calibration is needed"
    h, w = model.shape
    ys, xs = np.nonzero(model)
    add = _free_box(model, ADD, (w // 4, h // 4), inside=False)  # near the sliders' defaults: few key presses
    erase = _free_box(model, ERASE, (int(xs.mean()) - ERASE[0] // 2, int(ys.mean()) - ERASE[1] // 2), inside=True)
    return {"service": service, "run": run, "model": model, "add": add, "erase": erase}


def _slider(page, label: str):
    exact = re.compile("^" + re.escape(label) + "$")
    return page.locator('[data-testid="stSlider"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]').filter(has_text=exact))


def set_range(page, label: str, low: int, high: int) -> None:
    """Move the two thumbs of the range slider ``label`` to ``low`` and ``high`` with the arrow keys."""
    thumbs = _slider(page, label).locator('input[type="range"]')
    playwright_api.expect(thumbs).to_have_count(2)
    now = [int(thumbs.nth(i).input_value()) for i in range(2)]
    order = (0, 1) if low < now[0] else (1, 0)  # never push one thumb against the other
    for index in order:
        thumb, target = thumbs.nth(index), (low, high)[index]
        thumb.focus()
        current = int(thumb.input_value())
        key = "ArrowRight" if target > current else "ArrowLeft"
        for _ in range(abs(target - current)):
            page.keyboard.press(key)
        playwright_api.expect(thumb).to_have_value(str(target))
    wait_idle(page, timeout=WAIT)


def open_panel(page, app_url: str, run_id: int) -> None:
    """History (English) → re-open ``run_id`` → open "Correct this result"."""
    page.goto(f"{app_url}/history?lang=en")
    page.get_by_text(i18n.t("demo_banner", "en")).wait_for(state="visible", timeout=3 * WAIT)
    reopen = page.locator('[data-testid="stSelectbox"]').nth(3)  # the three filters, then the run to re-open
    reopen.wait_for()
    wait_idle(page, timeout=WAIT)
    pick_option(page, reopen, re.compile(rf"^#{run_id} "))
    page.get_by_text("Correct this result", exact=True).click()
    wait_idle(page, timeout=WAIT)


def draw(page, box: tuple[int, ...], mode: str) -> None:
    set_range(page, "x (px)", box[0], box[2])
    set_range(page, "y (px)", box[1], box[3])
    page.get_by_role("radiogroup").filter(has_text="erase").get_by_text(mode, exact=True).click()
    wait_idle(page, timeout=WAIT)
    page.get_by_role("button", name="Apply", exact=True).click()
    wait_idle(page, timeout=WAIT)


def area(box: tuple[int, ...]) -> int:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)


@pytest.fixture()
def tab(browser, case):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    context.set_default_timeout(WAIT)
    page = context.new_page()
    yield page
    context.close()


def test_a_drawn_correction_changes_the_stored_mask_areas_and_row_by_what_was_drawn(tab, app_url, case):
    run_id, model = case["run"].run_id, case["model"]
    open_panel(tab, app_url, run_id)
    tab.get_by_text("Edit the mask", exact=True).click()
    tab.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').last.wait_for()
    wait_idle(tab, timeout=WAIT)
    pick_option(tab, _tool_box(tab), "rectangle")
    tab.get_by_text("Place a shape by its numbers", exact=True).click()
    wait_idle(tab, timeout=WAIT)
    added, removed = area(case["add"]), area(case["erase"])
    draw(tab, case["add"], "add")
    tab.get_by_text(re.compile(rf"^{added} px added, 0 px removed")).wait_for()
    draw(tab, case["erase"], "erase")
    tab.get_by_text(re.compile(rf"^{added} px added, {removed} px removed")).wait_for()
    tab.get_by_role("button", name="Save as a new version").click()
    tab.get_by_text("Saved as version 1", exact=True).wait_for()
    wait_settled(tab)
    _screenshot(tab)

    expected = model.copy()
    x0, y0, x1, y1 = case["add"]
    expected[y0:y1 + 1, x0:x1 + 1] = True
    x0, y0, x1, y1 = case["erase"]
    expected[y0:y1 + 1, x0:x1 + 1] = False
    service = case["service"]
    from core.corrections import Corrections

    store = Corrections(service.settings, service.store)
    versions = store.versions(run_id)
    assert [v["version"] for v in versions] == [1]
    stored = store.mask_of(versions[0])
    np.testing.assert_array_equal(stored, expected)  # exactly the drawn pixels, on the original geometry
    assert int((stored & ~model).sum()) == added and int((model & ~stored).sum()) == removed
    np.testing.assert_array_equal(service.run_mask(run_id), model)  # the model's result is kept
    spacing = float(case["run"].measurements["pixel_spacing_mm"])
    model_px = int(model.sum())
    assert versions[0]["pixels_added"] == added and versions[0]["pixels_removed"] == removed
    assert versions[0]["area_px"] == model_px + added - removed
    assert versions[0]["area_mm2"] == pytest.approx((model_px + added - removed) * spacing**2, rel=1e-9)
    assert case["run"].measurements["area_mm2"] == pytest.approx(model_px * spacing**2, rel=1e-9)
    row = service.run(run_id)
    assert row["corrected"] is True and row["correction_version"] == 1 and row["corrected_by"] == "anonymous"
    assert row["corrected_area_px"] == model_px + added - removed
    assert row["corrected_area_mm2"] == pytest.approx(versions[0]["area_mm2"], rel=1e-12)
    assert [r["id"] for r in service.runs({"corrected": True})] == [run_id]


def test_reopening_shows_both_versions(tab, app_url, case):
    run_id = case["run"].run_id
    if not case["service"].run(run_id).get("corrected"):
        pytest.skip("needs the saved correction of the test above")
    open_panel(tab, app_url, run_id)
    tab.get_by_text("Correction versions (the model's result is kept)").wait_for()
    grid = tab.locator('[data-testid="stDataFrame"]').last
    grid.locator("canvas").first.wait_for(state="attached")  # the grid has drawn (its cells are then in the DOM)
    wait_idle(tab, timeout=WAIT)
    cells = grid.locator('[role="gridcell"], td').all_inner_texts()
    assert "model" in cells and "mask" in cells, cells
    assert str(int(case["model"].sum())) in "".join(cells).replace(",", "")


def _tool_box(page):
    exact = re.compile("^Tool$")
    return page.locator('[data-testid="stSelectbox"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]').filter(has_text=exact))


def _screenshot(page) -> None:
    """The panel with the edited mask (the drawing chart and its tools) in a 1366×768 window."""
    page.get_by_text("Correct this result", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")
    wait_settled(page)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
