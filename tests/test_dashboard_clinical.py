"""Issue 11 on the Analyze page (``pages/clinical.py``) through AppTest on the real engine (tiny TorchScript model):
calibration, TTA, the reference, the report download and a cine upload (a generated multi-frame DICOM)."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

from core import i18n
from core.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "tests"))

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest
from test_dashboard_apptest import _remote_app, api_server

__all__ = ["api_server"]  # a fixture (a real API server) from the dashboard tests
HOME = str(PROJECT_ROOT / "Home.py")
ZH = "zh"


def _t(key: str, **values) -> str:
    return i18n.t(key, ZH, **values)


def cine_dicom(frames: int = 6, size: int = 64, spacing_mm: float | None = 0.2,
               region_cm: float | None = None) -> bytes:
    """A multi-frame 8-bit DICOM of a bright disc whose radius grows and shrinks (a beating "ventricle")."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("cine.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "US", "Cine^Test", "CINE1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameTime = 40.0  # ms: 25 frames/s
    if spacing_mm:
        ds.PixelSpacing = [spacing_mm, spacing_mm]
    if region_cm:  # the ultrasound region's physical deltas (cm per pixel, units code 3)
        from pydicom.dataset import Dataset

        region = Dataset()
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = region.PhysicalDeltaY = region_cm
        ds.SequenceOfUltrasoundRegions = [region]
    yy, xx = np.mgrid[0:size, 0:size]
    stack = []
    for index in range(frames):
        radius = size * (0.18 + 0.12 * abs(np.sin(np.pi * index / frames)))
        disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius ** 2
        stack.append((20 + disc * 200).astype(np.uint8))
    ds.PixelData = np.stack(stack).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture()
def app(dashboard_env):
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.settings = dashboard_env
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _sample(at: AppTest, task: str, group: str, dataset: str) -> AppTest:
    at.radio(key="task").set_value(task).run()
    at.selectbox(key=f"organ_{task}").set_value(group).run()
    at.selectbox(key=f"dataset_{task}_{group}").set_value(dataset).run()
    at.button(key="random_sample").click().run()
    return _ok(at)


def _by_label(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}: {[w.label for w in widgets]}"
    return found[0]


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def _service(at: AppTest):
    from core.service import AnalysisService

    return AnalysisService(at.settings)


def _last_run(at: AppTest) -> dict:
    from core.history import HistoryStore

    rows = HistoryStore(at.settings.history_db).list()
    assert rows, "no run recorded"
    row = rows[0] if rows[0]["id"] > rows[-1]["id"] else rows[-1]
    return {k: json.loads(v) if k in ("request", "response") and isinstance(v, str) else v for k, v in row.items()}


# ------------------------------------------------------------------------------------------------ calibration
def test_entered_spacing_gives_mm_with_its_source_beside_them(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    assert _t("cl_spacing_none") in _captions(app)  # the tiny data root has no spacing for DDTI
    _by_label(app.radio, _t("cl_spacing_mode")).set_value("user").run()
    _by_label(app.number_input, _t("cl_enter_spacing")).set_value(0.25).run()
    _ok(app)
    assert not app.error
    shown = _t("cl_spacing_value", spacing="0.25", source=_t("cl_source_user"))
    assert _t("cl_spacing_used", text=shown) in _captions(app)
    app.button(key="run").click().run()
    _ok(app)
    response = app.session_state["result"]["response"]
    measurements = response["measurements"]
    assert response["pixel_spacing_mm"] == pytest.approx(0.25)
    assert response.get("pixel_spacing_source") == "user"
    assert measurements["area_mm2"] == pytest.approx(measurements["area_px"] * 0.0625)
    assert _t("cl_mm_note", text=shown) in _captions(app)  # beside the measurement table
    assert _last_run(app)["request"]["pixel_spacing_source"] == "user"


def test_the_typed_mode_records_nothing_until_a_value_is_typed_and_keeps_it_across_modes(app):
    """Issue 23 item 1: opening "enter mm/px" showed 0.1 and recorded it as typed by the user; a mode switch lost
    the typed value. Now: empty until typed (not calibrated), and the typed value survives switches and reruns."""
    _sample(app, "segmentation", "thyroid", "DDTI")
    mode = lambda: _by_label(app.radio, _t("cl_spacing_mode"))  # noqa: E731 - the widget is re-read after each run
    mode().set_value("user").run()
    field = _by_label(app.number_input, _t("cl_enter_spacing"))
    assert field.value is None and _t("cl_not_typed") in _captions(app)
    assert _t("cl_spacing_used", text=_t("cl_spacing_none")) in _captions(app)
    app.button(key="run").click().run()
    _ok(app)
    assert app.session_state["result"]["response"].get("pixel_spacing_mm") is None  # nothing invented
    assert _last_run(app)["request"].get("pixel_spacing_source") is None  # not "user"
    _by_label(app.number_input, _t("cl_enter_spacing")).set_value(0.2).run()
    for other in ("line", "none", "auto", "user"):  # away and back: the typed value is still there
        mode().set_value(other).run()
    assert _by_label(app.number_input, _t("cl_enter_spacing")).value == pytest.approx(0.2)
    shown = _t("cl_spacing_value", spacing="0.2", source=_t("cl_source_user"))
    assert _t("cl_spacing_used", text=shown) in _captions(app)
    mode().set_value("line").run()  # a line needs two points and a typed distance: no default 10 mm
    assert _by_label(app.number_input, _t("cl_line_length")).value is None
    assert _t("cl_spacing_used", text=_t("cl_spacing_none")) in _captions(app)


def test_implausible_spacing_shows_the_cores_error(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    _by_label(app.radio, _t("cl_spacing_mode")).set_value("user").run()
    _by_label(app.number_input, _t("cl_enter_spacing")).set_value(5.0).run()
    _ok(app)
    errors = [e.value for e in app.error]
    assert any(_t("cl_spacing_error", message="").split("{")[0] in e and "0.01" in e and "2 mm" in e
               for e in errors), errors
    assert not any("not a plausible" in e for e in errors), errors  # issue 23 item 6: Chinese words, by error code
    assert _t("error_detail") in [x.label for x in app.expander]  # the English detail, folded
    assert any("not a plausible" in t.value for t in app.text)


def test_no_spacing_mode_gives_pixels_only(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    _by_label(app.radio, _t("cl_spacing_mode")).set_value("none").run()
    app.button(key="run").click().run()
    _ok(app)
    response = app.session_state["result"]["response"]
    assert response.get("pixel_spacing_mm") is None and "area_mm2" not in response["measurements"]


# ------------------------------------------------------------------------------------------------ TTA, reference
def test_tta_switch_goes_into_the_request_and_the_spread_is_shown(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    app.toggle(key="tta_on").set_value(True).run()
    app.button(key="run").click().run()
    _ok(app)
    result = app.session_state["result"]
    assert result["request"]["tta"] is True
    spread = result["response"].get("uncertainty")
    if not spread:
        pytest.skip("this core reports no TTA uncertainty yet")
    subheaders = [s.value for s in app.subheader]
    assert _t("cl_uncertainty", n=spread["views"]) in subheaders
    assert any(m.label == _t("cl_agreement") for m in app.metric)


def test_tta_error_bars_on_the_classification_chart(app):
    _sample(app, "classification", "breast", "BUSI")
    app.toggle(key="tta_on").set_value(True).run()
    app.button(key="run").click().run()
    _ok(app)
    response = app.session_state["result"]["response"]
    if not response.get("uncertainty"):
        pytest.skip("this core reports no TTA uncertainty yet")
    chart = [c for c in app.get("plotly_chart") if "error_y" in c.proto.spec]
    assert chart, "no error bars on the probability chart"
    table = app.table[-1].value  # mean, min, max, SD per class
    assert list(table.columns) == [_t("class"), _t("cl_stat_mean"), _t("cl_stat_min"), _t("cl_stat_max"),
                                   _t("cl_stat_sd")] and len(table) == 2


def test_reference_of_an_edited_sample_is_measured_by_the_dashboard(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    app.select_slider(key="rot90").set_value(90).run()
    app.button(key="run").click().run()
    _ok(app)
    assert _t("cl_reference_title") in [s.value for s in app.subheader]
    table = app.table[-1].value
    assert _t("cl_difference") in table.columns and len(table) >= 1


def test_unedited_sample_names_its_ground_truth_in_the_request(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    app.button(key="run").click().run()
    _ok(app)
    request = app.session_state["result"]["request"]
    assert request["mask_path_relative"].startswith("segmentation/DDTI/masks/")
    reference = app.session_state["result"]["response"].get("reference")
    if reference is None:
        pytest.skip("this core gives no reference yet")
    assert _t("cl_reference_title") in [s.value for s in app.subheader]
    table = app.table[-1].value
    area = table[table[_t("measure_name")].str.startswith(i18n.measure_label("area", ZH))]
    assert float(area[_t("cl_reference")].iloc[0].replace(",", "")) == pytest.approx(
        reference["measurements"]["area_px"], abs=0.01)


# ------------------------------------------------------------------------------------------------ report
def test_report_download_for_the_run(app):
    _sample(app, "segmentation", "thyroid", "DDTI")
    app.button(key="run").click().run()
    _ok(app)
    service = _service(app)
    if not callable(getattr(service, "report_pdf", None)):
        pytest.skip("this core has no report_pdf yet")
    buttons = [b for b in app.get("download_button") if b.proto.label == _t("cl_report_pdf")]
    assert buttons, "no report download"
    run_id = app.session_state["result"]["run_id"]
    pdf = service.report_pdf(run_id, ZH)
    assert pdf.startswith(b"%PDF")


# ------------------------------------------------------------------------------------------------ cine
def test_cine_upload_slider_and_all_frames(app):
    from core import imaging

    if not hasattr(imaging, "probe_frames") or not callable(getattr(_service(app), "analyze_frames", None)):
        pytest.skip("this core has no cine support yet")
    app.radio(key="task").set_value("segmentation").run()
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("loop.dcm", cine_dicom(), "application/dicom").run()
    _ok(app)
    assert _t("cl_cine_info", n=6, fps="25.0") in _captions(app)
    slider = _by_label(app.slider, _t("cl_frame"))
    assert (slider.min, slider.max, slider.value) == (1, 6, 1)  # frames numbered from 1, as DICOM does
    slider.set_value(4).run()
    _ok(app)
    assert _t("cl_this_frame", k=4, n=6) in _captions(app)
    app.button(key="cine_all").click().run()
    _ok(app)
    stored = app.session_state["cine_result"]
    assert not stored.get("error"), stored.get("error")
    summary = stored["summary"]
    assert summary["frames"] == list(range(6)) and len(summary["area_px"]) == 6  # stored indices stay 0-based
    shown = {m.label: m.value for m in app.metric}
    assert shown[_t("cl_largest")] == _t("cl_frame_n", k=summary["largest_frame"] + 1)
    assert shown[_t("cl_smallest")] == _t("cl_frame_n", k=summary["smallest_frame"] + 1)
    assert summary["area_mm2"] is not None  # the DICOM's PixelSpacing
    assert any(c.proto.id and "cine_curve" in c.proto.id for c in app.get("plotly_chart"))
    app.button(key="run").click().run()  # "Run analysis" on the frame shown
    _ok(app)
    response = app.session_state["result"]["response"]
    assert response["frame_index"] == 3 and response["frame_count"] == 6


def test_dicom_upload_offers_its_mask_as_dicom_seg(app):
    import pydicom

    if not callable(getattr(_service(app), "dicom_seg", None)):
        pytest.skip("this core has no dicom_seg yet")
    app.radio(key="task").set_value("segmentation").run()
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("still.dcm", cine_dicom(frames=1), "application/dicom").run()
    app.button(key="run").click().run()
    _ok(app)
    result = app.session_state["result"]
    assert result["request"]["source_path_relative"].endswith(".dcm")  # the original DICOM, kept
    seg = result["_clinical"]["seg"]
    assert isinstance(seg, bytes), seg
    assert [b for b in app.get("download_button") if b.proto.label == _t("cl_dicom_seg")]
    dataset = pydicom.dcmread(io.BytesIO(seg))
    assert dataset.Modality == "SEG"


@pytest.mark.server
def test_remote_mode_cine_tta_spacing_and_report(api_server, tiny_settings, tmp_path, monkeypatch):
    """The same widgets over HTTP (ApiClient): frames, all frames, TTA + spacing in the request, the report."""
    at = _remote_app(api_server, tiny_settings, tmp_path / "dashboard_ws", monkeypatch)
    at.radio(key="task").set_value("segmentation").run()
    at.radio(key="source").set_value("upload").run()
    at.file_uploader(key="upload").upload("loop.dcm", cine_dicom(), "application/dicom").run()
    _ok(at)
    _by_label(at.slider, _t("cl_frame")).set_value(3).run()  # frame 3 of 6: frame_index 2
    at.button(key="cine_all").click().run()
    _ok(at)
    stored = at.session_state["cine_result"]
    assert not stored.get("error"), stored.get("error")
    assert stored["summary"]["frames"] == list(range(6))
    _by_label(at.radio, _t("cl_spacing_mode")).set_value("user").run()
    _by_label(at.number_input, _t("cl_enter_spacing")).set_value(0.3).run()
    at.toggle(key="tta_on").set_value(True).run()
    at.button(key="run").click().run()
    _ok(at)
    response = at.session_state["result"]["response"]
    assert response["frame_index"] == 2 and response["pixel_spacing_mm"] == pytest.approx(0.3)
    assert response["pixel_spacing_source"] == "user" and response["uncertainty"]["views"] >= 2
    assert [b for b in at.get("download_button") if b.proto.label == _t("cl_report_pdf")]
    assert any(m.label == _t("cl_agreement") for m in at.metric)


def test_video_upload_plays_as_a_cine_in_pixels(app):
    from test_cine import RADII, disk_video

    app.radio(key="task").set_value("segmentation").run()
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("loop.mp4", disk_video("mp4"), "video/mp4").run()
    _ok(app)
    assert _t("cl_cine_info", n=len(RADII), fps="10.0") in _captions(app)
    app.button(key="cine_all").click().run()
    _ok(app)
    summary = app.session_state["cine_result"]["summary"]
    assert summary["frames"] == list(range(len(RADII))) and summary["area_mm2"] is None  # no spacing in a video
    assert _t("cl_spacing_none") in _captions(app)


def test_classification_cine_gives_a_probability_curve(app):
    app.radio(key="task").set_value("classification").run()
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").upload("loop.dcm", cine_dicom(frames=4), "application/dicom").run()
    app.button(key="cine_all").click().run()
    _ok(app)
    summary = app.session_state["cine_result"]["summary"]
    assert len(summary["probability"]) == 4 and all(len(row) == 2 for row in summary["probability"])
    assert any(c.proto.id and "cine_probability" in c.proto.id for c in app.get("plotly_chart"))


def test_still_dicom_names_the_ultrasound_region_as_its_spacing_source(app):
    app.radio(key="task").set_value("segmentation").run()
    app.radio(key="source").set_value("upload").run()
    dicom = cine_dicom(frames=1, spacing_mm=None, region_cm=0.03)
    app.file_uploader(key="upload").upload("region.dcm", dicom, "application/dicom").run()
    _ok(app)
    shown = _t("cl_spacing_value", spacing="0.3", source=_t("cl_source_dicom_region"))
    assert _t("cl_spacing_used", text=shown) in _captions(app)
    app.button(key="run").click().run()
    _ok(app)
    response = app.session_state["result"]["response"]
    assert response["pixel_spacing_source"] == "dicom_region"
    assert response["pixel_spacing_mm"] == pytest.approx(0.3)


def test_the_segmented_target_is_named_beside_the_overlay_the_measurements_and_the_report(app):
    """Issue 23 item 3: a clinician read CAMUS's "FAC" as the LV's; every place now names what the mask covers."""
    from pypdf import PdfReader

    _sample(app, "segmentation", "thyroid", "DDTI")
    app.button(key="run").click().run()
    _ok(app)
    target = _t("target_named", name="甲状腺结节")
    assert target in _captions(app)
    assert any("甲状腺结节" in m.value for m in app.markdown if "uusic-legend" in m.value)  # the legend
    run_id = app.session_state["result"]["run_id"]
    pdf = _service(app).report_pdf(run_id, "en")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "Segmented target" in text and "thyroid nodule" in text
