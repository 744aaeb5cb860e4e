"""Dashboard helpers without a UI: edits, overlays, strings, and the HTTP client against a fake transport."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from core import catalog, editing, i18n, overlay
from core.client import ApiClient
from core.errors import ModelUnavailableError, NoModelError, RequestError, ServiceUnavailableError, UUSICError
from core.response import AnalysisResponse
from core.settings import Settings
from pages.common import error_message, is_no_model, scrub_paths


def _image(width=40, height=30) -> Image.Image:
    array = np.arange(width * height * 3, dtype=np.uint32).reshape(height, width, 3) % 251
    return Image.fromarray(array.astype(np.uint8))


def test_rotate90_and_flips_are_exact_and_invertible():
    picture = _image()
    turned = editing.rotate90(picture, 1)
    assert turned.size == (30, 40)
    assert np.array_equal(np.asarray(editing.rotate90(turned, 3)), np.asarray(picture))
    flipped = editing.flip(editing.flip(picture, "horizontal"), "horizontal")
    assert np.array_equal(np.asarray(flipped), np.asarray(picture))
    assert np.array_equal(np.asarray(editing.flip(picture, "vertical"))[0], np.asarray(picture)[-1])


def test_free_rotation_expands_canvas_and_mask_stays_binary():
    mask = Image.fromarray((np.pad(np.ones((10, 20)), 10) * 255).astype(np.uint8), mode="L")
    rotated = editing.rotate(mask, 30, is_mask=True)
    assert rotated.width > mask.width and rotated.height > mask.height
    assert set(np.unique(np.asarray(rotated))) <= {0, 255}


def test_edit_log_replays_on_image_and_mask_alike():
    picture = _image(50, 40)
    edits = editing.build_edits(quarter_turns=1, flip_horizontal=True, crop_box=[5, 6, 25, 36])
    assert [e["op"] for e in edits] == ["rotate90", "flip", "crop"]
    assert editing.apply_edits(picture, edits).size == (20, 30)
    assert editing.apply_edits(picture.convert("L"), edits, is_mask=True).size == (20, 30)
    assert editing.build_edits() == [] and not editing.changes_geometry([])


def test_crop_box_is_clamped_and_cropper_rect_converted():
    assert editing.clamp_box((-5, -5, 500, 500), (40, 30)) == (0, 0, 40, 30)
    assert editing.clamp_box((10, 10, 10, 10), (40, 30)) == (10, 10, 11, 11)
    assert editing.box_from_cropper({"left": 3, "top": 4, "width": 10, "height": 5}) == [3, 4, 13, 9]
    with pytest.raises(ValueError, match="unknown edit"):
        editing.apply_edit(_image(), {"op": "shear"})


def test_overlay_fill_and_contour_touch_only_the_mask():
    picture = Image.new("RGB", (20, 20), (10, 10, 10))
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    filled = np.asarray(overlay.overlay(picture, mask, alpha=0.5, mode="fill"))
    assert (filled[~mask] == 10).all() and (filled[10, 10] != 10).any()
    outlined = np.asarray(overlay.overlay(picture, mask * 255, mode="contour", thickness=1))
    edge = overlay.contour(mask, 1)
    assert edge.sum() == 36  # perimeter of a 10x10 square
    assert (outlined[10, 10] == 10).all() and (outlined[5, 5] != 10).any()
    with pytest.raises(ValueError, match="does not match"):
        overlay.overlay(picture, np.zeros((5, 5), bool))


def test_mask_png_is_0_255():
    mask = np.zeros((4, 6), bool)
    mask[1, 2] = True
    decoded = np.asarray(Image.open(__import__("io").BytesIO(overlay.png_bytes(overlay.mask_image(mask)))))
    assert decoded.shape == (4, 6) and set(np.unique(decoded)) == {0, 255}


def test_strings_exist_in_both_languages_and_names_come_from_catalog():
    for key, (zh, en) in i18n.STRINGS.items():
        assert zh and en, key
    assert i18n.t("nav_analyze", "zh") == "分析" and i18n.t("nav_analyze", "en") == "Analyze"
    assert i18n.task_name("segmentation", "zh") == catalog.TASK_NAMES["segmentation"]["zh"]
    assert i18n.class_names("classification", "BUSI", "zh") == ["良性", "恶性"]
    no_samples = i18n.t("no_samples", "en", root="/d", dataset="X")  # issue 12: never the server's folder
    assert "X" in no_samples and "/d" not in no_samples


def _client(handler, api_key=None) -> ApiClient:
    current = Settings(api_url="http://api.test", api_key=api_key)
    return ApiClient(current, transport=httpx.MockTransport(handler))


RESPONSE = {"task": "classification", "dataset_name": "BUSI", "img_path_relative": "api_in/a_1.png",
            "probability": [0.25, 0.75], "prediction": 1, "inference_time_sec": 0.01, "run_id": 7}


def test_client_sends_key_and_maps_routes():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("x-api-key")))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"models": [{"name": "demo", "datasets": [["segmentation", "BUSI"]]}]})
        if request.url.path == "/v1/datasets":
            return httpx.Response(200, json={"datasets": []})
        if request.url.path == "/v1/predict":
            body = json.loads(request.content)
            assert body["source"] == "dashboard" and body["edits"] == [{"op": "rotate90", "k": 1}]
            return httpx.Response(200, json={**RESPONSE, "echo": body["request"]["dataset_name"]})
        if request.url.path == "/v1/upload":
            assert b"filename=\"a.png\"" in request.content
            return httpx.Response(200, json={"img_path_relative": "api_in/a_1.png"})
        return httpx.Response(200, json={"status": "ok"})

    client = _client(handler, api_key="s3cret")
    response = client.analyze({"dataset_name": "BUSI"}, source="dashboard", edits=[{"op": "rotate90", "k": 1}])
    assert isinstance(response, AnalysisResponse) and response.run_id == 7
    assert response.to_json()["echo"] == "BUSI"  # unknown keys travel through
    assert client.save_upload(b"x", "a.png")["img_path_relative"] == "api_in/a_1.png"
    assert client.serves("segmentation", "BUSI") and not client.serves("segmentation", "DDTI")
    assert client.health() == {"status": "ok"}
    assert all(key == "s3cret" for _, _, key in seen)


def _error_handler(status: int, body):
    def handler(request):
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="<html>")
    return handler


def test_client_rebuilds_typed_errors_from_the_error_body():
    body = {"detail": "no model for this dataset: KidneyUS", "error_type": "NoModelError", "status_code": 404,
            "field": "dataset_name"}
    with pytest.raises(NoModelError) as error:
        _client(_error_handler(404, body)).analyze({})
    assert error.value.status_code == 404 and error.value.field == "dataset_name"
    assert error.value.message == "no model for this dataset: KidneyUS"
    body = {"detail": "task: field required", "error_type": "RequestError", "status_code": 422, "field": "task"}
    with pytest.raises(RequestError, match="task: field required"):
        _client(_error_handler(422, body)).save_upload(b"", "x.png")


@pytest.mark.parametrize("body", [
    {"detail": "no model for this dataset", "error_type": "SomethingNew", "status_code": 404},
    {"detail": "no model for this dataset", "status_code": 404},
])
def test_unknown_or_missing_error_type_is_a_plain_uusic_error(body):
    """Typed from ``error_type`` only: the words "no model" and status 404 do not make a NoModelError."""
    with pytest.raises(UUSICError) as error:
        _client(_error_handler(404, body)).analyze({})
    assert type(error.value) is UUSICError and error.value.status_code == 404
    assert not is_no_model(error.value)


def test_fastapi_validation_list_is_joined():
    body = {"detail": [{"loc": ["body", "task"], "msg": "field required"}]}
    with pytest.raises(UUSICError, match="field required"):
        _client(_error_handler(422, body)).analyze({})


def test_client_reports_unreachable_server_and_non_json_answers():
    def refused(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ServiceUnavailableError, match="cannot reach"):
        _client(refused).health()
    with pytest.raises(ServiceUnavailableError):
        _client(_error_handler(502, None)).health()


def test_page_helpers_use_the_error_types(monkeypatch):
    import pages.common

    assert is_no_model(NoModelError("no model for this dataset"))
    assert not is_no_model(ModelUnavailableError("the model could not be loaded"))  # an error, not "no model"
    assert not is_no_model(RequestError("no model mentioned here", status_code=404))
    monkeypatch.setattr(pages.common, "lang", lambda: "en")
    assert error_message(RequestError("bad task")) == "bad task"
    assert error_message(KeyError("/srv/secret/path")) == "internal error: KeyError"  # never raw internals
    assert pages.common.english_detail(RequestError("bad task")) is None
    monkeypatch.setattr(pages.common, "lang", lambda: "zh")  # the Chinese UI: words by error type, English folded
    assert error_message(RequestError("bad task")) == i18n.error_text("RequestError", None, "zh")
    assert error_message(KeyError("/srv/secret/path")) == i18n.error_text("InternalError", None, "zh")
    assert pages.common.english_detail(RequestError("bad task")) == "bad task"


def test_scrub_paths_hides_server_folders(tmp_path):
    current = Settings(workspace=tmp_path / "ws", data_root=tmp_path / "data", weights_dir=tmp_path / "w")
    text = f"gone: {tmp_path / 'ws' / 'api_out' / 'x.png'} and {tmp_path / 'data'}"
    scrubbed = scrub_paths(text, current)
    assert str(tmp_path) not in scrubbed and "api_out/x.png" in scrubbed
