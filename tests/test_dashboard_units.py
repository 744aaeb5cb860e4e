"""Dashboard helpers without a UI: edits, overlays, strings, and the HTTP client against a fake transport."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from core import catalog, editing, i18n, overlay
from core.client import ApiClient, ApiError
from core.settings import Settings


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
    assert i18n.t("no_samples", "en", root="/d", dataset="X").startswith("The data root /d")


def _client(handler, api_key=None) -> ApiClient:
    current = Settings(api_url="http://api.test", api_key=api_key)
    return ApiClient(current, transport=httpx.MockTransport(handler))


def test_client_sends_key_and_maps_routes():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("x-api-key")))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"models": [{"name": "demo", "datasets": [["segmentation", "BUSI"]]}]})
        if request.url.path == "/v1/predict":
            body = json.loads(request.content)
            return httpx.Response(200, json={"prediction": 1, "echo": body["dataset_name"]})
        if request.url.path == "/v1/upload":
            assert b"filename=\"a.png\"" in request.content
            return httpx.Response(200, json={"img_path_relative": "api_in/a_1.png"})
        return httpx.Response(200, json={"status": "ok"})

    client = _client(handler, api_key="s3cret")
    assert client.predict({"dataset_name": "BUSI"})["echo"] == "BUSI"
    assert client.upload(b"x", "a.png")["img_path_relative"] == "api_in/a_1.png"
    assert client.serves("segmentation", "BUSI") and not client.serves("segmentation", "DDTI")
    assert client.health() == {"status": "ok"}
    assert all(key == "s3cret" for _, _, key in seen)


def test_client_turns_http_errors_into_messages():
    def handler(request):
        if request.url.path == "/v1/predict":
            return httpx.Response(404, json={"detail": "no model for this dataset: KidneyUS"})
        return httpx.Response(422, json={"detail": [{"loc": ["body", "task"], "msg": "field required"}]})

    client = _client(handler)
    with pytest.raises(ApiError) as error:
        client.predict({})
    assert error.value.status_code == 404 and "no model" in error.value.message
    with pytest.raises(ApiError, match="body.task: field required"):
        client.upload(b"", "x.png")


def test_client_reports_unreachable_server():
    def handler(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ApiError, match="cannot reach"):
        _client(handler).health()
