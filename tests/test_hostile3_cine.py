"""Hardening III (issue 22), classes 2 and 6, held at their one shared mechanism:

2. cine budgets count what is decoded, not what the header claims: every decoded frame is counted at its real size
   against ``max_decoded_mb`` (``core.imaging.DecodeBudget``), a frame count is checked against ``max_frames`` by
   arithmetic before any per-frame list exists (``core.cine.parse_frames``), and a header whose frame count or frame
   size lies is a clear 4xx (or the "video ends after N of M frames" failures), never a 500 — the service answers on;
6. one pixel-spacing band (``core.calibration``) for every door and source: a file's own spacing outside it (DICOM
   ``PixelSpacing``, ultrasound regions, ``ground_truth.json``) is dropped with ``pixel_spacing_note`` and the image
   stays analysable; a spacing the user gives outside it is refused with 422 naming ``pixel_spacing_mm`` on
   ``/v1/predict``, ``/v1/predict/frames``, ``/v1/predict/batch``, the earlier server's ``/segment/`` and the CLI.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import calibration
from core.api import create_app
from core.cine import check_budget, parse_frames
from core.errors import ImageError, RequestError
from core.imaging import decode_frames, load_image, probe_frames
from core.samples import random_sample, save_upload
from core.schema import PredictRequest
from core.settings import PROJECT_ROOT, Settings
from tests.conftest import sha256_of, write_image
from tests.test_cine import RADII, disk, truncated_avi, video_bytes

av = pytest.importorskip("av")
MAX_FRAMES, MAX_DECODED_MB = 16, 1  # the world's budgets: small enough for tiny hostile files to pass them
HUGE = 4_294_967_295  # the largest 32-bit count a header can claim
BAND = "between 0.01 and 2 mm per pixel"


# ------------------------------------------------------------------------------------------------ builders
def cine_dicom(count: int = 3, *, claimed: int | None = None, size: tuple[int, int] = (40, 48),
               spacing: float | None = 0.3, regions_cm: float | None = None, deflated: bool = False) -> bytes:
    """A multi-frame 8-bit ultrasound DICOM of ``count`` real frames whose header claims ``claimed`` frames."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = "2.25.7"
    ds = FileDataset("cine", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "US"
    ds.Rows, ds.Columns = size
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = count if claimed is None else claimed
    ds.FrameTime = 40.0
    if spacing is not None:
        ds.PixelSpacing = [spacing, spacing]
    if regions_cm is not None:
        region = Dataset()
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # centimetres
        region.PhysicalDeltaX = region.PhysicalDeltaY = regions_cm
        ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = np.stack([disk(4 + 3 * i, size) for i in range(count)]).astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def patched_dicom(data: bytes, tag: tuple[int, int], value: int) -> bytes:
    """``data`` with the US element ``tag`` (Rows, Columns) rewritten in place: a header that lies about the size."""
    head = struct.pack("<HH", *tag) + b"US" + struct.pack("<H", 2)
    assert data.count(head) == 1
    at = data.index(head) + len(head)
    return data[:at] + struct.pack("<H", value) + data[at + 2:]


def jpeg_dicom(claimed: int, fragments: int = 1) -> bytes:
    """An encapsulated (JPEG baseline) DICOM of ``fragments`` frames whose header claims ``claimed`` frames."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = pydicom.dcmread(io.BytesIO(cine_dicom(1)))
    jpegs = []
    for i in range(fragments):
        buffer = io.BytesIO()
        Image.fromarray(disk(6 + 4 * i, (40, 48))).save(buffer, format="JPEG")
        jpegs.append(buffer.getvalue())
    ds.PixelData = encapsulate(jpegs)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.NumberOfFrames = claimed
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def avi_claiming(frames: int, data: bytes | None = None) -> bytes:
    """The 8-frame disk video as AVI (or ``data``) whose headers (avih, strh) claim ``frames`` frames."""
    patched = bytearray(data if data is not None else video_bytes([disk(r) for r in RADII], fmt="avi"))
    struct.pack_into("<I", patched, patched.index(b"avih") + 8 + 16, frames)  # dwTotalFrames
    struct.pack_into("<I", patched, patched.index(b"strh") + 8 + 32, frames)  # dwLength
    return bytes(patched)


def growing_video(fmt: str = "avi", *, small: int = 64, big: int = 512, n_small: int = 2, n_big: int = 3) -> bytes:
    """A video whose header (stream parameters) says ``small`` x ``small`` but whose later frames decode at ``big``
    x ``big``: the MPEG-4 encoder is switched mid-stream, as a hostile file would."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = small
        stream.pix_fmt = "yuv420p"
        pts = 0
        for side, count in ((small, n_small), (big, n_big)):
            codec = av.CodecContext.create("mpeg4", "w")
            codec.width, codec.height, codec.pix_fmt = side, side, "yuv420p"
            codec.time_base, codec.framerate = Fraction(1, 10), Fraction(10, 1)
            codec.open()
            packets = []
            for k in range(count):
                gray = disk(side / 4 + 3 * k, (side, side))
                packets += codec.encode(av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2),
                                                                   format="rgb24"))
            packets += codec.encode(None)
            for packet in packets:
                packet.stream, packet.pts, packet.dts = stream, pts, pts
                pts += 1
                out.mux(packet)
    return buffer.getvalue()


def multipage_tiff(sides: tuple[int, ...] = (16, 600)) -> bytes:
    pages = [Image.fromarray(np.full((side, side), 40 + i, np.uint8)) for i, side in enumerate(sides)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def _png(side: int = 48, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(disk(side / 4 + seed, (side, side))).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_torchscript: Path):
    """The tiny model in-process behind the app, with small cine budgets and a data root whose ground truth states
    an implausible spacing (0.005 mm per pixel)."""
    parent = tmp_path_factory.mktemp("hostile3_cine")
    data = parent / "data"
    write_image(data / "segmentation/DDTI/imgs/ok.png", 48, 40, seed=1)
    write_image(data / "classification/BUSI/imgs/c.png", 40, 40, seed=2)
    (data / "ground_truth.json").write_text(json.dumps([
        {"img_path_relative": "segmentation/DDTI/imgs/ok.png", "task": "segmentation", "dataset_name": "DDTI",
         "pixel_spacing_mm": 0.005},
        {"img_path_relative": "classification/BUSI/imgs/c.png", "task": "classification", "dataset_name": "BUSI",
         "class_label_index": 0, "pixel_spacing_mm": "5"}]))
    weights = parent / "weights"
    weights.mkdir()
    (weights / "tiny.ts").write_bytes(tiny_torchscript.read_bytes())
    (weights / "models.json").write_text(json.dumps([
        {"name": "tiny", "arch": "torchscript", "file": "tiny.ts", "sha256": sha256_of(weights / "tiny.ts"),
         "input_size": 32, "preprocessing": "center_crop",
         "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]}]))
    # containers kept as uploaded (UUSIC_KEEP_IDENTITY): de-identifying re-muxes a video, which would replace the
    # lying headers these cases are about with the frames the file really holds (test_a_remuxed_upload_...)
    settings = Settings(workspace=parent / "ws", data_root=data, device="cpu", weights_dir=weights,
                        default_model="tiny", max_frames=MAX_FRAMES, max_decoded_mb=MAX_DECODED_MB,
                        keep_identity=True)
    settings.ensure_workspace()
    with TestClient(create_app(settings)) as client:
        yield {"parent": parent, "settings": settings, "client": client,
               "seg": {"img_path_relative": "segmentation/DDTI/imgs/ok.png", "task": "segmentation",
                       "dataset_name": "DDTI"}}


def _alive(world) -> None:
    response = world["client"].post("/v1/predict", json=world["seg"])
    assert response.status_code == 200, response.text


def _clear(world, response, status: int | tuple[int, ...], fragment: str | None, field: str | None = None) -> dict:
    """A typed 4xx answer: the status, a message with ``fragment``, the field named, no server paths, no traceback."""
    body = response.json()
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text
    assert 400 <= response.status_code < 500
    if fragment is not None:
        assert fragment in body["detail"], body
    if field is not None:
        assert body.get("field") == field, body
    assert "Traceback" not in response.text and str(world["parent"]) not in response.text
    return body


def _upload(world, data: bytes, name: str):
    return world["client"].post("/v1/upload", files={"file": (name, data, "application/octet-stream")})


def _seg(skeleton: dict, **extra) -> dict:
    return {**skeleton, "task": "segmentation", "dataset_name": "DDTI", **extra}


# ------------------------------------------------------------------------------------------------ class 2: uploads
# (id, file name, builder, status, fragment of the message)
HOSTILE_UPLOADS = [
    ("dicom claims 4294967295 frames", "a.dcm", lambda: cine_dicom(1, claimed=HUGE), 400,
     "fewer than the 4,294,967,295 its header declares (NumberOfFrames)"),
    ("dicom claims 5 of 3 frames", "a.dcm", lambda: cine_dicom(3, claimed=5), 400, "fewer than the 5 its header"),
    ("dicom claims 2 of 3 frames", "a.dcm", lambda: cine_dicom(3, claimed=2), 400, "more than the 2 frame(s)"),
    ("deflated dicom claims 4294967295 frames", "a.dcm", lambda: cine_dicom(2, claimed=HUGE, deflated=True), 400,
     "fewer than the 4,294,967,295"),
    ("dicom rows lie larger", "a.dcm", lambda: patched_dicom(cine_dicom(1), (0x0028, 0x0010), 400), 400,
     "its header declares"),
    ("dicom rows lie smaller", "a.dcm", lambda: patched_dicom(cine_dicom(1), (0x0028, 0x0010), 20), 400,
     "more than the 1 frame(s)"),
    ("dicom columns lie 65535", "a.dcm", lambda: patched_dicom(cine_dicom(1), (0x0028, 0x0011), 65535), 400,
     "largest side allowed"),
    ("dicom 65535 x 65535", "a.dcm",
     lambda: patched_dicom(patched_dicom(cine_dicom(1), (0x0028, 0x0011), 65535), (0x0028, 0x0010), 65535), 400,
     "65535x65535"),
    ("dicom rows 0", "a.dcm", lambda: patched_dicom(cine_dicom(1), (0x0028, 0x0010), 0), 400, "no pixels"),
    ("dicom zero frames", "a.dcm", lambda: cine_dicom(1, claimed=0), 400, "NumberOfFrames is 0"),
    ("dicom negative frames", "a.dcm", lambda: cine_dicom(1, claimed=-3), 400, "NumberOfFrames is -3"),
    ("jpeg dicom claims 4294967295 frames", "a.dcm", lambda: jpeg_dicom(HUGE), 400,
     "holds at most 1 frame(s), fewer than the 4,294,967,295"),
    ("jpeg dicom claims 3 of 2 frames", "a.dcm", lambda: jpeg_dicom(3, fragments=2), 400,
     "holds at most 2 frame(s), fewer than the 3"),
    ("video with no frames at all", "z.avi", lambda: avi_claiming(0, truncated_avi(keep=0)), 400,
     "the video has no frames"),
    ("video header promises 8, holds none", "z.avi", lambda: truncated_avi(keep=0), 400,
     "the video ends after 0 of the 8 frames"),
    ("video header promises 4294967295, holds none", "z.avi", lambda: avi_claiming(HUGE, truncated_avi(keep=0)),
     400, "ends after 0 of the 4294967295 frames"),
    ("video cut inside its first frame", "z.avi", lambda: truncated_avi(keep=1)[:-40], (400, 422), None),
]


@pytest.mark.parametrize("case", HOSTILE_UPLOADS, ids=[c[0] for c in HOSTILE_UPLOADS])
def test_hostile_cine_uploads_are_refused_clearly(world, case):
    _, name, build, status, fragment = case
    response = _upload(world, build(), name)
    if response.status_code == 200:  # a cut that still decodes: then every frame it claims must answer cleanly
        answer = world["client"].post("/v1/predict/frames", json={"request": _seg(response.json())})
        assert answer.status_code == 200 or 400 <= answer.status_code < 500, answer.text
    else:
        _clear(world, response, status, fragment)
    _alive(world)


# ------------------------------------------------------------------------------------------------ class 2: analysis
# (id, file name, builder, how it is analysed, status, field, fragment). How: ("frames", frames, edits) through
# /v1/predict/frames, or ("one", frame_index) through /v1/predict.
GROWING = growing_video()  # header 64x64; frames 0-1 at 64x64, frames 2-4 at 512x512 (786,432 RGB bytes each)
CLAIMS_HUGE = avi_claiming(HUGE)
HOSTILE_ANALYSES = [
    ("count 4294967295, all frames", "huge.avi", CLAIMS_HUGE, ("frames", None, None), 413, "frames",
     "the file has 4,294,967,295 frames (all asked for); at most 16"),
    ("count 4294967295, all frames as text", "huge.avi", CLAIMS_HUGE, ("frames", "all", None), 413, "frames",
     "UUSIC_MAX_FRAMES"),
    ("count 4294967295, all frames edited", "huge.avi", CLAIMS_HUGE,
     ("frames", None, [{"op": "flip", "axis": "horizontal"}]), 413, "frames", "UUSIC_MAX_FRAMES"),
    ("count 4294967295, its last claimed frame", "huge.avi", CLAIMS_HUGE, ("frames", [0, HUGE - 1], None), 422,
     "frames", "only the first 16 frames"),
    ("count 4294967295, one late frame", "huge.avi", CLAIMS_HUGE, ("one", HUGE - 1), 422, "frame_index",
     "only the first 16 frames"),
    ("count 4294967295, a frame past the claim", "huge.avi", CLAIMS_HUGE, ("frames", [HUGE], None), 422, "frames",
     "out of range"),
    ("count 4294967295, real frames", "huge.avi", CLAIMS_HUGE, ("frames", [0, 7], None), 200, None, None),
    ("count 4294967295, past the real end", "huge.avi", CLAIMS_HUGE, ("one", 9), 400, "frame_index",
     "the video ends after 8 of the 4294967295 frames"),
    ("64x64 header, 512x512 frames, all", "grow.avi", GROWING, ("frames", None, None), 413, "frames",
     "decodes to 512x512 px (its header says 64x64 px)"),
    ("64x64 header, 512x512 frames, edited", "grow.avi", GROWING, ("frames", None, [{"op": "rotate90", "k": 1}]),
     413, "frames", "UUSIC_MAX_DECODED_MB"),
    ("64x64 header, 512x512 frames, one late frame", "grow.avi", GROWING, ("one", 3), 413, "frame_index",
     "decodes to 512x512 px (its header says 64x64 px)"),
    ("64x64 header, the small frames", "grow.avi", GROWING, ("frames", [0, 1], None), 200, None, None),
    ("64x64 header, one big frame within budget", "grow.avi", GROWING, ("one", 2), 200, None, None),
    ("header promises 8, file holds 5", "cut.avi", truncated_avi(keep=5), ("frames", None, None), 200, None,
     None),
    ("20 real frames, all (max 16)", "twenty.dcm", cine_dicom(20), ("frames", None, None), 413, "frames",
     "the file has 20 frames (all asked for)"),
    ("20 real frames, 17 named", "twenty.dcm", cine_dicom(20), ("frames", list(range(17)), None), 413, "frames",
     "17 frames asked for"),
    ("20 real frames, 17 named as text", "twenty.dcm", cine_dicom(20),
     ("frames", ",".join(map(str, range(17))), None), 413, "frames", "17 frames asked for"),
    ("20 real frames, duplicates collapse", "twenty.dcm", cine_dicom(20), ("frames", [3] * 5000, None), 200, None,
     None),
    ("20 real frames, a negative frame", "twenty.dcm", cine_dicom(20), ("frames", [-1], None), 422, "frames",
     "out of range"),
    ("20 real frames, a 25-digit frame", "twenty.dcm", cine_dicom(20), ("frames", "0," + "9" * 25, None), 422,
     "frames", "out of range"),
    ("20 real frames, 16 named", "twenty.dcm", cine_dicom(20), ("frames", list(range(0, 32, 2))[:10], None), 200,
     None, None),
]


def _analyse(world, skeleton: dict, how: tuple):
    if how[0] == "one":
        return world["client"].post("/v1/predict", json=_seg(skeleton, frame_index=how[1]))
    body: dict = {"request": _seg(skeleton), "frames": how[1]}
    if how[2] is not None:
        body["edits"] = how[2]
    return world["client"].post("/v1/predict/frames", json=body)


@pytest.mark.parametrize("case", HOSTILE_ANALYSES, ids=[c[0] for c in HOSTILE_ANALYSES])
def test_hostile_cine_analyses_answer_4xx_or_the_frames_they_hold(world, case):
    _, name, data, how, status, field, fragment = case
    uploaded = _upload(world, data, name)
    assert uploaded.status_code == 200, uploaded.text
    response = _analyse(world, uploaded.json(), how)
    if status == 200:
        assert response.status_code == 200, response.text
        results = response.json().get("results", [response.json()])
        assert results and all("error" not in r or "ends after 5 of the 8" in r["error"] for r in results)
    else:
        _clear(world, response, status, fragment, field)
    _alive(world)


def test_a_remuxed_upload_states_the_frames_it_really_holds(tmp_path: Path):
    """By default an upload is de-identified (re-muxed): a header claiming 4,294,967,295 frames is replaced by the
    frames the file holds, and "all frames" is then simply the real ones."""
    from core.samples import save_upload

    skeleton = save_upload(Settings(workspace=tmp_path / "ws", device="cpu"), CLAIMS_HUGE, "huge.avi")
    assert skeleton["frame_count"] == 8


def test_a_video_whose_header_lies_about_its_size_is_counted_at_its_real_size(world):
    settings = Settings(max_decoded_mb=MAX_DECODED_MB)
    assert probe_frames(GROWING, name="grow.avi").as_dict()["width"] == 64  # what the header says
    assert [f.rgb.shape[0] for f in decode_frames(GROWING, [0, 1, 2], settings=settings)] == [64, 64, 512]
    with pytest.raises(RequestError) as error:
        list(decode_frames(GROWING, [0, 4], settings=settings, name="grow.avi"))
    assert (error.value.status_code, error.value.field) == (413, "frames")
    assert "the frame at index 3 decodes to 512x512 px (its header says 64x64 px)" in error.value.message
    check_budget(5, 64, 64, MAX_FRAMES, MAX_DECODED_MB)  # the header alone passes: only decoding shows the truth
    with pytest.raises(RequestError, match="UUSIC_MAX_DECODED_MB") as error:
        load_image(GROWING, frame_index=4, settings=settings, name="grow.avi")
    assert error.value.field == "frame_index"
    assert load_image(GROWING, frame_index=4, name="grow.avi").rgb.shape == (512, 512, 3)  # the default budget


def test_a_huge_frame_count_builds_no_list():
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as error:
            parse_frames(None, HUGE, max_frames=300)
        with pytest.raises(RequestError):
            parse_frames("all", HUGE, max_frames=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000 and error.value.status_code == 413 and error.value.field == "frames"
    assert "4,294,967,295 frames" in error.value.message
    assert parse_frames([0, HUGE - 1], HUGE, max_frames=300) == [0, HUGE - 1]  # named frames: the decoder bounds
    with pytest.raises(RequestError, match="nothing to analyse"):
        parse_frames(None, 0, max_frames=300)
    info = probe_frames(CLAIMS_HUGE, name="huge.avi")
    assert info.frame_count == HUGE  # the claim is reported, never materialised
    with pytest.raises(ImageError, match="ends after 8 of the 4294967295 frames"):
        load_image(CLAIMS_HUGE, frame_index=8, name="huge.avi")


def test_tiff_pages_are_checked_and_counted_at_their_own_size():
    data = multipage_tiff()  # page 1 is 16x16, page 2 is 600x600
    assert probe_frames(data, name="t.tif").width == 16
    with pytest.raises(ImageError, match=r"t\.tif frame 2 is 600x600"):
        load_image(data, frame_index=1, settings=Settings(max_image_pixels=100_000), name="t.tif")
    with pytest.raises(RequestError, match="UUSIC_MAX_DECODED_MB") as error:
        list(decode_frames(data, [0, 1], settings=Settings(max_decoded_mb=1), name="t.tif"))
    assert error.value.status_code == 413
    assert [f.rgb.shape[0] for f in decode_frames(data, [0, 1], name="t.tif")] == [16, 600]


def test_multiframe_dicom_frames_are_counted_against_the_budget():
    data = cine_dicom(12, size=(256, 256))  # 196,608 RGB bytes a frame: 5 fit in 1 MB, 6 do not
    assert len(list(decode_frames(data, range(5), settings=Settings(max_decoded_mb=1)))) == 5
    with pytest.raises(RequestError, match="the frame at index 5 decodes to 256x256 px; the frames") as error:
        list(decode_frames(data, range(6), settings=Settings(max_decoded_mb=1), name="loop.dcm"))
    assert error.value.status_code == 413


# ------------------------------------------------------------------------------------------------ class 6: headers
# (id, builder) — a DICOM whose own spacing is outside the band: stored without it, with a note, and analysable.
HEADER_SPACINGS = [
    ("PixelSpacing 0.005", lambda: cine_dicom(1, spacing=0.005), "0.005 mm per pixel"),
    ("PixelSpacing 5", lambda: cine_dicom(1, spacing=5), "gives 5 mm per pixel"),
    ("PixelSpacing 0", lambda: cine_dicom(1, spacing=0.777).replace(b"0.777\\0.777", b"0    \\0    "),
     "gives 0 mm per pixel"),
    ("PixelSpacing negative", lambda: cine_dicom(1, spacing=-0.3), "gives -0.3 mm per pixel"),
    ("PixelSpacing NaN", lambda: cine_dicom(1, spacing=0.777).replace(b"0.777\\0.777", b"nan  \\nan  "),
     "gives nan mm per pixel"),
    ("PixelSpacing inf", lambda: cine_dicom(1, spacing=0.777).replace(b"0.777\\0.777", b"inf  \\inf  "),
     "gives inf mm per pixel"),
    ("PixelSpacing 2.0001", lambda: cine_dicom(1, spacing=2.0001), "gives 2.0001 mm per pixel"),
    ("regions 0.0005 cm", lambda: cine_dicom(1, spacing=None, regions_cm=0.0005), "0.005 mm per pixel"),
    ("regions 0.5 cm", lambda: cine_dicom(1, spacing=None, regions_cm=0.5), "gives 5 mm per pixel"),
    ("cine PixelSpacing 0.005", lambda: cine_dicom(4, spacing=0.005), "0.005 mm per pixel"),
]


@pytest.mark.parametrize("case", HEADER_SPACINGS, ids=[c[0] for c in HEADER_SPACINGS])
def test_an_implausible_header_spacing_is_dropped_and_the_upload_stays_analysable(world, case):
    _, build, fragment = case
    uploaded = _upload(world, build(), "spacing.dcm")
    assert uploaded.status_code == 200, uploaded.text
    skeleton = uploaded.json()
    assert "pixel_spacing_mm" not in skeleton and "pixel_spacing_source" not in skeleton
    assert fragment in skeleton["pixel_spacing_note"] and calibration.band_text() in skeleton["pixel_spacing_note"]
    answer = world["client"].post("/v1/predict", json=_seg(skeleton))
    assert answer.status_code == 200, answer.text
    assert answer.json()["pixel_spacing_mm"] is None and answer.json().get("pixel_spacing_source") is None
    assert answer.json()["pixel_spacing_note"] == skeleton["pixel_spacing_note"]  # echoed with the answer
    if skeleton["frame_count"] > 1:  # the kept container is decoded again: its loader says the same
        assert any(fragment in note and "implausible" in note for note in answer.json()["notes"])
        frames = world["client"].post("/v1/predict/frames", json={"request": _seg(skeleton)})
        assert frames.status_code == 200 and frames.json()["summary"]["area_mm2"] is None, frames.text
    segment = world["client"].post("/segment/", json=_seg(skeleton))
    assert segment.status_code == 200, segment.text


def test_the_band_edges_are_the_same_at_every_source(tiny_settings: Settings):
    for value, plausible in ((0.01, True), (2.0, True), (0.0099, False), (2.0001, False), (0.3, True)):
        loaded = load_image(cine_dicom(1, spacing=value))
        assert (loaded.pixel_spacing_mm is not None) is plausible, value
        skeleton = save_upload(tiny_settings, cine_dicom(1, spacing=value), "edge.dcm")
        assert ("pixel_spacing_mm" in skeleton) is plausible and ("pixel_spacing_note" in skeleton) is not plausible
        assert (calibration.header_spacing(value, "x")[0] is not None) is plausible
        request = {"img_path_relative": "a.png", "task": "segmentation", "dataset_name": "DDTI",
                   "pixel_spacing_mm": value}
        if plausible:
            assert PredictRequest.parse(request).pixel_spacing_mm == value
        else:
            with pytest.raises(RequestError) as error:
                PredictRequest.parse(request)
            assert error.value.field == "pixel_spacing_mm" and BAND in error.value.message


def test_the_band_is_defined_once():
    """No module but core.calibration states the band (its numbers or its own constant)."""
    for path in sorted((PROJECT_ROOT / "core").rglob("*.py")) + sorted((PROJECT_ROOT / "pages").rglob("*.py")):
        if path.name == "calibration.py" and path.parent.name == "core":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(MIN|MAX)_PIXEL_SPACING_MM\s*=", text), path
        assert "spacing > 2" not in text and "spacing <= 0" not in text, path


def test_a_ground_truth_spacing_outside_the_band_is_dropped_from_the_sample(world):
    sample = random_sample(world["settings"].data_root, "segmentation", "DDTI")
    assert sample is not None and "pixel_spacing_mm" not in sample
    assert "ground_truth.json's pixel_spacing_mm gives 0.005 mm per pixel" in sample["pixel_spacing_note"]
    numeric_text = random_sample(world["settings"].data_root, "classification", "BUSI")
    assert numeric_text is not None and "gives 5 mm per pixel" in numeric_text["pixel_spacing_note"]
    for route, door in (("/random_sample/", "/segment/"), ("/v1/random-sample", "/v1/predict")):
        got = world["client"].get(route, params={"task": "segmentation", "dataset_name": "DDTI"})
        assert got.status_code == 200 and "pixel_spacing_mm" not in got.json(), got.text
        assert "pixel_spacing_note" in got.json()
        answer = world["client"].post(door, json=got.json())
        assert answer.status_code == 200, answer.text


# ------------------------------------------------------------------------------------------------ class 6: requests
# (id, raw JSON text of the value, fragment of the message)
USER_SPACINGS = [
    ("0.005", "0.005", BAND),
    ("5", "5", BAND),
    ("0", "0", BAND),
    ("negative", "-0.3", BAND),
    ("2.0001", "2.0001", BAND),
    ("1e308", "1e308", BAND),
    ("NaN", "NaN", "pixel_spacing_mm"),
    ("-Infinity", "-Infinity", "pixel_spacing_mm"),
    ("true", "true", "not true/false"),
]
DOORS = ["predict", "predict envelope", "segment", "frames", "batch"]


def _post_raw(world, door: str, request: dict, raw: str):
    """``request`` with ``"pixel_spacing_mm": raw`` spliced in as JSON text (NaN / Infinity are not JSON values)."""
    text = json.dumps(request)[:-1] + f', "pixel_spacing_mm": {raw}}}'
    body = {"predict": text, "segment": text, "predict envelope": f'{{"request": {text}}}',
            "frames": f'{{"request": {text}, "frames": [0]}}', "batch": f'{{"requests": [{text}]}}'}[door]
    route = {"predict": "/v1/predict", "predict envelope": "/v1/predict", "segment": "/segment/",
             "frames": "/v1/predict/frames", "batch": "/v1/predict/batch"}[door]
    return world["client"].post(route, content=body.encode(), headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def cine_skeleton(world) -> dict:
    uploaded = _upload(world, cine_dicom(3, spacing=None), "loop.dcm")
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", USER_SPACINGS, ids=[c[0] for c in USER_SPACINGS])
def test_a_user_spacing_outside_the_band_is_refused_at_every_door(world, cine_skeleton, case, door):
    _, raw, fragment = case
    request = _seg(cine_skeleton) if door == "frames" else world["seg"]
    response = _post_raw(world, door, request, raw)
    if door == "batch":  # one failure per request, in order; the call itself answers
        assert response.status_code == 200, response.text
        failure = response.json()["results"][0]
        assert failure["status_code"] == 422 and failure["field"] == "pixel_spacing_mm", failure
        assert fragment in failure["error"]
    else:
        _clear(world, response, 422, fragment, "pixel_spacing_mm")
    _alive(world)


def test_a_user_spacing_inside_the_band_is_used_at_every_door(world, cine_skeleton):
    for door in DOORS:
        request = _seg(cine_skeleton) if door == "frames" else world["seg"]
        response = _post_raw(world, door, request, "0.25")
        assert response.status_code == 200, (door, response.text)
        body = response.json()
        item = body["results"][0] if "results" in body else body
        assert item.get("pixel_spacing_mm", 0.25) == pytest.approx(0.25), (door, item)


# ------------------------------------------------------------------------------------------------ the CLI
def _cli(world, monkeypatch, capsys, tmp_path: Path, entries: list, *extra: str) -> tuple[int, str, Path]:
    from core.cli import predict_main

    settings = world["settings"]
    for key, value in (("UUSIC_WORKSPACE", settings.workspace), ("UUSIC_WEIGHTS_DIR", settings.weights_dir),
                       ("UUSIC_MODEL", "tiny"), ("UUSIC_MAX_FRAMES", MAX_FRAMES),
                       ("UUSIC_MAX_DECODED_MB", MAX_DECODED_MB)):
        monkeypatch.setenv(key, str(value))
    (tmp_path / "in.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    code = predict_main(["--input-json", str(tmp_path / "in.json"), "--input-dir", str(tmp_path / "root"),
                         "--output-dir", str(out), "--device", "cpu", "--no-progress", "--no-record", *extra])
    return code, capsys.readouterr().err, out


def test_the_cli_uses_the_same_band_and_budgets(world, monkeypatch, capsys, tmp_path: Path):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "still.png").write_bytes(_png())
    (root / "imgs" / "fine.dcm").write_bytes(cine_dicom(1, spacing=0.005))
    (root / "imgs" / "huge.avi").write_bytes(CLAIMS_HUGE)
    (root / "imgs" / "grow.avi").write_bytes(GROWING)
    seg = {"task": "segmentation", "dataset_name": "DDTI"}
    entries = [{**seg, "img_path_relative": "imgs/still.png", "pixel_spacing_mm": 0.005},
               {**seg, "img_path_relative": "imgs/still.png", "pixel_spacing_mm": 5},
               {**seg, "img_path_relative": "imgs/fine.dcm"},
               {**seg, "img_path_relative": "imgs/still.png", "pixel_spacing_mm": 0.5}]
    code, err, out = _cli(world, monkeypatch, capsys, tmp_path, entries)
    assert code == 0 and "Traceback" not in err, err  # invalid entries are skipped with a warning (by design)
    assert err.count(BAND) == 2 and err.count("skipped invalid entry imgs/still.png: invalid request: "
                                              "pixel_spacing_mm") == 2, err
    assert len(list(out.rglob("*.png"))) == 2  # the header-spacing DICOM and the plausible request: analysed

    frames = [{**seg, "img_path_relative": "imgs/huge.avi"}, {**seg, "img_path_relative": "imgs/grow.avi"}]
    code, err, out = _cli(world, monkeypatch, capsys, tmp_path, frames, "--frames", "all")
    assert code == 1 and "Traceback" not in err, err
    huge, grow = json.loads((out / "frames.json").read_text())
    assert huge["error_type"] == "RequestError" and "4,294,967,295 frames" in huge["error"], huge
    assert grow["error_type"] == "RequestError" and "its header says 64x64 px" in grow["error"], grow
