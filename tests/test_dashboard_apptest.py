"""Every dashboard page through ``streamlit.testing.v1.AppTest`` on the real engine (tiny TorchScript model).

The app reads its settings from ``UUSIC_*`` variables, so each test points it at its own workspace, the tiny
data root and a manifest serving ``classification/BUSI`` and ``segmentation/DDTI`` (see ``tiny_settings``).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import catalog, i18n
from core.settings import PROJECT_ROOT
from pages.common import md_literal

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


SERVED = {("classification", "BUSI"), ("segmentation", "DDTI")}  # what the tiny manifest serves
NO_MODEL = i18n.t("no_model_mark", "zh")


def _marked(text: str, served: bool) -> str:
    return text if served else f"{text} {NO_MODEL}"


@pytest.mark.parametrize("task", catalog.TASKS)
def test_selectors_list_served_choices_first_and_mark_the_others(app, task):
    app.radio(key="task").set_value(task).run()
    groups = [g.key for g in catalog.groups_for(task)]
    served_groups = [g for g in groups if any(d.key in SERVED for d in catalog.datasets_for(task, g))]
    ordered = served_groups + [g for g in groups if g not in served_groups]
    organ = app.selectbox(key=f"organ_{task}")
    assert organ.options == [_marked(i18n.group_name(g, "zh"), g in served_groups) for g in ordered]
    assert organ.value == served_groups[0]  # a served organ is the default
    for group in ordered:
        app.selectbox(key=f"organ_{task}").set_value(group).run()
        datasets = catalog.datasets_for(task, group)
        names = [d.name for d in datasets if d.key in SERVED] + [d.name for d in datasets if d.key not in SERVED]
        dataset = app.selectbox(key=f"dataset_{task}_{group}")
        assert dataset.options == [_marked(n, (task, n) in SERVED) for n in names]
        demo = catalog.default_dataset(task, group)
        assert dataset.value == (names[0] if demo.key not in SERVED and names[0] != demo.name
                                 and (task, names[0]) in SERVED else demo.name)


def test_dataset_without_model_is_an_info_not_an_error(app):
    _choose(app, "segmentation", "kidney", "KidneyUS")
    assert any("KidneyUS" in i.value for i in app.info)


def test_dataset_without_images_says_so(app):
    root = app.settings.data_root
    entries = json.loads((root / "ground_truth.json").read_text())
    (root / "ground_truth.json").write_text(json.dumps([e for e in entries if e["dataset_name"] != "DDTI"]))
    shutil.rmtree(root / "segmentation" / "DDTI")  # a served dataset whose images are not in the data root
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    _ok(app)
    infos = [i.value for i in app.info]
    assert any("DDTI" in i for i in infos)
    assert not any(str(app.settings.data_root) in i or str(app.settings.workspace) in i for i in infos)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_dataset_without_a_model_is_decided_at_selection(dashboard_env, lang):
    """Issue 23 item 5: one kind message, a way to Models & System, and no upload / edit / calibration / Run."""
    at = AppTest.from_file(HOME, default_timeout=120)
    at.query_params.update(lang=lang, task="segmentation", organ="breast", dataset="BUSI")  # BUSI: cls only
    at.run()
    _ok(at)
    infos = [i.value for i in at.info]
    assert len(infos) == 1 and "BUSI" in infos[0] and i18n.t("no_model_here", lang, dataset="")[-12:] in infos[0]
    assert not at.get("file_uploader") and all(r.key != "source" for r in at.radio)
    assert all(b.key not in ("random_sample", "run") for b in at.button)
    assert all(not (e.key or "").startswith("calib_") for e in at.get("number_input"))


def test_random_sample_segmentation_run_records_history(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    _ok(app)
    assert app.button(key="run") is not None
    app.button(key="run").click().run()
    _ok(app)
    saved = _saved_inputs(app)
    assert len(saved) == 1 and saved[0].suffix == ".png"
    assert f"**{i18n.t('measurements', 'zh')}**" in [m.value for m in app.markdown]  # the numbers column's title
    # issue 23 §10: the engineering panels (resources, JSON, system load) sit in one folded section at the end
    technical = [e for e in app.expander if e.label == i18n.t("tech_details", "zh")]
    assert len(technical) == 1 and f"**{i18n.t('resources', 'zh')}**" in [m.value for m in technical[0].markdown]
    assert i18n.t("resources", "zh") not in [s.value for s in app.subheader]
    assert f"**{i18n.t('ground_truth', 'zh')}**" in [m.value for m in app.markdown]
    dice = [m for m in app.metric if m.label == i18n.t("dice_label", "zh")]
    assert dice and 0.0 <= float(dice[0].value) <= 1.0
    assert [m.value for m in app.metric if m.label == i18n.t("gpu_used", "zh")] == ["CPU"]
    assert {"dl_mask", "dl_overlay"} <= {b.key for b in app.get("download_button")}
    # opacity and contour controls re-render without a new run
    app.slider(key="opacity").set_value(0.8).run()
    app.radio(key="overlay_mode").set_value("contour").run()
    _ok(app)
    assert len(_saved_inputs(app)) == 1
    rows = _runs(app)
    assert len(rows) == 1 and rows[0]["task"] == "segmentation"


def test_the_input_view_is_a_picture_until_zoom_is_switched_on(app):
    """Issue 27: the loaded image is drawn as a picture (the first result does not wait for a zoom figure); the
    switch shows the plotly zoom view (scroll zoom, pan) and stays on for the session, also beside a result."""
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    _ok(app)
    assert app.get("image") and not app.get("plotly_chart")
    app.toggle(key="zoom_on").set_value(True).run()
    _ok(app)
    zoom = [c for c in app.get("plotly_chart") if c.proto.id and "zoom_view" in c.proto.id]
    assert len(zoom) == 1 and json.loads(zoom[0].proto.config)["scrollZoom"] is True
    app.button(key="run").click().run()
    _ok(app)
    assert app.toggle(key="zoom_on").value is True
    assert any(c.proto.id and "zoom_view" in c.proto.id for c in app.get("plotly_chart"))


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
    assert app.error and "fake.png" in app.error[0].value  # the file is named as the user gave it
    assert i18n.t("image_error_named", "zh", name="", message="").split("：")[0].strip() in app.error[0].value
    assert "<upload>" not in app.error[0].value and str(app.settings.workspace) not in app.error[0].value


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
    assert app.selectbox(key="b_json_file").value == "ground_truth.json"  # the data root's, chosen by default
    assert not app.text_input, "no server path is typed on the Batch page"
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
    shown = " ".join(str(table.values) for table in tables)  # issue 12: the folders' names, no server path
    assert f"…/{app.settings.workspace.name}" in shown and str(app.settings.workspace) not in shown


@pytest.fixture()
def api_server(tiny_settings, tmp_path):
    """``python -m core serve`` on a free loopback port with an API key (its own workspace)."""
    import os

    from conftest import serve_api

    key = "dashboard-key"
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace),
           "UUSIC_DATA_ROOT": str(tiny_settings.data_root), "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": key}
    with serve_api(env, tmp_path / "api.log", timeout=60) as url:
        yield url, key


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
    assert f"**{i18n.t('measurements', 'zh')}**" in [m.value for m in at.markdown]
    assert [m for m in at.metric if m.label == i18n.t("dice_label", "zh")]
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
    assert i18n.t("batch_skipped", "zh", n=2, names=md_literal("KidneyUS")) in [i.value for i in app.info]
    rows = _runs(app)
    assert len(rows) == 2 and {r["source"] for r in rows} == {"batch"}
    assert {r["error_type"] for r in rows} == {"NoModelError"}
    assert all(r["input_sha256"] == _sha256(app.settings.workspace / r["img_path_relative"]) for r in rows)


def test_calipers_are_drawn_on_the_overlay_and_toggle_off(app):
    """Issue 23 item 4: the max diameter and its perpendicular are drawn on the result image (their pixels are on
    the overlay the page shows), in the legend, and switched off per measurement."""
    from core import overlay

    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    result = app.session_state["result"]
    if not result["response"].get("mask_area_px"):
        pytest.skip("the tiny model found nothing on this sample: no caliper to draw")

    def caliper_pixels() -> int:
        picture = np.asarray(app.session_state["result"]["overlay_shown"])
        return int(np.all(picture == np.array(overlay.CALIPER_COLOR, dtype=np.uint8), axis=-1).sum())

    assert app.session_state["result"]["calipers_drawn"] == ["diameters"] and caliper_pixels() > 10
    assert any(i18n.t("cal_diameters", "zh") in m.value for m in app.markdown if "uusic-legend" in m.value)
    app.toggle(key="cal_diameters").set_value(False).run()
    _ok(app)
    assert app.session_state["result"]["calipers_drawn"] == [] and caliper_pixels() == 0


def test_batch_takes_a_dataset_per_image_never_the_first_for_all(app):
    """Issue 23 item 2: a file the data root knows starts at its entry's dataset, another at the page's selection,
    and any row can be changed; each image is run and recorded under its own dataset."""
    files = [("seg_0.png", _png((40, 30)), "image/png"), ("other.png", _png((33, 50)), "image/png"),
             ("third.png", _png((35, 35)), "image/png")]
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_task").set_value("segmentation").run()
    app.selectbox(key="b_dataset_segmentation").set_value("Fetal_HC").run()
    app.file_uploader(key="b_files").set_value(files).run()
    rows = [s for s in app.selectbox if str(s.key).startswith("b_file_dataset_segmentation_")]
    assert [s.value for s in rows] == ["DDTI", "Fetal_HC", "Fetal_HC"]  # the known file, then the selection
    rows[2].set_value("DDTI").run()  # the user changes one row
    app.button(key="b_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    recorded = sorted(_runs(app), key=lambda r: r["id"])
    assert [r["dataset_name"] for r in recorded] == ["DDTI", "Fetal_HC", "DDTI"]
    assert [r["error_type"] for r in recorded] == [None, "NoModelError", None]  # Fetal_HC has no model here


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


# ------------------------------------------------------------- hardening: inert display, data-root JSON, no folders
# Every payload carries the marker EVIL; a Markdown element may show it only inside a code span.
PAYLOADS = [
    "[EVIL](javascript:alert(1))",
    "![EVIL](http://evil.example/x.png)",
    "<img src=x onerror=alert('EVIL')>",
    "<script>alert('EVIL')</script>",
    '<a href="javascript:alert(1)">EVIL</a>',
    "**EVIL** _bold_ ~~gone~~",
    "# EVIL heading",
    "> EVIL quote",
    ":red[EVIL] :material/warning: :smile: :streamlit:",
    "$\\frac{EVIL}{2}$ and $$x$$",
    "http://EVIL.example/path www.EVIL.example EVIL@mail.example",
    "<https://EVIL.example>",
    "`EVIL` ``` fence `` tick",
    "line one\n\n[EVIL](http://evil.example)",
    "[ref]: http://EVIL.example\n\n[ref]",
    "| EVIL | b |\n|---|---|\n| 1 | 2 |",
    '=HYPERLINK("http://EVIL.example","click")',
    "\\[EVIL\\](http://evil.example)",
    "EVIL\r\n- item\n* item\n    indented code",
    "EVIL\u2028[x](http://evil.example) \x00\x1b[31m",
]
MARKDOWN_NODES = ("markdown", "caption", "latex", "title", "header", "subheader", "error", "warning", "info",
                  "success", "exception", "toast")


def _nodes(node):
    yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _nodes(child)


def _split_code_spans(text: str) -> tuple[str, list[str]]:
    """``text`` without its CommonMark code spans (a run of n backticks up to the next run of exactly n), and the
    spans' contents."""
    outside: list[str] = []
    spans: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "`":
            outside.append(text[i])
            i += 1
            continue
        j = i
        while j < len(text) and text[j] == "`":
            j += 1
        k, close = j, -1
        while k < len(text):
            if text[k] != "`":
                k += 1
                continue
            m = k
            while m < len(text) and text[m] == "`":
                m += 1
            if m - k == j - i:
                close = k
                break
            k = m
        if close < 0:
            outside.append(text[i:j])
            i = j
            continue
        spans.append(text[j:close])
        i = close + (j - i)
    return "".join(outside), spans


def test_code_span_splitter_follows_commonmark():
    assert _split_code_spans("a `b` c") == ("a  c", ["b"])
    assert _split_code_spans("x ``a ` b`` y `z") == ("x  y `z", ["a ` b"])
    for payload in PAYLOADS:  # md_literal always makes one span holding the whole text, without line breaks
        outside, spans = _split_code_spans(f"prefix {md_literal(payload)} suffix")
        assert outside == "prefix  suffix" and len(spans) == 1 and "EVIL" in spans[0]
        assert not any(c in spans[0] for c in "\n\r\x00\u2028")


def _assert_inert(at: AppTest, marker: str = "EVIL") -> int:
    """No Markdown element, widget label or tooltip shows ``marker`` outside a code span (so no link, image, HTML,
    heading... made of user-controlled text); no code span holds a line break. Returns how many texts it checked."""
    assert not at.exception, [e.value for e in at.exception]
    checked = 0
    for node in _nodes(at._tree):
        texts = [str(node.value)] if getattr(node, "type", None) in MARKDOWN_NODES else []
        for attribute in ("label", "help", "caption"):
            value = getattr(node, attribute, None)
            if isinstance(value, str):
                texts.append(value)
        for text in texts:
            outside, spans = _split_code_spans(text)
            assert marker.lower() not in outside.lower(), f"rendered as Markdown: {text!r}"
            assert not any("\n" in span or "\r" in span for span in spans), text
            checked += 1
    return checked


def _literal_texts(at: AppTest) -> list[str]:
    """What the page shows as plain text: st.text, st.code, st.json, dataframes and select box options."""
    shown = [t.value for t in at.text] + [c.value for c in at.code] + [j.value for j in at.json]
    for frame in at.dataframe:
        shown.extend(str(v) for v in frame.value.to_numpy().ravel())
    for box in at.selectbox:
        shown.extend(str(o) for o in box.options)
    return shown


def _images(at: AppTest) -> list:
    return list(at.get("imgs")) + list(at.get("image"))


def _hostile_history(at: AppTest) -> dict[str, tuple[int, int]]:
    """Per payload: a failed run (its image path is a real data-root image; PathError on every other row) and an
    "analysed" run whose names, paths and model are the payload."""
    from core.history import HistoryStore

    store = HistoryStore(at.settings.history_db)
    rows = {}
    for i, payload in enumerate(PAYLOADS):
        failed = store.add({"source": "api", "img_name": payload, "task": "classification",
                            "img_path_relative": "classification/BUSI/imgs/cls_0.png", "dataset_name": payload,
                            "organ": payload, "error": payload,
                            "error_type": "PathError" if i % 2 == 0 else f"<b>EVIL</b>Error{i}"})
        opened = store.add({"source": "dashboard", "img_name": payload, "img_path_relative": payload,
                            "task": "segmentation" if i % 2 else "classification", "dataset_name": payload,
                            "organ": payload, "model_name": payload, "label_name": payload, "mask_path": payload,
                            "device": payload, "batch_id": payload})
        rows[payload] = (failed, opened)
    store.close()
    return rows


def _spy_run_image(monkeypatch) -> list[int]:
    from core.service import AnalysisService

    calls: list[int] = []
    original = AnalysisService.run_image

    def spy(self, run_id: int):
        calls.append(int(run_id))
        return original(self, run_id)

    monkeypatch.setattr(AnalysisService, "run_image", spy)
    return calls


def test_history_shows_hostile_rows_as_literal_text(app, monkeypatch):
    rows = _hostile_history(app)
    opened = _spy_run_image(monkeypatch)
    app.switch_page("pages/history.py").run()
    assert _assert_inert(app)
    table = app.dataframe[0].value
    for column in ("img_name", "dataset_name", "organ", "error", "img_path_relative", "model_name"):
        assert set(PAYLOADS) <= set(table[column].dropna()), column  # every payload, literally, in the table
    options = app.selectbox(key="h_reopen").options
    assert all(any(payload in option for option in options) for payload in PAYLOADS)
    for payload, (failed, analysed) in rows.items():
        app.selectbox(key="h_reopen").set_value(failed).run()
        _assert_inert(app)
        assert any(t.endswith(f": {payload}") for t in (x.value for x in app.text)), payload  # the error, literally
        assert i18n.t("run_failed", "zh") in [i.value for i in app.info]
        assert not _images(app), "a failed run's file was re-opened"
        app.selectbox(key="h_reopen").set_value(analysed).run()
        _assert_inert(app)
        warnings = [w.value for w in app.warning if w.value != i18n.t("demo_banner", "zh")]
        assert warnings and warnings[0].startswith(i18n.t("reopen_unavailable", "zh", message=""))
        assert not _images(app)  # the payload is no file of the data root or the workspace
    failed_ids = {failed for failed, _ in rows.values()}
    assert opened and not failed_ids & set(opened), "run_image was called for a failed run"


def test_history_filters_with_hostile_values(app):
    _hostile_history(app)
    app.switch_page("pages/history.py").run()
    for payload in PAYLOADS[:6]:
        app.selectbox(key="h_dataset").set_value(payload).run()
        _assert_inert(app)
        assert any(i18n.t("rows", "zh", n=2) == c.value for c in app.caption)
    app.selectbox(key="h_dataset").set_value("").run()
    app.text_input(key="h_name").input("<script>").run()
    _assert_inert(app)
    assert any(i18n.t("rows", "zh", n=2) == c.value for c in app.caption)


def _history_row(at: AppTest, **fields) -> int:
    from core.history import HistoryStore

    store = HistoryStore(at.settings.history_db)
    run_id = store.add({"source": "api", "img_name": "x.png", **fields})
    store.close()
    return run_id


def _reopen(at: AppTest, run_id: int) -> AppTest:
    at.switch_page("pages/history.py").run()
    at.selectbox(key="h_reopen").set_value(run_id).run()
    _assert_inert(at)
    return at


@pytest.mark.parametrize("where", ["text file", "empty file", "truncated png", "directory", "symlink out",
                                   "absolute outside", "dotdot", "api_in dotdot", "workspace file", "nul byte"])
def test_reopening_a_run_reads_only_images_of_the_data_root_and_workspace(app, tmp_path, where):
    root = app.settings.data_root
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png((20, 20)))
    folder = root / "classification" / "BUSI" / "imgs"
    targets = {"text file": "notes.png", "empty file": "empty.png", "truncated png": "cut.png",
               "directory": "adir.png", "symlink out": "link.png"}
    (folder / "notes.png").write_text("not an image, just text")
    (folder / "empty.png").write_bytes(b"")
    (folder / "cut.png").write_bytes(_png((40, 30))[:60])
    (folder / "adir.png").mkdir()
    (folder / "link.png").symlink_to(outside)
    relative = {**{k: f"classification/BUSI/imgs/{v}" for k, v in targets.items()},
                "absolute outside": str(outside), "dotdot": "../outside.png",
                "api_in dotdot": "api_in/../../outside.png", "workspace file": "history.sqlite3",
                "nul byte": "classification/BUSI/imgs/cls_0.png\x00.txt"}[where]
    run_id = _history_row(app, task="classification", dataset_name="BUSI", img_path_relative=relative)
    _reopen(app, run_id)
    warnings = [w.value for w in app.warning if w.value != i18n.t("demo_banner", "zh")]
    assert warnings and warnings[0].startswith(i18n.t("reopen_unavailable", "zh", message=""))
    assert not _images(app)
    for text in warnings:  # no server folder in the message
        assert str(tmp_path) not in text and str(root) not in text


def test_reopening_a_segmentation_run_with_a_mask_outside_the_workspace_shows_only_the_image(app, tmp_path):
    outside = tmp_path / "mask.png"
    Image.new("L", (64, 48), 255).save(outside)
    run_id = _history_row(app, task="segmentation", dataset_name="DDTI", mask_path=str(outside),
                          img_path_relative="classification/BUSI/imgs/cls_0.png")
    _reopen(app, run_id)
    assert len(_images(app)) == 1  # the image, without an overlay
    assert any(w.value.startswith(i18n.t("reopen_unavailable", "zh", message="")) for w in app.warning)


@pytest.mark.parametrize("payload", PAYLOADS[::2])
def test_analyze_shows_a_hostile_upload_name_inert(app, payload):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.radio(key="source").set_value("upload").run()
    name = payload.replace("\x00", "") + ".png"  # Streamlit itself refuses NUL in file names
    app.file_uploader(key="upload").upload(name, _png((40, 30)), "image/png").run()
    _assert_inert(app)
    current = [c.value for c in app.caption if c.value.startswith(i18n.t("current_image", "zh", name="", w=0, h=0)[:4])]
    assert current and "EVIL" in current[0]
    app.button(key="run").click().run()
    _ok(app)
    _assert_inert(app)
    rows = _runs(app)
    assert len(rows) == 1 and rows[0]["error"] is None


@pytest.mark.parametrize("payload", PAYLOADS[1::2])
def test_analyze_shows_a_hostile_name_of_a_broken_upload_inert(app, payload):
    app.radio(key="source").set_value("upload").run()
    name = payload.replace("\x00", "") + ".png"
    app.file_uploader(key="upload").upload(name, b"EVIL <script> not an image", "image/png").run()
    _assert_inert(app)
    assert app.error and app.error[0].value.startswith(i18n.t("image_error_named", "zh", name="", message="")[:4])
    assert "internal error" not in app.error[0].value


def test_batch_names_hostile_uploads_inert(app):
    files = [(f"{p}.png".replace("\x00", ""), b"broken " + p.encode(), "image/png") for p in PAYLOADS[:6]]
    files.append(("good.png", _png((40, 30)), "image/png"))
    _batch_uploads(app, "segmentation", "DDTI", files)
    _assert_inert(app)
    assert len([e for e in app.error if e.value.startswith(i18n.t("image_error", "zh", message=""))]) == 6
    assert any(i18n.t("batch_done", "zh", n=1, sec=0).split("，")[0] in s.value for s in app.success)


def _write_json(path: Path, entries) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_batch_json_choices_are_the_json_files_under_the_data_root(app, tmp_path):
    root = app.settings.data_root
    truth = json.loads((root / "ground_truth.json").read_text())
    _write_json(root / "sub" / "ground_truth.json", truth[:2])
    _write_json(root / "a" / "b" / "deep.json", truth[:1])
    _write_json(root / "a" / "b" / "c" / "too_deep.json", truth)  # depth 4
    _write_json(root / ".hidden" / "x.json", truth)
    (root / "notes.txt").write_text("[]")
    elsewhere = _write_json(tmp_path / "elsewhere" / "secret.json", truth)
    (root / "link.json").symlink_to(elsewhere)
    (root / "linked_dir").symlink_to(elsewhere.parent, target_is_directory=True)
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_source").set_value("json").run()
    _ok(app)
    box = app.selectbox(key="b_json_file")
    assert box.options == ["ground_truth.json", "sub/ground_truth.json", "a/b/deep.json"]
    assert not app.text_input
    box.set_value("sub/ground_truth.json").run()
    app.button(key="b_run_json").click().run()
    _ok(app)
    assert any(i18n.t("batch_done", "zh", n=2, sec=0).split("，")[0] in s.value for s in app.success)


def test_batch_json_can_be_uploaded(app):
    truth = json.loads((app.settings.data_root / "ground_truth.json").read_text())
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_source").set_value("json").run()
    app.file_uploader(key="b_json_upload").upload("mine.json", json.dumps({"data": truth[:3]}).encode(),
                                                  "application/json").run()
    app.button(key="b_run_json").click().run()
    _ok(app)
    assert any(i18n.t("batch_done", "zh", n=3, sec=0).split("，")[0] in s.value for s in app.success)
    assert {r["source"] for r in _runs(app)} == {"batch"} and len(_runs(app)) == 3


@pytest.mark.parametrize("data", [b"{", b"\xff\xfe\x00EVIL", b"42", b'"EVIL string"', b'{"data": 5}', b"[]",
                                  b"[1, 2, 3]", b"[" * 100_000 + b"]" * 100_000, b'{"EVIL": "<script>"}',
                                  b"[{\"img_path_relative\": 1"])
def test_a_hostile_uploaded_json_is_refused_with_a_message(app, data):
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_source").set_value("json").run()
    app.file_uploader(key="b_json_upload").upload("evil.json", data, "application/json").run()
    app.button(key="b_run_json").click().run()
    _assert_inert(app)
    shown = [m.value for m in [*app.error, *app.warning]]
    assert any(m.startswith(i18n.t("batch_json_error", "zh", message="")) for m in shown), shown
    assert not app.success and not _runs(app)


def test_batch_json_entries_that_leave_the_data_root_are_refused_and_never_reopened(app, tmp_path, monkeypatch):
    root = app.settings.data_root
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png((30, 30)))
    (root / "classification" / "BUSI" / "imgs" / "link.png").symlink_to(secret)
    (root / "classification" / "BUSI" / "imgs" / "notes.png").write_text("EVIL text")
    base = {"task": "classification", "dataset_name": "BUSI", "organ": "Breast"}
    entries = [{**base, "img_path_relative": rel} for rel in
               ("../secret.png", str(secret), "api_in/../../secret.png", "classification/BUSI/imgs/link.png",
                "classification/../../secret.png")]
    entries.append({**base, "img_path_relative": "classification/BUSI/imgs/notes.png"})  # not an image
    entries.append({**base, "dataset_name": "[EVIL](javascript:alert(1))",
                    "img_path_relative": "classification/BUSI/imgs/cls_0.png"})
    entries.append({**base, "img_path_relative": "classification/BUSI/imgs/cls_1.png"})  # the one good entry
    _write_json(root / "hostile" / "ground_truth.json", entries)
    app.switch_page("pages/batch.py").run()
    app.radio(key="b_source").set_value("json").run()
    app.selectbox(key="b_json_file").set_value("hostile/ground_truth.json").run()
    app.button(key="b_run_json").click().run()
    _assert_inert(app)
    assert any(i18n.t("batch_done", "zh", n=len(entries), sec=0).split("，")[0] in s.value for s in app.success)
    rows = {r["img_path_relative"]: r for r in _runs(app)}
    for entry in entries[:5]:
        row = rows[entry["img_path_relative"]]
        assert row["error_type"] == "PathError" and row["input_sha256"] is None  # recorded, never read
    assert rows["classification/BUSI/imgs/notes.png"]["error_type"] == "ImageError"
    assert rows["classification/BUSI/imgs/cls_1.png"]["error"] is None
    opened = _spy_run_image(monkeypatch)
    app.switch_page("pages/history.py").run()
    for row in rows.values():
        app.selectbox(key="h_reopen").set_value(row["id"]).run()
        _assert_inert(app)
    assert set(opened) == {rows["classification/BUSI/imgs/cls_1.png"]["id"]}  # only the good run's image was read


# ------------------------------------------------------------------ models: error texts never name server folders
BROKEN_MANIFESTS = {
    "missing": None,
    "not json": "{ not json",
    "not a list": '{"models": 5}',
    "entry lacks fields": '[{"name": "x"}]',
    "weights elsewhere": '[{"name": "x", "arch": "torchscript", "file": "OUTSIDE/deep/x.ts", "input_size": 32}]',
    "weights missing": '[{"name": "x", "arch": "torchscript", "file": "sub/x.ts", "input_size": 32}]',
    "unknown arch": '[{"name": "x", "arch": "EVIL<script>", "file": "x.ts", "input_size": 32}]',
    "empty weights": '[{"name": "x", "arch": "torchscript", "file": "empty.ts", "input_size": 32}]',
}


def _broken_weights(tmp_path: Path, kind: str) -> Path:
    weights = tmp_path / "broken_weights" / "deep folder"
    weights.mkdir(parents=True)
    (weights / "empty.ts").write_bytes(b"")
    text = BROKEN_MANIFESTS[kind]
    if text is not None:
        (weights / "models.json").write_text(text.replace("OUTSIDE", str(tmp_path / "elsewhere")))
    return weights


@pytest.mark.parametrize("kind", list(BROKEN_MANIFESTS))
def test_models_page_errors_name_no_server_folder(dashboard_env, tmp_path, monkeypatch, kind):
    weights = _broken_weights(tmp_path, kind)
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(weights))
    at = AppTest.from_file(HOME, default_timeout=120).run()
    at.switch_page("pages/models.py").run()
    _assert_inert(at)
    messages = [m.value for m in [*at.error, *at.warning, *at.info, *at.text, *at.caption]]
    assert any(m.startswith(i18n.t("weights_error", "zh", message="")) for m in messages), messages
    for message in messages:
        assert str(tmp_path) not in message and "broken_weights" not in message and "deep folder" not in message
    tables = [str(t.value.values) for t in at.table]  # issue 12: folder names only, never the server's paths
    assert any(f"…/{weights.name}" in table for table in tables) and not any(str(weights) in t for t in tables)


@pytest.mark.parametrize("kind", list(BROKEN_MANIFESTS))
def test_api_models_and_health_name_no_server_folder(tiny_settings, tmp_path, kind):
    from fastapi.testclient import TestClient

    from core.api import create_app

    settings = tiny_settings.model_copy(update={"weights_dir": _broken_weights(tmp_path, kind)})
    with TestClient(create_app(settings)) as client:
        client.post("/v1/predict", json={"img_path_relative": "classification/BUSI/imgs/cls_0.png",
                                         "task": "classification", "dataset_name": "BUSI"})
        for route in ("/v1/models", "/healthz", "/v1/datasets"):
            body = client.get(route).text
            assert str(tmp_path) not in body and "broken_weights" not in body, (route, body)
        answer = client.post("/v1/predict", json={"img_path_relative": "classification/BUSI/imgs/cls_0.png",
                                                  "task": "classification", "dataset_name": "BUSI"})
        assert answer.status_code >= 400 and str(tmp_path) not in answer.text


PUBLIC_CASES = [
    ("model manifest {W}/models.json not found", "model manifest models.json not found"),
    ("weights file {W}/sub/x.ts for model 'x' is missing", "weights file sub/x.ts for model 'x' is missing"),
    ("weights file /opt/other/dir/x.ts is missing", "weights file x.ts is missing"),
    ("weights file '/opt/other dir/x.ts' is empty", "weights file 'x.ts' is empty"),
    ('cannot load "/srv/a b/c/model.pt"', 'cannot load "model.pt"'),
    ("the folder {W} is empty", "the folder … is empty"),
    ("workspace {S}/history.sqlite3 locked", "workspace history.sqlite3 locked"),
    ("data root {D}/classification/x.png", "data root classification/x.png"),
    ("C:\\models\\deep\\x.ts is missing", "x.ts is missing"),
    ("see http://example.org/a/b/c for help", "see http://example.org/a/b/c for help"),
    ("no model named 'x'; known: a, b", "no model named 'x'; known: a, b"),
    ("the model manifest lists no models", "the model manifest lists no models"),
]


@pytest.mark.parametrize(("message", "public"), PUBLIC_CASES)
def test_model_pool_messages_keep_file_names_only(tiny_settings, message, public):
    from core.routing import ModelPool

    folders = {"W": str(tiny_settings.weights_dir), "S": str(tiny_settings.workspace),
               "D": str(tiny_settings.data_root)}
    assert ModelPool(tiny_settings)._public(message.format(**folders)) == public.format(**folders)


def test_two_models_can_be_picked_and_compared_on_one_image(dashboard_env):
    """With two models serving DDTI, Analyze offers a model picker and a comparison; both runs are recorded."""
    manifest_path = dashboard_env.weights_dir / "models.json"
    tiny = json.loads(manifest_path.read_text())[0]
    manifest_path.write_text(json.dumps([{**tiny, "name": "first"}, {**tiny, "name": "second"}]))
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    at.settings = dashboard_env
    _choose(at, "segmentation", "thyroid", "DDTI")
    at.button(key="random_sample").click().run()
    at.selectbox(key="model_segmentation_DDTI").set_value("second").run()
    at.selectbox(key="compare_segmentation_DDTI").set_value("first").run()
    at.button(key="run").click().run()
    _ok(at)
    rows = _runs(at)
    assert sorted(r["model_name"] for r in rows) == ["first", "second"]
    assert {r["source"] for r in rows} == {"dashboard"} and len({r["input_sha256"] for r in rows}) == 1
    shown = next(t.value for t in at.table if i18n.t("model_pick", "zh") in t.value.columns)
    assert list(shown.iloc[:, 0]) == ["second", "first"]
    assert any(m.value == "1.000" for m in at.metric)  # the same network twice: the masks agree exactly
    measured = next(t.value for t in at.table if "A · second" in t.value.columns)  # the measurements side by side
    assert list(measured.columns[1:]) == ["A · second", "B · first"]
    area = next(row for _, row in measured.iterrows() if row.iloc[0].startswith(i18n.measure_label("area", "zh")))
    assert area["A · second"] == area["B · first"] != "—"


# ------------------------------------------------------------------------------------------------ issue 12 (Analyze)
def _result_shown(at: AppTest, lang: str = "zh") -> bool:
    return i18n.t("result", lang) in [h.value for h in at.subheader]


def _stale(at: AppTest, lang: str = "zh") -> list[str]:
    marker = i18n.t("stale_result", lang, changes="").split("：")[0].split(":")[0]
    return [w.value for w in at.warning if w.value.startswith(marker)]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_first_screen_gives_a_result_in_two_clicks(dashboard_env, lang):
    at = AppTest.from_file(HOME, default_timeout=120)
    at.session_state["lang"] = lang  # the sidebar switch (the link's ?lang= is tested with a reload below)
    at.run()
    _ok(at)
    key = "task" if lang == "zh" else "task@en"
    assert at.radio(key=key).value == "classification"
    assert at.session_state["_choice_dataset_classification_breast"] == "BUSI"  # the served one, not the demo pick
    assert not at.info, [i.value for i in at.info]  # no "no model" on the first screen
    at.button(key="random_sample").click().run()
    at.button(key="run").click().run()
    _ok(at)
    assert _result_shown(at, lang)
    provenance = next(c.value for c in at.caption if c.value.startswith(i18n.t("provenance", lang, task="", organ="",
                      dataset="", model="", image="", edits="").split("：")[0].split(":")[0]))
    assert "BUSI" in provenance and "tiny" in provenance and i18n.t("edits_none", lang) in provenance
    assert [m.label for m in at.metric].count(i18n.t("click_to_result", lang)) == 1
    assert dict(at.query_params) == {"lang": [lang], "task": ["classification"], "organ": ["breast"],
                                     "dataset": ["BUSI"]} or at.query_params["dataset"] in ("BUSI", ["BUSI"])


def test_a_result_is_marked_stale_after_a_rotation_and_cleared_after_an_organ_change(app):
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.button(key="random_sample").click().run()
    app.button(key="run").click().run()
    _ok(app)
    assert _result_shown(app) and not _stale(app)
    app.select_slider(key="rot90").set_value(90).run()
    stale = _stale(app)
    assert len(stale) == 1 and i18n.t("changed_edits", "zh") in stale[0]
    app.select_slider(key="rot90").set_value(0).run()  # back to what was analysed: current again
    assert _result_shown(app) and not _stale(app)
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("scan.png", _png((60, 40)), "image/png").run()
    app.button(key="run").click().run()
    assert _result_shown(app)
    app.selectbox(key="organ_segmentation").set_value("kidney").run()  # no model: the old result must go
    _ok(app)
    assert not _result_shown(app) and "result" not in app.session_state
    assert any("KidneyUS" in i.value for i in app.info)


def test_an_upload_belongs_to_the_organ_it_was_made_under(app):
    """Issue 23 item 2: after switching organ the page offered the previous organ's upload with Run enabled; now
    the upload is set aside with a notice until the user confirms it for the new dataset."""
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("neck.png", _png((60, 40)), "image/png").run()
    assert app.button(key="run") is not None
    app.radio(key="task").set_value("classification").run()  # BUSI classification: served, another dataset
    assert not app.exception and all(b.key != "run" for b in app.button)
    warnings = [w.value for w in app.warning]
    assert any("neck.png" in w and "DDTI" in w and "BUSI" in w for w in warnings), warnings
    app.button(key="image_use_here").click().run()  # the user confirms: now it is a BUSI image
    assert app.button(key="run") is not None
    app.button(key="run").click().run()
    _ok(app)
    assert _runs(app)[0]["dataset_name"] == "BUSI"


def test_reload_keeps_the_selection_through_the_url(dashboard_env):
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    _choose(at, "segmentation", "thyroid", "DDTI")
    params = {k: at.query_params[k] for k in ("task", "organ", "dataset")}
    assert {k: (v[0] if isinstance(v, list) else v) for k, v in params.items()} == \
        {"task": "segmentation", "organ": "thyroid", "dataset": "DDTI"}
    reloaded = AppTest.from_file(HOME, default_timeout=120)  # a new browser session on the same link
    for name, value in [*params.items(), ("lang", "en")]:
        reloaded.query_params[name] = value[0] if isinstance(value, list) else value
    reloaded.run()
    _ok(reloaded)
    assert reloaded.session_state["lang"] == "en" and i18n.t("nav_analyze", "en") in reloaded.title[0].value
    assert reloaded.radio(key="task@en").value == "segmentation"
    assert reloaded.selectbox(key="organ_segmentation@en").value == "thyroid"
    assert reloaded.selectbox(key="dataset_segmentation_thyroid@en").value == "DDTI"


@pytest.mark.parametrize("params, what, value", [
    ((("task", "segmentation"), ("organ", "../../etc"), ("dataset", "nope")), "organ", "../../etc"),
    ((("task", "segmentation"), ("organ", "head")), "organ", "head"),
    ((("task", "segmentation"), ("organ", "thyroid"), ("dataset", "BUS-BRA")), "dataset", "BUS-BRA"),
    ((("task", "diagnosis"),), "task", "diagnosis"),
], ids=["path", "head", "dataset-of-another-organ", "task"])
def test_an_invalid_link_value_is_a_visible_error_never_a_silent_fallback(dashboard_env, params, what, value):
    """Issue 23 item 2: ``organ=head`` silently fell back to breast; now the page says so until the user chooses."""
    at = AppTest.from_file(HOME, default_timeout=120)
    for name, given in (*params, ("lang", "en")):
        at.query_params[name] = given
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and i18n.t(f"link_what_{what}", "en") in errors[0] and value in errors[0], errors
    other = next(t for t in ("classification", "segmentation") if t != at.radio(key="task@en").value)
    at.radio(key="task@en").set_value(other).run()  # the user chooses: the link's mistake is gone
    assert not at.error


def test_no_server_path_on_analyze_error_states(app):
    root, workspace = str(app.settings.data_root), str(app.settings.workspace)
    _choose(app, "segmentation", "thyroid", "DDTI")
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("broken scan.png", b"not an image", "image/png").run()
    assert not app.exception
    shown = [e.value for e in [*app.info, *app.error, *app.warning, *app.caption, *app.markdown]]
    assert any("broken scan.png" in text for text in shown)
    _choose(app, "segmentation", "kidney", "KidneyUS")  # no model, no images
    assert not app.exception
    shown += [e.value for e in [*app.info, *app.error, *app.warning, *app.caption, *app.markdown]]
    assert not any(root in text or workspace in text or "<upload>" in text for text in shown), shown


def test_a_large_image_is_edited_on_a_proxy_and_analysed_at_full_resolution(app):
    from core.editing import PROXY_MAX_SIDE

    _choose(app, "segmentation", "thyroid", "DDTI")
    app.radio(key="source").set_value("upload").run()
    picture = Image.fromarray((np.random.default_rng(3).random((1500, 2200, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    app.file_uploader(key="upload").upload("big scan.png", buffer.getvalue(), "image/png").run()
    _ok(app)
    proxy = app.session_state["image"]["proxy"]
    assert max(proxy.size) == PROXY_MAX_SIDE and proxy.size == (1024, 698)
    app.select_slider(key="rot90").set_value(90).run()
    app.checkbox(key="crop_on").check().run()
    app.button(key="run").click().run()
    _ok(app)
    edits = app.session_state["result"]["edits"]
    box = next(e["box"] for e in edits if e["op"] == "crop")
    saved = Image.open(_saved_inputs(app)[-1])
    assert saved.size == (box[2] - box[0], box[3] - box[1])
    assert saved.size[0] > PROXY_MAX_SIDE * 0.5 and saved.size[1] > PROXY_MAX_SIDE * 0.5  # full-resolution pixels
    expected = picture.transpose(Image.Transpose.ROTATE_90).crop(box)
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(expected))
    caption = next(c.value for c in app.caption if c.value.startswith(i18n.t("edited_size", "zh", w=0, h=0)[:4]))
    assert caption == i18n.t("edited_size", "zh", w=saved.size[0], h=saved.size[1])


@pytest.mark.parametrize("angle", [0.0, 12.5, -33.0])
@pytest.mark.parametrize("full_size", [(4000, 2700), (1031, 17)])
def test_a_crop_drawn_on_the_proxy_maps_exactly_onto_the_full_resolution_image(full_size, angle):
    from core import editing
    from core.editing import edited_size, full_resolution_edits, proxy_of, scale_box

    full = Image.new("L", full_size)
    proxy = proxy_of(full)
    assert max(proxy.size) <= 1024
    turns = editing.build_edits(quarter_turns=1, angle=angle, flip_horizontal=True)
    proxy_turned = editing.apply_edits(proxy, turns)
    full_turned = editing.apply_edits(full, turns)
    assert edited_size(full_size, turns) == full_turned.size
    rng = np.random.default_rng(int(angle * 10) + full_size[0])
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, proxy_turned.width + 1, 2))
        y0, y1 = sorted(rng.integers(0, proxy_turned.height + 1, 2))
        box = [int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))]
        edits = full_resolution_edits(full_size, turns, box, proxy_turned.size)
        full_box = edits[-1]["box"]
        sx, sy = full_turned.width / proxy_turned.width, full_turned.height / proxy_turned.height
        for got, want in zip(full_box, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), strict=True):
            assert abs(got - want) <= 0.5 + 1e-9 or got in (0, full_turned.width, full_turned.height)
        assert edited_size(full_size, edits) == editing.crop(full_turned, full_box).size
    whole = full_resolution_edits(full_size, turns, [0, 0, *proxy_turned.size], proxy_turned.size)
    assert whole[-1]["box"] == [0, 0, *full_turned.size]  # the whole preview is the whole image
    assert scale_box([0, 0, 10, 10], (10, 10), (10, 10)) == [0, 0, 10, 10]
