"""Real-browser tests: Playwright drives Debian's /usr/bin/chromium against ``streamlit run Home.py``.

The app runs on a free loopback port with its own workspace. It serves the shipped demo weights when
``weights/models.json`` exists, otherwise a tiny TorchScript network (same contract) built here. Every wait is
bounded; the module takes well under three minutes. Screenshots of the main screens go to ``docs/screenshots/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from core import i18n
from core.settings import PROJECT_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from app_server import CHROMIUM, dashboard, launch_browser, wait_idle, wait_settled

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.timeout(240)]
playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "uusic-data"
SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
WAIT = 60_000  # ms, the bound of every single wait (a loaded 2-core CI machine needs the room)
ZH = "zh"


def _t(key: str, **values) -> str:
    return i18n.t(key, ZH, **values)


def _has_images(root: Path, task: str, dataset: str) -> bool:
    return any((root / task / dataset / "imgs").glob("*"))


def _data_root() -> Path:
    bundled = PROJECT_ROOT / "samples"
    for root in (bundled, SHARED_DATA):
        if _has_images(root, "segmentation", "DDTI") and _has_images(root, "classification", "BUSI"):
            return root
    pytest.skip("no data root with DDTI segmentation and BUSI classification images")


def _tiny_weights(folder: Path) -> Path:
    """A manifest serving a tiny TorchScript network (used only when no demo weights are shipped)."""
    import hashlib

    import torch

    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from conftest import TinyContractNet

    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(TinyContractNet().eval()).save(str(folder / "tiny.ts"))
    digest = hashlib.sha256((folder / "tiny.ts").read_bytes()).hexdigest()
    manifest = [{"name": "tiny", "arch": "torchscript", "file": "tiny.ts", "sha256": digest, "input_size": 32,
                 "preprocessing": "center_crop",
                 "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]}]
    (folder / "models.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_workspace")


@pytest.fixture(scope="module")
def app_url(workspace, tmp_path_factory):
    env = {"UUSIC_WORKSPACE": str(workspace), "UUSIC_DATA_ROOT": str(_data_root()), "UUSIC_DEVICE": "cpu",
           "UUSIC_LANGUAGE": "zh", "UUSIC_BACKEND": "torch"}  # eager torch: no one-off backend conversion here
    if not (PROJECT_ROOT / "weights" / "models.json").is_file():
        env["UUSIC_WEIGHTS_DIR"] = str(_tiny_weights(tmp_path_factory.mktemp("tiny_weights")))
    log = workspace.parent / "streamlit.log"
    with dashboard(env, log_path=log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = launch_browser(playwright)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    context.set_default_timeout(WAIT)
    tab = context.new_page()
    tab.goto(app_url)  # the default page (Analyze) lives at the root URL
    # a fresh server reruns the first page view once (navigation mode): wait for the page itself, then idle
    tab.get_by_text(_t("demo_banner")).wait_for(state="visible", timeout=3 * WAIT)
    wait_idle(tab)
    yield tab
    if os.environ.get("UUSIC_BROWSER_DEBUG"):
        tab.screenshot(path=f"/tmp/browser_{time.time():.0f}.png")
    context.close()


# ------------------------------------------------------------------------------------------------ helpers
def selectbox(page, label: str):
    """The one select box labelled exactly ``label`` (waits while a rerun still shows a stale copy of it)."""
    exact = re.compile("^" + re.escape(label) + "$")
    box = page.locator('[data-testid="stSelectbox"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]').filter(has_text=exact))
    playwright_api.expect(box).to_have_count(1, timeout=WAIT)
    return box


def choose(page, task: str, group: str, dataset: str | None = None, lang: str = ZH) -> None:
    wait_idle(page)  # a rerun still under way (e.g. after typing) would close a list opened now
    page.get_by_text(i18n.task_name(task, lang), exact=True).first.click()
    wait_idle(page)
    organ = selectbox(page, i18n.t("organ", lang))
    if i18n.group_name(group, lang) not in organ.inner_text():
        pick_option(page, organ, i18n.group_name(group, lang))
    if dataset:
        box = selectbox(page, i18n.t("dataset", lang))
        if dataset not in box.inner_text():
            pick_option(page, box, dataset)


def pick_option(page, box, name: str | re.Pattern) -> None:
    """Open ``box`` and choose the option whose text starts with ``name`` (options without a model carry
    "· no model"; a pattern is used as it is); once more if a rerun closed the list meanwhile."""
    pattern = name if isinstance(name, re.Pattern) else re.compile("^" + re.escape(name) + "( ·|$)")
    option = page.get_by_role("option", name=pattern).first
    for attempt in range(2):
        box.click()
        try:
            option.click(timeout=WAIT / 3)
            break
        except playwright_api.Error:  # the list closed under the click
            if attempt:
                raise
            page.keyboard.press("Escape")
            wait_idle(page)
    wait_idle(page)


def random_sample(page) -> None:
    page.get_by_role("button", name=_t("random_button")).click()
    page.get_by_text(_t("run"), exact=True).wait_for()
    wait_idle(page)


def run_analysis(page) -> float:
    started = time.perf_counter()
    page.get_by_role("button", name=_t("run")).click()
    page.locator("#uusic-result").wait_for()
    elapsed = time.perf_counter() - started
    wait_idle(page)
    return elapsed


def newest_input(workspace: Path) -> Path:
    files = sorted((workspace / "api_in").glob("*"), key=lambda p: p.stat().st_mtime_ns)
    assert files, "nothing saved in api_in/"
    return files[-1]


def shown_size(page) -> tuple[int, int]:
    """The edited size the page reports (``编辑后尺寸：W×H``)."""
    text = page.get_by_text(_t("edited_size", w=0, h=0).split("：")[0]).text_content() or ""  # also when folded
    width, height = text.split("：")[1].split("×")
    return int(width), int(height)


def slider_step(page, label: str, presses: int) -> None:
    slider = page.locator('[data-testid="stSlider"]').filter(has_text=label).get_by_role("slider")
    slider.focus()
    for _ in range(presses):
        slider.press("ArrowRight")
    wait_idle(page)


# ------------------------------------------------------------------------------------------------ tests
def test_segmentation_sample_overlay_and_measurements(page, workspace):
    page.get_by_text(_t("demo_banner")).wait_for()  # visible (it may paint after the run)
    choose(page, "segmentation", "thyroid", "DDTI")
    random_sample(page)
    run_analysis(page)
    page.get_by_text(_t("measurements"), exact=True).wait_for()  # visible (it may paint after the run)
    page.get_by_text(_t("overlay")).locator("visible=true").first.wait_for()  # the caption (images paint late)
    table = page.locator('[data-testid="stTable"]').first.inner_text()
    assert i18n.measure_label("area", ZH) in table and "px" in table
    assert page.locator('[data-testid="stImage"]').count() >= 2
    page.get_by_role("button", name=_t("download_mask")).wait_for()  # visible (it may paint after the run)
    page.get_by_text(_t("mode_contour"), exact=True).click()
    wait_idle(page)
    saved = newest_input(workspace)
    assert saved.suffix == ".png" and Image.open(saved).size == shown_size(page)


def test_classification_bar_chart(page):
    choose(page, "classification", "breast", "BUSI")
    random_sample(page)
    run_analysis(page)
    chart = page.locator('[data-testid="stPlotlyChart"]').first  # the result comes first, above the input view
    chart.locator(".bars path").first.wait_for()
    assert chart.locator(".bars path").count() == 2
    names = i18n.class_names("classification", "BUSI", ZH)
    assert any(name in chart.inner_text() for name in names)
    verdict = page.get_by_text(_t("gt_correct")).or_(page.get_by_text(_t("gt_wrong")))
    verdict.first.wait_for()  # visible (it may paint after the run)


def test_upload_a_file(page, workspace, tmp_path):
    choose(page, "classification", "breast", "BUSI")
    page.get_by_text(_t("source_upload"), exact=True).click()
    wait_idle(page)
    upload = tmp_path / "upload scan.png"
    Image.new("RGB", (123, 77), (90, 90, 90)).save(upload)
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_text("upload scan.png").first.wait_for()
    wait_idle(page)
    run_analysis(page)
    assert Image.open(newest_input(workspace)).size == (123, 77)


def test_rotate_and_crop_change_what_is_analysed(page, workspace):
    choose(page, "segmentation", "thyroid", "DDTI")
    random_sample(page)
    width, height = shown_size(page)
    slider_step(page, _t("rotate90"), 1)  # 90°
    assert shown_size(page) == (height, width)
    run_analysis(page)
    assert Image.open(newest_input(workspace)).size == (height, width)
    page.get_by_text(_t("edit"), exact=True).click()  # folded while a result is shown (issue 23 §10)
    page.get_by_text(_t("crop"), exact=True).click()
    page.locator("iframe").first.wait_for()
    # the cropper reports its first box once loaded: the edited size shrinks from the whole turned image
    page.wait_for_function("([prefix, whole]) => [...document.querySelectorAll('p, span, div')].some(e => "
                           "e.children.length === 0 && e.innerText.startsWith(prefix) && !e.innerText.endsWith(whole))",
                           arg=[_t("edited_size", w=0, h=0).split("：")[0], f"：{height}×{width}"])
    wait_idle(page)
    run_analysis(page)
    cropped = shown_size(page)
    assert cropped[0] < height and cropped[1] < width
    assert Image.open(newest_input(workspace)).size == cropped


def test_two_sessions_at_once_share_one_engine(browser, app_url, workspace):
    """Two browser sessions click Run together; both get their own result from the one cached engine."""
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1100}) for _ in range(2)]
    try:
        pages = []
        for context in contexts:
            context.set_default_timeout(WAIT)
            tab = context.new_page()
            tab.goto(app_url)
            wait_idle(tab)
            choose(tab, "segmentation", "thyroid", "DDTI")
            random_sample(tab)
            pages.append(tab)
        before = len(list((workspace / "api_in").glob("*")))
        for tab in pages:
            tab.get_by_role("button", name=_t("run")).click()
        for tab in pages:
            tab.locator("#uusic-result").wait_for()
            tab.get_by_text(_t("measurements"), exact=True).wait_for()  # visible (it may paint after the run)
        assert len(list((workspace / "api_in").glob("*"))) == before + 2  # unique names, nothing overwritten
    finally:
        for context in contexts:
            context.close()


def test_sidebar_icons_are_material_symbols_not_emoji(page):
    """Issue 23 item 9: emoji icons were empty boxes where no emoji font is installed."""
    nav = page.locator('[data-testid="stSidebarNav"]')
    nav.wait_for()
    playwright_api.expect(nav.locator('[data-testid="stIconMaterial"]')).to_have_count(4, timeout=WAIT)
    assert not any(emoji in nav.inner_text() for emoji in ("🔬", "🗂", "📦", "⚙"))


def test_history_csv_export(page, app_url, workspace):
    from core.history import HistoryStore

    page.goto(f"{app_url}/history")
    wait_idle(page)
    page.get_by_text(_t("demo_banner")).wait_for()  # visible (it may paint after the run)
    stored = HistoryStore(workspace / "history.sqlite3").list()
    assert stored, "earlier tests recorded no runs"
    with page.expect_download() as download:
        page.get_by_role("button", name=_t("download_csv")).click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert len(rows) == len(stored)
    tasks = {i18n.task_name(task, ZH) for task in ("classification", "segmentation")}  # the readable CSV (zh)
    assert {r.get("任务") for r in rows} <= tasks  # (both kinds when the whole file runs: the earlier tests made them)


def test_screenshots_of_main_screens(page, app_url):
    """English UI (the test machine's chromium has no CJK font) for the docs."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 2400})
    page.get_by_role("radiogroup", name="语言 / Language").get_by_text("English", exact=True).click()
    page.get_by_text(i18n.t("demo_banner", "en")).wait_for()
    wait_idle(page)
    for task, group, dataset, shot in (("segmentation", "thyroid", "DDTI", "analyze_segmentation"),
                                       ("classification", "breast", "BUSI", "analyze_classification")):
        choose(page, task, group, dataset, lang="en")
        page.get_by_role("button", name=i18n.t("random_button", "en")).click()
        page.get_by_role("button", name=i18n.t("run", "en")).click()
        page.locator("#uusic-result").wait_for()
        wait_idle(page)
        page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"))
    for name, key in (("history", "nav_history"), ("batch", "nav_batch"), ("models", "nav_models")):
        # in-app navigation keeps the session (and its language); a reload would start a new one
        page.locator('[data-testid="stSidebarNav"] a').filter(has_text=i18n.t(key, "en")).click()
        page.get_by_text(i18n.t("demo_banner", "en")).wait_for()
        if name == "models":  # its manifest grid (1 row) may stay unpainted in headless chromium: the run is enough
            wait_idle(page)
        else:
            wait_settled(page)  # data grids paint after the run
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


# ------------------------------------------------------------------------------------------------ issue 12: Analyze
SIZES = {"1366": (1366, 768), "800": (800, 900)}
LABELS_CUT = """() => {
  const selectors = ['[data-testid="stWidgetLabel"] p', '[data-testid="stMetricLabel"] p',
    '[data-testid="stMetricValue"]', '[data-testid="stMetricValue"] div', '[data-testid="stCheckbox"] p',
    '[data-testid="stRadio"] p', '[data-testid="stButton"] p', '[data-testid="stDownloadButton"] p',
    '[data-testid="stExpander"] summary p', '[data-testid="stSidebarNav"] span'];
  const cut = [];
  for (const el of document.querySelectorAll(selectors.join(','))) {
    if (!el.offsetParent || el.clientWidth === 0) continue;
    if (el.scrollWidth > el.clientWidth + 1)
      cut.push(`${el.innerText.slice(0, 40)} (${el.scrollWidth}>${el.clientWidth})`);
  }
  return cut;
}"""

IMAGES_PAINTED = """() => { const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
  return images.length >= 4 && images.every(i => i.complete && i.naturalWidth > 0)
    && document.querySelectorAll('[data-testid="stDownloadButton"]').length >= 2; }"""


# Issue 23 §10: the page's height (its scrolling element's) and, in page coordinates, the top of the first image
# and the first table after the result's heading (the overlay and the key numbers).
PAGE_GEOMETRY = """() => {
  const scrollers = [document.scrollingElement, document.querySelector('[data-testid="stMain"]'),
    document.querySelector('[data-testid="stAppViewContainer"]')].filter(Boolean);
  const scrolled = Math.max(...scrollers.map(s => s.scrollTop));
  const heading = document.getElementById('uusic-result');
  const after = (selector) => [...document.querySelectorAll(selector)].find(
    e => heading && (heading.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING) && e.offsetParent);
  const top = (e) => e ? Math.round(e.getBoundingClientRect().top + scrolled) : null;
  return {height: Math.max(...scrollers.map(s => s.scrollHeight)),
          image_top: top(after('[data-testid="stImage"] img')), table_top: top(after('[data-testid="stTable"]'))};
}"""
MAX_RESULT_PAGE = 2000  # px: a segmentation result page at 1366×768 and 800 px (issue 23 §10)


def _selected(box) -> str:
    """The shown choice of a select box (as text, or as the value of its search input)."""
    inputs = box.locator("input")
    shown = inputs.first.input_value() if inputs.count() else ""
    return f"{box.inner_text()} {shown} {inputs.first.get_attribute('aria-label') or '' if inputs.count() else ''}"


def open_analyze(browser, app_url, *, size=(1366, 768), query: str = "", lang: str = ZH):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, accept_downloads=True)
    context.set_default_timeout(WAIT)
    tab = context.new_page()
    tab.goto(f"{app_url}/{query}")
    tab.get_by_text(i18n.t("demo_banner", lang)).wait_for(state="visible", timeout=3 * WAIT)
    wait_idle(tab)
    return context, tab


def click_run(tab, lang: str) -> None:
    tab.get_by_role("button", name=i18n.t("run", lang)).click()
    tab.locator("#uusic-result").wait_for()
    wait_idle(tab)


def server_paths(workspace: Path) -> list[str]:
    return [str(workspace), str(workspace.resolve()), str(_data_root()), str(_data_root().resolve()),
            str(PROJECT_ROOT), "/tmp/", "/work/"]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_first_screen_gives_a_result_in_two_clicks(browser, app_url, lang):
    context, tab = open_analyze(browser, app_url, query=f"?lang={lang}", lang=lang)
    try:
        assert i18n.t("no_model_mark", lang) not in tab.locator('[data-testid="stSelectbox"]').first.inner_text()
        tab.get_by_role("button", name=i18n.t("random_button", lang)).click()  # click 1
        tab.get_by_role("button", name=i18n.t("run", lang)).wait_for()
        wait_idle(tab)
        click_run(tab, lang)  # click 2
        heading = tab.locator("#uusic-result")
        heading.wait_for()  # visible (it may paint after the run)
        model_part = "模型：" if lang == "zh" else "Model: "
        provenance = tab.locator('[data-testid="stCaptionContainer"]').filter(has_text=model_part).first.inner_text()
        assert ("uusic-demo" in provenance or "tiny" in provenance) and i18n.t("edits_none", lang) in provenance
        # the fresh result was brought into view (the page scrolled to its heading)
        tab.wait_for_function("() => { const r = document.getElementById('uusic-result').getBoundingClientRect();"
                              " return r.top >= -5 && r.top < window.innerHeight; }", timeout=WAIT)
        # the engineering panels are folded into one "technical details" section (issue 23 §10)
        tab.get_by_text(i18n.t("tech_details", lang)).click()
        metric = tab.locator('[data-testid="stMetric"]').filter(has_text=i18n.t("click_to_result", lang))
        metric.wait_for()
        assert metric.count() == 1
    finally:
        context.close()


def test_a_result_is_marked_stale_after_rotation_and_cleared_after_an_organ_change(browser, app_url):
    context, tab = open_analyze(browser, app_url)
    try:
        choose(tab, "segmentation", "thyroid", "DDTI")
        random_sample(tab)
        run_analysis(tab)
        stale = tab.get_by_text(_t("stale_result", changes=_t("changed_edits")))
        assert not stale.is_visible()
        tab.get_by_text(_t("edit"), exact=True).click()  # folded while a result is shown (issue 23 §10)
        slider_step(tab, _t("rotate90"), 1)
        stale.wait_for()
        assert tab.locator("#uusic-result").is_visible()  # still there, under the banner
        choose(tab, "segmentation", "kidney")  # no model for KidneyUS: the old result must go
        tab.get_by_text(_t("no_model_here", dataset="").split(" ")[0]).first.wait_for()
        assert tab.locator("#uusic-result").count() == 0
        assert tab.get_by_text(_t("measurements"), exact=True).count() == 0
    finally:
        context.close()


def test_no_server_path_on_analyze_in_any_state(browser, app_url, workspace, tmp_path):
    context, tab = open_analyze(browser, app_url)
    try:
        texts = [tab.locator("body").inner_text()]
        choose(tab, "segmentation", "kidney", "KidneyUS")  # no model: decided at selection, nothing to upload
        tab.get_by_text(_t("no_model_here", dataset="").split(" ")[0]).first.wait_for()
        texts.append(tab.locator("body").inner_text())
        choose(tab, "segmentation", "thyroid", "DDTI")
        tab.get_by_text(_t("source_upload"), exact=True).click()
        wait_idle(tab)
        broken = tmp_path / "broken scan.png"
        broken.write_bytes(b"this is not an image")
        tab.locator('input[type="file"]').set_input_files(str(broken))
        tab.locator('[data-testid="stAlertContentError"]').filter(has_text="broken scan.png").wait_for()
        texts.append(tab.locator("body").inner_text())
        for text in texts:
            assert "<upload>" not in text
            for path in server_paths(workspace):
                assert path not in text, (path, text[:2000])
    finally:
        context.close()


def test_reload_keeps_the_selection_and_language(browser, app_url):
    context, tab = open_analyze(browser, app_url)
    try:
        choose(tab, "segmentation", "thyroid", "DDTI")
        tab.get_by_role("radiogroup", name="语言 / Language").get_by_text("English", exact=True).click()
        tab.get_by_text(i18n.t("demo_banner", "en")).wait_for()
        wait_idle(tab)
        tab.wait_for_function("() => location.search.includes('dataset=DDTI') && location.search.includes('lang=en')")
        tab.reload()
        tab.get_by_text(i18n.t("demo_banner", "en")).wait_for(timeout=3 * WAIT)
        wait_idle(tab)
        assert "dataset=DDTI" in tab.url and "organ=thyroid" in tab.url and "lang=en" in tab.url
        boxes = tab.locator('[data-testid="stSelectbox"]')
        assert i18n.group_name("thyroid", "en") in _selected(boxes.filter(has_text=i18n.t("organ", "en")))
        assert "DDTI" in _selected(boxes.filter(has_text=i18n.t("dataset", "en")))
        assert tab.get_by_role("radio", name=i18n.task_name("segmentation", "en"), exact=True).is_checked()
    finally:
        context.close()


@pytest.mark.parametrize("size", ["1366", "800"])
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_layout_has_no_cut_labels_and_screenshots(browser, app_url, lang, size):
    """A full segmentation result with the edit controls, at 1366×768 and 800 px, in both languages."""
    query = f"?lang={lang}&task=segmentation&organ=thyroid&dataset=DDTI"
    context, tab = open_analyze(browser, app_url, size=SIZES[size], query=query, lang=lang)
    try:
        tab.get_by_role("button", name=i18n.t("random_button", lang)).click()
        tab.get_by_role("button", name=i18n.t("run", lang)).wait_for()
        wait_idle(tab)
        click_run(tab, lang)
        tab.locator('[data-testid="stMetric"]').first.wait_for()
        tab.locator('[data-testid="stTable"]').first.wait_for()
        tab.wait_for_function(IMAGES_PAINTED, timeout=WAIT)  # every element painted before measuring
        assert tab.evaluate(LABELS_CUT) == []
        geometry = tab.evaluate(PAGE_GEOMETRY)
        print(f"PAGE_GEOMETRY {lang} {size}: {json.dumps(geometry)}")  # the report's before / after numbers
        assert geometry["height"] <= MAX_RESULT_PAGE, geometry
        assert geometry["image_top"] is not None and geometry["image_top"] < 768, geometry  # in the first screen
        sidebar = tab.locator('[data-testid="stSidebar"]')
        if size == "800":  # narrow window: the sidebar is slim (or collapsed), the page keeps its width
            assert sidebar.bounding_box() is None or sidebar.bounding_box()["width"] <= 230
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SCREENSHOTS / f"analyze_{lang}_{size}.png"), full_page=True)
    finally:
        context.close()
