"""The shipped demo weights: manifest entry matches the file, they load, and score on the bundled samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.catalog import find_dataset
from core.evaluate import dice
from core.models import registry
from core.settings import BUNDLED_SAMPLES, WEIGHTS_DIR, Settings

MANIFEST = WEIGHTS_DIR / "models.json"
DEMO = "uusic-demo-unet"
# measured on the bundled samples with the shipped weights: mean Dice ~0.85 (set well below, honestly)
DICE_FLOOR = 0.6


def _demo_entry() -> dict:
    return next(e for e in json.loads(MANIFEST.read_text()) if e["name"] == DEMO)


def test_manifest_entry_matches_the_weights_file():
    entry = _demo_entry()
    path = WEIGHTS_DIR / entry["file"]
    assert path.is_file() and path.stat().st_size < 50 * 2**20
    assert registry.file_sha256(path) == entry["sha256"]
    assert entry["arch"] == "demo_unet" and entry["preprocessing"] == "letterbox" and entry["input_size"] == 256
    for task, name in entry["datasets"]:
        find_dataset(task, name)  # every listed dataset is a catalog dataset
    assert ["segmentation", "KidneyUS"] not in entry["datasets"]


def test_bundled_samples_are_complete():
    entries = json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
    assert {(e["task"], e["dataset_name"]) for e in entries} >= {
        ("segmentation", "BUSI"), ("segmentation", "Fetal_HC"), ("segmentation", "DDTI"), ("segmentation", "CAMUS"),
        ("classification", "BUSI")}
    for e in entries:
        assert (BUNDLED_SAMPLES / e["img_path_relative"]).stat().st_size == e["img_size_bytes"]
        if e.get("mask_path_relative"):
            assert (BUNDLED_SAMPLES / e["mask_path_relative"]).is_file()
    assert (BUNDLED_SAMPLES / "SOURCES.md").is_file()


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory):
    from core.engine import Engine

    workspace = tmp_path_factory.mktemp("ws")
    settings = Settings().with_(workspace=workspace, data_root=BUNDLED_SAMPLES, weights_dir=WEIGHTS_DIR,
                                device="cpu")
    return Engine(settings, DEMO)


def test_shipped_weights_score_on_the_bundled_samples(demo_engine, tmp_path: Path):
    entries = json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
    dices, hc_errors, cls = [], [], []
    for e in entries:
        response = demo_engine.predict(e, output_dir=tmp_path)
        if e["task"] == "segmentation":
            pred = np.asarray(Image.open(response["mask_path"])) > 127
            gt = np.asarray(Image.open(BUNDLED_SAMPLES / e["mask_path_relative"]).convert("L")) > 127
            dices.append(dice(gt, pred))
            if e.get("head_circumference_mm"):
                hc_errors.append(abs(response["measurements"]["head_circumference_mm"] - e["head_circumference_mm"]))
        else:
            cls.append(response["prediction"] == e["class_label_index"])
    assert np.mean(dices) >= DICE_FLOOR, dices
    assert hc_errors and np.mean(hc_errors) < 6.0, hc_errors
    assert np.mean(cls) >= 0.5, cls


def test_untrained_dataset_is_no_model(demo_engine):
    from core.errors import NoModelError

    assert not demo_engine.serves("segmentation", "KidneyUS")
    assert not demo_engine.serves("classification", "Fatty-Liver")
    with pytest.raises(NoModelError):
        demo_engine.predict({"img_path_relative": "segmentation/BUSI/imgs/x.jpg", "task": "segmentation",
                             "dataset_name": "KidneyUS"})
