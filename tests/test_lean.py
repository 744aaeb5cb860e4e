"""Lean serving (issue 27): a cached converted model serves without torch and without an eager copy in memory.

- a server process (the API app over the service) with a cached OpenVINO conversion answers ``/v1/predict`` without
  ``torch`` in ``sys.modules``, and ``/healthz`` says which backend serves;
- the engine that converted drops the eager model (no second copy), and its outputs match eager torch within the
  pin tolerances (``tests/tolerances.py``);
- a failing converted model is an error that names ``UUSIC_BACKEND=torch``.

Timings are in ``bench/lean.py``, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_demo_weights

from core.engine import Engine, softmax
from core.errors import BackendUnavailable
from core.models import backends, registry
from core.settings import BUNDLED_SAMPLES, PROJECT_ROOT, Settings
from tests.tolerances import PROBABILITY_ATOL, assert_probabilities_close

OPENVINO = backends.installed("openvino") is None
needs_openvino = pytest.mark.skipif(not OPENVINO, reason="openvino is not installed (requirements-fast.txt)")
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_00004.jpg", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_00006.jpg", "task": "segmentation", "dataset_name": "DDTI"}

# Runs in a fresh interpreter: the serving stack as `python -m core serve` builds it, one request, then which of the
# heavy modules the process holds.
SERVER_SCRIPT = r"""
import json, sys
from core.models import backends
if len(sys.argv) > 2:
    backends.set_threads(int(sys.argv[2]))  # what `serve --threads N` does
from fastapi.testclient import TestClient
from core.api.app import create_app
from core.settings import Settings
app = create_app(Settings.from_env(), preload=True)
with TestClient(app) as client:
    answer = client.post("/v1/predict", json=json.loads(sys.argv[1]))
    health = client.get("/healthz").json()
print(json.dumps({"status": answer.status_code, "body": answer.json(), "backends": health["backends"],
                  "threads": backends.runtime_threads(),
                  "modules": sorted(m for m in ("torch", "torchvision", "ray", "highdicom", "fpdf", "av")
                                    if m in sys.modules)}))
"""


@pytest.fixture()
def small_model(tmp_path: Path):
    """A small demo-architecture network (64 px, letterbox) in its own weights folder; the bundled samples as data."""
    weights = small_demo_weights(tmp_path / "weights")
    backends.clear_cache()
    yield Settings(workspace=tmp_path / "ws", weights_dir=weights, device="cpu", data_root=BUNDLED_SAMPLES)
    backends.clear_cache()


def test_numpy_softmax_matches_torch():
    logits = np.random.default_rng(0).normal(scale=8.0, size=(3, 4, 5, 5)).astype(np.float32)
    want = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(softmax(logits), want, rtol=0, atol=1e-6)


@needs_openvino
def test_converting_engine_keeps_no_eager_copy(small_model: Settings):
    settings = small_model.with_(backend="openvino")
    engine = Engine(settings)
    assert isinstance(engine.model, backends.RuntimeModel) and engine.backend.backend == "openvino"
    assert not hasattr(engine.model, "eager")
    assert not hasattr(registry, "_CACHE"), "the registry keeps no model (the pool does)"
    assert engine.model.sha256 == engine.sha256 and engine.model.spec == engine.spec
    folder = settings.workspace / "cache" / "backends" / engine.backend.artefact
    assert (folder / backends.CHECK_FILE).is_file() and (folder / backends.SERVE_FILE).is_file()
    lean = engine.predict(CLS)
    eager = Engine(settings.with_(backend="torch")).predict(CLS)
    assert_probabilities_close(lean["probability"], eager["probability"], PROBABILITY_ATOL, "openvino vs torch")


@needs_openvino
def test_a_failing_runtime_names_the_backend_setting(small_model: Settings, monkeypatch):
    engine = Engine(small_model.with_(backend="openvino"))

    def broken(*inputs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.model, "_runner", broken)
    with pytest.raises(BackendUnavailable, match="UUSIC_BACKEND=torch") as caught:
        engine.predict(SEG, output_dir=small_model.workspace / "o")
    assert caught.value.status_code == 503


@needs_openvino
def test_an_older_cached_artefact_gets_its_check_then_serves_without_torch(small_model: Settings):
    settings = small_model.with_(backend="openvino")
    first = Engine(settings)
    folder = settings.workspace / "cache" / "backends" / first.backend.artefact
    (folder / backends.CHECK_FILE).unlink()  # as written by an earlier release
    (folder / backends.SERVE_FILE).unlink()
    backends.clear_cache()
    again = Engine(settings)
    assert again.backend.cached and isinstance(again.model, backends.RuntimeModel)
    assert (folder / backends.CHECK_FILE).is_file() and (folder / backends.SERVE_FILE).is_file()


@needs_openvino
@pytest.mark.parametrize("threads", [None, 1], ids=["default threads", "--threads 1"])
def test_server_with_a_cached_conversion_answers_without_torch(small_model: Settings, tmp_path: Path, threads):
    settings = small_model.with_(backend="auto")
    Engine(settings)  # converts once, into the workspace's cache (this process has torch anyway)
    env = {**os.environ, "UUSIC_WORKSPACE": str(settings.workspace), "UUSIC_WEIGHTS_DIR": str(settings.weights_dir),
           "UUSIC_DATA_ROOT": str(BUNDLED_SAMPLES), "UUSIC_DEVICE": "cpu", "UUSIC_BACKEND": "auto",
           "PYTHONPATH": str(PROJECT_ROOT)}
    for name in ("UUSIC_API_KEY", "UUSIC_API_URL", "UUSIC_MODEL", "UUSIC_CACHE_DIR", "UUSIC_HISTORY_URL"):
        env.pop(name, None)
    argv = [json.dumps(SEG), *([str(threads)] if threads else [])]
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", SERVER_SCRIPT, *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200, result["body"]
    assert result["body"]["mask_area_px"] >= 0
    assert result["modules"] == [], f"imported on the serve path: {result['modules']}"
    assert threads is None or result["threads"] == threads
    served = result["backends"]["small"]
    assert (served["backend"], served["cached"], served["fallback"]) == ("openvino", True, None)


def test_the_server_listens_before_its_model_has_loaded(tiny_settings, monkeypatch):
    """``serve`` preloads the model in the background (issue 27: a first-ever start listens at once): /healthz answers
    while the load is held at a gate, then the first request gets its answer."""
    import threading

    from fastapi.testclient import TestClient

    from core.api.app import create_app
    from core.service import AnalysisService

    gate, loading = threading.Event(), threading.Event()
    batcher = AnalysisService.batcher

    def gated(self):
        loading.set()
        assert gate.wait(120), "the test never opened the gate"
        return batcher.fget(self)

    monkeypatch.setattr(AnalysisService, "batcher", property(gated))
    with TestClient(create_app(tiny_settings, preload=True)) as client:
        assert loading.wait(120)
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["model_loaded"] is False
        gate.set()
        answer = client.post("/v1/predict", json={"img_path_relative": "segmentation/DDTI/imgs/seg_0.png",
                                                  "task": "segmentation", "dataset_name": "DDTI"})
        assert answer.status_code == 200, answer.text
        assert client.get("/healthz").json()["model_loaded"] is True


def test_healthz_answers_while_the_model_is_being_built(tiny_settings):
    """The build of an engine (torch import and eager load on a first-ever start: seconds) holds only the build lock;
    what ``/healthz`` reads (``service.health()`` → the loaded-models table) never waits for it (it did, so a first
    start answered /healthz only after the eager model had loaded)."""
    import threading

    from core.routing import LoadedModels, ModelPool
    from core.service import AnalysisService

    gate, building = threading.Event(), threading.Event()
    models = LoadedModels()
    service = AnalysisService(tiny_settings, workspace_check=False)
    service.pool = ModelPool(tiny_settings, models=models)

    def build():
        building.set()
        assert gate.wait(60), "the test never opened the gate"
        return service.pool._load(service.pool.default_name())

    loader = threading.Thread(target=models.get, args=(service.pool.key, service.pool.default_name(), build))
    loader.start()
    try:
        assert building.wait(60)
        health: list[dict] = []
        reader = threading.Thread(target=lambda: health.append(service.health()), daemon=True)
        reader.start()
        reader.join(10)
        assert health and health[0]["model_loaded"] is False, "/healthz waited for the model's build"
    finally:
        gate.set()
        loader.join(60)
    assert service.health()["model_loaded"] is True
