"""Issue 25 on the Ray Serve door (core.cluster.serve): ``POST /v1/predict`` without ``dataset_name`` is routed by
the one route step (core.auto_route) inside the replica's batched calls, given fields win, and an unroutable or bad
call is its own 4xx naming the field while the calls batched with it are answered.

The first test drives a replica's grouped calls in this process (the recogniser's answer fixed); the second deploys
the app on a real local Ray Serve with the bundled weights, samples and the real recogniser.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, wait_for_model
from PIL import Image

from core import recognition
from core.settings import PROJECT_ROOT, WEIGHTS_DIR, Settings

if importlib.util.find_spec("ray") is None and not os.environ.get("CI"):
    pytest.skip("Ray is not installed", allow_module_level=True)

SEG_IMAGE = "segmentation/DDTI/imgs/seg_2.png"
THYROID = recognition.Recognition(organ="Thyroid", dataset="DDTI", confidence=0.97, in_distribution=True,
                                  ood_score=1.0)


def test_a_replicas_batched_calls_route_requests_without_a_dataset(tiny_settings: Settings, recogniser_answer: dict):
    from core.cluster.serve import ReplicaService
    from core.response import AnalysisFailure, AnalysisResponse

    recogniser_answer["found"] = THYROID
    service = ReplicaService(tiny_settings, model="tiny")
    routed = {"img_path_relative": SEG_IMAGE, "task": "segmentation"}
    calls = [(routed, "api", None, None), ({**routed, "dataset_name": "DDTI"}, "dashboard", None, None),
             ({**routed, "task": "classification"}, "api", None, None),  # the thyroid has no classification dataset
             ({**routed, "task": "nope"}, "api", None, None), (routed, "api", None, "tiny")]
    first, given, unroutable, unknown, named = service.analyze_calls(calls)
    assert isinstance(first, AnalysisResponse) and first.dataset_name == "DDTI" and first.recognition["routed"]
    assert isinstance(named, AnalysisResponse) and named.recognition["routed"] is True
    assert isinstance(given, AnalysisResponse) and "routed" not in given.recognition
    assert isinstance(unroutable, AnalysisFailure) and unroutable.status_code == 422
    assert unroutable.field == "dataset_name"
    assert isinstance(unknown, AnalysisFailure) and (unknown.status_code, unknown.field) == (422, "task")
    rows = service.runs()
    assert len(rows) == 5 and sorted(row["dataset_name"] or "" for row in rows if not row["error"]) == ["DDTI"] * 3
    assert all(service.run(r.run_id)["response"]["recognition"].get("routed") for r in (first, named))


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from ray import serve

    from core.cluster import connect

    started = connect(num_cpus=2)
    yield
    try:
        serve.shutdown()
    finally:
        if started:
            ray.shutdown()


def _wait_ready(client, seconds: float = 240.0) -> None:
    wait_for_model(lambda: client.get("/healthz", timeout=5), seconds, "the Ray Serve deployment")


def _samples_with_noise(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A copy of the bundled samples with a noise image among the DDTI ones, and its ground-truth entries."""
    data_root = tmp_path / "samples"
    shutil.copytree(PROJECT_ROOT / "samples", data_root)
    noise = np.random.default_rng(3).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data_root / "segmentation/DDTI/imgs/noise.png")
    return data_root, json.loads((data_root / "ground_truth.json").read_text())


def test_ray_serve_routes_predict_without_a_dataset(local_ray, tmp_path: Path):
    import httpx

    from core.cluster.serve import deploy
    from core.history import HistoryStore

    assert recognition.load(WEIGHTS_DIR) is not None, "the bundled recogniser must load (weights/)"
    data_root, entries = _samples_with_noise(tmp_path)
    thyroid = next(e for e in entries if e["dataset_name"] == "DDTI")
    breast = next(e for e in entries if e["dataset_name"] == "BUSI" and e["task"] == "classification")
    bare = [{"img_path_relative": e["img_path_relative"], "task": e["task"]} for e in (thyroid, breast)]
    settings = Settings(workspace=tmp_path / "ws", data_root=data_root, device="cpu")
    settings.ensure_workspace()
    url = deploy(settings, replicas=1, num_cpus=1, threads=1, port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            _wait_ready(client)
            calls = [*bare, thyroid, {**bare[0], "img_path_relative": "segmentation/DDTI/imgs/noise.png"},
                     {**bare[0], "task": "nope"}]
            with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:  # batched together by @serve.batch
                routed_thyroid, routed_breast, given, ood, unknown = pool.map(
                    lambda body: client.post("/v1/predict", json=body), calls)
            after = client.post("/v1/predict", json=bare[0])
    finally:  # the replica's CPU goes back to the local Ray (a later Ray Data test needs both of its CPUs)
        from ray import serve

        serve.shutdown()
    assert routed_thyroid.status_code == 200, routed_thyroid.text
    assert routed_thyroid.json()["dataset_name"] == "DDTI" and routed_thyroid.json()["recognition"]["routed"] is True
    assert routed_breast.status_code == 200 and routed_breast.json()["dataset_name"] == "BUSI"
    assert given.status_code == 200 and "routed" not in given.json()["recognition"]
    assert ood.status_code == 422 and ood.json()["field"] == "dataset_name"
    assert "out of distribution" in ood.json()["detail"]
    assert unknown.status_code == 422 and unknown.json()["field"] == "task"
    assert after.status_code == 200  # the replica goes on serving
    rows = HistoryStore.from_settings(settings).list(limit=None)
    assert len(rows) == 6 and sorted(r["error_type"] for r in rows if r["error_type"]) == ["RequestError"] * 2
    assert sorted(r["dataset_name"] for r in rows if not r["error_type"]) == ["BUSI", "DDTI", "DDTI", "DDTI"]


def test_ray_data_batches_carry_the_recognition(local_ray, tmp_path: Path):
    """``predict --backend ray``: the decode tasks run the recogniser (every response has ``recognition``), a routed
    entry keeps the route step's answer (``routed: true``), an out-of-distribution image is refused with
    ``UUSIC_REFUSE_OOD`` on, and the batch goes on."""
    from core.cluster.batch import build_service
    from core.response import AnalysisFailure, AnalysisResponse

    data_root, entries = _samples_with_noise(tmp_path)
    thyroid = next(e for e in entries if e["dataset_name"] == "DDTI")
    bare = {"img_path_relative": thyroid["img_path_relative"], "task": thyroid["task"]}
    noisy = {**thyroid, "img_path_relative": "segmentation/DDTI/imgs/noise.png"}
    settings = Settings(workspace=tmp_path / "ws", data_root=data_root, device="cpu", refuse_ood=True)
    service = build_service(settings, None, None, mask_inverse="exact", address=None, concurrency=1, num_gpus=0.0,
                            threads=1)
    result = service.analyze_batch([bare, thyroid, noisy, thyroid], source="batch", output_dir=tmp_path / "out",
                                   input_dir=data_root)
    routed, given, refused, again = result.items
    assert isinstance(routed, AnalysisResponse) and routed.recognition and routed.recognition["routed"] is True
    for item in (given, again):
        assert isinstance(item, AnalysisResponse) and item.recognition and item.recognition["organ"] == "Thyroid"
        assert "routed" not in item.recognition
    assert isinstance(refused, AnalysisFailure) and refused.status_code == 422
    assert "out of distribution" in refused.error
