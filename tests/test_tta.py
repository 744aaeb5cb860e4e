"""Test-time augmentation (issue 11 §3): views batched in one forward pass, outputs brought back to the original
pixels and averaged; uncertainty (probability spread, agreement map, measurement spread); without TTA nothing
changes; the HC spread of a fetal head under rotation shrinks with TTA and is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import tta
from core.editing import apply_edits
from core.engine import Engine
from core.errors import ConfigError, NotFoundError
from core.geometry import CenterCrop, Letterbox
from core.service import AnalysisService
from core.settings import BUNDLED_SAMPLES, Settings
from tests.conftest import write_image

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI"}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI"}
DEMO_PRESENT = (Settings().weights_dir / "models.json").is_file()


# ------------------------------------------------------------------------------------------ views and their inverse
def test_view_names_and_refusals():
    views = tta.parse_views(tta.DEFAULT_VIEWS)
    assert [v.name for v in views] == ["identity", "hflip", "rot-10", "rot+10"]
    assert tta.parse_view("hflip+rot-12.5") == tta.View("hflip+rot-12.5", hflip=True, angle_deg=-12.5)
    for bad in ("spin", "rot", "rot400", "identity,identity", ""):
        with pytest.raises(ValueError):
            tta.parse_views(bad)
    with pytest.raises(ConfigError, match="tta_views"):
        Settings(tta_views="identity,twirl")
    with pytest.raises(ConfigError, match="tta"):
        Settings(tta="sometimes")


def test_tta_settings_from_the_environment():
    settings = Settings.from_env({"UUSIC_TTA": "on", "UUSIC_TTA_VIEWS": "identity,rot90"})
    assert settings.tta == "on" and [v.name for v in tta.parse_views(settings.tta_views)] == ["identity", "rot90"]
    assert Settings.from_env({}).tta == "auto" and Settings.from_env({}).tta_views == tta.DEFAULT_VIEWS
    with pytest.raises(ConfigError, match="UUSIC_TTA_VIEWS"):
        Settings.from_env({"UUSIC_TTA_VIEWS": "spin"})


def test_tta_switch_request_wins_over_the_setting():
    assert tta.tta_enabled(True, "off") and not tta.tta_enabled(False, "on")
    assert tta.tta_enabled(None, "on") and not tta.tta_enabled(None, "off")
    assert tta.tta_enabled(None, "auto") is tta.TTA_AUTO


@pytest.mark.parametrize("name", ["identity", "hflip", "vflip", "rot90", "rot-90", "hflip+rot90", "rot180"])
def test_exact_views_invert_exactly(name):
    view = tta.parse_view(name)
    array = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    assert np.array_equal(view.invert(view.apply(array)), array)


@pytest.mark.parametrize("transform", [Letterbox(90, 60, 64), CenterCrop(90, 60, 64)])
def test_fused_views_land_on_the_original_pixels(transform):
    """A model that echoes its input: every view's output, brought back, is the unaugmented answer."""
    yy, xx = np.mgrid[0:60, 0:90]
    truth = ((yy - 28) ** 2 / 18 ** 2 + (xx - 40) ** 2 / 30 ** 2) < 1  # an off-centre ellipse
    square = transform.apply_mask(truth.astype(np.float32))
    views = tta.parse_views("identity,hflip,vflip,rot90,rot-10,rot+10")
    to_original = transform.invert_probability if isinstance(transform, Letterbox) else transform.invert_mask
    fused = tta.fuse_masks(views, [v.apply(square) for v in views], to_original)
    plain = to_original(square) > 0.5
    assert fused.mask.shape == truth.shape == fused.agreement.shape
    assert (fused.mask != plain).sum() <= 0.02 * plain.sum()  # small rotations re-sample the edge only
    for view, mask in zip(views, fused.view_masks, strict=True):
        if not view.angle_deg % 90:  # flips and quarter turns are exact
            assert np.array_equal(mask, plain), view.name
    assert fused.agreement.min() >= 0 and fused.agreement.max() <= 1
    assert np.all(fused.agreement[plain & _interior(plain)] == 1.0)


def _interior(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=3)


def test_probability_fusion_and_spread():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])
    mean, block = tta.fuse_probabilities(probs, tta.parse_views("identity,hflip,vflip"))
    assert mean == pytest.approx([0.7, 0.3])
    assert block["probability_min"] == pytest.approx([0.6, 0.2]) and block["probability_max"] == pytest.approx(
        [0.8, 0.4])
    assert block["probability_sd"][0] == pytest.approx(np.std([0.8, 0.6, 0.7])) and block["views"] == 3
    spread = tta.spread([{"area_px": 10, "area_mm2": 1.0}, {"area_px": 14, "area_mm2": None}])
    assert spread == {"area_px": {"mean": 12.0, "min": 10.0, "max": 14.0, "sd": 2.0}}


# ------------------------------------------------------------------------------------------ through the engine
@pytest.fixture()
def tta_settings(tiny_settings: Settings) -> Settings:
    return tiny_settings.with_(tta_views="identity,hflip,rot-10,rot+10", backend="torch")  # eager: deterministic


@pytest.mark.parametrize("model", ["tiny", "tiny_letterbox"])
def test_synthetic_image_mask_under_tta(tta_settings, model):
    write_image(tta_settings.data_root / "segmentation/DDTI/imgs/disc.png", 90, 70, seed=5)
    service = AnalysisService(tta_settings, model=model)
    body = {**SEG, "img_path_relative": "segmentation/DDTI/imgs/disc.png"}
    plain, augmented = service.analyze({**body, "tta": False}), service.analyze({**body, "tta": True})
    assert plain.uncertainty is None and "uncertainty" not in plain.to_json()
    block = augmented.uncertainty
    assert block["views"] == 4 and block["view_names"] == ["identity", "hflip", "rot-10", "rot+10"]
    assert block["agreement_url"].startswith("/v1/masks/") and Path(block["agreement_path"]).is_file()
    a, b = service.run_mask(plain.run_id), service.run_mask(augmented.run_id)
    assert a.shape == b.shape == (70, 90)
    assert (a & b).sum() / max((a | b).sum(), 1) > 0.9  # a symmetric disc: TTA keeps the mask
    agreement = service.agreement_map(augmented)
    assert agreement.shape == (70, 90) and agreement.dtype == np.float32
    assert agreement.min() >= 0.0 and agreement.max() == 1.0
    assert set(np.unique(np.rint(agreement * 4))) <= {0, 1, 2, 3, 4}  # fractions of 4 views
    assert 0.5 <= block["agreement_mean"] <= 1.0
    area = block["measurement_spread"]["area_px"]
    assert area["min"] <= area["mean"] <= area["max"] and area["sd"] >= 0
    with pytest.raises(NotFoundError):
        service.agreement_map(plain)


def test_all_views_go_through_one_forward_pass(tta_settings, monkeypatch):
    engine = Engine(tta_settings, "tiny_letterbox")
    sizes = []
    original = engine._run_model

    def counting(model, images, vectors, *rest):
        sizes.append(int(images.shape[0]))
        return original(model, images, vectors, *rest)

    monkeypatch.setattr(engine, "_run_model", counting)
    results = engine.predict_batch([{**SEG, "tta": True}, {**CLS, "tta": True}, CLS], batch_size=8,
                                   output_dir=tta_settings.workspace / "out")
    assert sizes == [4 + 4 + 1]  # two images x 4 views and one plain image: one pass
    assert "uncertainty" not in results[2] and results[1]["uncertainty"]["views"] == 4


def test_classification_under_tta_reports_the_spread(tta_settings):
    service = AnalysisService(tta_settings, model="tiny")
    augmented = service.analyze({**CLS, "tta": True})
    block = augmented.uncertainty
    assert block["views"] == 4 and sum(augmented.probability) == pytest.approx(1.0, abs=1e-5)
    for low, mean, high in zip(block["probability_min"], augmented.probability, block["probability_max"],
                               strict=True):
        assert low - 1e-6 <= mean <= high + 1e-6
    assert augmented.prediction == int(np.argmax(augmented.probability))
    single = AnalysisService(tta_settings.with_(tta_views="identity"), model="tiny")
    identity_only = single.analyze({**CLS, "tta": True})
    assert identity_only.probability == pytest.approx(single.analyze(CLS).probability, abs=1e-6)
    assert identity_only.uncertainty["probability_sd"] == [0.0, 0.0]


def test_without_tta_the_outputs_do_not_change(tta_settings):
    """Off (the default here), off by request, or on by setting but off by request: the same bytes."""
    masks = []
    for settings, body in ((tta_settings, SEG), (tta_settings, {**SEG, "tta": False}),
                           (tta_settings.with_(tta="on"), {**SEG, "tta": False})):
        response = AnalysisService(settings, model="tiny").analyze(body)
        assert response.uncertainty is None
        masks.append(Path(response.mask_path).read_bytes())
    assert masks[0] == masks[1] == masks[2]
    on = AnalysisService(tta_settings.with_(tta="on"), model="tiny").analyze(SEG)
    assert on.uncertainty["views"] == 4  # the setting turns it on when the request does not say


def test_api_round_trip(tta_settings):
    from core.api import create_app
    from core.client import ApiClient

    write_image(tta_settings.data_root / "segmentation/DDTI/imgs/api.png", 64, 40, seed=9)
    body = {**SEG, "img_path_relative": "segmentation/DDTI/imgs/api.png", "tta": True}
    with TestClient(create_app(tta_settings.with_(default_model="tiny"))) as http:
        remote = ApiClient(tta_settings.with_(api_url="http://testserver"))
        remote._http = http
        response = remote.analyze(body)
        agreement = remote.agreement_map(response)
        assert agreement.shape == (40, 64) and 0.0 <= agreement.min() <= agreement.max() <= 1.0
        local = AnalysisService(tta_settings, model="tiny").agreement_map(response)
        assert np.array_equal(agreement, local)
        assert remote.run(response.run_id)["response"]["uncertainty"]["views"] == 4
        assert remote.run(response.run_id)["request"]["tta"] is True
        bad = http.post("/v1/predict", json={"request": {**body, "tta": "sometimes"}})
        assert bad.status_code == 422 and bad.json()["field"] == "tta"


# ------------------------------------------------------------------------------------------ HC under rotation
@pytest.mark.skipif(not DEMO_PRESENT, reason="demo weights not present")
def test_hc_spread_under_rotation_shrinks_with_tta(tmp_path: Path):
    """The issue's case: one Fetal_HC image upright, at 90° and at 90°+20° (map spacing unchanged)."""
    entry = next(e for e in json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
                 if e["img_path_relative"] == "segmentation/Fetal_HC/imgs/seg_00014.jpg")
    original = Image.open(BUNDLED_SAMPLES / entry["img_path_relative"]).convert("RGB")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, edits in (("r0", []), ("r90", [{"op": "rotate90", "k": 1}]),
                        ("r110", [{"op": "rotate90", "k": 1}, {"op": "rotate", "angle": 20.0}])):
        apply_edits(original, edits).save(inputs / f"{name}.png")
    service = AnalysisService(Settings(workspace=tmp_path / "ws", device="cpu", backend="torch"))
    hc: dict[bool, list[float]] = {False: [], True: []}
    for use_tta in (False, True):
        for name in ("r0", "r90", "r110"):
            response = service.analyze({"img_path_relative": f"{name}.png", "task": "segmentation",
                                        "dataset_name": "Fetal_HC", "pixel_spacing_mm": entry["pixel_spacing_mm"],
                                        "tta": use_tta}, input_dir=inputs)
            hc[use_tta].append(response.measurements["head_circumference_mm"])
            if use_tta:
                spread = response.uncertainty["measurement_spread"]["head_circumference_mm"]
                assert spread["min"] <= response.measurements["head_circumference_mm"] * 1.05
                assert spread["sd"] >= 0 and spread["max"] >= spread["min"] > 50
    plain_range, tta_range = np.ptp(hc[False]), np.ptp(hc[True])
    assert plain_range > 3.0  # the symptom: several mm between rotations of one image
    assert tta_range < plain_range, (hc[False], hc[True])
