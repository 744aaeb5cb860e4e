"""Calibration (issue 11 §2): pixel spacing from DICOM (PixelSpacing, ultrasound regions), typed by the user, measured
with a line of known length, or from the ground truth; its source in every segmentation response and in the
history; implausible values refused with the band in the message."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core import calibration
from core.errors import RequestError
from core.imaging import load_image
from core.schema import PredictRequest
from core.service import AnalysisService
from tests.conftest import write_image
from tests.test_imaging import _dicom_bytes

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI"}


def _disc_pixels(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return ((((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2) * 200 + 20).astype(np.uint8)


def _region(delta_cm: float):
    from pydicom.dataset import Dataset

    region = Dataset()
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # centimetres
    region.PhysicalDeltaX = region.PhysicalDeltaY = delta_cm
    return region


@pytest.fixture()
def service(tiny_settings) -> AnalysisService:
    return AnalysisService(tiny_settings, model="tiny")


# ------------------------------------------------------------------------------------------ line calibration
def test_spacing_from_a_line_of_known_length():
    assert calibration.spacing_from_line((0, 0), (300, 400), 50.0) == pytest.approx(0.1)  # 500 px = 50 mm
    assert calibration.spacing_from_line((10.5, 20), (10.5, 220), 30) == pytest.approx(0.15)


@pytest.mark.parametrize(("p0", "p1", "length", "fragment"), [
    ((0, 0), (3, 4), 1.0, "5.0 px long"),  # too short to be precise
    ((0, 0), (100, 0), 0.0, "positive number of mm"),
    ((0, 0), (100, 0), -5, "positive number of mm"),
    ((0, 0), (100, 0), float("nan"), "positive number of mm"),
    ((0, 0), (100, 0), True, "positive number of mm"),
    ((0, 0), (100, 0), 1000.0, "between 0.01 and 2 mm per pixel"),  # 10 mm/px: a wrong unit
    ((0, 0), (1000, 0), 5.0, "between 0.01 and 2 mm per pixel"),  # 0.005 mm/px
    ((0, 0), (float("inf"), 0), 5.0, "finite"),
    ((0, 0), ("a", 0), 5.0, "two (x, y) points"),
])
def test_a_bad_calibration_line_is_refused(p0, p1, length, fragment):
    with pytest.raises(RequestError) as raised:
        calibration.spacing_from_line(p0, p1, length)
    assert fragment in raised.value.message and raised.value.field == "pixel_spacing_mm"


# ------------------------------------------------------------------------------------------ the band, the sources
@pytest.mark.parametrize("value", [0.0, -0.1, 0.005, 2.5, 10.0, 1e308])
def test_implausible_spacing_is_refused_with_the_band(value):
    with pytest.raises(RequestError) as raised:
        PredictRequest.parse({**SEG, "pixel_spacing_mm": value})
    assert raised.value.field == "pixel_spacing_mm"
    assert "between 0.01 and 2 mm per pixel" in raised.value.message


def test_spacing_source_values():
    assert PredictRequest.parse({**SEG, "pixel_spacing_mm": 0.1, "pixel_spacing_source": "LINE"}
                                ).pixel_spacing_source == "line"
    with pytest.raises(RequestError) as raised:
        PredictRequest.parse({**SEG, "pixel_spacing_source": "guess"})
    assert raised.value.field == "pixel_spacing_source" and "dicom_region" in raised.value.message


def test_dicom_loader_says_which_element_gave_the_spacing():
    pixels = _disc_pixels(32)
    assert load_image(_dicom_bytes(pixels, PixelSpacing=[0.2, 0.2])).pixel_spacing_source == "dicom"
    regions = load_image(_dicom_bytes(pixels, SequenceOfUltrasoundRegions=[_region(0.015)]))
    assert regions.pixel_spacing_source == "dicom_region" and regions.pixel_spacing_mm == pytest.approx(0.15)
    plain = load_image(_dicom_bytes(pixels))
    assert plain.pixel_spacing_mm is None and plain.pixel_spacing_source is None


def test_resolve_spacing_rules():
    assert calibration.resolve_spacing(0.2, None, None, None)[:2] == (0.2, "user")
    assert calibration.resolve_spacing(0.2, "line", 0.3, "dicom")[:2] == (0.2, "line")
    assert calibration.resolve_spacing(0.3, None, 0.3, "dicom_region")[:2] == (0.3, "dicom_region")
    assert calibration.resolve_spacing(None, None, 0.3, "dicom")[:2] == (0.3, "dicom")
    spacing, source, notes = calibration.resolve_spacing(None, None, 0.004, "dicom")
    assert spacing is None and source is None and "outside the plausible band" in notes[0]
    assert calibration.resolve_spacing(None, None, None, None) == (None, None, [])


# ------------------------------------------------------------------------------------------ through the service
@pytest.mark.parametrize(("elements", "source", "spacing"), [
    ({"PixelSpacing": [0.25, 0.25]}, "dicom", 0.25),
    ({"SequenceOfUltrasoundRegions": [_region(0.012)]}, "dicom_region", 0.12),
])
def test_dicom_upload_spacing_and_source_reach_the_response_and_history(service, elements, source, spacing):
    skeleton = service.save_upload(_dicom_bytes(_disc_pixels(), **elements), "scan.dcm")
    assert skeleton["pixel_spacing_mm"] == pytest.approx(spacing) and skeleton["pixel_spacing_source"] == source
    response = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
    assert response.pixel_spacing_mm == pytest.approx(spacing) and response.pixel_spacing_source == source
    area = response.measurements["area_px"]
    assert response.measurements["area_mm2"] == pytest.approx(area * spacing * spacing)
    row = service.run(response.run_id)
    assert row["response"]["pixel_spacing_source"] == source
    assert row["response"]["pixel_spacing_mm"] == pytest.approx(spacing)
    assert row["request"]["pixel_spacing_source"] == source


def test_dicom_in_the_data_root_gives_its_own_spacing(service, tiny_settings):
    rel = "segmentation/DDTI/imgs/scan.dcm"
    (tiny_settings.data_root / rel).write_bytes(_dicom_bytes(_disc_pixels(), SequenceOfUltrasoundRegions=[
        _region(0.02)]))
    response = service.analyze({**SEG, "img_path_relative": rel})
    assert response.pixel_spacing_mm == pytest.approx(0.2) and response.pixel_spacing_source == "dicom_region"


def test_user_and_line_spacing(service):
    typed = service.analyze({**SEG, "pixel_spacing_mm": 0.2})
    assert typed.pixel_spacing_source == "user" and typed.pixel_spacing_mm == 0.2
    assert typed.measurements["area_mm2"] == pytest.approx(typed.measurements["area_px"] * 0.04)
    spacing = calibration.spacing_from_line((5, 5), (5, 45), 12.0)  # 40 px = 12 mm
    drawn = service.analyze({**SEG, "pixel_spacing_mm": spacing, "pixel_spacing_source": "line"})
    assert drawn.pixel_spacing_source == "line" and drawn.pixel_spacing_mm == pytest.approx(0.3)
    row = service.run(drawn.run_id)
    assert row["response"]["pixel_spacing_source"] == "line" and row["request"]["pixel_spacing_mm"] == 0.3
    bare = service.analyze(SEG)
    assert bare.pixel_spacing_mm is None and bare.pixel_spacing_source is None
    assert "pixel_spacing_source" in bare.to_json() and "area_mm2" not in bare.measurements


def test_a_data_root_sample_says_its_spacing_is_the_ground_truths(service, tiny_settings):
    path = tiny_settings.data_root / "ground_truth.json"
    entries = json.loads(path.read_text())
    for entry in entries:
        if entry["task"] == "segmentation":
            entry["pixel_spacing_mm"] = 0.11
    path.write_text(json.dumps(entries))
    sample = service.random_sample("segmentation", "DDTI")
    assert sample["pixel_spacing_mm"] == 0.11 and sample["pixel_spacing_source"] == "ground_truth"
    response = service.analyze(sample)
    assert response.pixel_spacing_source == "ground_truth" and math.isclose(response.pixel_spacing_mm, 0.11)


def test_api_refuses_implausible_spacing_and_round_trips_the_source(tiny_settings):
    from core.api import create_app

    write_image(tiny_settings.data_root / "segmentation/DDTI/imgs/api.png", 48, 48, seed=3)
    body = {**SEG, "img_path_relative": "segmentation/DDTI/imgs/api.png"}
    with TestClient(create_app(tiny_settings.with_(default_model="tiny"))) as http:
        refused = http.post("/v1/predict", json={"request": {**body, "pixel_spacing_mm": 5}})
        assert refused.status_code == 422 and refused.json()["field"] == "pixel_spacing_mm"
        assert "between 0.01 and 2 mm per pixel" in refused.json()["detail"]
        answer = http.post("/v1/predict", json={"request": {**body, "pixel_spacing_mm": 0.5,
                                                            "pixel_spacing_source": "line"}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["pixel_spacing_source"] == "line" and answer.json()["pixel_spacing_mm"] == 0.5
