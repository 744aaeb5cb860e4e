"""Issue 23 in a real browser (Playwright + /usr/bin/chromium): the calipers are pixels on the served overlay and
go when switched off, Batch runs each image with its own dataset, and a fetal-head result (the longest one: HC,
BPD, reference) keeps its overlay and key numbers in the first viewport at 1366×768 and 800 px in English.

The app is started by ``test_browser``'s fixtures (its own workspace, the bundled data root and demo weights).
"""

# ruff: noqa: F811 - pytest fixtures imported from test_browser are parameters here

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import i18n, overlay
from core.settings import PROJECT_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from app_server import CHROMIUM, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(300)]
pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)
if not (PROJECT_ROOT / "weights" / "models.json").is_file():
    pytest.skip("needs the shipped demo weights (Fetal_HC, DDTI, BUSI segmentation)", allow_module_level=True)

from test_browser import (  # noqa: E402,F401 - the app and its helpers
    IMAGES_PAINTED,
    MAX_RESULT_PAGE,
    WAIT,
    _data_root,
    _selected,
    app_url,
    browser,
    click_run,
    open_analyze,
    pick_option,
    workspace,
)

EN = "en"
FETAL = "?lang=en&task=segmentation&organ=fetal_head&dataset=Fetal_HC"
FIRST_RUN = 180_000  # ms: the first run of a dataset loads the model on a busy machine


def _t(key: str, **values) -> str:
    return i18n.t(key, EN, **values)


def _sample_and_run(tab) -> None:
    tab.get_by_role("button", name=_t("random_button")).click(timeout=FIRST_RUN)  # a fresh server may be slow
    tab.get_by_role("button", name=_t("run")).wait_for()
    wait_idle(tab)
    tab.get_by_role("button", name=_t("run")).click()
    tab.locator("#uusic-result").wait_for(timeout=FIRST_RUN)
    wait_idle(tab, timeout=FIRST_RUN)
    tab.wait_for_function(IMAGES_PAINTED, timeout=WAIT)


# ------------------------------------------------------------------------------------------------ calipers
def _newest_run(workspace: Path) -> dict:
    from core.history import HistoryStore

    rows = HistoryStore(workspace / "history.sqlite3").list()
    assert rows, "no run recorded"
    return max(rows, key=lambda row: row["id"])


def _run_mask(run: dict, workspace: Path) -> np.ndarray:
    path = Path(str(run["mask_path"]))
    path = path if path.is_absolute() else workspace / path
    return overlay.as_bool_mask(Image.open(path))


def _overlay_img(tab):
    return tab.locator('[data-testid="stImage"]').filter(has_text=_t("overlay")).locator("img").first


def _served_overlay(tab) -> tuple[str, np.ndarray]:
    """The overlay exactly as the browser got it (its ``src`` and decoded RGB pixels)."""
    image = _overlay_img(tab)
    image.wait_for()
    src = image.get_attribute("src") or ""
    answer = tab.context.request.get(tab.evaluate("s => new URL(s, location.href).href", src))
    assert answer.ok, answer.status
    return src, np.asarray(Image.open(io.BytesIO(answer.body())).convert("RGB"), dtype=np.int16)


# The served overlay is a JPEG (Streamlit's choice for an RGB picture): its halved colour resolution mixes a 3 px
# line with the orange mask under it (sky blue over the mask comes back near (137, 169, 158)), so a colour is told by
# its hue, not its exact value. Grey tissue has no hue; the orange mask is red above green above blue.
def _is_caliper(rgb: np.ndarray) -> np.ndarray:
    """Sky blue (CALIPER_COLOR): green and blue clearly above red."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (green - red > 25) & (blue - red > 15)


def _is_ellipse(rgb: np.ndarray) -> np.ndarray:
    """Reddish purple (ELLIPSE_COLOR): red and blue clearly above green."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red - green > 35) & (blue - green > 10)


def _along(segment, steps: int = 40) -> list[tuple[float, float]]:
    (x0, y0), (x1, y1) = segment
    return [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in np.linspace(0.1, 0.9, steps)]  # clear of the ends


def _share_on(pixels: np.ndarray, points, scale: float, colour) -> float:
    """The share of ``points`` (analysed-image pixels) with a pixel of ``colour`` within 1 px on the served image
    (JPEG blurs a 3 px line by a pixel)."""
    test = colour(pixels)
    height, width = test.shape
    hits = 0
    for x, y in points:
        col, row = round(x * scale), round(y * scale)
        hits += bool(test[max(row - 1, 0):min(row + 2, height), max(col - 1, 0):min(col + 2, width)].any())
    return hits / len(points)


def _switch_off(tab, name: str, before: str) -> tuple[str, np.ndarray]:
    tab.get_by_role("switch", name=name).uncheck(force=True)
    wait_idle(tab)
    tab.wait_for_function("([caption, src]) => { const i = [...document.querySelectorAll('[data-testid=\"stImage\"]')]"
                          ".find(e => e.innerText.includes(caption))?.querySelector('img');"
                          " return i && i.src && !i.src.endsWith(src) && i.complete && i.naturalWidth > 0; }",
                          arg=[_t("overlay"), before], timeout=WAIT)
    return _served_overlay(tab)


def test_calipers_are_pixels_on_the_served_overlay_and_go_when_switched_off(browser, app_url, workspace):
    context, tab = open_analyze(browser, app_url, size=(1400, 1100), query=FETAL, lang=EN)
    try:
        _sample_and_run(tab)
        run = _newest_run(workspace)
        assert run["dataset_name"] == "Fetal_HC"
        mask = _run_mask(run, workspace)
        assert mask.any(), "the demo model found no head on this sample: nothing to draw"
        measurements = run["measurements"] if isinstance(run["measurements"], dict) else json.loads(run["measurements"])
        ellipse, lines = measurements["ellipse"], overlay.diameter_lines(mask)
        src, pixels = _served_overlay(tab)
        sky_blue = int(_is_caliper(pixels).sum())
        scale = pixels.shape[1] / mask.shape[1]
        assert pixels.shape[0] == pytest.approx(mask.shape[0] * scale, abs=1.5)  # the same picture, resized
        hc = overlay.ellipse_outline(ellipse, steps=60)
        drawn = {"longest": _share_on(pixels, _along(lines["longest"]), scale, _is_caliper),
                 "perpendicular": _share_on(pixels, _along(lines["perpendicular"]), scale, _is_caliper),
                 "hc": _share_on(pixels, hc, scale, _is_ellipse),
                 "bpd": _share_on(pixels, _along(overlay.bpd_line(ellipse)), scale, _is_ellipse)}
        assert min(drawn.values()) >= 0.8, drawn  # every measurement is a line of its colour where it was measured
        legend = tab.locator('[data-testid="uusic-legend"]').first.inner_text()
        assert _t("cal_diameters") in legend and _t("cal_hc") in legend
        src, pixels = _switch_off(tab, _t("cal_diameters"), src)
        gone = {"longest": _share_on(pixels, _along(lines["longest"]), scale, _is_caliper),
                "perpendicular": _share_on(pixels, _along(lines["perpendicular"]), scale, _is_caliper),
                "hc": _share_on(pixels, hc, scale, _is_ellipse)}
        print(f"CALIPER_SHARES on={drawn} off={gone}")
        assert gone["longest"] <= 0.05 and gone["perpendicular"] <= 0.05 and gone["hc"] >= 0.8, gone
        assert _is_caliper(pixels).sum() < 0.2 * sky_blue, "sky blue left on the overlay"
        _, pixels = _switch_off(tab, _t("cal_hc"), src)
        assert _share_on(pixels, hc, scale, _is_ellipse) <= 0.05
        assert _share_on(pixels, _along(overlay.bpd_line(ellipse)), scale, _is_ellipse) <= 0.05
        assert _t("cal_hc") not in tab.locator('[data-testid="uusic-legend"]').first.inner_text()
    finally:
        context.close()


# ------------------------------------------------------------------------------------------------ batch
def _sample_file(dataset: str, name: str) -> Path:
    path = _data_root() / "segmentation" / dataset / "imgs" / name
    if not path.is_file():
        pytest.skip(f"no {dataset} sample {name} in the data root")
    return path


def _row_select(tab, file_name: str):
    row = tab.locator('[data-testid="stHorizontalBlock"]').filter(has_text=file_name).last
    return row.locator('[data-testid="stSelectbox"]')


def _grid_rows(tab) -> list[dict[str, str]]:
    """The results grid's rows as {header: text} (glide-data-grid keeps an accessible table of its cells in the DOM)."""
    grid = tab.locator('[data-testid="stDataFrame"]').first
    grid.wait_for()
    grid.scroll_into_view_if_needed()
    grid.locator("table tbody tr").first.wait_for(state="attached")  # hidden: it is for screen readers
    headers = [h.strip() for h in grid.locator("table thead th").all_inner_texts()]
    rows = [[c.strip() for c in row.locator("td").all_inner_texts()] for row in grid.locator("table tbody tr").all()]
    return [dict(zip(headers, row, strict=False)) for row in rows]


def test_batch_runs_each_image_with_its_own_dataset(browser, app_url, workspace, tmp_path):
    # names only one dataset of the data root has (seg_00006 is a DDTI and a CAMUS name: it tells nothing)
    thyroid, breast = _sample_file("DDTI", "seg_00011.jpg"), _sample_file("BUSI", "seg_00004.jpg")
    head = tmp_path / "head scan.png"  # a name the data root does not know: its dataset is chosen on its row
    Image.open(_sample_file("Fetal_HC", "seg_00021.jpg")).save(head)
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(WAIT)
    tab = context.new_page()
    try:
        tab.goto(f"{app_url}/batch?lang=en")
        tab.get_by_text(_t("demo_banner")).wait_for(state="visible", timeout=FIRST_RUN)
        wait_idle(tab)
        tab.get_by_text(i18n.task_name("segmentation", EN), exact=True).first.click()
        wait_idle(tab)
        page_box = tab.locator('[data-testid="stSelectbox"]').filter(has_text=_t("dataset")).first
        pick_option(tab, page_box, "BUS-BRA")  # the page's choice: none of the three images is BUS-BRA
        uploader = tab.locator('[data-testid="stFileUploader"]').filter(has_text=_t("batch_uploads"))
        uploader.locator('input[type="file"]').set_input_files([str(thyroid), str(breast), str(head)])
        _row_select(tab, head.name).wait_for()
        wait_idle(tab)
        assert "DDTI" in _selected(_row_select(tab, thyroid.name))  # known to the data root: its own dataset
        assert "BUSI" in _selected(_row_select(tab, breast.name))
        assert "BUS-BRA" in _selected(_row_select(tab, head.name))  # unknown: the page's choice, then changed
        pick_option(tab, _row_select(tab, head.name), "Fetal_HC")
        assert "Fetal_HC" in _selected(_row_select(tab, head.name))
        before = {row["id"] for row in _batch_runs(workspace)}
        tab.get_by_role("button", name=_t("batch_run")).click()
        tab.get_by_text(re.compile(re.escape(_t("batch_done", n=3, sec=0.0)).replace(r"0\.0", r"[\d.]+"))).wait_for(
            timeout=3 * FIRST_RUN)
        wait_idle(tab)
        runs = [r["dataset_name"] for r in _batch_runs(workspace) if r["id"] not in before]
        assert sorted(runs) == ["BUSI", "DDTI", "Fetal_HC"], runs  # recorded each with its own
        rows = _grid_rows(tab)
        shown = {row.get(_t("bcol_image")): row.get(_t("bcol_dataset")) for row in rows}
        assert shown == {thyroid.name: "DDTI", breast.name: "BUSI", head.name: "Fetal_HC"}, rows
    finally:
        context.close()


def _batch_runs(workspace: Path) -> list[dict]:
    from core.history import HistoryStore

    path = workspace / "history.sqlite3"
    return [r for r in HistoryStore(path).list() if r["source"] == "batch"] if path.is_file() else []


# ------------------------------------------------------------------------------------------------ first viewport
# In the viewport the clinician sees after Run (the page scrolls to the result's heading) and in page coordinates:
# the overlay image, the measurement table (the key numbers) and the page's height.
RESULT_VIEW = """caption => {
  const scrollers = [document.scrollingElement, document.querySelector('[data-testid="stMain"]'),
    document.querySelector('[data-testid="stAppViewContainer"]')].filter(Boolean);
  const scrolled = Math.max(...scrollers.map(s => s.scrollTop));
  const heading = document.getElementById('uusic-result');
  const after = e => heading && (heading.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING);
  const picture = [...document.querySelectorAll('[data-testid="stImage"]')]
    .find(e => e.innerText.includes(caption) && after(e))?.querySelector('img');
  const table = [...document.querySelectorAll('[data-testid="stTable"]')].find(e => after(e) && e.offsetParent);
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return {top: Math.round(r.top), bottom: Math.round(r.bottom), page_top: Math.round(r.top + scrolled),
            page_bottom: Math.round(r.bottom + scrolled), width: Math.round(r.width)}; };
  const rows = table ? [...table.querySelectorAll('tbody tr')].map(box) : [];
  return {viewport: window.innerHeight, scrolled, height: Math.max(...scrollers.map(s => s.scrollHeight)),
          heading: box(heading), overlay: box(picture), table: box(table), rows};
}"""
KEY_ROWS = 3  # area, max diameter and its perpendicular: the first rows of the table
@pytest.mark.parametrize("size", [(1366, 768), (800, 768)], ids=["1366x768", "800x768"])
def test_fetal_head_result_keeps_overlay_and_key_numbers_in_the_first_viewport(browser, app_url, size):
    context, tab = open_analyze(browser, app_url, size=size, query=FETAL, lang=EN)
    try:
        _sample_and_run(tab)
        tab.wait_for_function("() => { const r = document.getElementById('uusic-result').getBoundingClientRect();"
                              " return r.top >= -5 && r.top < window.innerHeight; }", timeout=WAIT)  # scrolled to it
        view = tab.evaluate(RESULT_VIEW, _t("overlay"))
        print(f"RESULT_VIEW en Fetal_HC {size[0]}x{size[1]}: {json.dumps(view)}")  # the report's numbers
        assert view["height"] <= MAX_RESULT_PAGE, view
        picture, rows = view["overlay"], view["rows"]
        assert picture and picture["width"] > 150, view  # an overlay a clinician can read, not a thumbnail
        key_rows = rows[:KEY_ROWS]
        assert len(key_rows) == KEY_ROWS, view
        # whole, in the view the page scrolled to after Run, and already on the page's first screen
        for box in (picture, *key_rows):
            assert box["top"] >= 0 and box["bottom"] <= view["viewport"], (box, view)
            assert box["page_bottom"] <= view["viewport"], (box, view)
    finally:
        context.close()
