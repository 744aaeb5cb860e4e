"""core.recognition: the organ recogniser on real ultrasound, non-ultrasound refused as out of distribution, and the
``recognition`` block every response and history row carries (UUSIC_REFUSE_OOD, a broken weights file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from core import recognition
from core.api import create_app
from core.errors import RequestError
from core.files import sha256_file
from core.service import AnalysisService
from core.settings import PROJECT_ROOT, WEIGHTS_DIR, Settings

SHARED = PROJECT_ROOT.parent / "shared" / "uusic-data"
KEYS = {"organ", "dataset", "confidence", "in_distribution", "features"}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_1.png", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_2.png", "task": "segmentation", "dataset_name": "DDTI"}
BLANK = {"img_path_relative": "segmentation/DDTI/imgs/blank.png", "task": "segmentation", "dataset_name": "DDTI"}
needs_data = pytest.mark.skipif(not (SHARED / "ground_truth.json").is_file(), reason="needs ../shared/uusic-data")


@pytest.fixture(autouse=True)
def _fresh_recogniser():
    recognition.forget()
    yield
    recognition.forget()


def _validation_images(per_dataset: int) -> list[tuple[str, Path]]:
    """(organ, path) of the first validation images (the training script's split) of the four big datasets."""
    import hashlib

    entries = json.loads((SHARED / "ground_truth.json").read_text(encoding="utf-8"))
    picked: dict[str, list[tuple[str, Path]]] = {}
    for entry in entries:
        if entry["dataset_name"] not in ("BUSI", "DDTI", "Fetal_HC", "CAMUS"):
            continue
        path = SHARED / entry["img_path_relative"]
        chosen = picked.setdefault(entry["dataset_name"], [])
        if len(chosen) < per_dataset and int(hashlib.sha256(path.read_bytes()).hexdigest()[:8], 16) % 100 < 20:
            chosen.append((entry["organ"], path))
    return [item for items in picked.values() for item in items]


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@needs_data
def test_the_organ_of_real_validation_ultrasound_is_recognised():
    images = _validation_images(6)
    found = [recognition.recognise(_rgb(path)) for _, path in images]
    assert all(f is not None for f in found)
    right = sum(f.organ == organ for f, (organ, _) in zip(found, images, strict=True) if f is not None)
    inside = sum(f.in_distribution for f in found if f is not None)
    shown = [(organ, f) for (organ, _), f in zip(images, found, strict=True)]
    assert right >= len(images) - 1 and inside >= len(images) - 2, shown


@needs_data
def test_a_rescaled_recropped_jpeg_keeps_its_organ():
    organ, path = _validation_images(1)[2]
    rgb = _rgb(path)
    h, w = rgb.shape[:2]
    cropped = Image.fromarray(rgb[h // 10:, : w * 9 // 10]).resize((w // 2, h // 3))
    found = recognition.recognise(np.asarray(cropped))
    assert found is not None and found.organ == organ


def _non_ultrasound() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    text = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(text)
    for y in range(5, 200, 16):
        draw.text((5, y), "patient report 12.5 mm gain depth", fill="black")
    board = ((np.arange(256)[:, None] // 16 + np.arange(256)[None, :] // 16) % 2 * 255).astype(np.uint8)
    return [np.zeros((300, 400, 3), np.uint8), np.full((200, 200, 3), 255, np.uint8),
            rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), np.asarray(text),
            np.stack([board] * 3, axis=2), np.full((100, 300, 3), (200, 30, 40), np.uint8)]


def test_non_ultrasound_is_out_of_distribution():
    for rgb in _non_ultrasound():
        found = recognition.recognise(rgb)
        assert found is not None and not found.in_distribution and found.ood_score > 0


def test_the_bundled_weights_match_their_recorded_sha256_and_are_small():
    record = json.loads((WEIGHTS_DIR / recognition.RECORD_FILE).read_text(encoding="utf-8"))
    path = WEIGHTS_DIR / record["file"]
    assert sha256_file(path) == record["sha256"] and path.stat().st_size < 2_000_000
    assert recognition.load(WEIGHTS_DIR) is not None


def _with_blank(settings: Settings) -> Settings:
    Image.new("RGB", (120, 90), "black").save(settings.data_root / BLANK["img_path_relative"])
    return settings


def test_responses_and_history_rows_carry_recognition(tiny_settings: Settings, tmp_path: Path):
    service = AnalysisService(_with_blank(tiny_settings), model="tiny")
    for request in (CLS, SEG, BLANK):
        response = service.analyze(request, source="api")
        body = response.to_json()
        assert set(body["recognition"]) == KEYS and 0 <= body["recognition"]["confidence"] <= 1
        assert body["recognition"]["features"] == "image"  # a model without an embedding: the image's features
        assert "recognition_sec" in body["timings"]
        assert service.run(response.run_id)["response"]["recognition"] == body["recognition"]
    assert body["recognition"]["in_distribution"] is False
    assert any("out of distribution" in note for note in body["notes"])
    batch = service.analyze_batch([CLS, SEG, BLANK], source="batch", output_dir=tmp_path / "out")
    assert [set(item.to_json()["recognition"]) for item in batch.responses] == [KEYS] * 3


def test_refuse_ood_answers_422_and_records_the_refusal(tiny_settings: Settings, tmp_path: Path):
    settings = _with_blank(tiny_settings).with_(refuse_ood=True)
    service = AnalysisService(settings, model="tiny")
    with pytest.raises(RequestError) as raised:
        service.analyze(BLANK, source="api")
    assert raised.value.status_code == 422 and raised.value.field == "img_path_relative"
    (row,) = service.runs()
    assert row["error_type"] == "RequestError" and "out of distribution" in row["error"]
    batch = service.analyze_batch([BLANK], source="batch", output_dir=tmp_path / "out")
    assert batch.failures[0].status_code == 422 and len(service.runs()) == 2
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/predict", json=BLANK)
    assert answer.status_code == 422 and answer.json()["field"] == "img_path_relative"
    assert "UUSIC_REFUSE_OOD" in answer.json()["detail"]


def test_the_setting_is_read_from_the_environment():
    assert Settings.from_env({"UUSIC_REFUSE_OOD": "on"}).refuse_ood is True
    assert Settings.from_env({}).refuse_ood is False


def test_a_broken_recogniser_file_leaves_responses_working(tiny_settings: Settings):
    weights = tiny_settings.weights_dir
    shutil.copy(WEIGHTS_DIR / recognition.RECORD_FILE, weights / recognition.RECORD_FILE)
    (weights / recognition.WEIGHTS_FILE).write_bytes(b"not a recogniser")
    service = AnalysisService(tiny_settings, model="tiny")
    response = service.analyze(SEG, source="api").to_json()
    assert response["recognition"] is None and recognition.UNAVAILABLE_NOTE in response["notes"]
    assert "mask_path" in response
    assert service.run(response["run_id"])["response"]["recognition"] is None


@needs_data
def test_an_organ_other_than_the_one_chosen_is_noted(tiny_settings: Settings):
    organ, path = next(item for item in _validation_images(1) if item[0] == "Thyroid")
    target = tiny_settings.data_root / "segmentation/BUSI/imgs/real_thyroid.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    service = AnalysisService(tiny_settings, model="tiny")
    request = {"img_path_relative": "segmentation/BUSI/imgs/real_thyroid.jpg", "task": "classification",
               "dataset_name": "BUSI"}
    response = service.analyze(request, source="api").to_json()
    assert response["recognition"]["organ"] == organ and response["recognition"]["in_distribution"]
    assert any("looks like Thyroid" in note and "not Breast" in note for note in response["notes"])


def test_weights_made_for_older_features_are_refused_cleanly(tmp_path: Path):
    with np.load(WEIGHTS_DIR / recognition.WEIGHTS_FILE, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["feature_version"] = np.array(recognition.FEATURE_VERSION - 1)
    np.savez(tmp_path / recognition.WEIGHTS_FILE, **arrays)
    record = {"file": recognition.WEIGHTS_FILE, "sha256": sha256_file(tmp_path / recognition.WEIGHTS_FILE)}
    (tmp_path / recognition.RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
    assert recognition.load(tmp_path) is None
    assert recognition.recognise(np.zeros((64, 64, 3), np.uint8), tmp_path) is None


def test_the_features_ignore_size_and_have_a_fixed_length():
    rng = np.random.default_rng(1)
    small, large = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), rng.integers(0, 256, (600, 900, 3), np.uint8)
    first, second = recognition.features(small), recognition.features(large)
    assert first.shape == second.shape and np.isfinite(first).all() and np.isfinite(second).all()


def test_weights_whose_ood_columns_do_not_fit_the_features_are_refused(tmp_path: Path):
    with np.load(WEIGHTS_DIR / recognition.WEIGHTS_FILE, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["ood_columns"] = arrays["ood_columns"][:-1]
    with pytest.raises(ValueError, match="other features"):
        recognition.Recognizer(arrays)


def test_the_tissue_features_tell_layered_tissue_from_even_speckle():
    from core.recognition_tissue import TISSUE_COUNT, structure, tissue_features

    rng = np.random.default_rng(2)
    speckle = rng.gamma(2.0, 40.0, (128, 128)).clip(17, 255)
    smear = np.ones(15) / 15  # speckle smeared along the rows: horizontal streaks, like layered tissue
    layers = np.stack([np.convolve(np.pad(row, 7, mode="wrap"), smear, mode="valid") for row in speckle])
    even, layered = structure(speckle, speckle > 16, 16), structure(layers, layers > 16, 16)
    assert layered[0] > even[0] + 0.1 and layered[6] > 0.7 > even[6]  # coherence; share of horizontal edges
    assert tissue_features(layers).shape == (TISSUE_COUNT,) and np.isfinite(tissue_features(np.zeros((128, 128)))).all()


PINNED = PROJECT_ROOT / "tests" / "data" / "recognition_features_v3.npy"  # made by the pre-speed-up code (issue 25)
PINNED_SAMPLES = ["segmentation/BUSI/imgs/seg_00004.jpg", "segmentation/DDTI/imgs/seg_00006.jpg",
                  "segmentation/CAMUS/imgs/seg_00000.jpg"]


def _colour_image() -> np.ndarray:
    rng = np.random.default_rng(25)
    image = rng.integers(0, 256, (150, 210, 3), dtype=np.uint8)
    image[40:100, 60:160] = (200, 40, 90)
    return image


def test_the_features_stay_those_the_shipped_weights_were_trained_on():
    """Speed-ups must not change what is computed: three bundled samples (decoded as the service decodes them) and
    one colour image against the vectors the original code gave (1e-5 relative)."""
    from core.imaging import load_image

    images = [load_image(PROJECT_ROOT / "samples" / name).rgb for name in PINNED_SAMPLES] + [_colour_image()]
    found = np.stack([recognition.features(image) for image in images])
    expected = np.load(PINNED)
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)


def test_orientation_ties_fall_in_the_same_bin_on_every_cpu():
    """0°, 45°, 90° and 135° gradients (exact ties on whole grey levels) get their bins by comparison: AVX-512's
    arctan2 puts 45° one ulp low, which moved the version-3 features by up to 3.5 % on such machines."""
    from core.recognition_features import orientation_bins

    step, flat = np.full(64, 3.0, np.float32), np.zeros(64, np.float32)  # 64 wide: the vector kernels
    cases = [(step, step, 2), (-step, step, 6), (flat, step, 4), (-step, flat, 0), (step, -step, 6), (-step, -step, 2)]
    for gx, gy, expected in cases:
        assert set(orientation_bins(gx, gy).tolist()) == {expected}
