"""Faults (issue 6): bad weights named in the registry's and the API's errors, history store under SIGKILL,
a full disk on upload over HTTP, no EXIF kept, no image names or bytes in the API's logs.

Covered elsewhere (not repeated): concurrent writers lose no rows — tests/test_history.py::
test_concurrent_processes_and_threads_lose_no_rows; ENOSPC in save_upload — tests/test_samples.py::
test_disk_full_is_reported_clearly; EXIF stripped by save_upload — tests/test_samples.py::
test_upload_strips_exif_and_applies_orientation. Here the last two are re-checked through the HTTP API.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.api import create_app
from core.history import HistoryStore
from core.models import registry
from core.models.base import WeightsError
from core.settings import PROJECT_ROOT, WEIGHTS_DIR, Settings

DEMO = WEIGHTS_DIR / "demo_unet.pt"
DEMO_ENTRY = next(e for e in json.loads((WEIGHTS_DIR / "models.json").read_text()) if e["file"] == "demo_unet.pt")
SEG = {"task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"}


def _png(width=40, height=30, fmt="PNG", **save) -> bytes:
    buffer = io.BytesIO()
    array = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _bad_weights(kind: str, folder: Path) -> tuple[dict, str]:
    """A manifest entry pointing at a broken file in ``folder``; returns (entry, expected message regex)."""
    data = DEMO.read_bytes()
    entry = {**DEMO_ENTRY, "name": f"broken-{kind}", "file": f"{kind}.pt"}
    target = folder / entry["file"]
    if kind == "missing":
        return entry, r"missing\.pt .*is missing"
    if kind == "truncated":  # manifest sha of the real file: caught by the checksum
        target.write_bytes(data[: len(data) // 3])
        return entry, r"truncated\.pt does not match its manifest sha256"
    if kind == "truncated_nosha":  # no sha: the loader must still name the file
        target.write_bytes(data[: len(data) // 3])
        return {**entry, "sha256": None}, r"truncated_nosha\.pt"
    if kind == "sha_mismatch":  # a complete, loadable file that is not the one the manifest pins
        target.write_bytes(data)
        return {**entry, "sha256": "0" * 64}, r"sha_mismatch\.pt does not match its manifest sha256"
    if kind == "wrong_arch":  # demo weights declared as the Swin-Unet omni network
        target.write_bytes(data)
        return {**entry, "arch": "uusic_omni", "sha256": None, "input_size": 224,
                "preprocessing": "center_crop"}, r"wrong_arch\.pt: the checkpoint is a 'demo_unet' model"
    raise AssertionError(kind)


WEIGHT_FAULTS = ["missing", "truncated", "truncated_nosha", "sha_mismatch", "wrong_arch"]


@pytest.mark.parametrize("kind", WEIGHT_FAULTS)
def test_bad_weights_are_named_by_registry_and_api(tmp_path: Path, kind: str):
    weights = tmp_path / "weights"
    weights.mkdir()
    entry, pattern = _bad_weights(kind, weights)
    (weights / "models.json").write_text(json.dumps([entry]))
    settings = Settings(workspace=tmp_path / "ws", weights_dir=weights)
    spec = registry.find_spec(settings, None)
    with pytest.raises(WeightsError, match=pattern):
        registry.load_model(spec, "cpu", weights_dir=weights)

    from core.engine import Engine

    with pytest.raises(WeightsError, match=pattern):
        Engine(settings, device="cpu")

    before = {p for p in tmp_path.parent.iterdir()}
    with TestClient(create_app(settings)) as client:
        skeleton = client.post("/v1/upload", files={"file": ("a.png", _png(), "image/png")})
        assert skeleton.status_code == 200, skeleton.text  # uploads need no model
        response = client.post("/v1/predict", json={**SEG, "img_path_relative": skeleton.json()["img_path_relative"]})
        assert response.status_code == 503, response.text
        import re

        assert re.search(pattern, response.json()["detail"]), response.text
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["model_loaded"] is False
        assert re.search(pattern, health.json()["error"] or ""), health.text
        assert str(weights) not in health.text and str(weights) not in response.text  # no server folders
        assert client.get("/v1/datasets").status_code == 200  # still serving
    assert {p for p in tmp_path.parent.iterdir()} == before


CHILD = r"""
import sys
from core.history import HistoryStore
store = HistoryStore(sys.argv[1])
i = 0
while True:
    run_id = store.add({"img_name": f"row-{i}", "task": "segmentation", "dataset_name": "DDTI", "source": "cli"})
    print(f"{i} {run_id}", flush=True)
    i += 1
"""


def test_history_survives_sigkill_mid_write(tmp_path: Path):
    db = tmp_path / "history.sqlite"
    HistoryStore(db).close()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True,
                             cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    committed = []
    deadline = time.monotonic() + 30
    try:
        while len(committed) < 200 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(int(line.split()[0]))
    finally:
        os.kill(child.pid, signal.SIGKILL)  # only the child this test started
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert len(committed) >= 200, "child wrote too few rows before the deadline"

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = HistoryStore(db)
    names = {row["img_name"] for row in store.list(limit=None)}
    assert {f"row-{i}" for i in committed} <= names  # every row reported as committed is there
    count = store.count()
    store.add({"img_name": "after-kill", "task": "segmentation", "dataset_name": "DDTI"})
    assert store.count() == count + 1
    store.close()


@pytest.fixture()
def demo_client(tmp_path: Path):
    settings = Settings(workspace=tmp_path / "ws")
    with TestClient(create_app(settings)) as client:
        client.settings = settings
        yield client


def test_full_disk_on_upload_is_reported_over_http(demo_client, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.files.os.open", full)  # save_upload writes through core.files
    response = demo_client.post("/v1/upload", files={"file": ("a.png", _png(), "image/png")})
    assert response.status_code == 507, response.text
    assert "space" in response.json()["detail"].lower()
    monkeypatch.undo()
    assert list(Path(demo_client.settings.api_in).iterdir()) == []
    assert demo_client.post("/v1/upload", files={"file": ("a.png", _png(), "image/png")}).status_code == 200


def test_saved_inputs_keep_no_exif(demo_client):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x010F] = "SecretScannerCo"  # Make
    exif[0x013B] = "Dr. Jane Doe"  # Artist
    data = _png(40, 30, fmt="JPEG", exif=exif.tobytes())
    body = demo_client.post("/v1/upload", files={"file": ("scan.jpg", data, "image/jpeg")}).json()
    assert body["img_dimensions"] == [30, 40]  # orientation applied
    saved = Path(demo_client.settings.workspace) / body["img_path_relative"]
    raw = saved.read_bytes()
    assert b"SecretScannerCo" not in raw and b"Jane Doe" not in raw and b"Exif" not in raw
    with Image.open(saved) as image:
        assert len(image.getexif()) == 0 and image.size == (30, 40)


def test_api_logs_carry_no_image_names_or_bytes(demo_client, caplog):
    secret_name = "PATIENT_Zhang_San_12345"
    data = _png()
    with caplog.at_level(logging.DEBUG):
        skeleton = demo_client.post("/v1/upload", files={"file": (f"{secret_name}.png", data, "image/png")}).json()
        ok = demo_client.post("/v1/predict", json={**SEG, "img_path_relative": skeleton["img_path_relative"]})
        bad = demo_client.post("/v1/predict", json={**SEG, "img_path_relative": f"api_in/{secret_name}-missing.png"})
    assert ok.status_code == 200 and bad.status_code == 404
    assert any("/v1/predict" in r.getMessage() for r in caplog.records)  # the API does log its calls
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret_name not in text and skeleton["img_name"] not in text
    assert data[8:40].hex() not in text and repr(data[:16]) not in text
