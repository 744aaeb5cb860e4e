"""History, Batch and Models & System pages (issue 12; issue 11 §5-6 on History) through ``AppTest`` on the real
engine (the tiny TorchScript model of ``tiny_settings``), plus the history's flat CSV columns and local time.

Runs are made through the real service (``open_service``) so these tests do not depend on the Analyze page.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from conftest import dicom_bytes, ultrasound_dicom
from PIL import Image

from core import i18n
from core.history import HistoryStore, record_run
from core.history_format import display_name, local_time
from core.runs_table import history_csv
from core.settings import PROJECT_ROOT, Settings

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

HOME = str(PROJECT_ROOT / "Home.py")


# ---------------------------------------------------------------------------------------------- core.history
SEG_RESPONSE = {
    "task": "segmentation", "dataset_name": "Fetal_HC", "organ": "Head", "img_path_relative": "api_in/a-1.png",
    "mask_area_px": 1200, "pixel_spacing_mm": 0.15, "pixel_spacing_source": "user", "frame_index": 3,
    "frame_count": 10, "measurements": {"area_px": 1200, "area_mm2": 27.0, "head_circumference_px": 130.5,
                                        "head_circumference_mm": 19.575, "longest_diameter_px": 44.0,
                                        "pixel_spacing_mm": 0.15, "empty": False, "ellipse": {"a": 1}},
}


def _csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_has_flat_measurement_columns_with_units_next_to_the_json(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    request = {"task": "segmentation", "dataset_name": "Fetal_HC", "img_path_relative": "api_in/a-1.png",
               "original_name": "=HYPERLINK(\"x\").png"}
    record_run(store, request, SEG_RESPONSE, source="dashboard")
    record_run(store, {"task": "classification", "dataset_name": "BUSI", "img_path_relative": "x.png"},
               {"task": "classification", "prediction": 1, "probability": [0.2, 0.8]}, source="api")
    text = history_csv(store.list())
    header = next(csv.reader(io.StringIO(text)))
    flat = ["area_px", "area_mm2", "longest_diameter_px", "head_circumference_px", "head_circumference_mm",
            "pixel_spacing_mm", "pixel_spacing_source", "frame_index", "frame_count", "original_name"]
    assert [h for h in header if h in flat] == flat  # the known measurements in order, then the run fields
    assert header.index("area_px") > header.index("purged_at")  # after the store's columns
    seg, cls = sorted(_csv_rows(text), key=lambda r: r["task"], reverse=True)
    assert seg["area_px"] == "1200" and seg["area_mm2"] == "27.0" and seg["head_circumference_mm"] == "19.575"
    assert seg["pixel_spacing_mm"] == "0.15" and seg["pixel_spacing_source"] == "user"
    assert seg["frame_index"] == "3" and seg["frame_count"] == "10"
    assert json.loads(seg["measurements"])["area_px"] == 1200  # the JSON stays
    assert seg["original_name"].startswith("'=HYPERLINK")  # neutralised like every text cell
    assert "ellipse" not in header and "empty" not in header
    assert cls["area_px"] == "" and cls["head_circumference_mm"] == ""
    store.close()


def test_local_time_shows_the_zone_and_display_name_prefers_the_users_name(monkeypatch):
    stamp = "2026-01-31T23:30:00.000+00:00"
    assert local_time(stamp, "Asia/Shanghai") == "2026-02-01 07:30:00 CST"
    assert local_time(stamp, "UTC") == "2026-01-31 23:30:00 UTC"
    zone = Settings.from_env({"UUSIC_TIMEZONE": "Europe/Berlin"}).timezone  # the setting the History page passes
    assert local_time(stamp, zone) == "2026-02-01 00:30:00 CET"
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # no setting, or an unknown name: TZ, else the server's zone
    assert local_time(stamp) == "2026-02-01 05:00:00 IST"
    assert local_time(stamp, "Nowhere/Else") == "2026-02-01 05:00:00 IST"
    assert local_time("not a time") == "not a time" and local_time(None) == ""
    row = {"img_name": "a-1f2e3d.png", "request": json.dumps({"original_name": "Patient scan.png"})}
    assert display_name(row) == "Patient scan.png"
    assert display_name({"img_name": "a-1f2e3d.png", "request": "not json"}) == "a-1f2e3d.png"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture()
def analysis(dashboard_env):
    from core.client import open_service

    return open_service(dashboard_env)


def _sample(service, task: str, dataset: str, name: str | None = None) -> dict:
    request = {**service.random_sample(task, dataset), "task": task, "dataset_name": dataset}
    if name:
        request["original_name"] = name
    return request


def _open(lang: str = "zh", page: str = "pages/history.py") -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=120)
    at.session_state["lang"] = lang
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> list[str]:
    """Everything the page shows as text (Markdown, tables, dataframes, labels, options)."""
    shown = [str(e.value) for kind in ("markdown", "caption", "subheader", "title", "info", "warning", "error",
                                        "success", "text", "json", "metric") for e in at.get(kind)]
    shown += [str(t.value.to_dict()) for t in at.table] + [str(d.value.to_dict()) for d in at.dataframe]
    shown += [str(getattr(w, "label", "")) for kind in ("selectbox", "button", "text_input", "number_input", "radio")
              for w in at.get(kind)]
    for box in at.selectbox:
        shown += [str(o) for o in box.options]
    return shown


def _no_server_paths(at: AppTest, settings) -> None:
    folders = {str(p) for p in (settings.workspace, settings.data_root, settings.weights_dir)}
    folders |= {str(Path(p).resolve()) for p in folders}
    for text in _texts(at):
        assert not any(folder in text for folder in folders), text


def _column_labels(frame) -> dict[str, str]:
    config = json.loads(frame.proto.columns or "{}")
    return {name: (spec or {}).get("label") for name, spec in config.items() if not name.startswith("_")}


def _reopen(at: AppTest, run_id: int) -> AppTest:
    at.selectbox(key="h_reopen").set_value(run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---------------------------------------------------------------------------------------------- History
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_history_columns_filters_and_times_are_translated(analysis, lang):
    analysis.analyze(_sample(analysis, "segmentation", "DDTI", "my scan.png"), source="dashboard")
    analysis.analyze(_sample(analysis, "classification", "BUSI"), source="api")
    at = _open(lang)
    frame = at.dataframe[0]
    labels = _column_labels(frame)
    assert list(frame.proto.column_order)[:3] == ["id_shown", "timestamp_shown", "source_shown"]
    for column in ("timestamp", "img_name", "dataset_name", "organ", "task", "source"):
        assert labels[f"{column}_shown"] == i18n.t(f"hcol_{column}", lang)
    shown = frame.value
    assert "my scan.png" in set(shown["img_name_shown"])  # the user's name, not the stored one
    assert set(shown["img_name"]) != set(shown["img_name_shown"])  # stored names stay unique underneath
    assert all(t.endswith(("UTC", "CST", "CET", "IST")) or "UTC" in t or t[-3:].isalpha()
               for t in shown["timestamp_shown"])
    assert not any("T" in t.split(" ")[0] for t in shown["timestamp_shown"])  # no raw ISO
    assert i18n.t("src_dashboard", lang) in set(shown["source_shown"])
    assert "None" not in {str(v) for column in labels for v in shown[column]}
    organ = at.selectbox(key="h_organ")
    assert set(organ.options) == {i18n.t("all", lang), i18n.group_name("breast", lang),
                                  i18n.group_name("thyroid", lang)}  # the formatted (shown) options
    assert any(i18n.t("h_time_zone", lang, zone="")[:4] in c.value for c in at.caption)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_reopening_a_segmentation_run_shows_overlay_measurements_and_spacing(analysis, lang):
    request = {**_sample(analysis, "segmentation", "DDTI", "neck.png"), "pixel_spacing_mm": 0.1,
               "pixel_spacing_source": "user"}
    response = analysis.analyze(request, source="dashboard")
    at = _open(lang)
    _reopen(at, response.run_id)
    assert len(at.get("imgs") or at.get("image")) >= 1
    assert i18n.t("measurements", lang) in [s.value for s in at.subheader]
    table = at.table[0].value
    names = list(table[i18n.t("measure_name", lang)])
    assert i18n.measure_label("area", lang) in names and i18n.measure_label("longest_diameter", lang) in names
    px = table[f"{i18n.t('measure_value', lang)} (px)"].iloc[0]
    mm = table[f"{i18n.t('measure_value', lang)} (mm)"].iloc[0]
    area = response.measurements["area_px"]
    assert px == f"{area:,.1f} px²" and mm == f"{area * 0.01:,.2f} mm²"
    spacing = i18n.t("h_spacing", lang, spacing="0.1", source=i18n.t("cl_source_user", lang))
    assert spacing in [c.value for c in at.caption]
    title = i18n.t("h_run_title", lang, n=response.run_id, name="", time="").split("·")[0]
    assert any(title in m.value and "neck.png" in m.value for m in at.markdown)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_reopening_a_classification_run_shows_class_names_and_chart(analysis, lang):
    response = analysis.analyze(_sample(analysis, "classification", "BUSI"), source="api")
    at = _open(lang)
    _reopen(at, response.run_id)
    names = i18n.class_names("classification", "BUSI", lang)
    assert any(names[int(response.prediction)] in s.value for s in at.subheader)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert figure["data"][0]["x"] == names
    assert [round(v, 6) for v in figure["data"][0]["y"]] == [round(float(p), 6) for p in response.probability]


def test_reference_and_uncertainty_blocks_are_shown_when_recorded(analysis):
    response = analysis.analyze(_sample(analysis, "segmentation", "DDTI"), source="dashboard").to_json()
    measured = response["measurements"]
    response["reference"] = {"source": "ground_truth_mask", "measurements": {"area_px": measured["area_px"] + 10},
                             "difference": {"area_px": -10.0}}
    response["uncertainty"] = {"views": 4, "agreement_mean": 0.875,
                               "measurement_spread": {"area_px": {"mean": 100.0, "min": 90.0, "max": 110.0,
                                                                  "sd": 7.5}}}
    run_id = record_run(analysis.store, {"task": "segmentation", "dataset_name": "DDTI",
                                         "img_path_relative": response["img_path_relative"]}, response, source="api")
    at = _open("en")
    _reopen(at, run_id)
    subheaders = [s.value for s in at.subheader]
    assert i18n.t("cl_reference_title", "en") in subheaders and i18n.t("cl_uncertainty", "en", n=4) in subheaders
    tables = [t.value.to_dict("records") for t in at.table]
    assert any(r.get(i18n.t("cl_difference", "en")) == "-10.00" for rows in tables for r in rows)
    assert any(r.get(i18n.t("cl_stat_sd", "en")) == "7.50" for rows in tables for r in rows)
    assert [m.value for m in at.metric if m.label == i18n.t("cl_agreement", "en")] == ["0.875"]


def test_a_run_whose_files_are_gone_says_so_without_server_paths(analysis, dashboard_env):
    response = analysis.analyze(_sample(analysis, "segmentation", "DDTI", "gone.png"), source="dashboard")
    Path(response.mask_path).unlink()
    at = _open("en")
    _reopen(at, response.run_id)
    warnings = [w.value for w in at.warning if w.value != i18n.t("demo_banner", "en")]
    assert warnings and warnings[0].startswith(i18n.t("reopen_unavailable", "en", message=""))
    _no_server_paths(at, dashboard_env)


def test_report_pdf_and_dicom_seg_downloads(analysis, dashboard_env, monkeypatch):
    response = analysis.analyze(_sample(analysis, "segmentation", "DDTI"), source="dashboard")
    at = _open("en")
    _reopen(at, response.run_id)
    assert i18n.t("h_seg_not_dicom", "en") in [c.value for c in at.caption]  # a PNG input: no DICOM SEG
    at.button(key="h_make_pdf").click().run()
    assert not at.exception
    made = at.session_state[f"_h_pdf_{response.run_id}_en"]
    if isinstance(made, bytes):
        assert made.startswith(b"%PDF") and at.get("download_button")
    else:  # the report library is missing here: a clear message, never a traceback
        assert any(w.value.startswith(i18n.t("h_report_error", "en", message="")) for w in at.warning)


def test_a_failing_report_shows_the_message_without_paths(analysis, dashboard_env, monkeypatch):
    from core.errors import RequestError
    from core.service import AnalysisService

    secret = str(dashboard_env.workspace / "api_out" / "x.pdf")

    def broken(self, run_id, lang="en"):
        raise RequestError(f"run {run_id} failed; there is no result to report ({secret})")

    monkeypatch.setattr(AnalysisService, "report_pdf", broken)
    response = analysis.analyze(_sample(analysis, "classification", "BUSI"), source="dashboard")
    at = _open("zh")
    _reopen(at, response.run_id)
    at.button(key="h_make_pdf").click().run()
    warnings = [w.value for w in at.warning if w.value.startswith(i18n.t("h_report_error", "zh", message=""))]
    assert warnings and i18n.error_text("RequestError", None, "zh") in warnings[0]  # Chinese words, by error code
    assert any("there is no result to report" in t.value for t in at.text)  # the English detail, folded
    _no_server_paths(at, dashboard_env)


def test_two_runs_of_the_same_image_side_by_side_with_linked_zoom(analysis):
    request = _sample(analysis, "segmentation", "DDTI", "same.png")
    first = analysis.analyze(request, source="dashboard")
    second = analysis.analyze(request, source="api", model="tiny_letterbox")
    other = analysis.analyze(_sample(analysis, "classification", "BUSI"), source="api")
    at = _open("en")
    _reopen(at, second.run_id)
    box = at.selectbox(key="h_compare")
    assert box.options[1:] and all(f"#{first.run_id} " in o for o in box.options[1:])  # same image only
    assert f"#{other.run_id} " not in " ".join(box.options)
    box.set_value(first.run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    images = [t for t in figure["data"] if t["type"] == "image"]
    assert len(images) == 2
    layout = figure["layout"]
    assert layout["xaxis2"]["matches"] == "x" and layout["yaxis2"]["matches"] == "y"  # linked zoom
    numbers = at.table[-1].value
    assert {f"A · #{second.run_id}", f"B · #{first.run_id}"} <= set(numbers.columns)
    area = numbers[numbers[i18n.t("measure_name", "en")] == f"{i18n.measure_label('area', 'en')} (px²)"]
    assert area.iloc[0][f"A · #{second.run_id}"] == f"{float(second.measurements['area_px']):,.2f}"
    assert area.iloc[0][f"B · #{first.run_id}"] == f"{float(first.measurements['area_px']):,.2f}"
    models = numbers[numbers[i18n.t("measure_name", "en")] == i18n.t("model_pick", "en")].iloc[0]
    assert models[f"A · #{second.run_id}"] == "tiny_letterbox" and models[f"B · #{first.run_id}"] == "tiny"


# ---------------------------------------------------------------------------------------------- Batch
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_a_cine_analysis_is_one_history_entry_with_its_frames_numbered_from_1(analysis, lang):
    """Issue 23 §8: "analyse all" stores one row per frame (one batch id) but History shows one entry, folded out
    to a table of its frames numbered from 1, and the readable CSV has a frame column."""
    from core.runs_table import cine_groups, readable_csv

    skeleton = analysis.save_upload(dicom_bytes(ultrasound_dicom(frames=4)), "loop.dcm")
    result = analysis.analyze_frames({**skeleton, "task": "segmentation", "dataset_name": "DDTI"},
                                     source="dashboard")
    still = analysis.analyze(_sample(analysis, "segmentation", "DDTI", "still.png"), source="dashboard")
    rows = analysis.runs()
    assert len(rows) == 5 and len({r["batch_id"] for r in rows if r["batch_id"]}) == 1  # stored: one per frame
    assert [len(e) for e in cine_groups(rows)] == [1, 4]
    at = _open(lang)
    shown = at.dataframe[0].value
    assert len(shown) == 2  # the cine is one entry
    cine = shown[shown["id_shown"] != still.run_id].iloc[0]
    assert cine["frames_shown"] == i18n.t("h_cine_frames", lang, n=4)
    assert shown[shown["id_shown"] == still.run_id].iloc[0]["frames_shown"] == "—"
    assert "frames_shown" in list(at.dataframe[0].proto.column_order)
    assert i18n.t("hcol_frames", lang) in _column_labels(at.dataframe[0]).values()
    assert [e.label for e in at.expander if "loop.dcm" in e.label]  # the cine, folded under the table
    frames = at.dataframe[1].value
    assert list(frames[i18n.t("h_frame_col", lang)]) == [1, 2, 3, 4]
    assert list(frames[i18n.t("hcol_id", lang)]) == [item.run_id for item in result.items]
    # re-opening the entry offers its frames, numbered from 1
    at = _reopen(at, int(cine["id_shown"]))
    picker = at.selectbox(key="h_reopen_frame")
    assert picker.options[0] == i18n.t("h_frame", lang, k=1, n=4) and len(picker.options) == 4
    picker.set_value(result.items[2].run_id).run()
    assert not at.exception and any(i18n.t("h_frame", lang, k=3, n=4) in c.value for c in at.caption)
    # the readable CSV: one row per frame, with its frame
    table = _csv_rows(readable_csv(rows, lang).lstrip("\ufeff"))
    column = i18n.t("h_frame_col", lang) if lang == "en" else "帧"
    assert sorted(r[column] for r in table if r[column]) == ["1 / 4", "2 / 4", "3 / 4", "4 / 4"]


def _png(size, color=(40, 80, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_batch_defaults_to_a_served_dataset_and_marks_the_others(dashboard_env, lang):
    at = _open(lang, "pages/batch.py")
    task_key = "b_task" if lang == "zh" else "b_task@en"
    task = at.radio(key=task_key).value
    box = at.selectbox(key=f"b_dataset_{task}")
    assert (task, box.value) in {("classification", "BUSI"), ("segmentation", "DDTI")}
    shown = list(box.options)  # as shown
    served = [s for s in shown if not s.endswith(i18n.t("no_model_mark", lang))]
    assert shown[: len(served)] == served and len(served) < len(shown)  # served first, the others marked
    assert at.number_input(key="b_limit").label == i18n.t("b_limit", lang) if at.number_input else True


def test_batch_table_zip_names_and_a_failed_batch_clears_the_success(dashboard_env):
    at = _open("en", "pages/batch.py")
    at.radio(key="b_task@en").set_value("segmentation").run()
    at.selectbox(key="b_dataset_segmentation").set_value("DDTI").run()
    files = [("scan.png", _png((40, 30)), "image/png"), ("scan.png", _png((33, 50), (9, 9, 9)), "image/png"),
             ("other.png", _png((20, 20), (200, 1, 1)), "image/png")]
    at.file_uploader(key="b_files").set_value(files).run()
    at.button(key="b_run").click().run()
    assert not at.exception and at.success
    frame = at.dataframe[0]
    labels = _column_labels(frame)
    assert labels["image_shown"] == i18n.t("bcol_image", "en") and labels["mask_area_px"] == "Mask area (px²)"
    shown = frame.value
    assert sorted(shown["image_shown"]) == ["other.png", "scan.png", "scan.png"]
    assert list(shown["prediction_shown"]) == ["—"] * 3 and list(shown["error_shown"]) == ["—"] * 3
    with zipfile.ZipFile(io.BytesIO(at.session_state["batch"]["zip"])) as archive:
        names = set(archive.namelist())
        index = list(csv.DictReader(io.StringIO(archive.read("names.csv").decode())))
    assert {"masks/scan_mask.png", "masks/scan_mask (2).png", "masks/other_mask.png"} <= names
    assert sorted(r["original_name"] for r in index) == ["other.png", "scan.png", "scan.png"]
    assert all(r["img_path_relative"].startswith("api_in/") for r in index)
    # a batch whose every request fails: the earlier success message goes, an error says why
    at.radio(key="b_source@en").set_value("json").run()
    bad = json.dumps([{"task": "segmentation", "dataset_name": "DDTI", "img_path_relative": "nope/missing.png"}])
    at.file_uploader(key="b_json_upload").set_value([("bad.json", bad.encode(), "application/json")]).run()
    at.button(key="b_run_json").click().run()
    assert not at.exception
    assert not at.success
    assert any(e.value == i18n.t("batch_failed_all", "en", n=1) for e in at.error)
    assert "None" not in set(at.dataframe[0].value["error_shown"])
    _no_server_paths(at, dashboard_env)


# ---------------------------------------------------------------------------------------------- Models
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_models_page_is_translated_and_names_no_server_folder(dashboard_env, lang):
    at = _open(lang, "pages/models.py")
    assert not at.error
    texts = _texts(at)
    assert any(i18n.t("m_cuda", lang, value=i18n.t("m_no", lang)) in t or
               i18n.t("m_cuda", lang, value=i18n.t("m_yes", lang)) in t for t in texts)
    if lang == "zh":
        assert not any("CUDA available" in t for t in texts)
    labels = _column_labels(at.dataframe[0])
    assert labels["name"] == i18n.t("m_name", lang) and labels["loaded"] == i18n.t("m_loaded", lang)
    info = at.table[0].value
    assert list(info.columns) == [i18n.t("m_field", lang), i18n.t("m_value", lang)]
    assert "tiny" in set(info[i18n.t("m_value", lang)])
    _no_server_paths(at, dashboard_env)


def test_the_demo_models_description_is_translated():
    zh = i18n.t("model_desc_uusic-demo-unet", "zh")
    manifest = json.loads((PROJECT_ROOT / "weights" / "models.json").read_text())
    english = next(m["description"] for m in manifest if m["name"] == "uusic-demo-unet")
    assert i18n.t("model_desc_uusic-demo-unet", "en") == english and "仅供演示" in zh


def test_dicom_seg_download_for_a_segmentation_of_a_dicom_input(analysis, dashboard_env):
    pydicom = pytest.importorskip("pydicom")
    relative = "segmentation/DDTI/imgs/us_scan.dcm"
    (dashboard_env.data_root / relative).write_bytes(dicom_bytes(ultrasound_dicom()))
    response = analysis.analyze({"img_path_relative": relative, "task": "segmentation", "dataset_name": "DDTI"},
                                source="dashboard")
    at = _open("en")
    _reopen(at, response.run_id)
    assert i18n.t("h_seg_not_dicom", "en") not in [c.value for c in at.caption]
    at.button(key="h_make_seg").click().run()
    assert not at.exception
    made = at.session_state[f"_h_seg_{response.run_id}_en"]
    if isinstance(made, str):  # the DICOM SEG library is missing here: its message, no server path
        assert any(w.value.startswith(i18n.t("cl_seg_unavailable", "en", message="")) for w in at.warning)
        _no_server_paths(at, dashboard_env)
        return
    assert pydicom.dcmread(io.BytesIO(made)).Modality == "SEG"
    assert [b.label for b in at.get("download_button") if b.key == "h_seg"] == [i18n.t("cl_dicom_seg", "en")]
