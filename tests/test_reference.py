"""Reference measurements (issue 11 §4): a request that names its ground truth (the data root's mask, or HC18's
``head_circumference_mm``) gets the reference measurements next to the predicted ones, with the differences."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.measure import measure_mask
from core.reference import differences, reference_for
from core.schema import PredictRequest
from core.service import AnalysisService
from core.settings import BUNDLED_SAMPLES, Settings

DEMO_PRESENT = (Settings().weights_dir / "models.json").is_file()


@pytest.fixture()
def service(tiny_settings) -> AnalysisService:
    return AnalysisService(tiny_settings, model="tiny")


def _seg_entry(settings: Settings, index: int = 0) -> dict:
    entries = json.loads((settings.data_root / "ground_truth.json").read_text())
    return [e for e in entries if e["task"] == "segmentation"][index]


def test_reference_from_the_ground_truth_mask(service, tiny_settings):
    entry = _seg_entry(tiny_settings)
    response = service.analyze({**entry, "pixel_spacing_mm": 0.5})
    reference = response.reference
    truth = np.asarray(Image.open(tiny_settings.data_root / entry["mask_path_relative"])) > 127
    expected = measure_mask(truth, pixel_spacing_mm=0.5)
    assert reference["source"] == "ground_truth_mask"
    assert reference["measurements"]["area_px"] == int(truth.sum()) == expected["area_px"]
    assert reference["measurements"]["area_mm2"] == pytest.approx(truth.sum() * 0.25)
    assert reference["measurements"]["longest_diameter_px"] == pytest.approx(expected["longest_diameter_px"])
    predicted = response.measurements
    assert reference["difference"]["area_px"] == predicted["area_px"] - truth.sum()
    assert reference["difference"]["area_mm2"] == pytest.approx(predicted["area_mm2"] - truth.sum() * 0.25)
    assert set(reference["sources"].values()) == {"ground_truth_mask"}
    assert service.run(response.run_id)["response"]["reference"]["difference"] == reference["difference"]


def test_no_reference_without_a_comparable_ground_truth(service, tiny_settings):
    entry = _seg_entry(tiny_settings)
    assert service.analyze({**entry, "mask_path_relative": None}).reference is None  # none named
    missing = service.analyze({**entry, "mask_path_relative": "segmentation/DDTI/masks/gone.png"})
    assert missing.reference is None and missing.mask_area_px is not None  # the analysis itself is fine
    outside = service.analyze({**entry, "mask_path_relative": "../../etc/passwd"})
    assert outside.reference is None
    other = _seg_entry(tiny_settings, 1)  # a mask of another size (40 x 70 vs 64 x 48)
    assert service.analyze({**entry, "mask_path_relative": other["mask_path_relative"]}).reference is None


def test_head_circumference_from_the_ground_truth_json(tiny_settings):
    request = PredictRequest.parse({"img_path_relative": "x.png", "task": "segmentation", "dataset_name": "Fetal_HC",
                                    "img_dimensions": [80, 60], "head_circumference_mm": 150.0})
    predicted = {"head_circumference_mm": 156.5, "area_px": 1000}
    reference = reference_for(tiny_settings, request, predicted, (60, 80), 0.2)
    assert reference == {"source": "ground_truth_json", "measurements": {"head_circumference_mm": 150.0},
                         "difference": {"head_circumference_mm": pytest.approx(6.5)},
                         "sources": {"head_circumference_mm": "ground_truth_json"}}
    assert reference_for(tiny_settings, request, predicted, (80, 60), 0.2) is None  # rotated: not comparable
    for bad in (0, -3, True, "150", float("nan")):
        odd = PredictRequest.parse({**request.to_dict(), "head_circumference_mm": bad})
        assert reference_for(tiny_settings, odd, predicted, (60, 80), 0.2) is None


def test_differences_only_where_both_have_numbers():
    assert differences({"area_px": 10, "area_mm2": None, "head_circumference_mm": 5.0},
                       {"area_px": 12, "area_mm2": 3.0}) == {"area_px": -2.0}


@pytest.mark.skipif(not DEMO_PRESENT, reason="demo weights not present")
def test_fetal_head_sample_shows_the_reference_hc(tmp_path):
    """The demo model on a bundled HC18 sample: reference HC from ground_truth.json, area etc. from its mask."""
    entry = next(e for e in json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
                 if e["img_path_relative"] == "segmentation/Fetal_HC/imgs/seg_00014.jpg")
    service = AnalysisService(Settings(workspace=tmp_path / "ws", device="cpu", backend="torch"))
    response = service.analyze(entry)
    reference = response.reference
    assert reference["source"] == "ground_truth_mask"
    assert reference["sources"]["head_circumference_mm"] == "ground_truth_json"
    assert reference["sources"]["area_mm2"] == "ground_truth_mask"
    assert reference["measurements"]["head_circumference_mm"] == entry["head_circumference_mm"] == 122.0
    hc = response.measurements["head_circumference_mm"]
    assert reference["difference"]["head_circumference_mm"] == pytest.approx(hc - 122.0)
    assert abs(reference["difference"]["head_circumference_mm"]) < 10  # the demo model is within a few mm here
    assert reference["difference"]["area_px"] == response.measurements["area_px"] - reference["measurements"][
        "area_px"]
