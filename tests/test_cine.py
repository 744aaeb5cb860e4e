"""Cine loops (issue 11 part 1): multi-frame DICOM and video input, one frame or all of them, bounded by settings;
uploads keep the container; analyze_frames records one row per frame under one batch id and summarises the loop."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import serve_api
from PIL import Image

from core import catalog
from core.cine import CineResult, parse_frames, summarize
from core.errors import ImageError, RequestError
from core.imaging import decode_frames, load_image, probe_frames
from core.response import AnalysisFailure, AnalysisResponse
from core.samples import save_upload
from core.service import AnalysisService
from core.settings import BUNDLED_SAMPLES, PROJECT_ROOT, Settings
from tests import tolerances

av = pytest.importorskip("av")
DEMO_PRESENT = (Settings().weights_dir / "models.json").is_file()
CAMUS = sorted((BUNDLED_SAMPLES / "segmentation" / "CAMUS" / "imgs").glob("*.jpg"))
LOOP = [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]  # which CAMUS sample each of the 10 frames shows


# ------------------------------------------------------------------------------------------------ builders
def dicom_bytes(frames: list[np.ndarray], *, spacing: float | None = 0.3, frame_time_ms: float = 40.0,
                deflated: bool = False) -> bytes:
    """A multi-frame 8-bit MONOCHROME2 ultrasound DICOM of ``frames`` (H x W uint8 each)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("cine", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = len(frames)
    ds.FrameTime = frame_time_ms
    if spacing:
        ds.PixelSpacing = [spacing, spacing]
    ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def camus_frames() -> list[np.ndarray]:
    stills = [np.asarray(Image.open(path).convert("L")) for path in CAMUS]
    return [stills[i] for i in LOOP]


def disk(radius: float, size: tuple[int, int] = (96, 128), centre: tuple[float, float] | None = None) -> np.ndarray:
    height, width = size
    cy, cx = centre or (height / 2, width / 2)
    yy, xx = np.mgrid[0:height, 0:width]
    return np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, 220, 25).astype(np.uint8)


def video_bytes(frames: list[np.ndarray], *, fmt: str = "mp4", fps: int = 10) -> bytes:
    """A short video (mpeg4 in MP4 / MOV / AVI / MKV, or VP8 in WebM) of gray ``frames``."""
    codec = "libvpx" if fmt == "webm" else "mpeg4"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska" if fmt == "mkv" else fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"} if codec == "mpeg4" else {}
        for gray in frames:
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[:, :, None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


RADII = [10, 16, 22, 28, 34, 28, 22, 16]  # an animated disk: largest at frame 4, smallest at frame 0


def disk_video(fmt: str = "mp4") -> bytes:
    return video_bytes([disk(r) for r in RADII], fmt=fmt)


def truncated_avi(keep: int) -> bytes:
    """The 8-frame disk video as AVI, cut after its ``keep``-th frame: the header still promises 8."""
    data = video_bytes([disk(r) for r in RADII], fmt="avi")
    movi = data.index(b"movi")
    chunks = [i for i in range(movi, len(data) - 4) if data[i:i + 4] == b"00dc"]
    return data[:chunks[keep]]


def _request(skeleton: dict, dataset: str = "DDTI", **extra) -> dict:
    return {**skeleton, "task": "segmentation", "dataset_name": dataset, **extra}


# ------------------------------------------------------------------------------------------------ decoding
def test_multiframe_dicom_decodes_the_requested_frame_only():
    frames = [np.full((40, 48), 10 * (i + 1), np.uint8) for i in range(10)]
    data = dicom_bytes(frames)
    for index in (0, 3, 9):
        image = load_image(data, frame_index=index, name="loop.dcm")
        assert int(image.rgb[5, 5, 0]) == 10 * (index + 1)
        assert (image.frame_index, image.frame_count, image.fps, image.pixel_spacing_mm) == (index, 10, 25.0, 0.3)
        assert image.notes[0] == f"DICOM has 10 frames; this is frame {index + 1} of 10"  # no "frame 1 used"
    assert "frame 1 used" in load_image(data).notes[0]  # not chosen: still said
    info = probe_frames(data, name="loop.dcm")
    assert info.as_dict() == {"frame_count": 10, "fps": 25.0, "width": 48, "height": 40, "format": "dicom"}
    with pytest.raises(RequestError) as error:
        load_image(data, frame_index=10, name="loop.dcm")
    assert error.value.field == "frame_index" and "loop.dcm has 10 frame(s) (0..9)" in error.value.message
    assert [int(f.rgb[0, 0, 0]) for f in decode_frames(data, [7, 2, 7])] == [30, 80]  # one parse, frame order


def test_deflated_multiframe_dicom_reaches_a_later_frame_within_the_byte_budget():
    frames = [np.full((64, 64), 20 * i, np.uint8) for i in range(6)]
    data = dicom_bytes(frames, deflated=True)
    image = load_image(data, frame_index=4)
    assert int(image.rgb[0, 0, 0]) == 80 and image.frame_count == 6
    tight = Settings(max_decoded_mb=0)
    with pytest.raises(ImageError, match="UUSIC_MAX_DECODED_MB"):
        load_image(data, frame_index=4, settings=tight)


def test_still_images_are_frame_0_of_1(tiny_data_root: Path):
    path = tiny_data_root / "segmentation/DDTI/imgs/seg_0.png"
    image = load_image(path, frame_index=0)
    assert (image.frame_index, image.frame_count, image.fps, image.notes) == (0, 1, None, ())
    with pytest.raises(RequestError) as error:
        load_image(path, frame_index=1)
    assert error.value.field == "frame_index" and "seg_0.png has 1 frame(s) (only 0)" in error.value.message


@pytest.mark.parametrize("fmt", ["mp4", "mov", "avi", "webm", "mkv"])
def test_video_frames_decode_up_to_the_requested_one(fmt: str):
    if fmt == "webm" and "libvpx" not in av.codecs_available:
        pytest.skip("no VP8 encoder")
    data = disk_video(fmt)
    info = probe_frames(data, name=f"loop.{fmt}")
    assert (info.frame_count, info.width, info.height, info.format) == (8, 128, 96, fmt)
    assert info.fps == pytest.approx(10.0)
    for index, radius in enumerate(RADII):
        image = load_image(data, frame_index=index, name=f"loop.{fmt}")
        bright = int((image.rgb[..., 0] > 120).sum())
        assert bright == pytest.approx(math.pi * radius**2, rel=0.08), (index, radius)
        assert (image.frame_index, image.frame_count, image.format) == (index, 8, fmt)
    with pytest.raises(RequestError, match="out of range"):
        load_image(data, frame_index=8, name=f"loop.{fmt}")


def test_video_limits_bound_the_frames_decoded():
    data = disk_video()
    with pytest.raises(RequestError, match="UUSIC_MAX_FRAMES") as error:
        load_image(data, frame_index=5, settings=Settings(max_frames=4))
    assert error.value.field == "frame_index"
    assert load_image(data, frame_index=3, settings=Settings(max_frames=4)).frame_index == 3
    with pytest.raises(RequestError, match="UUSIC_MAX_DECODED_MB"):
        load_image(data, frame_index=1, settings=Settings(max_decoded_mb=0))


def test_a_file_named_like_a_video_that_is_not_one_is_refused_by_name():
    with pytest.raises(ImageError, match=r"clip\.mp4: not a readable video"):
        load_image(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64, name="clip.mp4")
    with pytest.raises(ImageError, match=r"scan\.mp4"):
        probe_frames(b"junk" * 40, name="scan.mp4")
    for playlist in (b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n", b"ffconcat version 1.0\nfile /etc/passwd\n"):
        with pytest.raises(ImageError, match="no MP4, MOV, AVI, WebM or MKV signature"):  # FFmpeg never guesses
            load_image(playlist, name="evil.mp4")


# ------------------------------------------------------------------------------------------------ uploads
def test_save_upload_keeps_cine_containers_and_original_dicoms(tiny_settings: Settings):
    tiny_settings = tiny_settings.with_(keep_identity=True)  # as uploaded (the default de-identifies: hostile3)
    loop = dicom_bytes([disk(r, (40, 48)) for r in (5, 9, 13)])
    skeleton = save_upload(tiny_settings, loop, "Patient loop 1.dcm")
    assert skeleton["img_path_relative"].startswith("api_in/Patient_loop_1-") and skeleton["img_format"] == "dcm"
    assert (tiny_settings.workspace / skeleton["img_path_relative"]).read_bytes() == loop  # the container itself
    assert skeleton["source_path_relative"] == skeleton["img_path_relative"]
    assert (skeleton["frame_count"], skeleton["fps"], skeleton["original_name"]) == (3, 25.0, "Patient loop 1.dcm")
    assert skeleton["img_dimensions"] == [48, 40] and skeleton["pixel_spacing_mm"] == 0.3

    video = disk_video()
    clip = save_upload(tiny_settings, video, "echo clip.mp4")
    assert clip["img_path_relative"].endswith(".mp4") and clip["frame_count"] == 8 and clip["fps"] == 10.0
    assert (tiny_settings.workspace / clip["img_path_relative"]).read_bytes() == video
    assert "source_path_relative" not in clip

    still = save_upload(tiny_settings, dicom_bytes([disk(9, (40, 48))]), "单帧.dcm")
    assert still["img_format"] == "png" and still["frame_count"] == 1 and still["fps"] is None
    assert still["source_path_relative"].endswith(".dcm") and still["original_name"] == "单帧.dcm"
    kept = tiny_settings.workspace / still["source_path_relative"]
    assert kept.read_bytes()[128:132] == b"DICM" and kept.name != Path(still["img_path_relative"]).name

    png = save_upload(tiny_settings, _png(disk(9)), "plain.png")
    assert png["frame_count"] == 1 and "source_path_relative" not in png and png["original_name"] == "plain.png"


def test_upload_errors_name_the_uploaded_file(tiny_settings: Settings):
    with pytest.raises(ImageError) as error:
        save_upload(tiny_settings, b"not an image at all", "my scan 7.png")
    assert error.value.message.startswith("my scan 7.png:") and "<upload>" not in error.value.message
    with pytest.raises(ImageError, match=r"^loop\.mp4: not a readable video"):
        save_upload(tiny_settings, b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 200, "../x/loop.mp4")


# ------------------------------------------------------------------------------------------------ the service
def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def test_analyze_frames_records_each_frame_under_one_batch(tiny_settings: Settings):
    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(disk_video(), "clip.mp4")
    assert service.probe(skeleton["img_path_relative"]) == {"frame_count": 8, "fps": 10.0, "width": 128,
                                                              "height": 96, "format": "mp4"}
    assert service.load_frame(skeleton["img_path_relative"], 4).shape == (96, 128, 3)
    seen: list[tuple[int, int]] = []
    result = service.analyze_frames(_request(skeleton), source="dashboard", progress=lambda d, t: seen.append((d, t)))
    assert [item.frame_index for item in result.items] == list(range(8)) and not result.failures
    assert {item.frame_count for item in result.items} == {8} and seen[-1] == (8, 8)
    assert len({item.mask_path for item in result.items}) == 8  # one mask per frame, none overwritten
    for item in result.items:
        mask = np.asarray(Image.open(item.mask_path)) > 127
        assert int(mask.sum()) == item.mask_area_px and mask.shape == (96, 128)
    summary = result.summary
    assert summary["frames"] == list(range(8)) and summary["frame_count"] == 8 and summary["fps"] == 10.0
    assert summary["area_px"] == [item.mask_area_px for item in result.items] and summary["area_mm2"] is None
    areas = summary["area_px"]
    assert summary["largest_frame"] == int(np.argmax(areas)) and summary["smallest_frame"] == int(np.argmin(areas))
    assert summary["ed_frame"] is None and summary["fractional_area_change"] is None  # DDTI is no cardiac view
    rows = service.runs({"source": "dashboard"})
    assert len(rows) == 8 and {row["batch_id"] for row in rows} == {result.batch_id}
    frames = sorted(service.run(row["id"])["request"]["frame_index"] for row in rows)
    assert frames == list(range(8))
    one = service.run(next(row["id"] for row in rows if service.run(row["id"])["request"]["frame_index"] == 4))
    assert np.array_equal(service.run_image(one["id"]), service.load_frame(skeleton["img_path_relative"], 4))
    # a single frame through analyze gives the same mask as that frame of the batch
    single = service.analyze(_request(skeleton, frame_index=4))
    assert single.frame_index == 4
    assert tolerances.number_close(single.mask_area_px, result.items[4].mask_area_px, atol=tolerances.MASK_FLIPS)
    assert json.loads(json.dumps(result.to_json()))["summary"] == summary


def test_analyze_frames_subset_edits_and_classification(tiny_settings: Settings):
    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(dicom_bytes([disk(r, (40, 48)) for r in (4, 8, 12, 16)]), "loop.dcm")
    edits = [{"op": "rotate90", "k": 1}]
    result = service.analyze_frames(_request(skeleton), frames=[3, 1], edits=edits)
    assert [item.frame_index for item in result.items] == [3, 1] and result.summary["frames"] == [3, 1]
    for item in result.items:
        assert (item.image_width, item.image_height) == (40, 48)  # turned
        assert item.get("source_path_relative") == skeleton["img_path_relative"]
        assert item.pixel_spacing_mm == 0.3  # the DICOM's spacing carried onto the edited frame, with its source
        assert item.get("pixel_spacing_source") == "dicom"
    assert result.summary["area_mm2"] == pytest.approx([a * 0.09 for a in result.summary["area_px"]])
    rows = service.runs()
    assert len(rows) == 2 and all(service.run(r["id"])["edits"] == edits for r in rows)
    cls = service.analyze_frames({**skeleton, "task": "classification", "dataset_name": "BUSI"}, frames="0,2")
    probabilities = cls.summary["probability"]
    assert len(probabilities) == 2 and all(len(p) == 2 and sum(p) == pytest.approx(1.0) for p in probabilities)
    assert cls.summary["area_px"] is None and cls.summary["largest_frame"] is None


def test_a_video_that_ends_before_its_promised_frames_fails_only_those_frames(tiny_settings: Settings):
    # kept as uploaded: de-identifying re-muxes the container, which would leave only the frames it holds
    service = AnalysisService(tiny_settings.with_(keep_identity=True), model="tiny")
    skeleton = service.save_upload(truncated_avi(keep=5), "cut.avi")
    assert service.probe(skeleton["img_path_relative"])["frame_count"] == 8  # the header's promise
    message = "cut.avi: the video ends after 5 of the 8 frames its header promises (frames 5..7 cannot be decoded)"
    for edits in (None, [{"op": "rotate90", "k": 1}]):
        result = service.analyze_frames(_request(skeleton), edits=edits)
        assert [item.frame_index for item in result.items] == list(range(8))
        assert [isinstance(item, AnalysisResponse) for item in result.items] == [True] * 5 + [False] * 3
        assert {failure.error for failure in result.failures} == {message}
        assert result.summary["failed"] == 3 and len(result.summary["area_px"]) == 8
    rows = service.runs()
    assert len(rows) == 16 and sum(1 for row in rows if row["error"] == message) == 6  # as the user named it
    with pytest.raises(ImageError) as raised:  # one frame through analyze: the same error, the user's file name
        service.analyze(_request(skeleton, frame_index=6))
    assert raised.value.message == message and service.runs()[0]["error"] == message
    with pytest.raises(ImageError, match="ends after 5 of the 8"):
        service.load_frame(skeleton["img_path_relative"], 6)
    assert service.load_frame(skeleton["img_path_relative"], 4).shape == (96, 128, 3)


def test_analyze_frames_refuses_bad_frames_and_limits(tiny_settings: Settings):
    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(dicom_bytes([disk(r, (40, 48)) for r in range(3, 13)]), "ten.dcm")
    with pytest.raises(RequestError) as error:
        service.analyze_frames(_request(skeleton), frames=[2, 10])
    assert error.value.field == "frames" and "0..9" in error.value.message
    with pytest.raises(RequestError) as error:
        service.analyze(_request(skeleton, frame_index=12))
    assert error.value.field == "frame_index"
    assert service.runs()[0]["error_type"] == "RequestError"  # the refused frame is recorded, service runs on
    limited = AnalysisService(tiny_settings.with_(max_frames=4), model="tiny")
    with pytest.raises(RequestError, match="UUSIC_MAX_FRAMES") as error:
        limited.analyze_frames(_request(skeleton))
    assert error.value.status_code == 413
    assert len(limited.analyze_frames(_request(skeleton), frames=[0, 5, 9]).responses) == 3
    tight = AnalysisService(tiny_settings.with_(max_decoded_mb=0), model="tiny")
    with pytest.raises(RequestError, match="UUSIC_MAX_DECODED_MB"):
        tight.analyze_frames(_request(skeleton), frames=[0])
    with pytest.raises(RequestError, match="frame numbers"):
        parse_frames("0,x", 10)


def test_summary_of_an_animated_disk_names_its_largest_and_smallest_frames():
    dataset = catalog.find_dataset("segmentation", "CAMUS")
    radii = [30, 34, 38, 34, 30, 26, 22, 26]  # end-diastole at frame 2, end-systole at frame 6
    items = [AnalysisResponse(task="segmentation", dataset_name="CAMUS", img_path_relative="api_in/a.dcm",
                              inference_time_sec=0.1, mask_area_px=round(math.pi * r * r), pixel_spacing_mm=0.5)
             for r in radii]
    items[5] = AnalysisFailure(error="x", error_type="ImageError", status_code=400)
    frames = list(range(10, 18))
    summary = summarize(items, frames, frame_count=40, fps=30.0, dataset=dataset)
    assert (summary["largest_frame"], summary["smallest_frame"]) == (12, 16)
    assert (summary["ed_frame"], summary["es_frame"]) == (12, 16)
    assert summary["fractional_area_change"] == pytest.approx(1 - round(math.pi * 484) / round(math.pi * 1444))
    assert summary["area_px"][5] is None and summary["failed"] == 1 and summary["analysed"] == 7
    assert summary["area_mm2"][2] == pytest.approx(round(math.pi * 1444) * 0.25)
    breast = summarize(items, frames, frame_count=40, fps=30.0, dataset=catalog.find_dataset("segmentation", "BUSI"))
    assert breast["largest_frame"] == 12 and breast["ed_frame"] is None and breast["fractional_area_change"] is None
    back = CineResult.from_json(json.loads(json.dumps(CineResult(items, summary, batch_id="b").to_json())))
    assert back.summary == summary and isinstance(back.items[5], AnalysisFailure) and len(back.responses) == 7


@pytest.mark.skipif(not DEMO_PRESENT or len(CAMUS) < 4, reason="demo weights or CAMUS samples not present")
def test_cardiac_loop_with_the_demo_model_gives_ed_es_and_fac(tmp_path: Path):
    """A 10-frame CAMUS cine DICOM: every frame's mask equals that of the same still image, and ED / ES / FAC
    follow from the largest / smallest left-ventricle area."""
    root = tmp_path / "data"
    (root / "cine").mkdir(parents=True)
    (root / "cine" / "camus_loop.dcm").write_bytes(dicom_bytes(camus_frames()))
    for index, path in enumerate(CAMUS):
        Image.open(path).convert("L").save(root / "cine" / f"still_{index}.png")
    service = AnalysisService(Settings(workspace=tmp_path / "ws", data_root=root, device="cpu", backend="torch"))
    base = {"task": "segmentation", "dataset_name": "CAMUS"}
    result = service.analyze_frames({**base, "img_path_relative": "cine/camus_loop.dcm"})
    stills = [service.analyze({**base, "img_path_relative": f"cine/still_{i}.png", "pixel_spacing_mm": 0.3})
              for i in range(len(CAMUS))]
    areas = [stills[i].mask_area_px for i in LOOP]
    assert result.summary["area_px"] == areas
    assert result.summary["area_mm2"] == pytest.approx([a * 0.09 for a in areas])
    assert result.summary["ed_frame"] == areas.index(max(areas)) == result.summary["largest_frame"]
    assert result.summary["es_frame"] == areas.index(min(areas)) == result.summary["smallest_frame"]
    assert result.summary["fractional_area_change"] == pytest.approx((max(areas) - min(areas)) / max(areas))
    assert 0 < result.summary["fractional_area_change"] < 1
    assert all(item.measurements["area_px"] == item.mask_area_px for item in result.responses)


# ------------------------------------------------------------------------------------------------ doors
def test_cine_over_a_real_api_server(tiny_settings: Settings, tmp_path: Path):
    from core.client import ApiClient
    from core.history import HistoryStore

    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace),
           "UUSIC_DATA_ROOT": str(tiny_settings.data_root), "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_MODEL": "tiny", "OMP_NUM_THREADS": "1", "UUSIC_MAX_FRAMES": "6"}
    with serve_api(env, tmp_path / "server.log", args=("--threads", "1")) as base:
        client = ApiClient(tiny_settings.with_(api_url=base))
        data = dicom_bytes([disk(r, (40, 48)) for r in (4, 7, 10, 13, 16, 13, 10, 7)])
        skeleton = client.save_upload(data, "server loop.dcm")
        assert skeleton["frame_count"] == 8 and skeleton["original_name"] == "server loop.dcm"
        assert client.probe(skeleton["img_path_relative"])["frame_count"] == 8
        frame = client.load_frame(skeleton["img_path_relative"], 4)
        assert frame.shape == (40, 48, 3) and np.array_equal(frame, load_image(data, frame_index=4).rgb)
        with pytest.raises(RequestError) as error:
            client.load_frame(skeleton["img_path_relative"], 8)
        assert error.value.field == "frame_index"
        with pytest.raises(RequestError, match="UUSIC_MAX_FRAMES"):
            client.analyze_frames(_request(skeleton))
        result = client.analyze_frames(_request(skeleton), frames=[0, 2, 4, 6])
        assert [item.frame_index for item in result.items] == [0, 2, 4, 6] and not result.failures
        assert result.summary["area_px"] == [item.mask_area_px for item in result.items]
        assert len({item.mask_url for item in result.items}) == 4
        assert client.mask_png(result.items[2]).startswith(b"\x89PNG")
        single = client.analyze(_request(skeleton, frame_index=6))
        assert (single.frame_index, single.frame_count) == (6, 8)
        assert tolerances.number_close(single.mask_area_px, result.items[3].mask_area_px, atol=tolerances.MASK_FLIPS)
        client.close()
    rows = HistoryStore.from_settings(tiny_settings).list(None)
    batch = [row for row in rows if row.get("batch_id") == result.batch_id]
    assert len(batch) == 4


def test_cli_predict_frames(tiny_settings: Settings, tmp_path: Path):
    root = tmp_path / "cine_root"
    (root / "loops").mkdir(parents=True)
    (root / "loops" / "clip.mp4").write_bytes(disk_video())
    (root / "loops" / "still.png").write_bytes(_png(disk(12)))
    entries = [{"img_path_relative": "loops/clip.mp4", "task": "segmentation", "dataset_name": "DDTI"},
               {"img_path_relative": "loops/still.png", "task": "segmentation", "dataset_name": "DDTI"}]
    (tmp_path / "in.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace), "UUSIC_WEIGHTS_DIR":
           str(tiny_settings.weights_dir), "UUSIC_MODEL": "tiny", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "core", "predict", "--input-json", str(tmp_path / "in.json"),
                           "--input-dir", str(root), "--output-dir", str(out), "--frames", "0,3,5", "--device", "cpu",
                           "--no-progress"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the still image has no frame 3: reported, the clip still done
    cines = json.loads((out / "frames.json").read_text())
    clip, still = cines
    assert clip["summary"]["frames"] == [0, 3, 5] and clip["summary"]["frame_count"] == 8
    assert [r["frame_index"] for r in clip["results"]] == [0, 3, 5]
    assert all((out / r["mask_path_relative"]).is_file() for r in clip["results"])
    assert still["error_type"] == "RequestError" and "0" in still["error"]
    assert "failed loops/still.png" in done.stderr


def test_cine_routes_answer_typed_errors(tiny_settings: Settings):
    from fastapi.testclient import TestClient

    from core.api import create_app

    with TestClient(create_app(tiny_settings.with_(default_model="tiny"))) as client:
        data = disk_video()
        skeleton = client.post("/v1/upload", files={"file": ("echo loop.mp4", data, "video/mp4")}).json()
        assert skeleton["frame_count"] == 8 and skeleton["original_name"] == "echo loop.mp4"
        info = client.get("/v1/frames/info", params={"path": skeleton["img_path_relative"]}).json()
        assert info == {"frame_count": 8, "fps": 10.0, "width": 128, "height": 96, "format": "mp4"}
        png = client.get("/v1/frames", params={"path": skeleton["img_path_relative"], "index": 7})
        assert png.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")),
                              load_image(data, frame_index=7).rgb)
        late = client.get("/v1/frames", params={"path": skeleton["img_path_relative"], "index": 9})
        assert late.status_code == 422 and late.json()["field"] == "frame_index"
        outside = client.get("/v1/frames", params={"path": "../secret.dcm", "index": 0})
        assert outside.status_code == 403 and "/" + str(tiny_settings.workspace) not in outside.text
        bare = client.post("/v1/predict/frames", json={"frames": [0]})
        assert bare.status_code == 422 and bare.json()["field"] == "request"
        wrong = client.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": "first"})
        assert wrong.status_code == 422 and wrong.json()["field"] == "frames"
        bad_edit = client.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": [1],
                                                           "edits": [{"op": "melt"}]})
        assert bad_edit.status_code == 422 and bad_edit.json()["field"] == "edits[0]"
        done = client.post("/v1/predict/frames", json={"request": _request(skeleton), "frames": [6, 1]}).json()
        assert [r["frame_index"] for r in done["results"]] == [6, 1] and done["summary"]["frames"] == [6, 1]
        assert all(r["run_id"] for r in done["results"])
