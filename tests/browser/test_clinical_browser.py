"""Issue 11 in a real browser (Playwright + /usr/bin/chromium): a cine upload stepped and analysed frame by frame,
calibration by an entered spacing (mm values with their source, an implausible value refused), the drawn-line
calibration, and the case report download (a PDF carrying the run's input sha256). Screenshots go to
``docs/screenshots/clinical_*.png`` (English: the test machine's chromium has no CJK font)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from core import i18n

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from app_server import dashboard, wait_idle
from test_browser import SCREENSHOTS, WAIT, _data_root, browser, choose, random_sample, run_analysis, workspace
from test_dashboard_clinical import cine_dicom

__all__ = ["browser", "workspace"]  # the fixtures this module uses from test_browser
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(300)]
ZH = "zh"
FIRST_RUN = 180_000  # ms: the first page run loads (and may convert) the model on a busy machine


@pytest.fixture(scope="module")
def app_url(workspace):
    """The dashboard on the shipped demo weights (this module needs CAMUS and Fetal_HC, which they serve)."""
    from core.settings import PROJECT_ROOT

    if not (PROJECT_ROOT / "weights" / "models.json").is_file():
        pytest.skip("no demo weights shipped")
    env = {"UUSIC_WORKSPACE": str(workspace), "UUSIC_DATA_ROOT": str(_data_root()), "UUSIC_DEVICE": "cpu",
           "UUSIC_LANGUAGE": "zh"}
    with dashboard(env, log_path=workspace.parent / "streamlit_clinical.log") as url:
        yield url


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    context.set_default_timeout(WAIT)
    tab = context.new_page()
    tab.goto(app_url)
    tab.get_by_text(_t("demo_banner")).wait_for(state="visible", timeout=FIRST_RUN)
    wait_idle(tab, timeout=FIRST_RUN)
    yield tab
    if os.environ.get("UUSIC_BROWSER_DEBUG"):
        tab.screenshot(path=f"/tmp/clinical_browser_{time.time():.0f}.png", full_page=True)
    context.close()


def _t(key: str, lang: str = ZH, **values) -> str:
    return i18n.t(key, lang, **values)


def _open_calibration(page, lang: str = ZH) -> None:
    page.get_by_text(_t("cl_calibration", lang), exact=True).click()
    wait_idle(page)


def _spacing_mode(page, mode: str, lang: str = ZH) -> None:
    page.get_by_text(_t(f"cl_mode_{mode}", lang), exact=True).click()
    wait_idle(page)


def _enter_spacing(page, value: str, lang: str = ZH) -> None:
    box = page.get_by_label(_t("cl_enter_spacing", lang))
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


def _newest_run(workspace: Path) -> dict:
    from core.history import HistoryStore

    rows = HistoryStore(workspace / "history.sqlite3").list()
    assert rows, "no run recorded"
    return max(rows, key=lambda row: row["id"])


def _cine_supported() -> bool:
    from core import imaging
    from core.service import AnalysisService

    return hasattr(imaging, "probe_frames") and all(callable(getattr(AnalysisService, name, None))
                                                     for name in ("load_frame", "analyze_frames"))


# ------------------------------------------------------------------------------------------------ calibration
def test_entered_spacing_shows_mm_with_its_source_and_refuses_an_implausible_one(page):
    choose(page, "segmentation", "thyroid", "DDTI")
    random_sample(page)
    _open_calibration(page)
    _spacing_mode(page, "user")
    _enter_spacing(page, "0.25")
    shown = _t("cl_spacing_value", spacing="0.25", source=_t("cl_source_user"))
    page.get_by_text(_t("cl_spacing_used", text=shown)).wait_for()
    run_analysis(page)
    table = page.locator('[data-testid="stTable"]').first.inner_text()
    assert "mm²" in table and "mm" in table
    assert page.get_by_text(_t("cl_mm_note", text=shown)).first.is_visible()  # beside the mm values
    _enter_spacing(page, "5")
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="0.01")
    error.first.wait_for()
    assert "2 mm" in error.first.inner_text()


def test_line_of_known_length_calibrates(page):
    choose(page, "segmentation", "thyroid", "DDTI")
    random_sample(page)
    _open_calibration(page)
    _spacing_mode(page, "line")
    frame = page.frame_locator('iframe[title*="streamlit_image_coordinates"]')
    picture = frame.locator("img")
    picture.wait_for()
    box = picture.bounding_box()
    assert box and box["width"] > 100
    for x in (0.2, 0.8):  # a horizontal line across 60 % of the shown width
        picture.click(position={"x": box["width"] * x, "y": box["height"] / 2})
        wait_idle(page)
    length = page.get_by_label(_t("cl_line_length"))
    length.fill("30")
    length.press("Enter")
    wait_idle(page)
    caption = page.get_by_text(re.compile(r"线长 [\d.]+ 像素 = 30 mm → [\d.]+ mm/像素"))
    caption.wait_for()
    pixels, spacing = re.findall(r"[\d.]+", caption.inner_text().replace("30 mm", ""))[:2]
    assert float(spacing) == pytest.approx(30 / float(pixels), rel=1e-3)
    page.get_by_text(_t("cl_source_line")).first.wait_for()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    caption.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "clinical_line_zh.png"))


# ------------------------------------------------------------------------------------------------ report
def test_report_download_is_a_pdf_with_the_runs_sha256(page, workspace):
    from pypdf import PdfReader

    choose(page, "segmentation", "thyroid", "DDTI")
    random_sample(page)
    run_analysis(page)
    run = _newest_run(workspace)
    with page.expect_download() as download:
        page.get_by_role("button", name=_t("cl_report_pdf")).click()
    path = Path(download.value.path())
    assert path.read_bytes().startswith(b"%PDF")
    assert download.value.suggested_filename.endswith(".pdf")
    text = "".join(p.extract_text() for p in PdfReader(path).pages)
    assert run["input_sha256"] and run["input_sha256"] in re.sub(r"\s+", "", text)


# ------------------------------------------------------------------------------------------------ cine
def test_cine_upload_step_and_analyse_all_frames(page, tmp_path):
    if not _cine_supported():
        pytest.skip("this core has no cine support yet")
    choose(page, "segmentation", "heart", "CAMUS")
    page.get_by_text(_t("source_upload"), exact=True).click()
    wait_idle(page)
    upload = tmp_path / "loop.dcm"
    upload.write_bytes(cine_dicom(frames=6, size=96))
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_text(_t("cl_cine_info", n=6, fps="25.0")).wait_for(timeout=3 * WAIT)
    wait_idle(page)
    slider = page.locator('[data-testid="stSlider"]').filter(has_text=_t("cl_frame")).get_by_role("slider")
    picture = page.locator('[data-testid="stMain"] [data-testid="stImage"]').first.bounding_box()  # the frame
    under = slider.bounding_box()
    assert picture and under and 0 <= under["y"] - (picture["y"] + picture["height"]) < 120, (picture, under)
    slider.focus()
    for _ in range(2):
        slider.press("ArrowRight")
        wait_idle(page)
    page.get_by_text(_t("cl_this_frame", k=3, n=6)).wait_for()  # frames counted from 1: two steps from frame 1
    page.get_by_role("switch", name=_t("cl_play")).check(force=True)  # play: the fragment steps the frame on its own
    player = page.locator('[data-testid="stImage"]').filter(has_text=re.compile(r"第 [1-6] 帧（共 6 帧）"))
    player.first.wait_for()
    first = player.first.inner_text()
    page.wait_for_function("t => !document.body.innerText.includes(t)", arg=first, timeout=WAIT)
    page.get_by_role("switch", name=_t("cl_play")).uncheck(force=True)
    wait_idle(page)
    assert player.count() == 0
    page.get_by_role("button", name=_t("cl_analyze_all", n=6)).click()
    page.get_by_text(_t("cl_frames_result", n=6)).wait_for(timeout=3 * WAIT)
    wait_idle(page)
    curve = page.locator('[data-testid="stPlotlyChart"]').filter(has_text=_t("cl_area", unit="mm²"))
    curve.first.locator(".scatterlayer .trace").first.wait_for()
    fac = _t("cl_fac_of", target="左心室 + 心肌 + 左心房")  # CAMUS is a heart dataset: ED/ES and the FAC, named
    assert page.get_by_text(fac).first.is_visible()


# ------------------------------------------------------------------------------------------------ screenshots
def _english(page) -> None:
    page.set_viewport_size({"width": 1400, "height": 2600})
    page.get_by_role("radiogroup", name="语言 / Language").get_by_text("English", exact=True).click()
    page.get_by_text(i18n.t("demo_banner", "en")).wait_for()
    wait_idle(page)


def test_screenshots_of_the_clinical_widgets(page, tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _english(page)
    choose(page, "segmentation", "fetal_head", "Fetal_HC", lang="en")
    page.get_by_role("button", name=_t("random_button", "en")).click()
    page.get_by_role("button", name=_t("run", "en")).wait_for()
    wait_idle(page)
    _open_calibration(page, "en")
    page.get_by_role("switch", name=_t("cl_tta", "en")).check(force=True)
    wait_idle(page)
    page.get_by_role("button", name=_t("run", "en")).click()
    page.locator("#uusic-result").wait_for()
    wait_idle(page)
    page.set_viewport_size({"width": 1400, "height": 4600})  # the whole result, down to the report button
    page.get_by_role("button", name=_t("cl_report_pdf", "en")).wait_for()
    page.screenshot(path=str(SCREENSHOTS / "clinical_uncertainty_reference.png"))
    page.set_viewport_size({"width": 1400, "height": 2600})
    _spacing_mode(page, "user", "en")
    _enter_spacing(page, "5", "en")
    page.screenshot(path=str(SCREENSHOTS / "clinical_calibration.png"), full_page=True)
    if not _cine_supported():
        return
    choose(page, "segmentation", "heart", "CAMUS", lang="en")
    page.get_by_text(_t("source_upload", "en"), exact=True).click()
    wait_idle(page)
    upload = tmp_path / "loop.dcm"
    upload.write_bytes(cine_dicom(frames=8, size=128))
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_role("button", name=_t("cl_analyze_all", "en", n=8)).click()
    page.get_by_text(_t("cl_frames_result", "en", n=8)).wait_for()
    wait_idle(page)
    page.screenshot(path=str(SCREENSHOTS / "clinical_cine.png"), full_page=True)
