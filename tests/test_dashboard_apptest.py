"""Every dashboard page through ``streamlit.testing.v1.AppTest`` on the real engine (tiny TorchScript model).

The app reads its settings from ``UUSIC_*`` variables, so each test points it at its own workspace, the tiny
data root and a manifest serving ``classification/BUSI`` and ``segmentation/DDTI`` (see ``tiny_settings``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import catalog, i18n
from core.settings import PROJECT_ROOT

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

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


def _runs(at: AppTest) -> list[dict]:
    from core.history import HistoryStore

    return HistoryStore(at.settings.history_db).list()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _png(size: tuple[int, int], color=(40, 80, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip_names(at: AppTest) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(at.session_state["batch"]["zip"])) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _batch_uploads(at: AppTest, task: str, dataset: str, files: list[tuple[str, bytes, str]]) -> AppTest:
    at.switch_page("pages/batch.py").run()
    at.radio(key="b_task").set_value(task).run()
    at.selectbox(key=f"b_dataset_{task}").set_value(dataset).run()
    at.file_uploader(key="b_files").set_value(files).run()
    at.button(key="b_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    rows = _runs(app)
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
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace),
           "UUSIC_DATA_ROOT": str(tiny_settings.data_root), "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": key}
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


def _remote_app(api_server, tiny_settings, dashboard_workspace: Path, monkeypatch) -> AppTest:
    """The dashboard in remote mode, with a workspace of its own (masks and files come over HTTP)."""
    url, key = api_server
    monkeypatch.setenv("UUSIC_WORKSPACE", str(dashboard_workspace))
    monkeypatch.setenv("UUSIC_DATA_ROOT", str(tiny_settings.data_root))
    monkeypatch.setenv("UUSIC_API_URL", url)
    monkeypatch.setenv("UUSIC_API_KEY", key)
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    return _ok(at)


@pytest.mark.server
def test_analyze_against_remote_api(api_server, tiny_settings, tmp_path, monkeypatch):
    url, _ = api_server
    dashboard_workspace = tmp_path / "dashboard_ws"  # not shared with the API: the mask comes over HTTP
    at = _remote_app(api_server, tiny_settings, dashboard_workspace, monkeypatch)
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

    rows = HistoryStore(tiny_settings.history_db).list()
    assert len(rows) == 1 and rows[0]["source"] == "dashboard"  # recorded once, by the API, as the dashboard's
    assert rows[0]["input_sha256"] == _sha256(tiny_settings.workspace / rows[0]["img_path_relative"])


def test_batch_page_uploads_and_zip(app):
    files = [(f"batch {i}.png", _png(size, (40 * i, 80, 120)), "image/png")
             for i, size in enumerate([(40, 30), (33, 50)])]
    _ok(_batch_uploads(app, "segmentation", "DDTI", files))
    assert any(i18n.t("batch_done", "zh", n=2, sec=0).split("，")[0] in s.value for s in app.success)
    results = app.dataframe[0].value
    assert len(results) == 2 and results["mask_area_px"].notna().all()
    output = sorted((app.settings.workspace / "api_out").glob("batch_*"))[-1]
    masks = sorted(p for p in output.rglob("*.png"))
    assert len(masks) == 2 and {Image.open(p).size for p in masks} == {(40, 30), (33, 50)}
    assert app.get("download_button"), "no zip download"


def test_batch_uploads_record_one_batch_row_per_image_with_the_saved_files_sha256(app):
    files = [(f"scan {i}.png", _png(size, (30 * i, 90, 60)), "image/png")
             for i, size in enumerate([(41, 31), (35, 52), (48, 48)])]
    _ok(_batch_uploads(app, "classification", "BUSI", files))
    rows = _runs(app)
    assert len(rows) == 3 and {r["source"] for r in rows} == {"batch"}
    assert len({r["batch_id"] for r in rows}) == 1 and not any(r["error"] for r in rows)
    for row in rows:
        saved = app.settings.workspace / row["img_path_relative"]
        assert row["img_path_relative"].startswith("api_in/") and saved.is_file()
        assert row["input_sha256"] == _sha256(saved)
    assert sorted(r["id"] for r in rows) == sorted(app.dataframe[0].value["run_id"])
    challenge = json.loads(_zip_names(app)["classification.json"])
    assert set(challenge) == {r["img_path_relative"] for r in rows}
    assert all(set(v) == {"probability", "prediction"} for v in challenge.values())
    app.switch_page("pages/history.py").run()
    _ok(app)
    assert any(i18n.t("rows", "zh", n=3) == c.value for c in app.caption)
    assert set(app.dataframe[0].value["source"]) == {"batch"}
    assert app.get("imgs") or app.get("image"), "a batch run does not re-open"


def test_analyze_records_exactly_one_dashboard_row(app):
    _choose(app, "classification", "breast", "BUSI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    rows = _runs(app)
    assert len(rows) == 1
    row, saved = rows[0], _saved_inputs(app)
    assert row["source"] == "dashboard" and row["error"] is None
    assert len(saved) == 1 and row["img_path_relative"] == f"api_in/{saved[0].name}"
    assert row["input_sha256"] == _sha256(saved[0])
    assert row["model_sha256"] == _sha256(app.settings.weights_dir / "tiny.ts")
    assert any(i18n.t("run_id", "zh", n=row["id"]) in c.value for c in app.caption)


def test_batch_with_an_unserved_dataset_counts_the_skipped_and_records_them(app):
    files = [(f"kidney {i}.png", _png((40, 40), (i * 50, 60, 60)), "image/png") for i in range(2)]
    _ok(_batch_uploads(app, "segmentation", "KidneyUS", files))
    assert i18n.t("batch_skipped", "zh", n=2, names="KidneyUS") in [i.value for i in app.info]
    rows = _runs(app)
    assert len(rows) == 2 and {r["source"] for r in rows} == {"batch"}
    assert {r["error_type"] for r in rows} == {"NoModelError"}
    assert all(r["input_sha256"] == _sha256(app.settings.workspace / r["img_path_relative"]) for r in rows)


def test_a_new_batch_clears_the_previous_result(app):
    _ok(_batch_uploads(app, "segmentation", "DDTI", [("one.png", _png((40, 30)), "image/png")]))
    assert app.success
    app.file_uploader(key="b_files").set_value([]).run()
    app.button(key="b_run").click().run()
    assert not app.exception
    assert not app.success and i18n.t("batch_no_files", "zh") in [w.value for w in app.warning]


def test_a_bad_upload_is_named_and_the_batch_goes_on(app):
    files = [("broken.png", b"not an image at all", "image/png"), ("good.png", _png((40, 30)), "image/png")]
    _batch_uploads(app, "segmentation", "DDTI", files)
    assert any("broken.png" in e.value for e in app.error)
    assert any(i18n.t("batch_done", "zh", n=1, sec=0).split("，")[0] in s.value for s in app.success)
    assert len(_runs(app)) == 1


def test_history_reopen_of_a_vanished_mask_warns_without_server_paths(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    for mask in (app.settings.workspace / "api_out").rglob("*.png"):
        mask.unlink()
    app.switch_page("pages/history.py").run()
    assert not app.exception
    warnings = [w.value for w in app.warning if w.value != i18n.t("demo_banner", "zh")]
    assert warnings and i18n.t("reopen_unavailable", "zh", message="").split("：")[0] in warnings[0]
    assert not any(str(app.settings.workspace) in w or str(app.settings.data_root) in w for w in warnings)


@pytest.mark.server
def test_batch_against_remote_api(api_server, tiny_settings, tmp_path, monkeypatch):
    dashboard_workspace = tmp_path / "dashboard_ws"
    at = _remote_app(api_server, tiny_settings, dashboard_workspace, monkeypatch)
    at.settings = tiny_settings
    files = [(f"remote {i}.png", _png(size, (60 * i, 80, 90)), "image/png")
             for i, size in enumerate([(40, 30), (36, 44)])]
    _ok(_batch_uploads(at, "segmentation", "DDTI", files))
    assert any(i18n.t("batch_done", "zh", n=2, sec=0).split("，")[0] in s.value for s in at.success)
    assert i18n.t("batch_metrics_remote", "zh") in [c.value for c in at.caption]
    rows = _runs(at)  # the API's history
    assert len(rows) == 2 and {r["source"] for r in rows} == {"batch"}
    assert all(r["input_sha256"] == _sha256(tiny_settings.workspace / r["img_path_relative"]) for r in rows)
    assert not list((dashboard_workspace / "api_in").glob("*"))
    archive = _zip_names(at)  # masks fetched over HTTP
    masks = {n: Image.open(io.BytesIO(b)).size for n, b in archive.items() if n.endswith(".png")}
    assert json.loads(archive["classification.json"]) == {} and sorted(masks.values()) == [(36, 44), (40, 30)]
    at.switch_page("pages/history.py").run()
    _ok(at)
    assert any(i18n.t("rows", "zh", n=2) == c.value for c in at.caption)
    assert at.get("imgs") or at.get("image"), "a remote batch run does not re-open"
