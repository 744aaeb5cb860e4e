"""Issue 25: ``dataset_name`` / ``organ`` optional in ``/v1/predict``, the batch JSON, the ``predict`` CLI and the
earlier server's ``/segment/``: a request with ``task`` and the image but no dataset is routed by the organ
recogniser to a served dataset of that organ (``recognition.routed: true``); given fields always win; no choice is
a 422 naming ``dataset_name``.

The recogniser is replaced by a fixed answer (the tiny data root's images are synthetic), except for the noise image,
which the real one must find out of distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_png
from fastapi.testclient import TestClient
from PIL import Image

from core import recognition
from core.api import create_app
from core.cli import main
from core.errors import RequestError
from core.schema import PredictRequest, UnroutedRequest, parse_request
from core.service import AnalysisService
from core.settings import Settings

SEG_IMAGE = "segmentation/DDTI/imgs/seg_2.png"
CLS_IMAGE = "classification/BUSI/imgs/cls_1.png"
KEYS = {"organ", "dataset", "confidence", "in_distribution", "features"}
THYROID = recognition.Recognition(organ="Thyroid", dataset="DDTI", confidence=0.97, in_distribution=True,
                                  ood_score=1.0)
BREAST = recognition.Recognition(organ="Breast", dataset="BUSI", confidence=0.91, in_distribution=True,
                                 ood_score=1.0)


@pytest.fixture()
def answer(recogniser_answer: dict) -> dict:
    """The recogniser's fixed answer (``answer["found"]``; None: unavailable) for every image."""
    recogniser_answer["found"] = THYROID
    return recogniser_answer


@pytest.fixture()
def service(tiny_settings: Settings) -> AnalysisService:
    return AnalysisService(tiny_settings, model="tiny")


def test_the_schema_lets_dataset_name_be_missing_only_at_the_door():
    opened = parse_request({"img_path_relative": SEG_IMAGE, "task": "segmentation", "organ": "thyroid"})
    assert isinstance(opened, UnroutedRequest) and opened.organ == "Thyroid"
    assert isinstance(parse_request({"img_path_relative": SEG_IMAGE, "task": "segmentation", "dataset_name": None}),
                      UnroutedRequest)
    with pytest.raises(RequestError) as missing:  # the engine's type still requires it
        PredictRequest.parse({"img_path_relative": SEG_IMAGE, "task": "segmentation"})
    assert missing.value.field == "dataset_name"
    with pytest.raises(RequestError) as organ:
        parse_request({"img_path_relative": SEG_IMAGE, "task": "segmentation", "organ": "lung"})
    assert organ.value.status_code == 422 and organ.value.field == "organ"
    given = parse_request({"img_path_relative": SEG_IMAGE, "task": "segmentation", "dataset_name": "DDTI"})
    assert isinstance(given, PredictRequest) and not given.routed


def test_api_routes_a_request_without_a_dataset(service: AnalysisService, answer: dict):
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post("/v1/predict", json={"img_path_relative": SEG_IMAGE, "task": "segmentation"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["dataset_name"] == "DDTI" and body["organ"] == "Thyroid" and body["mask_url"]
        assert set(body["recognition"]) == KEYS | {"routed"} and body["recognition"]["routed"] is True
        row = service.run(body["run_id"])
        assert row["dataset_name"] == "DDTI" and row["response"]["recognition"]["routed"] is True
        assert "dataset_name" in client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"][
            "requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_given_fields_win_and_the_disagreement_is_reported(service: AnalysisService, answer: dict):
    answer["found"] = BREAST
    given = service.analyze({"img_path_relative": SEG_IMAGE, "task": "segmentation", "dataset_name": "DDTI"}).to_json()
    assert given["dataset_name"] == "DDTI" and set(given["recognition"]) == KEYS  # no routed key: not routed
    assert given["recognition"]["organ"] == "Breast"
    assert any("looks like Breast" in note and "not Thyroid" in note for note in given["notes"])
    answer["found"] = THYROID  # the given organ wins over the recogniser's: Breast's served classification dataset
    routed = service.analyze({"img_path_relative": CLS_IMAGE, "task": "classification", "organ": "Breast"}).to_json()
    assert routed["dataset_name"] == "BUSI" and routed["organ"] == "Breast" and routed["recognition"]["routed"]
    assert any("looks like Thyroid" in note for note in routed["notes"])


@pytest.mark.parametrize(("found", "request_", "words"), [
    (None, {"task": "segmentation"}, "unavailable"),
    (THYROID.model_copy(update={"in_distribution": False}), {"task": "segmentation"}, "out of distribution"),
    (THYROID, {"task": "classification"}, "organ Thyroid"),  # no served classification dataset of the thyroid
    (THYROID, {"task": "segmentation", "organ": "Breast"}, "looks like Thyroid"),  # the given organ: none served
])
def test_no_choice_is_a_422_naming_dataset_name(service: AnalysisService, answer: dict, found, request_, words):
    answer["found"] = found
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post("/v1/predict", json={"img_path_relative": SEG_IMAGE, **request_})
    assert reply.status_code == 422, reply.text
    assert reply.json()["field"] == "dataset_name" and words in reply.json()["detail"]
    assert "/" + str(service.settings.data_root).strip("/") not in reply.json()["detail"]  # no server path
    (row,) = service.runs()
    assert row["error_type"] == "RequestError"


def test_a_noise_image_without_a_dataset_is_refused_by_the_real_recogniser(service: AnalysisService):
    recognition.forget()
    noise = np.random.default_rng(3).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    Image.fromarray(noise).save(service.settings.data_root / "segmentation/DDTI/imgs/noise.png")
    with pytest.raises(RequestError) as refused:
        service.analyze({"img_path_relative": "segmentation/DDTI/imgs/noise.png", "task": "segmentation"})
    assert refused.value.status_code == 422 and refused.value.field == "dataset_name"


def test_batch_routes_each_entry_and_given_ones_win(service: AnalysisService, answer: dict):
    entries = [{"img_path_relative": SEG_IMAGE, "task": "segmentation"},
               {"img_path_relative": CLS_IMAGE, "task": "classification", "dataset_name": "BUSI"},
               {"img_path_relative": CLS_IMAGE, "task": "classification"}]  # thyroid: no classification dataset
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post("/v1/predict/batch", json={"requests": entries})
    assert reply.status_code == 200, reply.text
    routed, given, refused = reply.json()["results"]
    assert routed["dataset_name"] == "DDTI" and routed["recognition"]["routed"] is True
    assert given["dataset_name"] == "BUSI" and "routed" not in given["recognition"]
    assert refused["status_code"] == 422 and refused["field"] == "dataset_name"
    assert {row["dataset_name"] for row in service.runs() if not row["error"]} == {"DDTI", "BUSI"}


def test_the_earlier_servers_segment_route_is_routed_too(service: AnalysisService, answer: dict):
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post("/segment/", json={"img_path_relative": SEG_IMAGE, "task": "segmentation"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["dataset_name"] == "DDTI" and reply.json()["recognition"]["routed"] is True


def test_cli_predict_routes_entries_without_a_dataset(tiny_settings: Settings, tmp_path: Path, monkeypatch, capsys,
                                                      answer: dict):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    answer["found"] = BREAST
    entries = [{"img_path_relative": CLS_IMAGE, "task": "classification"},
               {"img_path_relative": SEG_IMAGE, "task": "segmentation", "dataset_name": "DDTI"}]
    listing = tmp_path / "unlabeled.json"
    listing.write_text(json.dumps(entries))
    out = tmp_path / "out"
    assert main(["predict", "--input-json", str(listing), "--input-dir", str(tiny_settings.data_root),
                 "--output-dir", str(out), "--device", "cpu", "--no-progress", "--model", "tiny"]) == 0
    assert list(json.loads((out / "classification.json").read_text())) == [CLS_IMAGE]
    assert (out / SEG_IMAGE.replace("/imgs/", "/masks/")).is_file()
    assert "done: 2 predicted" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ decoded once
def test_a_routed_request_is_decoded_once(service: AnalysisService, answer: dict, decodes: list[str]):
    skeleton = service.save_upload(random_png(), "scan.png")
    decodes.clear()  # the route step decodes the image; the engine prepares that decoded image
    one = service.analyze({**skeleton, "task": "segmentation"})
    assert one.dataset_name == "DDTI" and one.recognition and one.recognition["routed"] is True
    assert len(decodes) == 1
    decodes.clear()
    routed = {"img_path_relative": SEG_IMAGE, "task": "segmentation"}
    result = service.analyze_batch([routed, {**routed, "dataset_name": "DDTI"}, {**skeleton, "task": "segmentation"}],
                                   source="batch")
    assert [r.dataset_name for r in result.responses] == ["DDTI"] * 3 and len(decodes) == 3
    assert [bool(r.recognition and r.recognition.get("routed")) for r in result.responses] == [True, False, True]


def test_a_batch_past_its_decode_budget_lets_routed_images_go(tiny_settings: Settings, answer: dict,
                                                             decodes: list[str]):
    tight = AnalysisService(tiny_settings.with_(max_decoded_mb=0), model="tiny")
    result = tight.analyze_batch([{"img_path_relative": SEG_IMAGE, "task": "segmentation"}], source="batch")
    assert result.responses[0].recognition["routed"] is True and len(decodes) == 2  # routed, then decoded again


# ------------------------------------------------------------------------------------------------ frames door
def _cine(service: AnalysisService, frames: int = 4) -> dict:
    """A multi-frame 8-bit ultrasound DICOM of ``frames`` moving disks, stored as an upload; its skeleton."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[0:64, 0:80]
    stack = [np.where((yy - 32) ** 2 + (xx - 40) ** 2 < (10 + 3 * i) ** 2, 220, 25).astype(np.uint8)
             for i in range(frames)]
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("cine", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = stack[0].shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation, ds.NumberOfFrames, ds.FrameTime = "MONOCHROME2", frames, 40.0
    ds.PixelData = np.stack(stack).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return service.save_upload(buffer.getvalue(), "loop.dcm")


@pytest.fixture()
def routes(monkeypatch) -> list[str]:
    """The dataset every call of the one route step (core.auto_route.route) chose."""
    from core import auto_route

    chosen: list[str] = []
    original = auto_route.route

    def counted(*args, **kwargs):
        routed = original(*args, **kwargs)
        chosen.append(routed.request.dataset_name)
        return routed

    monkeypatch.setattr(auto_route, "route", counted)
    return chosen


def test_frames_without_a_dataset_are_routed_once(service: AnalysisService, answer: dict, routes: list[str]):
    skeleton = _cine(service)
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post("/v1/predict/frames", json={"request": {**skeleton, "task": "segmentation"}})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert routes == ["DDTI"]  # once per request, on the first analysed frame
        assert [item["dataset_name"] for item in body["results"]] == ["DDTI"] * 4
        assert all(item["recognition"]["routed"] is True for item in body["results"])
        assert body["summary"]["recognition"] == {**THYROID.public(), "routed": True}
        assert {row["dataset_name"] for row in service.runs()} == {"DDTI"}
        edits = [{"op": "rotate90", "k": 1}]
        edited = client.post("/v1/predict/frames", json={"request": {**skeleton, "task": "segmentation"},
                                                          "frames": [2, 0], "edits": edits})
        assert edited.status_code == 200, edited.text
        assert [item["frame_index"] for item in edited.json()["results"]] == [2, 0] and routes == ["DDTI"] * 2
        given = client.post("/v1/predict/frames", json={"request": {**skeleton, "task": "segmentation",
                                                                    "dataset_name": "DDTI"}, "frames": [1]})
        assert given.status_code == 200 and "recognition" not in given.json()["summary"] and len(routes) == 2
        answer["found"] = None  # no recogniser: a clear 422 naming dataset_name, recorded, the service goes on
        refused = client.post("/v1/predict/frames", json={"request": {**skeleton, "task": "segmentation"}})
        assert refused.status_code == 422 and refused.json()["field"] == "dataset_name"
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------------------------ bad input: 4xx
@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/predict", {"img_path_relative": SEG_IMAGE, "task": "nope"}, "task"),
    ("/v1/predict", {"img_path_relative": SEG_IMAGE, "task": "segmentation", "organ": "lung"}, "organ"),
    ("/v1/predict", {"img_path_relative": "segmentation/DDTI/imgs/none.png", "task": "segmentation"},
     "img_path_relative"),
    ("/v1/predict", {"img_path_relative": SEG_IMAGE, "task": "segmentation", "frame_index": 5}, "frame_index"),
    ("/v1/predict/frames", {"request": {"img_path_relative": SEG_IMAGE, "task": "nope"}}, "task"),
    ("/v1/predict/batch", {"requests": [{"img_path_relative": SEG_IMAGE, "task": "nope"}]}, "task"),
    ("/segment/", {"img_path_relative": SEG_IMAGE, "task": "nope"}, "task"),
])
def test_bad_input_without_a_dataset_is_a_4xx_naming_the_field(service: AnalysisService, answer: dict, path: str,
                                                               body: dict, field: str):
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        reply = client.post(path, json=body)
        found = reply.json()["results"][0] if path.endswith("batch") else reply.json()
        status = found["status_code"] if path.endswith("batch") else reply.status_code
        assert 400 <= status < 500 and found["field"] == field, reply.text
        assert client.get("/healthz").status_code == 200


def test_refuse_ood_is_a_422_with_or_without_a_dataset(tiny_settings: Settings, answer: dict):
    service = AnalysisService(tiny_settings.with_(refuse_ood=True), model="tiny")
    answer["found"] = THYROID.model_copy(update={"in_distribution": False})
    with TestClient(create_app(settings=service.settings, service=service)) as client:
        given = client.post("/v1/predict", json={"img_path_relative": SEG_IMAGE, "task": "segmentation",
                                                 "dataset_name": "DDTI"})
        routed = client.post("/v1/predict", json={"img_path_relative": SEG_IMAGE, "task": "segmentation"})
        answer["found"] = THYROID
        after = client.post("/v1/predict", json={"img_path_relative": SEG_IMAGE, "task": "segmentation"})
    assert given.status_code == 422 and given.json()["field"] == "img_path_relative"
    assert routed.status_code == 422 and routed.json()["field"] == "dataset_name"
    assert after.status_code == 200 and after.json()["recognition"]["routed"] is True
