"""`python -m core predict` / `evaluate` end to end, and the metrics they use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from core.cli import main
from core.evaluate import dice, evaluate, nsd
from core.settings import PROJECT_ROOT, Settings


def _run_predict(settings: Settings, out: Path, *extra: str, gt: Path | None = None) -> int:
    return main(["predict", "--input-json", str(gt or settings.data_root / "ground_truth.json"),
                 "--input-dir", str(settings.data_root), "--output-dir", str(out), "--device", "cpu",
                 "--batch-size", "2", "--no-progress", *extra])


def test_predict_writes_challenge_outputs(tiny_settings: Settings, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    out = tmp_path / "out"
    assert _run_predict(tiny_settings, out, "--model", "tiny") == 0
    classification = json.loads((out / "classification.json").read_text())
    gt = json.loads((tiny_settings.data_root / "ground_truth.json").read_text())
    cls_rel = [e["img_path_relative"] for e in gt if e["task"] == "classification"]
    assert sorted(classification) == sorted(cls_rel)
    for value in classification.values():
        assert set(value) == {"probability", "prediction"} and len(value["probability"]) == 2
    for entry in gt:
        if entry["task"] == "segmentation":
            mask = Image.open(out / entry["img_path_relative"].replace("/imgs/", "/masks/"))
            assert mask.size == tuple(entry["img_dimensions"])
    assert "done: 6 predicted" in capsys.readouterr().out


def test_predict_skips_unserved_and_counts(tiny_settings: Settings, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    gt = json.loads((tiny_settings.data_root / "ground_truth.json").read_text())
    gt.append({**gt[0], "dataset_name": "Appendix", "organ": "Appendix"})
    gt.append({**gt[0], "task": "bogus"})
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    assert _run_predict(tiny_settings, tmp_path / "out", "--model", "tiny", gt=gt_path) == 0
    captured = capsys.readouterr()
    assert "skipped 1 image(s) of classification/Appendix: no model for this dataset" in captured.err
    assert "1 skipped (no model), 1 invalid" in captured.out


def test_predict_adhoc_weights_and_evaluate(tiny_settings: Settings, tiny_torchscript: Path, tmp_path: Path,
                                            monkeypatch, capsys):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tmp_path / "no-manifest-here"))
    out = tmp_path / "out"
    assert _run_predict(tiny_settings, out, "--arch", "torchscript", "--weights", str(tiny_torchscript),
                        "--input-size", "32") == 0
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--ground-truth", str(tiny_settings.data_root / "ground_truth.json"),
                 "--data-root", str(tiny_settings.data_root), "--pred-dir", str(out), "--out", str(metrics)]) == 0
    report = json.loads(metrics.read_text())
    assert report["nsd_tolerance_px"] == 2
    assert report["segmentation"]["DDTI"]["n"] == 3 and report["segmentation"]["DDTI"]["missing"] == 0
    assert 0.0 <= report["segmentation"]["DDTI"]["dice"] <= 1.0
    assert report["classification"]["BUSI"]["n"] == 3
    assert report["macro"]["dice"] == report["segmentation"]["DDTI"]["dice"]
    assert "Macro: Dice" in capsys.readouterr().out


def test_evaluate_oracle_and_missing(tiny_settings: Settings, tmp_path: Path):
    """Ground-truth masks as predictions score 1.0; a deleted prediction is counted as missing."""
    root = tiny_settings.data_root
    gt = json.loads((root / "ground_truth.json").read_text())
    pred = tmp_path / "pred"
    for entry in gt:
        if entry["task"] == "segmentation":
            target = pred / entry["img_path_relative"].replace("/imgs/", "/masks/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((root / entry["mask_path_relative"]).read_bytes())
    cls = {e["img_path_relative"]: {"probability": [1.0 - e["class_label_index"], float(e["class_label_index"])],
                                    "prediction": e["class_label_index"]}
           for e in gt if e["task"] == "classification"}
    (pred / "classification.json").write_text(json.dumps(cls))
    report = evaluate(root / "ground_truth.json", root, pred)
    assert report["segmentation"]["DDTI"]["dice"] == 1.0 and report["segmentation"]["DDTI"]["nsd"] == 1.0
    assert report["classification"]["BUSI"]["auc"] == 1.0 and report["classification"]["BUSI"]["accuracy"] == 1.0
    next(pred.rglob("seg_0.png")).unlink()
    report = evaluate(root / "ground_truth.json", root, pred)
    assert report["segmentation"]["DDTI"]["missing"] == 1 and report["missing_total"] == 1


def _reference_nsd(gt: np.ndarray, pred: np.ndarray, tolerance: float) -> float:
    """The challenge's formula with skimage's find_boundaries(mode='inner') written out in scipy."""
    cross = ndimage.generate_binary_structure(2, 1)

    def boundary(m):
        m = m.astype(np.uint8)
        return (ndimage.grey_dilation(m, footprint=cross, mode="reflect")
                != ndimage.grey_erosion(m, footprint=cross, mode="reflect")) & (m != 0)

    bt, bp = boundary(gt), boundary(pred)
    dt, dp = ndimage.distance_transform_edt(~bt), ndimage.distance_transform_edt(~bp)
    return ((bt & (dp <= tolerance)).sum() + (bp & (dt <= tolerance)).sum()) / (bt.sum() + bp.sum() + 1e-6)


def test_metrics_on_synthetic_shapes():
    a = np.zeros((60, 80), bool)
    a[10:30, 10:40] = True
    b = np.zeros_like(a)
    b[10:30, 25:55] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert dice(a, b) == pytest.approx(2 * 20 * 15 / (600 + 600))
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert nsd(a, a) == 1.0 and nsd(a, np.zeros_like(a)) == 0.0
    shifted = np.roll(a, 1, axis=1)
    assert nsd(a, shifted, tolerance=1) == 1.0 and nsd(a, shifted, tolerance=0) < 1.0
    rng = np.random.default_rng(0)
    for _ in range(10):
        g = ndimage.binary_opening(rng.random((50, 70)) > 0.4)
        p = ndimage.binary_opening(rng.random((50, 70)) > 0.4)
        for tol in (1, 2):
            assert nsd(g, p, tol) == pytest.approx(_reference_nsd(g, p, tol), abs=1e-5)


def test_module_entry_point_and_unknown_command(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "core", "nope"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown command" in result.stderr
    result = subprocess.run([sys.executable, "-m", "core", "predict", "--input-json", str(tmp_path / "x.json"),
                             "--input-dir", str(tmp_path), "--output-dir", str(tmp_path / "o")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in result.stderr
