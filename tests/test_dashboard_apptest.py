"""Every dashboard page through ``streamlit.testing.v1.AppTest`` on the real engine (tiny TorchScript model).

The app reads its settings from ``UUSIC_*`` variables, so each test points it at its own workspace, the tiny
data root and a manifest serving ``classification/BUSI`` and ``segmentation/DDTI`` (see ``tiny_settings``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import catalog, i18n
from core.settings import PROJECT_ROOT

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

HOME = str(PROJECT_ROOT / "Home.py")


@pytest.fixture()
def app(dashboard_env):
    tiny_settings = dashboard_env
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.settings = tiny_settings  # for the assertions below
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _choose(at: AppTest, task: str, group: str, dataset: str) -> AppTest:
    at.radio(key="task").set_value(task).run()
    at.selectbox(key=f"organ_{task}").set_value(group).run()
    at.selectbox(key=f"dataset_{task}_{group}").set_value(dataset).run()
    return _ok(at)


def _saved_inputs(at: AppTest) -> list[Path]:
    return sorted((at.settings.workspace / "api_in").glob("*"))


def test_banner_title_and_language_switch(app):
    assert any(i18n.t("demo_banner", "zh") in w.value for w in app.warning)
    assert i18n.t("nav_analyze", "zh") in app.title[0].value
    app.session_state["lang"] = "en"  # the sidebar switch's key
    app.run()
    _ok(app)
    assert i18n.t("nav_analyze", "en") in app.title[0].value
    assert any(i18n.t("demo_banner", "en") in w.value for w in app.warning)
    assert app.radio(key="task@en").label == "Task"  # per-language widget key, same choice


@pytest.mark.parametrize("task", catalog.TASKS)
def test_organ_selector_shows_exactly_the_task_groups_and_default_dataset(app, task):
    app.radio(key="task").set_value(task).run()
    organ = app.selectbox(key=f"organ_{task}")
    assert organ.options == [i18n.group_name(g.key, "zh") for g in catalog.groups_for(task)]
    for group in catalog.groups_for(task):
        app.selectbox(key=f"organ_{task}").set_value(group.key).run()
        dataset = app.selectbox(key=f"dataset_{task}_{group.key}")
        assert dataset.value == catalog.default_dataset(task, group.key).name
        assert dataset.options == [d.name for d in catalog.datasets_for(task, group.key)]


def test_dataset_without_model_is_an_info_not_an_error(app):
    _choose(app, "segmentation", "kidney", "KidneyUS")
    assert any("KidneyUS" in i.value for i in app.info)


def test_dataset_without_images_says_so(app):
    _choose(app, "segmentation", "breast", "BUSI")  # the tiny data root has no BUSI segmentation images
    app.button(key="random_sample").click().run()
    _ok(app)
    assert any("BUSI" in i.value and str(app.settings.data_root) in i.value for i in app.info)


def test_random_sample_segmentation_run_records_history(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    _ok(app)
    assert app.button(key="run") is not None
    app.button(key="run").click().run()
    _ok(app)
    saved = _saved_inputs(app)
    assert len(saved) == 1 and saved[0].suffix == ".png"
    subheaders = [s.value for s in app.subheader]
    assert i18n.t("measurements", "zh") in subheaders and i18n.t("resources", "zh") in subheaders
    assert i18n.t("ground_truth", "zh") in subheaders
    dice = [m for m in app.metric if m.label == "Dice"]
    assert dice and 0.0 <= float(dice[0].value) <= 1.0
    assert [m.value for m in app.metric if m.label == i18n.t("gpu_used", "zh")] == ["CPU"]
    assert len(app.get("download_button")) == 2
    # opacity and contour controls re-render without a new run
    app.slider(key="opacity").set_value(0.8).run()
    app.radio(key="overlay_mode").set_value("contour").run()
    _ok(app)
    assert len(_saved_inputs(app)) == 1
    from core.history import HistoryStore

    rows = HistoryStore(app.settings.history_db).list()
    assert len(rows) == 1 and rows[0]["task"] == "segmentation"


def test_classification_run_shows_chart_and_reference(app):
    _choose(app, "classification", "breast", "BUSI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    request = json.loads(app.json[0].value)  # the request JSON expander
    assert request["dataset_name"] == "BUSI" and request["img_path_relative"].startswith("api_in/")
    assert request["img_dimensions"] == list(Image.open(_saved_inputs(app)[0]).size)
    assert app.get("plotly_chart"), "no probability chart"
    names = i18n.class_names("classification", "BUSI", "zh")
    assert any(any(n in s.value for n in names) for s in app.subheader)
    verdicts = [s.value for s in app.success] + [w.value for w in app.warning]
    assert any(v in (i18n.t("gt_correct", "zh"), i18n.t("gt_wrong", "zh")) for v in verdicts)


def test_rotation_and_crop_change_what_is_analysed(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    caption = next(c.value for c in app.caption if "×" in c.value and "：" in c.value)
    width, height = (int(v) for v in caption.split("（")[1].rstrip("）").split("×"))
    app.select_slider(key="rot90").set_value(90).run()
    app.button(key="run").click().run()
    _ok(app)
    assert Image.open(_saved_inputs(app)[-1]).size == (height, width)
    app.checkbox(key="crop_on").check().run()  # default cropper box: the central 60 %
    app.button(key="run").click().run()
    _ok(app)
    cropped = Image.open(max(_saved_inputs(app), key=lambda p: p.stat().st_mtime_ns)).size
    assert cropped[0] < height and cropped[1] < width


def test_upload_runs_like_a_sample(app):
    _choose(app, "classification", "breast", "BUSI")
    app.radio(key="source").set_value("upload").run()
    picture = Image.fromarray((np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG")
    app.file_uploader(key="upload").upload("scan one.jpg", buffer.getvalue(), "image/jpeg").run()
    _ok(app)
    app.button(key="run").click().run()
    _ok(app)
    saved = _saved_inputs(app)
    assert len(saved) == 1 and Image.open(saved[0]).size == (70, 50)


def test_bad_upload_gives_a_clear_message(app):
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("fake.png", b"this is not an image", "image/png").run()
    assert not app.exception
    assert app.error and i18n.t("image_error", "zh", message="").split("：")[0] in app.error[0].value


def test_history_page_filters_and_exports(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _choose(app, "classification", "breast", "BUSI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    app.switch_page("pages/history.py").run()
    _ok(app)
    assert any(i18n.t("rows", "zh", n=2) == c.value for c in app.caption)
    app.selectbox(key="h_task").set_value("segmentation").run()
    _ok(app)
    assert any(i18n.t("rows", "zh", n=1) == c.value for c in app.caption)
    assert app.get("download_button"), "no CSV export"
    assert app.get("imgs") or app.get("image"), "re-opened run shows no image"


def test_batch_page_runs_challenge_json_with_metrics(app):
    app.switch_page("pages/batch.py").run()
    _ok(app)
    app.radio(key="b_source").set_value("json").run()
    app.button(key="b_run_json").click().run()
    _ok(app)
    assert any(i18n.t("batch_done", "zh", n=6, sec=0).split("，")[0] in s.value for s in app.success)
    assert app.get("download_button")
    assert len(app.dataframe) == 2  # results + metrics
    metrics = app.dataframe[1].value
    assert set(metrics["dataset"]) == {"classification/BUSI", "segmentation/DDTI"}


def test_models_page_shows_manifest_and_paths(app):
    app.switch_page("pages/models.py").run()
    _ok(app)
    assert "tiny" in set(app.dataframe[0].value["name"])
    tables = [t.value for t in app.table]
    assert any(str(app.settings.workspace) in str(table.values) for table in tables)


@pytest.fixture()
def api_server(tiny_settings, tmp_path):
    """``python -m core serve`` on a free loopback port with an API key (its own workspace)."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    sys.path.insert(0, str(PROJECT_ROOT / "tests" / "browser"))
    from app_server import free_port

    port, key = free_port(), "dashboard-key"
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace), "UUSIC_DATA_ROOT": str(tiny_settings.data_root),
           "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir), "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": key}
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "API did not start: " + log.read_text()
                time.sleep(0.2)
            yield url, key
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.mark.server
def test_analyze_against_remote_api(api_server, tiny_settings, tmp_path, monkeypatch):
    url, key = api_server
    dashboard_workspace = tmp_path / "dashboard_ws"  # not shared with the API: the mask comes over HTTP
    monkeypatch.setenv("UUSIC_WORKSPACE", str(dashboard_workspace))
    monkeypatch.setenv("UUSIC_DATA_ROOT", str(tiny_settings.data_root))
    monkeypatch.setenv("UUSIC_API_URL", url)
    monkeypatch.setenv("UUSIC_API_KEY", key)
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    _ok(at)
    assert any(url in c.value for c in at.caption)
    _choose(at, "segmentation", "thyroid", "DDTI")
    at.button(key="random_sample").click().run()
    at.button(key="run").click().run()
    _ok(at)
    assert i18n.t("measurements", "zh") in [s.value for s in at.subheader]
    assert [m for m in at.metric if m.label == "Dice"]
    assert list((tiny_settings.workspace / "api_in").glob("*.png")), "upload did not reach the API's api_in/"
    assert not list((dashboard_workspace / "api_in").glob("*"))
    from core.history import HistoryStore

    assert len(HistoryStore(tiny_settings.history_db).list()) == 1  # recorded once, by the API


def test_batch_page_uploads_and_zip(app):
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_task").set_value("segmentation").run()
    app.selectbox(key="b_dataset_segmentation").set_value("DDTI").run()
    files = []
    for i, size in enumerate([(40, 30), (33, 50)]):
        buffer = io.BytesIO()
        Image.new("RGB", size, (40 * i, 80, 120)).save(buffer, format="PNG")
        files.append((f"batch {i}.png", buffer.getvalue(), "image/png"))
    app.file_uploader(key="b_files").set_value(files).run()
    app.button(key="b_run").click().run()
    _ok(app)
    assert any(i18n.t("batch_done", "zh", n=2, sec=0).split("，")[0] in s.value for s in app.success)
    results = app.dataframe[0].value
    assert len(results) == 2 and results["mask_area_px"].notna().all()
    output = sorted((app.settings.workspace / "api_out").glob("batch_*"))[-1]
    masks = sorted(p for p in output.rglob("*.png"))
    assert len(masks) == 2 and {Image.open(p).size for p in masks} == {(40, 30), (33, 50)}
    assert app.get("download_button"), "no zip download"
