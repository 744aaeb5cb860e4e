"""core.api through the ASGI client: every route, the earlier server's routes and bodies, API key, hostile input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.api import create_app
from core.history import HistoryStore
from core.settings import Settings
from tests import tolerances

# the earlier server's request bodies (its SegmentRequest: all fields present, empty strings for masks)
OLD_SEG_BODY = {"img_name": "seg_1.png", "img_path_relative": "segmentation/DDTI/imgs/seg_1.png",
                "img_size_bytes": 1234, "img_dimensions": [40, 70], "img_format": "png", "task": "segmentation",
                "dataset_name": "DDTI", "organ": "Thyroid", "data_partition_group": "public_all", "mask_name": "",
                "mask_path_relative": "", "seg_target_info": None, "class_label_index": None,
                "class_label_name": None}
OLD_CLS_BODY = {"img_name": "cls_0.png", "img_path_relative": "classification/BUSI/imgs/cls_0.png",
                "img_size_bytes": 1234, "img_dimensions": [64, 48], "img_format": "png", "task": "classification",
                "dataset_name": "BUSI", "organ": "Breast", "data_partition_group": "public_all", "mask_name": None,
                "mask_path_relative": None, "seg_target_info": None, "class_label_index": 0,
                "class_label_name": "benign"}


@pytest.fixture()
def client(tiny_settings: Settings):
    with TestClient(create_app(tiny_settings)) as test_client:
        test_client.settings = tiny_settings
        yield test_client


def _png_bytes(width=50, height=40, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_healthz_reports_model_after_first_use(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model_loaded"] is False and body["auth_required"] is False
    assert client.post("/v1/predict", json=OLD_CLS_BODY).status_code == 200
    body = client.get("/healthz").json()
    assert body["model_loaded"] is True and body["device"] == "cpu" and body["model"] == "tiny"


def test_predict_classification_and_history(client):
    response = client.post("/v1/predict", json={"img_path_relative": "classification/BUSI/imgs/cls_1.png",
                                                "task": "classification", "dataset_name": "BUSI"})
    assert response.status_code == 200, response.text
    body = response.json()
    rel = "classification/BUSI/imgs/cls_1.png"
    assert body[rel]["prediction"] == body["prediction"] == int(np.argmax(body["probability"]))
    assert len(body["probability"]) == 2 and abs(sum(body["probability"]) - 1) < 1e-5
    assert body["label_name"] in ("benign", "malignant") and body["organ"] == "Breast"
    for name in ("inference_time_sec", "memory_usage_mb", "gpu_memory_usage_mb", "gpu_memory_reserved_mb",
                 "device", "model_name", "model_sha256"):
        assert name in body
    assert body["memory_usage_mb"] > 0 and body["gpu_memory_usage_mb"] is None and body["run_id"] >= 1
    rows = HistoryStore(client.settings.history_db).list()
    assert len(rows) == 1 and rows[0]["source"] == "api" and rows[0]["img_name"] == "cls_1.png"
    assert len(rows[0]["input_sha256"]) == 64 and rows[0]["model_name"] == "tiny"
    history = client.get("/v1/history", params={"task": "classification"}).json()
    assert history["count"] == 1 and history["runs"][0]["probabilities"] == body["probability"]
    assert client.get("/v1/history", params={"task": "segmentation"}).json()["count"] == 0
    assert client.get(f"/v1/history/{body['run_id']}").json()["prediction"] == body["prediction"]
    assert client.get("/v1/history/9999").status_code == 404
    text = client.get("/v1/history.csv", params={"q": "cls_"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(text.text)))
    assert len(parsed) == 1 and parsed[0]["dataset_name"] == "BUSI"


def test_predict_segmentation_writes_mask_served_by_masks_route(client):
    response = client.post("/v1/predict", json={"img_path_relative": "segmentation/DDTI/imgs/seg_1.png",
                                                "task": "segmentation", "dataset_name": "DDTI",
                                                "pixel_spacing_mm": 0.1, "my_tag": "kept"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mask_path_relative"] == "segmentation/DDTI/masks/seg_1.png" and body["my_tag"] == "kept"
    mask_file = client.settings.api_out / body["mask_path_relative"]
    mask = np.asarray(Image.open(mask_file))
    assert mask.shape == (70, 40) and set(np.unique(mask)) <= {0, 255}
    assert body["mask_area_px"] == int((mask > 0).sum()) and "measurements" in body
    png = client.get(body["mask_url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), mask)
    assert client.get("/v1/masks/segmentation/DDTI/masks/none.png").status_code == 404
    assert client.get("/v1/masks/..%2F..%2Fhistory.sqlite3").status_code in (403, 404)
    assert client.get("/v1/masks/%2E%2E/history.sqlite3").status_code in (403, 404)


def test_upload_then_predict(client):
    response = client.post("/v1/upload", files={"file": ("my scan 1.jpg", _png_bytes(fmt="JPEG"), "image/jpeg")})
    assert response.status_code == 200, response.text
    skeleton = response.json()
    assert skeleton["img_path_relative"].startswith("api_in/my_scan_1-") and skeleton["img_format"] == "jpg"
    assert skeleton["img_dimensions"] == [50, 40]
    assert (client.settings.workspace / skeleton["img_path_relative"]).stat().st_size == skeleton["img_size_bytes"]
    result = client.post("/v1/predict", json={**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
    assert result.status_code == 200, result.text
    assert result.json()["mask_path_relative"].startswith("masks/my_scan_1-")
    assert client.get("/staticapi_in/" + skeleton["img_name"]).status_code == 200


def test_random_sample_models_datasets(client):
    sample = client.get("/v1/random-sample", params={"task": "segmentation", "dataset_name": "DDTI"}).json()
    assert sample["dataset_name"] == "DDTI" and sample["mask_path_relative"].startswith("segmentation/DDTI/masks/")
    assert client.post("/v1/predict", json=sample).status_code == 200
    missing = client.get("/v1/random-sample", params={"task": "segmentation", "dataset_name": "BUSI"})
    assert missing.status_code == 404 and "BUSI" in missing.json()["detail"]
    unknown = client.get("/v1/random-sample", params={"task": "segmentation", "dataset_name": "Nope"})
    assert unknown.status_code == 422 and "Nope" in unknown.json()["detail"]
    assert client.get("/v1/random-sample", params={"task": "segmentation"}).status_code == 422
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "tiny" and models[0]["loaded"] is True and models[0]["sha256"]
    assert any(m["name"] == "tiny_letterbox" and m["loaded"] is False for m in models)
    datasets = client.get("/v1/datasets").json()["datasets"]
    busi = next(d for d in datasets if d["task"] == "classification" and d["dataset_name"] == "BUSI")
    assert busi["class_names"] == ["benign", "malignant"] and busi["class_names_zh"] == ["良性", "恶性"]
    assert busi["served"] is True and busi["group_name_zh"] == "乳腺"
    kidney = next(d for d in datasets if d["dataset_name"] == "KidneyUS")
    assert kidney["served"] is False
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]


def test_compat_segment_route_both_tasks(client):
    seg = client.post("/segment/", json=OLD_SEG_BODY)
    assert seg.status_code == 200, seg.text
    body = seg.json()
    for key, value in OLD_SEG_BODY.items():
        if key not in ("mask_name", "mask_path_relative"):
            assert body[key] == value  # the request is echoed
    assert body["mask_name"] == "seg_1.png"
    assert body["mask_path_relative"] == "api_out/segmentation/DDTI/masks/seg_1.png"
    assert (client.settings.workspace / body["mask_path_relative"]).is_file()
    assert Path(body["mask_path_absolute"]).is_file()
    for name in ("inference_time_sec", "memory_usage_mb", "gpu_memory_usage_mb", "gpu_memory_reserved_mb"):
        assert name in body
    assert client.get("/staticapi_out/segmentation/DDTI/masks/seg_1.png").status_code == 200
    cls = client.post("/segment/", json=OLD_CLS_BODY)
    assert cls.status_code == 200, cls.text
    body = cls.json()
    assert body["class_label_name"] == "benign" and body["prediction"] in (0, 1) and len(body["probability"]) == 2
    # the earlier random_sample/ put the dataset name into "organ" and prefixed paths with data/
    quirky = {**OLD_CLS_BODY, "organ": "BUSI", "img_path_relative": "data/classification/BUSI/imgs/cls_0.png",
              "seg_target_info": {"kind": "none"}}
    assert client.post("/segment/", json=quirky).status_code == 200
    rows = HistoryStore(client.settings.history_db).list()
    assert len(rows) == 3 and {r["source"] for r in rows} == {"api"}


def test_compat_upload_and_random_sample(client):
    response = client.post("/upload", files={"file": ("测试图片.png", _png_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"img_name", "img_path_relative", "img_size_bytes", "img_dimensions", "img_format"}
    assert body["img_name"].startswith("测试图片-") and body["img_path_relative"] == f"api_in/{body['img_name']}"
    sample = client.get("/random_sample/", params={"task": "segmentation", "dataset_name": "DDTI"})
    assert sample.status_code == 200 and sample.json()["organ"] == "Thyroid"
    old = client.post("/segment/", json=sample.json())
    assert old.status_code == 200
    missing = client.get("/random_sample/", params={"task": "segmentation", "dataset_name": "Kidney"})
    assert missing.status_code in (404, 422) and missing.json()["error"]


@pytest.mark.parametrize("body, status, field", [
    ({"task": "segmentation", "dataset_name": "DDTI"}, 422, "img_path_relative"),
    ({**OLD_SEG_BODY, "img_dimensions": "big"}, 422, "img_dimensions"),
    ({**OLD_SEG_BODY, "img_size_bytes": "many"}, 422, "img_size_bytes"),
    ({**OLD_SEG_BODY, "task": "detection"}, 422, "task"),
    ({**OLD_SEG_BODY, "dataset_name": "NoSuchSet"}, 422, None),
    ({**OLD_SEG_BODY, "task": "classification"}, 422, None),  # DDTI has no classification task
    ({**OLD_SEG_BODY, "organ": "Heart"}, 422, None),  # contradicts the catalog
    ({**OLD_SEG_BODY, "img_path_relative": "../../etc/passwd"}, 403, "img_path_relative"),
    ({**OLD_SEG_BODY, "img_path_relative": "/etc/passwd"}, 403, "img_path_relative"),
    ({**OLD_SEG_BODY, "img_path_relative": "api_in/../history.sqlite3"}, 403, "img_path_relative"),
    ({**OLD_SEG_BODY, "img_path_relative": "segmentation/DDTI/imgs/missing.png"}, 404, "img_path_relative"),
    ({**OLD_SEG_BODY, "dataset_name": "CAMUS", "organ": None}, 404, "dataset_name"),  # no model for it
    ({**OLD_SEG_BODY, "img_path_relative": "ground_truth.json"}, 400, None),  # not an image
    ({**OLD_SEG_BODY, "img_path_relative": "segmentation/DDTI/imgs"}, 404, "img_path_relative"),  # a folder
    ({**OLD_SEG_BODY, "img_path_relative": "link_out.png"}, 403, "img_path_relative"),  # symlink leading out
    ({**OLD_SEG_BODY, "img_dimensions": [0, 10]}, 422, "img_dimensions"),
    ({**OLD_SEG_BODY, "pixel_spacing_mm": -1}, 422, "pixel_spacing_mm"),
])
def test_hostile_and_bad_requests_get_clear_errors(client, body, status, field):
    (client.settings.data_root / "link_out.png").symlink_to("/etc/hostname")
    response = client.post("/v1/predict", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    if field:
        assert field in detail or response.json().get("field") == field
    assert client.get("/healthz").status_code == 200  # still up


def test_bad_bodies(client):
    assert client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 400
    assert client.post("/v1/predict", json=[OLD_SEG_BODY]).status_code == 422
    assert client.post("/v1/predict", content=b"", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/v1/predict", content=b"").status_code == 415  # no Content-Type: not a JSON body
    huge = {**OLD_SEG_BODY, "padding": "x" * (client.settings.max_json_bytes + 10)}
    response = client.post("/v1/predict", json=huge)
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    chunked = client.post("/v1/predict", content=iter([json.dumps(huge).encode()]),  # no Content-Length
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    not_image = client.post("/v1/upload", files={"file": ("x.png", b"MZ\x90\x00 not an image", "image/png")})
    assert not_image.status_code == 400 and "not a recognised image" in not_image.json()["detail"]
    assert client.post("/v1/upload").status_code == 415  # no multipart body at all
    assert client.post("/v1/upload", files={"other": ("x.png", b"x", "image/png")}).status_code == 422  # no file field
    assert client.post("/segment/", json={**OLD_SEG_BODY, "task": "detection"}).json()["error"]
    assert client.get("/healthz").status_code == 200


def test_upload_size_limit(tiny_settings: Settings):
    with TestClient(create_app(tiny_settings.with_(max_upload_mb=1))) as small:
        big = b"\x89PNG" + b"0" * (2 * 1024 * 1024)
        response = small.post("/v1/upload", files={"file": ("big.png", big, "image/png")})
        assert response.status_code == 413
        assert list(tiny_settings.api_in.iterdir()) == []


def test_api_key_on_every_route_but_healthz(tiny_settings: Settings):
    app = create_app(tiny_settings.with_(api_key="s3cret"))
    with TestClient(app) as client:
        assert client.get("/healthz").json()["auth_required"] is True
        for method, path in (("get", "/v1/models"), ("get", "/v1/datasets"), ("get", "/v1/history"),
                             ("get", "/v1/history.csv"), ("post", "/v1/predict"), ("post", "/segment/"),
                             ("post", "/v1/upload"), ("post", "/upload"), ("get", "/random_sample/"),
                             ("get", "/v1/random-sample"), ("get", "/v1/masks/x.png"), ("get", "/staticapi_out/x.png")):
            assert getattr(client, method)(path).status_code == 401, path
        assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = client.post("/v1/predict", json=OLD_CLS_BODY, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


def test_cors_origins_from_settings(tiny_settings: Settings):
    app = create_app(tiny_settings.with_(cors_origins=("http://dash.local:8501",), api_key="k"))
    with TestClient(app) as client:
        allowed = client.options("/v1/predict", headers={"Origin": "http://dash.local:8501",
                                                         "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "x-api-key"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://dash.local:8501"
        denied = client.options("/v1/predict", headers={"Origin": "http://evil.example",
                                                        "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in denied.headers
        simple = client.get("/healthz", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in simple.headers


def test_weights_missing_is_503_and_server_stays_up(tiny_settings: Settings, tmp_path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    with TestClient(create_app(tiny_settings.with_(weights_dir=empty))) as client:
        response = client.post("/v1/predict", json=OLD_CLS_BODY)
        assert response.status_code == 503 and "could not be loaded" in response.json()["detail"]
        health = client.get("/healthz").json()
        assert health["model_loaded"] is False and health["error"]
        assert client.get("/v1/datasets").status_code == 200


def test_api_client_of_the_dashboard_talks_to_it(client):
    import httpx

    from core.client import ApiClient

    settings = client.settings.with_(api_url="http://testserver")
    api = ApiClient(settings, transport=None)
    api._http = client  # the TestClient is an httpx.Client on the ASGI app
    assert api.health()["status"] == "ok"
    skeleton = api.upload(_png_bytes(), "a.png")
    response = api.predict({**skeleton, "task": "classification", "dataset_name": "BUSI"})
    assert response["prediction"] in (0, 1)
    assert api.serves("classification", "BUSI") and not api.serves("segmentation", "CAMUS")
    assert isinstance(api._http, httpx.Client)


def test_same_results_over_http_as_in_process(client):
    """The dashboard's ApiClient against the API gives what the in-process engine gives."""
    from core.client import ApiClient
    from core.engine import Engine

    engine = Engine(client.settings, "tiny")
    api = ApiClient(client.settings.with_(api_url="http://testserver"))
    api._http = client
    for body in (OLD_CLS_BODY, OLD_SEG_BODY):
        local = engine.predict({k: v for k, v in body.items() if v not in ("",)},
                               output_dir=client.settings.workspace / "local_out")
        remote = api.predict({k: v for k, v in body.items() if v not in ("",)})
        if body["task"] == "classification":
            tolerances.assert_probabilities_close(remote["probability"], local["probability"])
            assert local["prediction"] == remote["prediction"] and local["label_name"] == remote["label_name"]
        else:
            local_mask = np.asarray(Image.open(local["mask_path"]))
            remote_mask = np.asarray(Image.open(io.BytesIO(api.mask_bytes(remote))))
            tolerances.assert_masks_agree(remote_mask, local_mask)
            assert tolerances.number_close(remote["mask_area_px"], local["mask_area_px"], atol=tolerances.MASK_FLIPS)
            tolerances.assert_measurements_close(remote["measurements"], local["measurements"],
                                                 pixel_slack=tolerances.MASK_FLIPS)


def test_unexpected_engine_failure_is_500_and_server_stays_up(tiny_settings: Settings):
    from core.engine import Engine

    class BrokenEngine(Engine):
        def forward(self, batch):
            raise RuntimeError("CUDA error: device-side assert")

    broken = BrokenEngine(tiny_settings, "tiny")
    with TestClient(create_app(tiny_settings, engine=broken), raise_server_exceptions=False) as client:
        response = client.post("/v1/predict", json=OLD_CLS_BODY)
        assert response.status_code == 500 and response.json()["detail"] == "internal error: RuntimeError"
        assert response.json()["error_type"] == "InternalError"
        failed = HistoryStore(tiny_settings.history_db).list()[0]  # the failure is recorded, by type only
        assert failed["error"] == "internal error: RuntimeError" and failed["error_type"] == "InternalError"
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/predict", json=OLD_CLS_BODY, headers={"content-length": "abc"}).status_code == 400


@pytest.mark.skipif(not (Settings().weights_dir / "models.json").is_file(), reason="demo weights not present")
def test_demo_model_on_bundled_samples(tmp_path):
    """The real demo model and the bundled samples through the API: every served dataset answers."""
    settings = Settings(workspace=tmp_path / "ws", device="cpu")
    with TestClient(create_app(settings)) as client:
        datasets = client.get("/v1/datasets").json()["datasets"]
        served = 0
        for d in datasets:
            sample = client.get("/v1/random-sample", params={"task": d["task"], "dataset_name": d["dataset_name"]})
            if sample.status_code != 200:
                continue
            response = client.post("/v1/predict", json=sample.json())
            if not d["served"] and d["served"] is not None:
                assert response.status_code == 404
                continue
            assert response.status_code == 200, response.text
            served += 1
            body = response.json()
            if d["task"] == "segmentation":
                mask = Image.open(io.BytesIO(client.get(body["mask_url"]).content))
                assert list(mask.size) == sample.json()["img_dimensions"]
                if d["dataset_name"] == "Fetal_HC":
                    assert body["measurements"].get("head_circumference_mm", 0) > 0
            else:
                assert len(body["probability"]) == len(d["class_names"])
        assert served >= 2
        health = client.get("/healthz").json()
        first = json.loads((settings.weights_dir / "models.json").read_text())[0]["name"]
        assert health["model_loaded"] and health["model"] == (settings.default_model or first)


def test_micro_batching_gives_the_same_results(tiny_settings: Settings):
    from concurrent.futures import ThreadPoolExecutor

    with TestClient(create_app(tiny_settings, micro_batch=False)) as plain:
        expected = {b["task"]: plain.post("/v1/predict", json=b).json() for b in (OLD_CLS_BODY, OLD_SEG_BODY)}
        plain_mask = np.asarray(Image.open(expected["segmentation"]["mask_path"]))
    app = create_app(tiny_settings, micro_batch=True)
    with TestClient(app) as client:
        bodies = [OLD_CLS_BODY, OLD_SEG_BODY] * 12
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: client.post("/v1/predict", json=b), bodies))
        assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200][:1]
        for response in results:
            body = response.json()
            if body["task"] == "classification":
                tolerances.assert_probabilities_close(body["probability"], expected["classification"]["probability"])
            else:  # another batch size: fp32 sums in another order, so a tolerance, not the same bits
                assert tolerances.number_close(body["mask_area_px"], expected["segmentation"]["mask_area_px"],
                                               atol=tolerances.MASK_FLIPS)
        tolerances.assert_masks_agree(results[1].json()["mask_path"], plain_mask)
        batcher = app.state.service.batcher
        assert batcher.items == 24 and batcher.batches < 24  # some requests shared a forward pass
        assert client.get("/healthz").json()["micro_batching"] is True
        bad = client.post("/v1/predict", json={**OLD_SEG_BODY, "img_path_relative": "nope.png"})
        assert bad.status_code == 404  # errors before the queue still come back per request
