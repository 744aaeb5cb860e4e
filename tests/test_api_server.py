"""A real ``python -m core serve`` (uvicorn) on a free loopback port, driven over HTTP."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import serve_api
from PIL import Image

from core.history import HistoryStore
from core.settings import Settings

KEY = "test-key-123"


@pytest.fixture()
def server(tiny_settings: Settings, tmp_path):
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace),
           "UUSIC_DATA_ROOT": str(tiny_settings.data_root), "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": KEY, "UUSIC_MODEL": "tiny", "OMP_NUM_THREADS": "1"}
    with serve_api(env, tmp_path / "server.log", args=("--threads", "1"), timeout=60) as base, \
            httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as client:
        client.settings = tiny_settings
        client.log_path = tmp_path / "server.log"
        yield client


def test_real_server_routes(server):
    health = server.get("/healthz").json()
    assert health["model_loaded"] is True and health["device"] == "cpu"  # loaded at start-up
    assert httpx.get(str(server.base_url).rstrip("/") + "/v1/models").status_code == 401  # no key
    assert server.get("/docs").status_code == 200
    sample = server.get("/v1/random-sample", params={"task": "segmentation", "dataset_name": "DDTI"}).json()
    result = server.post("/v1/predict", json=sample)
    assert result.status_code == 200, result.text
    mask = server.get(result.json()["mask_url"])
    assert mask.status_code == 200 and Image.open(io.BytesIO(mask.content)).size == tuple(sample["img_dimensions"])
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(buffer, format="PNG")
    skeleton = server.post("/upload", files={"file": ("patient X.png", buffer.getvalue(), "image/png")}).json()
    old = server.post("/segment/", json={**skeleton, "task": "classification", "dataset_name": "BUSI",
                                         "organ": "Breast", "data_partition_group": "public_all"})
    assert old.status_code == 200 and len(old.json()["probability"]) == 2
    bad = server.post("/v1/predict", json={**sample, "img_path_relative": "../../../etc/passwd"})
    assert bad.status_code == 403
    huge = server.post("/v1/predict", content=b"{" + b" " * 2_000_000 + b"}",
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert server.get("/healthz").status_code == 200
    assert server.get("/v1/history").json()["count"] == 3  # two predictions + the refused path
    log = server.log_path.read_text(errors="replace")
    assert "patient" not in log and "DDTI/imgs" not in log and "passwd" not in log  # no names or paths logged


def test_real_server_concurrent_requests(server):
    body = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI"}
    expected = server.post("/v1/predict", json=body).json()["probability"]

    def call(_):
        response = server.post("/v1/predict", json=body)
        return response.status_code, response.json().get("probability")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(24)))
    assert all(status == 200 for status, _ in results)
    assert all(np.allclose(p, expected, atol=1e-6) for _, p in results)
    assert HistoryStore(server.settings.history_db).count() == 25
