"""Hardening III (issue 22), classes 1 and 3, held at their one shared mechanism:

1. an edit log is checked (``core.editing.parse_edits``) and budgeted by arithmetic (``check_edit_budget``) before any
   pixel moves, at every door that takes one (``/v1/predict`` and its envelope, ``/v1/predict/frames``, the service);
3. a request field outside the schema named like a result field (``core.schema.RESERVED_EXTRAS``) is refused with
   422 naming it, on ``/v1/predict``, the earlier server's ``/segment/`` and ``/v1/predict/batch``, never a 500.
"""

from __future__ import annotations

import io
import json
import random
import tracemalloc
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import editing
from core.api import create_app
from core.errors import RequestError, UUSICError
from core.samples import save_upload
from core.schema import RESERVED_EXTRAS, PredictRequest
from core.service import AnalysisService
from core.settings import Settings
from tests.test_cine import _request, disk_video

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_1.png", "task": "segmentation", "dataset_name": "DDTI"}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI"}

# ------------------------------------------------------------------------------------------------ class 1: edits
HOSTILE_EDITS = {
    "null step": ([None], "edits[0]"),
    "text step": (["x"], "edits[0]"),
    "nested list": ([[1, 2]], "edits[0]"),
    "number step": ([7], "edits[0]"),
    "no op": ([{}], "edits[0]"),
    "unknown op": ([{"op": "melt"}], "edits[0]"),
    "zoom op": ([{"op": "zoom", "factor": 40}], "edits[0]"),
    "op not text": ([{"op": 1}], "edits[0]"),
    "angle inf (1e400)": ([{"op": "rotate", "angle": float("inf")}], "edits[0].angle"),
    "angle nan": ([{"op": "rotate", "angle": float("nan")}], "edits[0].angle"),
    "angle text": ([{"op": "rotate", "angle": "12"}], "edits[0].angle"),
    "angle null": ([{"op": "rotate", "angle": None}], "edits[0].angle"),
    "angle list": ([{"op": "rotate", "angle": [45]}], "edits[0].angle"),
    "angle huge": ([{"op": "rotate", "angle": 1e12}], "edits[0].angle"),
    "k text": ([{"op": "rotate90", "k": "1"}], "edits[0].k"),
    "k float": ([{"op": "rotate90", "k": 1.5}], "edits[0].k"),
    "k huge": ([{"op": "rotate90", "k": 10**30}], "edits[0].k"),
    "k bool": ([{"op": "rotate90", "k": True}], "edits[0].k"),
    "axis unknown": ([{"op": "flip", "axis": "diagonal"}], "edits[0].axis"),
    "box short": ([{"op": "crop", "box": [1, 2]}], "edits[0].box"),
    "box text": ([{"op": "crop", "box": "0,0,5,5"}], "edits[0].box"),
    "box nan": ([{"op": "crop", "box": [0, 0, float("nan"), 5]}], "edits[0].box"),
    "box huge": ([{"op": "crop", "box": [0, 0, 1e300, 5]}], "edits[0].box"),
    "box missing": ([{"op": "crop"}], "edits[0].box"),
    "extra key": ([{"op": "flip", "axis": "vertical", "then": "rm -rf"}], "edits[0].then"),
    "second step bad": ([{"op": "flip"}, {"op": "rotate", "angle": "x"}], "edits[1].angle"),
    "not a list": ({"op": "flip"}, "edits"),
    "text log": ("rotate", "edits"),
    "huge count": ([{"op": "flip"}] * 10_000, "edits"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_EDITS))
def test_hostile_edit_logs_are_422_naming_the_field(case: str):
    raw, field = HOSTILE_EDITS[case]
    with pytest.raises(RequestError) as caught:
        editing.parse_edits(raw)
    assert caught.value.status_code == 422 and caught.value.field.startswith(field), caught.value.to_dict()


def test_a_good_log_comes_back_canonical():
    raw = [{"op": "rotate90", "k": 5}, {"op": "rotate", "angle": 12}, {"op": "flip", "axis": "vertical"},
           {"op": "crop", "box": [1.4, 2.6, 30, 40]}]
    assert editing.parse_edits(raw) == [{"op": "rotate90", "k": 5}, {"op": "rotate", "angle": 12.0},
                                        {"op": "flip", "axis": "vertical"}, {"op": "crop", "box": [1, 3, 30, 40]}]
    assert editing.parse_edits(None) == [] and editing.parse_edits([]) == []


def test_sizes_are_pils_own_without_touching_pixels():
    rng = random.Random(22)
    for _ in range(300):
        size = (rng.randint(1, 400), rng.randint(1, 400))
        angle = rng.choice([rng.uniform(-360, 360), 45.0, -45.0, 90.0, 180.0, -270.0, round(rng.uniform(-45, 45)) / 2])
        log = editing.parse_edits([{"op": "rotate", "angle": angle}, {"op": "rotate90", "k": rng.randint(0, 3)},
                                   {"op": "crop", "box": [rng.randint(-5, 50), rng.randint(-5, 50), 300, 300]}])
        assert editing.apply_edits(Image.new("1", size), log, is_mask=True).size == editing.edited_size(size, log)


def test_ten_45_degree_turns_are_refused_before_any_pixel_moves():
    log = editing.parse_edits([{"op": "rotate", "angle": 45}] * 10)
    assert editing.edited_size((256, 256), log) == (8300, 8300)  # what replaying it would have allocated
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as caught:
            editing.check_edit_budget((256, 256), log, max_pixels=64_000_000, max_side=16_384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status_code == 413 and caught.value.field == "edits[1]"  # the step that passes 4x
    assert peak < 1_000_000
    with pytest.raises(RequestError, match="per side"):
        editing.check_edit_budget((100, 16_000), editing.parse_edits([{"op": "rotate", "angle": 30}]),
                                  max_pixels=0, max_side=16_384)
    editing.check_edit_budget((256, 256), log[:1], max_pixels=64_000_000, max_side=16_384)  # one turn is fine


@pytest.fixture()
def api(tiny_settings: Settings):
    with TestClient(create_app(tiny_settings.with_(default_model="tiny"))) as client:
        client.settings = tiny_settings
        yield client


@pytest.mark.parametrize("case", ["null step", "text step", "nested list", "k text", "not a list",
                                  "huge count", "box huge"])
def test_predict_envelope_refuses_hostile_edits_with_4xx(api, case: str):
    raw, field = HOSTILE_EDITS[case]
    answer = api.post("/v1/predict", json={"request": SEG, "edits": raw})
    assert answer.status_code == 422 and answer.json()["field"].startswith(field), answer.text


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity"])
def test_predict_envelope_refuses_non_finite_angles_sent_as_json_text(api, number: bytes):
    body = b'{"request": %s, "edits": [{"op": "rotate", "angle": %s}]}' % (
        b'{"img_path_relative": "segmentation/DDTI/imgs/seg_1.png", "task": "segmentation", "dataset_name": "DDTI"}',
        number)
    answer = api.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["field"] == "edits[0].angle", answer.text


def test_frames_refuse_a_growing_log_before_decoding_edits(api):
    skeleton = api.post("/v1/upload", files={"file": ("loop.mp4", disk_video(), "video/mp4")}).json()
    grow = [{"op": "rotate", "angle": 45}] * 10
    answer = api.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": [0, 1], "edits": grow})
    assert answer.status_code == 413 and answer.json()["field"] == "edits[1]", answer.text
    junk = api.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": [0], "edits": [None]})
    assert junk.status_code == 422 and junk.json()["field"] == "edits[0]"
    fine = api.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": [0],
                                                "edits": [{"op": "rotate", "angle": 45}]})
    assert fine.status_code == 200 and fine.json()["results"][0]["image_width"] == 160  # 128×96 turned 45°
    assert api.get("/healthz").status_code == 200


def test_the_service_records_a_refused_log_without_storing_it(tiny_settings: Settings):
    service = AnalysisService(tiny_settings, model="tiny")
    with pytest.raises(RequestError):
        service.analyze(SEG, edits=[{"op": "rotate", "angle": "nan"}])
    row = service.runs({})[0]
    assert row["error_type"] == "RequestError" and not row["edits"]
    done = service.analyze(SEG, edits=[{"op": "rotate90", "k": 1}])
    assert service.run(done.run_id)["edits"] == [{"op": "rotate90", "k": 1}]


# ------------------------------------------------------------------------------------------------ class 3: extras
RESULT_NAMES = ["probability", "prediction", "notes", "uncertainty", "reference", "measurements", "mask_path",
                "mask_url", "mask_area_px", "run_id", "label_name", "class_names", "inference_time_sec",
                "memory_usage_mb", "gpu_memory_usage_mb", "gpu_memory_reserved_mb", "timings", "device",
                "model_name", "model_sha256", "input_sha256", "coverage_fraction", "error", "error_type",
                "status_code", "batch_id", "image_width"]
HOSTILE_VALUES = ["x", None, [1, "a"], {"k": 1}, 1e308, -1]


def test_every_result_name_is_reserved():
    assert set(RESULT_NAMES) <= RESERVED_EXTRAS
    assert not RESERVED_EXTRAS & set(PredictRequest.model_fields)
    assert "frame_count" not in RESERVED_EXTRAS  # our own upload skeleton carries it


@pytest.mark.parametrize("name", RESULT_NAMES)
def test_a_request_naming_a_result_field_is_422_on_every_door(api, name: str):
    value = HOSTILE_VALUES[RESULT_NAMES.index(name) % len(HOSTILE_VALUES)]
    for request in (SEG, CLS):
        answer = api.post("/v1/predict", json={**request, name: value})
        assert answer.status_code == 422 and answer.json()["field"] == name, answer.text
    old = api.post("/segment/", json={**SEG, name: value})
    assert old.status_code == 422, old.text
    batch = api.post("/v1/predict/batch", json={"requests": [{**CLS, name: value}, CLS]}).json()
    assert batch["results"][0]["status_code"] == 422 and batch["results"][0]["field"] == name
    assert "probability" in batch["results"][1]  # the good request beside it is answered


def test_the_image_path_as_a_field_name_cannot_replace_the_challenge_entry(api):
    answer = api.post("/v1/predict", json={**CLS, CLS["img_path_relative"]: {"probability": [1, 0], "prediction": 0}})
    assert answer.status_code == 422 and answer.json()["field"] == CLS["img_path_relative"]


def test_other_extras_are_still_echoed(api):
    answer = api.post("/v1/predict", json={**SEG, "my_tag": "kept", "frame_count": 1, "probability_note": "ok"})
    assert answer.status_code == 200
    assert answer.json()["my_tag"] == "kept" and answer.json()["probability_note"] == "ok"


# ------------------------------------------------------------------------------------------------ class 5: refusals
def test_frames_refusals_are_recorded_like_any_other_door(api):
    skeleton = api.post("/v1/upload", files={"file": ("loop.mp4", disk_video(), "video/mp4")}).json()
    service = api.app.state.service
    before = service.store.count()
    cases = [({"request": _request(skeleton), "frames": "first"}, "frames"),
             ({"request": _request(skeleton), "frames": [0], "edits": [None]}, "edits[0]"),
             ({"request": _request(skeleton), "frames": [0], "edits": [{"op": "rotate", "angle": 45}] * 3}, "edits[1]"),
             ({"request": {**_request(skeleton), "probability": 1}, "frames": [0]}, "probability"),
             ({"request": {**_request(skeleton), "img_path_relative": "api_in/none.mp4"}, "frames": [0]},
              "img_path_relative")]
    for body, field in cases:
        answer = api.post("/v1/predict/frames", json=body)
        assert 400 <= answer.status_code < 500 and answer.json().get("field") == field, answer.text
    rows = service.runs({})[: len(cases)]
    assert service.store.count() == before + len(cases)
    assert all(row["error_type"] and row["error"] and row["source"] == "api" for row in rows)


def test_error_text_is_capped_in_the_answer_and_the_history(api):
    long = "q" * 4000
    request = {**SEG, "task": long, "dataset_name": long, "organ": long, "img_name": 5, "mask_name": 6,
               "img_dimensions": "wide", "class_label_index": "x", "pixel_spacing_mm": "far"}
    answer = api.post("/v1/predict", json=request)
    assert answer.status_code == 422 and len(answer.text) < 4096 + 500
    detail = answer.json()["detail"]
    assert len(detail) <= 4096 and detail.startswith("invalid request")
    row = api.app.state.service.runs({})[0]
    assert row["error_type"] == "RequestError" and len(row["error"]) <= 4096


def test_every_typed_error_caps_its_message_and_field():
    error = RequestError("x" * 200_000, field="f" * 5_000)
    assert len(error.message) == 4096 and len(str(error)) == 4096 and len(error.field) == 200
    assert error.message.endswith("(cut from 200,000 characters)")
    error.message = "y" * 10_000  # a later rewording is capped too
    assert len(error.to_dict()["detail"]) == 4096


# ------------------------------------------------------------------------------------------------ class 4: sources
def test_a_run_cannot_borrow_another_uploads_dicom_for_its_seg(tiny_settings: Settings):
    import pydicom
    from conftest import dicom_bytes, ultrasound_dicom

    service = AnalysisService(tiny_settings.model_copy(update={"backend": "torch"}), model="tiny")
    other = ultrasound_dicom(rows=48, columns=64)  # another patient's scan: other pixels
    other.PatientName = "Other^Patient"
    theirs = service.save_upload(dicom_bytes(other), "their scan.dcm")
    mine = service.save_upload(dicom_bytes(ultrasound_dicom(rows=56, columns=72)), "my scan.dcm")
    target = {"task": "segmentation", "dataset_name": "DDTI"}
    png = service.save_upload(_png_of(service, mine), "mine.png")
    borrowed = {"source_path_relative": theirs["source_path_relative"]}
    cases = {  # the request names another upload's original: a SEG must never carry that patient
        "png names another upload's dicom": {**png, **target, **borrowed},
        "dicom names another upload's dicom": {**mine, **target, **borrowed},
        "dicom names the data root's image": {**mine, **target,
                                              "source_path_relative": "segmentation/DDTI/imgs/seg_0.png"},
    }
    for name, request in cases.items():
        run = service.analyze(request)
        with pytest.raises(RequestError) as caught:
            service.dicom_seg(run.run_id)
        assert caught.value.status_code == 422, name
    own = service.analyze({**mine, **target})
    seg = pydicom.dcmread(io.BytesIO(service.dicom_seg(own.run_id)))
    assert str(seg.PatientName) != "Other^Patient"


def _png_of(service: AnalysisService, skeleton: dict) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(service.load_frame(skeleton["img_path_relative"], 0)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ class 8: rows
MALFORMED_ROWS = {  # column → stored JSON text / value of an imported, migrated or hand-edited row
    "probability text": ("cls", "response", {"probability": "x"}),
    "probability mixed": ("cls", "response", {"probability": [1, "a", None]}),
    "prediction text": ("cls", "response", {"prediction": "abc"}),
    "prediction huge": ("cls", "response", {"prediction": 10**30}),
    "class names a number": ("cls", "response", {"class_names": 5, "probability": [0.1, 0.2, 0.7]}),
    "uncertainty ranges text": ("cls", "response", {"uncertainty": {"probability_min": "x", "probability_max": 3}}),
    "measurements a list": ("seg", "response", {"measurements": [1, 2]}),
    "measurement text": ("seg", "response", {"measurements": {"area_px": "big", "components": "some"}}),
    "spacing text": ("seg", "response", {"pixel_spacing_mm": "far"}),
    "coverage text": ("seg", "response", {"coverage_fraction": "most"}),
    "frame count text": ("seg", "response", {"frame_count": "many", "frame_index": "last"}),
    "reference a number": ("seg", "response", {"reference": 5}),
    "reference measurements text": ("seg", "response", {"reference": {"measurements": "x", "source": 3}}),
    "notes a number": ("seg", "response", {"notes": 7}),
    "image size a dict": ("seg", "response", {"image_width": {"a": 1}, "image_height": [2]}),
    "uncertainty a list": ("seg", "response", {"uncertainty": [1, 2]}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_ROWS))
def test_a_report_of_a_malformed_stored_row_omits_what_it_cannot_show(api, case: str):
    import sqlalchemy as sa

    kind, column, patch = MALFORMED_ROWS[case]
    service = api.app.state.service
    run = service.analyze(CLS if kind == "cls" else SEG)
    stored = {**service.run(run.run_id)[column], **patch}
    with service.store._transaction(write=True) as connection:
        connection.execute(sa.text(f"UPDATE runs SET {column} = :value WHERE id = :id"),
                           {"value": json.dumps(stored), "id": run.run_id})
    for lang in ("en", "zh"):
        answer = api.get(f"/v1/history/{run.run_id}/report.pdf", params={"lang": lang})
        assert answer.status_code == 200 or 400 <= answer.status_code < 500, (lang, answer.text[:300])
        if answer.status_code == 200:
            assert answer.content.startswith(b"%PDF")


def test_a_seg_of_a_row_with_a_malformed_frame_index_is_422(api):
    import sqlalchemy as sa
    from conftest import dicom_bytes, ultrasound_dicom

    service = api.app.state.service
    skeleton = service.save_upload(dicom_bytes(ultrasound_dicom()), "scan.dcm")
    run = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
    assert api.get(f"/v1/history/{run.run_id}/seg.dcm").status_code == 200
    for bad in ("last", -1, 2.5, [0]):
        request = {**service.run(run.run_id)["request"], "frame_index": bad}
        with service.store._transaction(write=True) as connection:
            connection.execute(sa.text("UPDATE runs SET request = :value WHERE id = :id"),
                               {"value": json.dumps(request), "id": run.run_id})
        answer = api.get(f"/v1/history/{run.run_id}/seg.dcm")
        assert answer.status_code == 422 and answer.json()["field"] == "run_id", answer.text


# ------------------------------------------------------------------------------------------------ class 11: at rest
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MRN-778899", "PatientBirthDate": "19800101",
            "InstitutionName": "St Example Hospital", "ReferringPhysicianName": "Who^Doctor",
            "OperatorsName": "Sono^Grapher", "AccessionNumber": "ACC-5566", "PatientAddress": "1 Example Road",
            "OtherPatientIDs": "OTHER-4455", "StationName": "US-ROOM-9", "DeviceSerialNumber": "SN-3344"}


@pytest.mark.parametrize("frames", [1, 4], ids=["still", "cine"])
def test_a_dicom_upload_keeps_no_identity_on_disk(tiny_settings: Settings, frames: int):
    import pydicom
    from conftest import dicom_bytes, ultrasound_dicom

    dataset = ultrasound_dicom(frames=frames)
    for keyword, value in IDENTITY.items():
        setattr(dataset, keyword, value)
    dataset.add_new(0x00091010, "LO", "private note MRN-778899")
    original = dicom_bytes(dataset)
    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(original, "scan.dcm")
    stored = (tiny_settings.workspace / skeleton["source_path_relative"]).read_bytes()
    for value in [*IDENTITY.values(), "private note"]:
        assert value.encode() not in stored, value
    kept = pydicom.dcmread(io.BytesIO(stored))
    assert kept.PatientIdentityRemoved == "YES" and kept.SOPInstanceUID == dataset.SOPInstanceUID  # UIDs retained
    assert np.array_equal(service.load_frame(skeleton["img_path_relative"], frames - 1),
                          service.load_frame(skeleton["source_path_relative"], frames - 1))
    run = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
    assert b"Doe^Jane" not in service.dicom_seg(run.run_id)
    as_uploaded = save_upload(tiny_settings.with_(keep_identity=True), original, "scan.dcm")
    assert (tiny_settings.workspace / as_uploaded["source_path_relative"]).read_bytes() == original


@pytest.mark.parametrize("fmt", ["mp4", "mov", "avi", "mkv", "webm"])
def test_a_video_upload_keeps_no_container_metadata(tiny_settings: Settings, fmt: str):
    import av

    from tests.test_cine import RADII, disk

    frames = [disk(r) for r in RADII]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska" if fmt == "mkv" else fmt) as container:
        container.metadata.update(title="Doe Jane MRN-778899", comment="St Example Hospital", artist="Sono Grapher")
        stream = container.add_stream("libvpx" if fmt == "webm" else "mpeg4", rate=10)
        stream.height, stream.width = frames[0].shape
        stream.pix_fmt = "yuv420p"
        for gray in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.stack([gray] * 3, axis=2), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    original = buffer.getvalue()
    assert b"MRN-778899" in original
    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(original, f"clip.{fmt}")
    stored = (tiny_settings.workspace / skeleton["img_path_relative"]).read_bytes()
    assert not any(text in stored for text in (b"MRN-778899", b"Example Hospital", b"Sono Grapher"))
    assert skeleton["frame_count"] == len(frames)
    from core.imaging import load_image

    for index in (0, len(frames) - 1):  # the same pixels: re-muxed, not re-encoded
        assert np.array_equal(load_image(stored, frame_index=index).rgb, load_image(original, frame_index=index).rgb)


def test_a_deflated_dicom_is_measured_before_it_is_de_identified(tiny_settings: Settings):
    """De-identifying reads the whole data set: a deflated one is first inflated in bounded steps and counted (a
    small file that inflates past UUSIC_MAX_DECODED_MB is refused with 413, nothing allocated for it)."""
    from tests.test_cine import dicom_bytes

    frames = [np.zeros((1024, 1024), np.uint8) for _ in range(12)]  # 12 MiB of pixels, a few kB deflated
    data = dicom_bytes(frames, deflated=True)
    assert len(data) < 200_000
    small = tiny_settings.with_(max_decoded_mb=8)
    with pytest.raises(UUSICError) as refused:
        save_upload(small, data, "bomb.dcm")
    assert refused.value.status_code == 413 and "UUSIC_MAX_DECODED_MB" in refused.value.message
    skeleton = save_upload(tiny_settings, data, "fine.dcm")  # within the default budget: de-identified, kept
    assert skeleton["frame_count"] == 12


def test_a_deflated_stream_with_a_pad_byte_after_its_end_is_measured_to_the_end():
    """A DICOM's even-length pad byte after the deflate stream (left as unconsumed input when the last output step is
    full) ends the count; it never loops (CI once hung here for 10 minutes)."""
    from core.deidentify import deidentify_dicom
    from core.imaging import check_inflated_size

    stream = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = stream.compress(bytes(3 << 20)) + stream.flush() + b"\x00"
    data = _deflated_file(body)
    check_inflated_size(data, "pad", 4 << 20)  # 3 MiB inflated: inside the budget, and it returns
    with pytest.raises(UUSICError) as refused:
        check_inflated_size(data, "pad", 2 << 20)
    assert refused.value.status_code == 413
    with pytest.raises(UUSICError) as junk:  # a broken stream is refused with a clear error
        deidentify_dicom(_deflated_file(b"\xff" * 64), name="junk", max_bytes=4 << 20)
    assert junk.value.status_code == 400 and "deflated DICOM" in junk.value.message


def _deflated_file(body: bytes) -> bytes:
    """A preamble, "DICM" and a file meta group naming the deflated transfer syntax, then ``body``."""
    import struct

    syntax = b"1.2.840.10008.1.2.1.99\x00"
    element = struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", len(syntax)) + syntax
    return bytes(128) + b"DICM" + element + body
