"""Case reports (PDF) and DICOM SEG exports of recorded runs: in-process, and over a real uvicorn server."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from conftest import dicom_bytes, serve_api, ultrasound_dicom
from pydicom.uid import (
    SegmentationStorage,
)
from pypdf import PdfReader

from core import i18n, report
from core.dicom_seg import build_seg
from core.errors import ImageError, NotFoundError, PathError, RequestError
from core.service import AnalysisService
from core.settings import Settings

KEY = "report-key-1"
DICOM_REL = "segmentation/DDTI/imgs/us_case.dcm"


def pdf_text(data: bytes) -> str:
    assert data.startswith(b"%PDF-")
    return "\n".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages)


def pdf_image_count(data: bytes) -> int:
    return sum(len(page.images) for page in PdfReader(io.BytesIO(data)).pages)


@pytest.fixture()
def hc_settings(tiny_settings: Settings) -> Settings:
    """The tiny model also serving Fetal_HC, a fetal-head image in the data root and a synthetic DICOM of DDTI."""
    manifest_path = Path(tiny_settings.weights_dir) / "models.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest:
        entry["datasets"].append(["segmentation", "Fetal_HC"])
    manifest_path.write_text(json.dumps(manifest))
    from conftest import write_image

    write_image(Path(tiny_settings.data_root) / "segmentation/Fetal_HC/imgs/hc_1.png", 80, 60, seed=3)
    (Path(tiny_settings.data_root) / DICOM_REL).write_bytes(dicom_bytes(ultrasound_dicom()))
    return tiny_settings.model_copy(update={"backend": "torch"})  # eager: no backend conversion per test


@pytest.fixture()
def service(hc_settings: Settings) -> AnalysisService:
    return AnalysisService(hc_settings)


def hc_request(**extra) -> dict:
    return {"img_path_relative": "segmentation/Fetal_HC/imgs/hc_1.png", "task": "segmentation",
            "dataset_name": "Fetal_HC", "organ": "Head", **extra}


def dicom_request() -> dict:
    return {"img_path_relative": DICOM_REL, "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"}


def test_classification_report_has_probabilities_hashes_and_disclaimer(service: AnalysisService):
    response = service.analyze(service.random_sample("classification", "BUSI"))
    data = service.report_pdf(response.run_id, "en")
    text = pdf_text(data)
    assert response.probability and len(response.probability) == 2
    for value in response.probability:
        assert report.format_probability(value) in text
    assert "benign" in text and "malignant" in text and "Breast" in text and "BUSI" in text
    run = service.run(response.run_id)
    assert run["model_sha256"] and run["model_sha256"] in text
    assert response.input_sha256 and response.input_sha256 in text
    assert f"Run id {response.run_id}" in text.replace("\n", " ")
    assert "not for diagnosis" in text and "Demo weights are for demonstration" in text
    assert text.count("(UTC ") == 1 and "local" not in text  # local time, zone named; UTC printed once
    assert pdf_image_count(data) == 1  # the analysed image (the chart is drawn, not an image)


def test_segmentation_report_has_measurements_spacing_and_overlay(service: AnalysisService):
    response = service.analyze(hc_request(pixel_spacing_mm=0.15))
    measurements = response.measurements or {}
    data = service.report_pdf(response.run_id)
    text = pdf_text(data)
    assert f"{measurements['area_px']:,} px²" in text  # an area in px², never "px"
    assert f"{measurements['area_mm2']:,.2f} mm²" in text
    assert f"{measurements['head_circumference_px']:,.2f} px" in text
    assert f"{measurements['head_circumference_mm']:,.2f} mm" in text
    assert "Head circumference (HC)" in text and "Biparietal diameter (BPD)" in text
    assert "0.1500 mm/px" in text and "spacing source" in text
    assert "Fetal head" in text and "Fetal_HC" in text
    assert response.input_sha256 in text and service.run(response.run_id)["model_sha256"] in text
    assert pdf_image_count(data) >= 2  # the image and the mask overlay


def test_uncalibrated_segmentation_says_px_only(service: AnalysisService):
    response = service.analyze(service.random_sample("segmentation", "DDTI"))
    text = pdf_text(service.report_pdf(response.run_id, "en"))
    assert "not calibrated: values in px only" in text
    assert f"{response.measurements['area_px']:,} px" in text


def test_chinese_report_prints_chinese(service: AnalysisService):
    assert report.find_font(report.CJK_FONT_CANDIDATES) is not None, "install fonts-wqy-zenhei (.ci/run does)"
    response = service.analyze(service.random_sample("classification", "BUSI"))
    text = pdf_text(service.report_pdf(response.run_id, "zh"))
    assert "超声病例报告" in text and "良性" in text and "恶性" in text and "乳腺" in text
    assert "演示权重仅用于演示" in text and "not for diagnosis" in text  # both languages of the disclaimer
    assert response.input_sha256 in text


def test_no_cjk_font_falls_back_to_english(service: AnalysisService, monkeypatch):
    response = service.analyze(service.random_sample("classification", "BUSI"))
    monkeypatch.setattr(report, "CJK_FONT_CANDIDATES", ())
    text = pdf_text(service.report_pdf(response.run_id, "zh"))
    assert "No CJK font is installed" in text and "Ultrasound case report" in text and "benign" in text
    monkeypatch.setattr(report, "LATIN_FONT_CANDIDATES", ())  # not even DejaVu: the PDF core font, latin-1
    text = pdf_text(service.report_pdf(response.run_id, "en"))
    assert report.format_probability(response.probability[0]) in text and "not for diagnosis" in text


def test_uncertainty_and_reference_blocks(service: AnalysisService, monkeypatch):
    """A run whose response carries ``uncertainty`` and ``reference`` (as TTA and ground truth add them)."""
    response = service.analyze(hc_request(pixel_spacing_mm=0.15))
    run = service.run(response.run_id)
    hc = run["response"]["measurements"]["head_circumference_mm"]
    run["response"]["uncertainty"] = {"views": 6, "agreement_mean": 0.9312, "measurement_spread": {
        "head_circumference_mm": {"mean": hc, "min": hc - 1.25, "max": hc + 2.5, "sd": 0.875}}}
    run["response"]["reference"] = {"source": "ground_truth_json", "measurements": {"head_circumference_mm": 150.0},
                                    "difference": {"head_circumference_mm": hc - 150.0}}
    monkeypatch.setattr(service.reader, "run", lambda run_id: run)  # what the report reads
    text = pdf_text(service.report_pdf(response.run_id))
    assert "Uncertainty (test-time augmentation)" in text and "0.9312" in text and "0.88" in text
    assert f"{hc - 1.25:,.2f} - {hc + 2.5:,.2f}" in text
    assert "Reference measurement" in text and "ground_truth_json" in text and "150.00" in text
    assert f"{hc - 150.0:,.2f}" in text


def test_real_tta_uncertainty_agreement_map_and_ground_truth_reference(service: AnalysisService):
    sample = service.random_sample("segmentation", "DDTI")
    response = service.analyze({**sample, "tta": True}).to_json()
    uncertainty, reference = response["uncertainty"], response["reference"]
    data = service.report_pdf(response["run_id"])
    text = pdf_text(data)
    assert f"views {uncertainty['views']}" in text.replace("\n", " ")
    assert f"{uncertainty['agreement_mean']:.4f}" in text
    spread = uncertainty["measurement_spread"]["area_px"]
    assert f"{spread['min']:,.2f} - {spread['max']:,.2f}" in text and "Area, px" in text
    assert reference["source"] == "ground_truth_mask" and "ground_truth_mask" in text
    assert f"{reference['measurements']['area_px']:,}" in text and f"{reference['difference']['area_px']:,.2f}" in text
    assert pdf_image_count(data) == 3  # image, overlay, agreement map
    assert i18n.t("cl_agreement_map", "en") in text.replace("\n", " ")  # the legend worded as on screen
    cls = service.analyze({**service.random_sample("classification", "BUSI"), "tta": True}).to_json()
    text = pdf_text(service.report_pdf(cls["run_id"]))
    low, high = cls["uncertainty"]["probability_min"][0], cls["uncertainty"]["probability_max"][0]
    assert f"{low:.4f} - {high:.4f}" in text and report.format_probability(cls["probability"][0]) in text


def test_failed_run_bad_language_and_unknown_run_are_clear_errors(service: AnalysisService):
    with pytest.raises(PathError):
        service.analyze({**hc_request(), "img_path_relative": "segmentation/Fetal_HC/imgs/missing.png"})
    failed = service.runs()[0]
    assert failed["error"]
    with pytest.raises(RequestError, match=f"run {failed['id']} failed; there is no result to report"):
        service.report_pdf(failed["id"])
    ok = service.analyze(service.random_sample("classification", "BUSI"))
    with pytest.raises(RequestError, match="language") as info:
        service.report_pdf(ok.run_id, "fr")
    assert info.value.field == "lang"
    with pytest.raises(NotFoundError):
        service.report_pdf(999_999)


def test_large_image_is_printed_downscaled_with_its_overlay(service: AnalysisService):
    from conftest import write_image

    write_image(Path(service.settings.data_root) / "segmentation/DDTI/imgs/big.png", 1500, 1100, seed=5)
    response = service.analyze({"img_path_relative": "segmentation/DDTI/imgs/big.png", "task": "segmentation",
                                "dataset_name": "DDTI", "organ": "Thyroid"})
    data = service.report_pdf(response.run_id)
    sizes = [image.image.size for page in PdfReader(io.BytesIO(data)).pages for image in page.images]
    assert sizes == [(1024, 751), (1024, 751)]  # the image and its overlay, at most report.MAX_IMAGE_SIDE
    assert len(data) < 3_000_000


def test_report_without_the_image_file_still_prints(service: AnalysisService):
    sample = service.save_upload(Path(service.settings.data_root, "classification/BUSI/imgs/cls_0.png").read_bytes(),
                                 "gone.png")
    response = service.analyze({**sample, "task": "classification", "dataset_name": "BUSI", "organ": "Breast"})
    Path(service.settings.api_in, Path(sample["img_path_relative"]).name).unlink()
    data = service.report_pdf(response.run_id)
    assert "The image is no longer available" in pdf_text(data) and pdf_image_count(data) == 0


# ------------------------------------------------------------------------------------------ DICOM SEG
def read_seg(data: bytes, source: pydicom.Dataset, frame_number: int | None = None) -> np.ndarray:
    """The mask of a DICOM SEG as read back by highdicom (checked with pydicom too)."""
    plain = pydicom.dcmread(io.BytesIO(data))
    assert plain.Modality == "SEG" and plain.SOPClassUID == SegmentationStorage
    assert plain.StudyInstanceUID == source.StudyInstanceUID and plain.PatientID == source.get("PatientID", "")
    seg = hd.seg.segread(io.BytesIO(data))
    assert (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID) in seg.get_source_image_uids()
    if frame_number is None:
        pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    else:
        pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, source_frame_numbers=[frame_number],
                                                segment_numbers=[1])
    return pixels[0, ..., 0].astype(bool)


def test_dicom_seg_of_a_dicom_input_reads_back_with_the_runs_mask(service: AnalysisService):
    response = service.analyze(dicom_request())
    assert response.pixel_spacing_mm == pytest.approx(0.2)
    data = service.dicom_seg(response.run_id)
    source = pydicom.dcmread(Path(service.settings.data_root) / DICOM_REL)
    mask = service.run_mask(response.run_id)
    assert mask.shape == (48, 64)
    np.testing.assert_array_equal(read_seg(data, source), mask)
    seg = pydicom.dcmread(io.BytesIO(data))
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "thyroid nodule"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == response.model_sha256
    assert "0.2 mm/px" in seg.ContentDescription


def test_dicom_upload_keeps_its_source_for_the_seg_and_the_report_names_the_spacing(service: AnalysisService):
    source_bytes = dicom_bytes(ultrasound_dicom(rows=56, columns=72))
    skeleton = service.save_upload(source_bytes, "scan one.dcm")
    assert skeleton["source_path_relative"].endswith(".dcm")
    response = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"})
    source = pydicom.dcmread(service.settings.workspace / skeleton["source_path_relative"])  # the kept original
    assert source.PatientIdentityRemoved == "YES" and source.StudyInstanceUID == pydicom.dcmread(
        io.BytesIO(source_bytes)).StudyInstanceUID  # de-identified on upload, its UIDs retained
    np.testing.assert_array_equal(read_seg(service.dicom_seg(response.run_id), source),
                                  service.run_mask(response.run_id))
    assert b"PHANTOM-1" not in service.dicom_seg(response.run_id)  # no identity reaches the SEG either
    text = pdf_text(service.report_pdf(response.run_id))
    assert "0.2000 mm/px" in text and "spacing source: dicom" in text and "scan one.dcm" in text
    Path(service.settings.api_in, Path(skeleton["source_path_relative"]).name).unlink()
    with pytest.raises(NotFoundError, match=r"source DICOM of run \d+ is no longer available"):
        service.dicom_seg(response.run_id)


def test_english_report_prints_a_chinese_file_name(service: AnalysisService):
    skeleton = service.save_upload(dicom_bytes(ultrasound_dicom()), "甲状腺扫描.dcm")
    response = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"})
    text = pdf_text(service.report_pdf(response.run_id, "en"))
    assert "甲状腺扫描.dcm" in text and "Ultrasound case report" in text and "No CJK font" not in text


def test_dicom_seg_refuses_non_dicom_classification_edited_and_failed_runs(service: AnalysisService):
    png = service.analyze(service.random_sample("segmentation", "DDTI"))
    with pytest.raises(RequestError, match="did not analyse a DICOM file"):
        service.dicom_seg(png.run_id)
    cls = service.analyze(service.random_sample("classification", "BUSI"))
    with pytest.raises(RequestError, match="needs a segmentation run"):
        service.dicom_seg(cls.run_id)
    edited = service.analyze(dicom_request(), edits=[{"op": "flip", "axis": "horizontal"}])
    with pytest.raises(RequestError, match="edited"):
        service.dicom_seg(edited.run_id)
    broken = Path(service.settings.data_root) / "segmentation/DDTI/imgs/broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"not a data set")
    with pytest.raises(ImageError):
        service.analyze({**dicom_request(), "img_path_relative": "segmentation/DDTI/imgs/broken.dcm"})
    with pytest.raises(RequestError, match="failed; there is no result"):
        service.dicom_seg(service.runs()[0]["id"])


def test_dicom_seg_of_a_multi_frame_source_references_the_analysed_frame():
    source = pydicom.dcmread(io.BytesIO(dicom_bytes(ultrasound_dicom(frames=5))), stop_before_pixels=True)
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:44] = True
    data = build_seg(source, mask, frame_index=3, group="heart", label="left ventricle", model_name="tiny",
                     model_sha256="ab" * 32)
    seg = pydicom.dcmread(io.BytesIO(data))
    reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedFrameNumber == 4 and reference.ReferencedSOPClassUID == source.SOPClassUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    np.testing.assert_array_equal(read_seg(data, source, frame_number=4), mask)
    with pytest.raises(RequestError, match="outside the source DICOM's 5 frame"):
        build_seg(source, mask, frame_index=5)
    with pytest.raises(RequestError, match="not aligned"):
        build_seg(source, mask[:, :60])


def test_cine_dicom_upload_seg_and_report_follow_the_analysed_frame(service: AnalysisService):
    source_bytes = dicom_bytes(ultrasound_dicom(frames=5))
    skeleton = service.save_upload(source_bytes, "loop.dcm")
    assert skeleton["frame_count"] == 5
    request = {**skeleton, "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid", "frame_index": 2}
    response = service.analyze(request)
    data = service.dicom_seg(response.run_id)
    reference = pydicom.dcmread(io.BytesIO(data)).PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert reference.SourceImageSequence[0].ReferencedFrameNumber == 3
    source = pydicom.dcmread(service.settings.workspace / skeleton["source_path_relative"], stop_before_pixels=True)
    assert source.SOPInstanceUID == pydicom.dcmread(io.BytesIO(source_bytes)).SOPInstanceUID
    np.testing.assert_array_equal(read_seg(data, source, frame_number=3), service.run_mask(response.run_id))
    assert "3 / 5 (frame_index 2)" in pdf_text(service.report_pdf(response.run_id))


def test_dicom_seg_of_an_empty_mask_and_a_sparse_header():
    source = ultrasound_dicom()
    for name in ("PatientName", "PatientID", "StudyDate", "StudyTime", "PixelSpacing"):
        delattr(source, name)
    source = pydicom.dcmread(io.BytesIO(dicom_bytes(source)))
    data = build_seg(source, np.zeros((48, 64), bool), group="kidney", label="kidney")
    assert not read_seg(data, source).any()


# ------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture()
def api(hc_settings: Settings, tmp_path):
    """A real ``python -m core serve`` on the tiny model, and an :class:`ApiClient` talking to it."""
    from core.client import ApiClient

    env = {**os.environ, "UUSIC_WORKSPACE": str(hc_settings.workspace), "UUSIC_DATA_ROOT": str(hc_settings.data_root),
           "UUSIC_WEIGHTS_DIR": str(hc_settings.weights_dir), "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": KEY,
           "UUSIC_MODEL": "tiny", "UUSIC_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    env.pop("UUSIC_API_URL", None)
    with serve_api(env, tmp_path / "server.log", args=("--threads", "1"), timeout=60) as base:
        client = ApiClient(Settings(api_url=base, api_key=KEY, workspace=hc_settings.workspace))
        yield client
        client.close()


@pytest.mark.server
def test_report_and_seg_round_trip_over_a_real_server(api, hc_settings: Settings):
    cls = api.analyze(api.random_sample("classification", "BUSI"))
    data = api.report_pdf(cls.run_id, "zh")
    text = pdf_text(data)
    assert "超声病例报告" in text and cls.input_sha256 in text and report.format_probability(cls.probability[1]) in text
    raw = httpx.get(f"{api.base_url}/v1/history/{cls.run_id}/report.pdf", params={"lang": "en"},
                    headers={"X-API-Key": KEY}, timeout=60)
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/pdf"
    assert f'filename="uusic_run_{cls.run_id}_en.pdf"' in raw.headers["content-disposition"]
    with pytest.raises(RequestError, match="language"):
        api.report_pdf(cls.run_id, "de")
    with pytest.raises(RequestError, match="needs a segmentation run"):
        api.dicom_seg(cls.run_id)
    with pytest.raises(NotFoundError):
        api.report_pdf(987_654)
    seg_run = api.analyze(dicom_request())
    seg = httpx.get(f"{api.base_url}/v1/history/{seg_run.run_id}/seg.dcm", headers={"X-API-Key": KEY}, timeout=60)
    assert seg.status_code == 200 and seg.headers["content-type"] == "application/dicom"
    assert f'filename="uusic_run_{seg_run.run_id}_seg.dcm"' in seg.headers["content-disposition"]
    source = pydicom.dcmread(Path(hc_settings.data_root) / DICOM_REL)
    np.testing.assert_array_equal(read_seg(api.dicom_seg(seg_run.run_id), source), api.run_mask(seg_run.run_id))
    png_run = api.analyze(api.random_sample("segmentation", "DDTI"))
    with pytest.raises(RequestError, match="did not analyse a DICOM file") as info:
        api.dicom_seg(png_run.run_id)
    assert info.value.status_code == 422


def test_a_table_that_runs_onto_the_next_page_repeats_its_header():
    case = report.CaseReport(None, {"id": 7, "task": "segmentation"}, "en")
    case.pdf.add_page()
    case.table(["Measure", "px", "mm"], [[f"row {i}", str(i), "-"] for i in range(60)], [80, 50, 50])
    pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(bytes(case.pdf.output()))).pages]
    assert len(pages) >= 2
    assert all(page.count("Measure") == 1 for page in pages)  # the header on every page the table covers
    assert all(f"row {i}" in "".join(pages) for i in range(60))
