"""What the pages read through the service (issue 21): an input's file, the challenge JSON files, file name →
dataset and a batch's metrics; the same answers in-process and over HTTP (:class:`core.client.ApiClient`), every bad
path a 4xx naming its field. Also the one measurement table renderer and the editing preview's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import data_root, editing, i18n, reference
from core.api import create_app
from core.client import ApiClient
from core.errors import NotFoundError, PathError, RequestError, UploadError
from core.measure_table import comparison_rows, key_label, value_rows
from core.service import AnalysisService
from core.settings import Settings

SEG_IMAGE = "segmentation/DDTI/imgs/seg_0.png"
SEG_MASK = "segmentation/DDTI/masks/seg_0.png"


@pytest.fixture()
def both(tiny_settings: Settings):
    """(the in-process service, an ApiClient on the same service's app)."""
    service = AnalysisService(tiny_settings, model="tiny")
    with TestClient(create_app(settings=tiny_settings, service=service)) as http:
        api = ApiClient(tiny_settings.with_(api_url="http://testserver"))
        api._http = http  # the TestClient is an httpx.Client on the ASGI app
        yield service, api, http


def test_input_file_is_the_same_bytes_in_process_and_over_http(both, tiny_settings: Settings):
    service, api, _ = both
    expected = (tiny_settings.data_root / SEG_IMAGE).read_bytes()
    assert service.input_file(SEG_IMAGE) == api.input_file(SEG_IMAGE) == expected
    assert api.input_file(SEG_MASK) == (tiny_settings.data_root / SEG_MASK).read_bytes()
    sample = api.random_sample("segmentation", "DDTI")
    assert api.input_file(sample["img_path_relative"])  # what the Analyze page loads in remote mode


@pytest.mark.parametrize("path, error, status", [("../secret.png", PathError, 403), ("nope/x.png", PathError, 404),
                                                 ("", PathError, 400), ("/etc/passwd", PathError, 403)])
def test_input_file_refuses_paths_that_leave_the_roots(both, path: str, error: type, status: int):
    service, api, http = both
    with pytest.raises(error):
        service.input_file(path)
    answer = http.get("/v1/inputs/file", params={"path": path})
    assert answer.status_code == status and answer.json()["field"] == "img_path_relative"
    assert str(service.settings.data_root) not in answer.text  # no server path in the answer
    with pytest.raises(error):
        api.input_file(path)


def test_input_file_has_the_upload_limit(tiny_settings: Settings):
    big = tiny_settings.data_root / "segmentation" / "DDTI" / "imgs" / "big.png"
    big.write_bytes(b"\0" * (1024 * 1024 + 10))
    small = AnalysisService(tiny_settings.with_(max_upload_mb=1), model="tiny")
    with pytest.raises(UploadError) as caught:
        small.input_file("segmentation/DDTI/imgs/big.png")
    assert caught.value.status_code == 413


def test_a_dicom_input_is_de_identified(both, tiny_settings: Settings):
    from conftest import dicom_bytes, ultrasound_dicom

    ds = ultrasound_dicom()
    ds.PatientName = "Doe^Jane"
    path = tiny_settings.data_root / "segmentation" / "DDTI" / "imgs" / "scan.dcm"
    path.write_bytes(dicom_bytes(ds))
    service, api, _ = both
    for door in (service, api):
        data = door.input_file("segmentation/DDTI/imgs/scan.dcm")
        assert b"Doe^Jane" not in data and b"DICM" in data[:200]
    kept = AnalysisService(tiny_settings.with_(keep_identity=True), model="tiny")
    assert kept.input_file("segmentation/DDTI/imgs/scan.dcm") == path.read_bytes()


def _write_json(path: Path, entries: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")


def test_json_files_and_entries_in_process_and_over_http(both, tiny_settings: Settings, tmp_path: Path):
    root = tiny_settings.data_root
    truth = json.loads((root / "ground_truth.json").read_text())
    _write_json(root / "sub" / "ground_truth.json", truth[:2])
    _write_json(root / "a" / "b" / "c" / "too_deep.json", truth)
    _write_json(root / ".hidden" / "x.json", truth)
    _write_json(tmp_path / "elsewhere" / "secret.json", truth)
    (root / "link.json").symlink_to(tmp_path / "elsewhere" / "secret.json")
    service, api, http = both
    assert service.json_files() == api.json_files() == ["ground_truth.json", "sub/ground_truth.json"]
    assert service.json_entries("sub/ground_truth.json") == api.json_entries("sub/ground_truth.json") == truth[:2]
    for unlisted in ("link.json", "a/b/c/too_deep.json", "../elsewhere/secret.json", ".hidden/x.json"):
        with pytest.raises(NotFoundError):
            api.json_entries(unlisted)
        answer = http.get("/v1/inputs/json", params={"path": unlisted})
        assert answer.status_code == 404 and answer.json()["field"] == "path"
        assert str(tmp_path) not in answer.text


def test_parse_entries_names_what_is_wrong():
    assert data_root.parse_entries(json.dumps({"data": [{"a": 1}, 3]}).encode()) == [{"a": 1}]
    for data, words in ((b"\xff\xfe[", "UTF-8"), (b"[" * 5000 + b"]" * 5000, ""), (b"{", ""), (b"3", "list")):
        with pytest.raises(RequestError) as caught:
            data_root.parse_entries(data)
        assert words in caught.value.message and caught.value.field == "file"


def test_known_names_in_process_and_over_http(both):
    service, api, http = both
    names = service.known_names("segmentation")
    assert names == api.known_names("segmentation") and names["seg_0.png"] == "DDTI"
    assert "cls_0.png" not in names and api.known_names("classification")["cls_0.png"] == "BUSI"
    answer = http.get("/v1/inputs/names", params={"task": "nope"})
    assert answer.status_code == 422 and answer.json()["field"] == "task"


def test_batch_metrics_in_process_only(both, tiny_settings: Settings):
    service, api, _ = both
    requests = [e for e in json.loads((tiny_settings.data_root / "ground_truth.json").read_text())]
    result = service.analyze_batch(requests, source="batch")
    report = service.batch_metrics(requests, result)
    assert report is not None and set(report["segmentation"]) == {"DDTI"} and set(report["classification"]) == {"BUSI"}
    assert api.batch_metrics(requests, result) is None  # remote: the masks stay on the server
    assert service.batch_metrics([{"task": "segmentation"}], result) is None  # no ground truth


# ------------------------------------------------------------------------------------------ the edited reference
def test_edited_reference_measures_the_mask_after_the_same_edits(tiny_settings: Settings):
    data = (tiny_settings.data_root / SEG_MASK).read_bytes()
    edits = [{"op": "rotate90", "k": 1}]
    mask = reference.edited_mask(data, edits, (48, 64))
    original = np.asarray(Image.open(tiny_settings.data_root / SEG_MASK)) > 127
    assert mask is not None and np.array_equal(mask, np.rot90(original))
    assert reference.edited_mask(data, edits, (64, 48)) is None  # another size: not comparable
    assert reference.edited_mask(b"not an image", edits, (48, 64)) is None
    block = reference.edited_reference(mask, {"area_px": 10}, 0.5, fetal_head=False)
    assert block["source"] == "ground_truth_mask_edited"
    assert block["difference"]["area_px"] == 10 - int(original.sum())
    assert block["measurements"]["area_mm2"] == pytest.approx(original.sum() * 0.25)


# ------------------------------------------------------------------------------------------ measurement tables
@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_measurement_table_rows(lang: str):
    measured = {"area_px": 1234, "area_mm2": 12.3456, "longest_diameter_px": 40.0, "components": 1,
                "head_circumference_mm": float("nan")}
    rows = value_rows(measured, lang)
    assert rows[0] == (i18n.measure_label("area", lang), "1,234.0 px²", "12.35 mm²")
    assert rows[1] == (i18n.measure_label("longest_diameter", lang), "40.0 px", "—") and len(rows) == 2
    assert key_label("area_px", lang) == f"{i18n.measure_label('area', lang)} (px²)"
    assert key_label("components", lang) is None and key_label("pixel_spacing_mm", lang) is None
    table = comparison_rows(["area_mm2", "components", "head_circumference_mm"],
                            {"a": measured, "b": {"area_mm2": True, "head_circumference_mm": 170.0}}, lang)
    assert table == [(key_label("area_mm2", lang), ["12.35", "—"]),
                     (key_label("head_circumference_mm", lang), ["—", "170.00"])]


# ------------------------------------------------------------------------------------------ the editing preview
def test_the_proxy_is_small_and_a_small_picture_is_its_own_proxy():
    big = Image.new("RGB", (4000, 2700))
    proxy = editing.proxy_of(big)
    assert proxy.size == (1024, 691) and editing.proxy_of(proxy) is proxy
    assert editing.proxy_of(Image.new("L", (3000, 1)), max_side=100).size == (100, 1)


def test_scale_box_and_full_resolution_edits():
    assert editing.scale_box([10, 20, 30, 40], (100, 100), (1000, 500)) == [100, 100, 300, 200]
    assert editing.scale_box([-5, 0, 200, 100], (100, 100), (50, 50)) == [0, 0, 50, 50]  # clamped
    turns = editing.build_edits(quarter_turns=1)
    assert editing.full_resolution_edits((400, 200), turns, None, (50, 100)) == turns
    edits = editing.full_resolution_edits((400, 200), turns, [0, 0, 25, 50], (50, 100))
    assert edits[-1] == {"op": "crop", "box": [0, 0, 100, 200]} and edits[0] == turns[0]
    assert editing.edited_size((400, 200), edits) == (100, 200)


def test_the_input_routes_need_the_api_key(tiny_settings: Settings):
    keyed = tiny_settings.with_(api_key="k" * 24)
    with TestClient(create_app(settings=keyed)) as http:
        for route, params in (("/v1/inputs/file", {"path": SEG_IMAGE}), ("/v1/inputs/json-files", {}),
                              ("/v1/inputs/json", {"path": "ground_truth.json"}),
                              ("/v1/inputs/names", {"task": "segmentation"})):
            assert http.get(route, params=params).status_code == 401, route
            assert http.get(route, params=params, headers={"X-API-Key": "k" * 24}).status_code == 200, route
