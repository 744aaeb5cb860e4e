"""The correction loop end to end (issue 26): corrected runs → export-labels → ``core train --init`` (a few CPU steps)
→ validation before / after printed → a NEW manifest version (own name and sha256, the base entry kept) that a
service analyses with ``model=<new name>``; and the refusals of the fine-tune door."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sha256_of
from PIL import Image

from core import cli
from core.corrections import Corrections, mask_png
from core.label_export import export_labels
from core.model_versions import version_name
from core.models.demo_unet import DemoConfig, DemoUNet, save_checkpoint
from core.service import AnalysisService
from core.settings import Settings

TINY = DemoConfig(widths=(8, 16, 24, 32, 48))
BASE = "tiny-demo"


@pytest.fixture()
def settings(tiny_settings: Settings, monkeypatch) -> Settings:
    """The tiny settings plus a tiny demo_unet entry (the arch core train fine-tunes); the CLI reads the env."""
    weights = Path(tiny_settings.weights_dir)
    torch.manual_seed(0)
    save_checkpoint(DemoUNet(TINY), weights / "tiny_demo.pt", {"input_size": 64})
    manifest = json.loads((weights / "models.json").read_text())
    manifest.append({"name": BASE, "arch": "demo_unet", "file": "tiny_demo.pt",
                     "sha256": sha256_of(weights / "tiny_demo.pt"), "input_size": 64, "preprocessing": "letterbox",
                     "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]})
    (weights / "models.json").write_text(json.dumps(manifest, indent=1))
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    monkeypatch.setenv("UUSIC_DATA_ROOT", str(tiny_settings.data_root))
    return tiny_settings.model_copy(update={"backend": "torch"})


def corrected_export(settings: Settings, out: Path) -> dict:
    """Analyse the tiny data root's six cases with the base model, correct each (the ground-truth mask, the true
    class) and export them."""
    service = AnalysisService(settings)
    store = Corrections(settings, service.store)
    root = Path(settings.data_root)
    for entry in json.loads((root / "ground_truth.json").read_text()):
        response = service.analyze(entry, source="api", model=BASE)
        if entry["task"] == "segmentation":
            truth = np.asarray(Image.open(root / entry["mask_path_relative"]).convert("L")) > 127
            store.correct_mask(response.run_id, mask_png(truth), author="dr test")
        else:
            store.correct_class(response.run_id, {"class_index": entry["class_label_index"]}, author="dr test")
    return export_labels(settings, service.store, out)


def test_export_fine_tune_register_and_serve_the_new_version(settings, tmp_path, capsys):
    labels = tmp_path / "labels"
    assert corrected_export(settings, labels)["written"] == 6
    manifest_path = Path(settings.weights_dir) / "models.json"
    before = json.loads(manifest_path.read_text())
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(labels), "--init", BASE, "--name", "tiny-demo-ft-test",
                   "--val-data", str(settings.data_root), "--max-steps", "3", "--batch-size", "4",
                   "--device", "cpu", "--no-progress", "--threads", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "validation: --val-data data (all usable entries, 6 images)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("segmentation/DDTI", "classification/"))]
    assert {r[1] for r in rows} >= {"dice", "auc", "accuracy"}
    assert all(len(r) == 4 and float(r[2]) >= 0 and float(r[3]) >= 0 for r in rows)  # before and after printed
    assert "registered tiny-demo-ft-test" in out

    after = json.loads(manifest_path.read_text())
    assert after[:len(before)] == before  # the base entries stay exactly as they were
    new = after[-1]
    assert new["name"] == "tiny-demo-ft-test" and new["file"] == "tiny-demo-ft-test.pt"
    assert new["sha256"] == sha256_of(Path(settings.weights_dir) / new["file"]) != before[-1]["sha256"]
    assert new["extra"]["base_model"] == BASE and new["extra"]["fine_tune"]["train_images"] == 6
    assert set(new["extra"]["fine_tune"]["val_before"]) == set(new["extra"]["fine_tune"]["val_after"])

    service = AnalysisService(settings)
    seg = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI"}
    tuned = service.analyze(seg, source="api", model="tiny-demo-ft-test")
    assert tuned.model_name == "tiny-demo-ft-test" and tuned.model_sha256 == new["sha256"]
    assert service.analyze(seg, source="api", model=BASE).model_sha256 == before[-1]["sha256"]


def test_without_val_data_the_split_is_named(settings, tmp_path, capsys):
    labels = tmp_path / "labels"
    corrected_export(settings, labels)
    capsys.readouterr()
    rc = cli.main(["train", "--data", str(labels), "--init", BASE, "--max-steps", "2", "--batch-size", "4",
                   "--device", "cpu", "--no-progress", "--threads", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert ("held-out 20 % of --data by content hash" in out) or ("the numbers are on the TRAINING entries" in out)
    names = [e["name"] for e in json.loads((Path(settings.weights_dir) / "models.json").read_text())]
    assert names[-1].startswith(f"{BASE}-ft-") and len(names) == 4


def test_the_base_models_own_validation_split_is_the_default(settings, tmp_path, capsys):
    """A base entry with ``extra.validation_split`` whose images are under the data root: validated on that split;
    a split naming an image that is not there: the held-out part of --data instead."""
    weights, root = Path(settings.weights_dir), Path(settings.data_root)
    split = [e for e in json.loads((root / "ground_truth.json").read_text()) if e["task"] == "segmentation"]
    (weights / "tiny_val.json").write_text(json.dumps(split))
    manifest = json.loads((weights / "models.json").read_text())
    manifest[-1]["extra"] = {"validation_split": "tiny_val.json"}
    (weights / "models.json").write_text(json.dumps(manifest))
    labels = tmp_path / "labels"
    corrected_export(settings, labels)
    capsys.readouterr()
    common = ["--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--threads", "2"]
    assert cli.main(["train", "--data", str(labels), "--init", BASE, "--name", "a", *common]) == 0
    out = capsys.readouterr().out
    assert "validation: the base model's validation split, --val-data data (--val-entries tiny_val.json, 3 images)" \
        in out
    (weights / "tiny_val.json").write_text(json.dumps([*split, {**split[0], "img_path_relative": "x/imgs/gone.png"}]))
    assert cli.main(["train", "--data", str(labels), "--init", BASE, "--name", "b", *common]) == 0
    assert "base model's validation split" not in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--init", "tiny"], "'torchscript' model"),                        # not a fine-tunable arch
    (["--init", "nope"], "neither a model of the manifest"),           # unknown name, no file
    (["--init", BASE, "--name", BASE], "already has a model named"),   # never replaces an entry
    (["--init", BASE, "--name", "../x"], "--name: use 1-80 letters"),  # a name is not a path
    (["--init", BASE, "--val-entries", "x.json"], "--val-entries needs --val-data"),
    (["--name", "x"], "go with --init"),
])
def test_fine_tune_refusals(settings, tmp_path, capsys, args, message):
    manifest = (Path(settings.weights_dir) / "models.json").read_text()
    rc = cli.main(["train", "--data", str(settings.data_root), "--device", "cpu", "--no-progress", *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert (Path(settings.weights_dir) / "models.json").read_text() == manifest


def test_version_name_is_dated():
    from datetime import UTC, datetime

    assert version_name("demo", datetime(2026, 12, 7, 14, 5, tzinfo=UTC)) == "demo-ft-20261207-1405"
