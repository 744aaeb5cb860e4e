"""Hostile-input table II (issue 13, part A): inputs, limits, API. One table per class, each case checked for the
answer (a 4xx with a clear message — never a 500 — or success with a note), no server path in what the client sees,
and the server still answering afterwards.

1. memory bombs (peak RSS of a decoding subprocess)   5. mask files never collide
2. malformed DICOM tags, paths, nested JSON, spacing  6. workspace faults (CLI one line, API 5xx without paths)
3. streamed (chunked) body limits, TestClient + uvicorn  7. slow / stalled clients against a real uvicorn
4. content types (cross-site) and the Host allow-list   8. history rows: extras stored once, 16 KiB cap
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, serve_api
from fastapi.testclient import TestClient
from PIL import Image

from core.api import create_app
from core.errors import HistoryError, ImageError, PathError, RequestError, UUSICError
from core.imaging import load_image
from core.paths import mask_relative_path, output_path, resolve_input
from core.schema import MAX_EXTRAS_BYTES, MAX_JSON_DEPTH, PredictRequest, json_depth_exceeds, loads_json
from core.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # the malformed DICOMs are on purpose
SEG = {"task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"}
CLS = {"task": "classification", "dataset_name": "BUSI", "organ": "Breast"}
OK, BAD = "ok", "bad"
# eager torch where the deployment offers other backends: these tests are about inputs, not inference speed
TORCH_ONLY = {"backend": "torch"} if "backend" in Settings.model_fields else {}
SERVER_ENV_EXTRA = {"UUSIC_BACKEND": "torch"}
HEAD_TIMEOUT_S = 3.0  # the live server's request-head deadline (UUSIC_HEAD_TIMEOUT_S; 10 s by default)


# ------------------------------------------------------------------------------------------------ builders
def _png(w: int = 40, h: int = 30, *, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(rows: int = 24, cols: int = 32, *, syntax: str | None = None, pixels: bytes | None = None,
           frames: int | None = None, bits: int = 8, samples: int = 1, photometric: str = "MONOCHROME2",
           edit=None, patch: dict[bytes, bytes] | None = None, **tags) -> bytes:
    """A small ultrasound DICOM; ``edit(ds)`` changes the data set, ``patch`` replaces placeholder bytes in the
    written file (how a malformed text value that pydicom refuses to write gets in)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    meta.MediaStorageSOPInstanceUID = "2.25.1"  # fixed: a random UID may hold a ``patch`` placeholder's digits
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames:
        ds.NumberOfFrames = frames
    if pixels is None:
        dtype = np.uint8 if bits == 8 else np.uint16
        pixels = (np.arange(rows * cols * samples * (frames or 1)) % 200).astype(dtype).tobytes()
    ds.PixelData = pixels
    for key, value in tags.items():
        setattr(ds, key, value)
    if edit is not None:
        edit(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for old, new in (patch or {}).items():
        assert data.count(old) == 1 and len(old) == len(new), old
        data = data.replace(old, new)
    return data


def _deflated(**kwargs) -> bytes:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    return _dicom(syntax=DeflatedExplicitVRLittleEndian, **kwargs)


def _jpeg_dicom(jpeg_size: tuple[int, int], rows: int = 48, cols: int = 64) -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    w, h = jpeg_size
    buffer = io.BytesIO()
    Image.fromarray((np.arange(h * w * 3) % 250).astype(np.uint8).reshape(h, w, 3)).save(buffer, "JPEG")
    return _dicom(rows, cols, syntax=JPEGBaseline8Bit, samples=3, photometric="YBR_FULL_422",
                  pixels=encapsulate([buffer.getvalue()]))


def _nested_sequences(depth: int) -> bytes:
    base = _dicom()
    at = base.index(b"\x08\x00\x60\x00")  # Modality: the data set's first element
    open_ = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return base[:at] + open_ * depth + close * depth + base[at:]


def _palette(ds) -> None:
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (np.arange(256, dtype=np.uint16) * 257).tobytes())


def _region(ux=3, uy=3, dx=0.01, dy=0.01):
    from pydicom.dataset import Dataset

    region = Dataset()
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = ux, uy
    region.PhysicalDeltaX, region.PhysicalDeltaY = dx, dy
    return region


def _set(keyword, value):
    return lambda ds: setattr(ds, keyword, value)


def _multi(keyword, values):
    def edit(ds):
        ds[keyword].value = values
    return edit


def _regions_as_bytes(ds) -> None:
    ds.add_new(0x00186011, "OB", b"\x01\x02\x03\x04")  # SequenceOfUltrasoundRegions, but not a sequence


# ------------------------------------------------------------------------------------------------ world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo model in-process: settings, engine, TestClient, a good segmentation and classification request."""
    from core.engine import Engine

    parent = tmp_path_factory.mktemp("hostile2")
    data = parent / "data"
    for rel, seed in (("segmentation/DDTI/imgs/a.png", 1), ("classification/BUSI/imgs/c.png", 2),
                      ("left/x.png", 3), ("right/x.png", 4)):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(_png(48, 40, seed=seed))
    settings = Settings(workspace=parent / "ws", data_root=data, device="cpu", **TORCH_ONLY)
    settings.ensure_workspace()
    engine = Engine(settings, device="cpu")
    with TestClient(create_app(settings, engine=engine)) as client:
        yield {"parent": parent, "settings": settings, "engine": engine, "client": client,
               "seg": {**SEG, "img_path_relative": "segmentation/DDTI/imgs/a.png"},
               "cls": {**CLS, "img_path_relative": "classification/BUSI/imgs/c.png"}}


def _alive(world) -> None:
    response = world["client"].post("/v1/predict", json=world["seg"])
    assert response.status_code == 200, response.text


def _no_server_paths(world, text: str) -> None:
    assert str(world["parent"]) not in text and "/tmp/" not in text, text


# ================================================================================= 1. memory bombs
MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from core.imaging import load_image
    from core.errors import ImageError

    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])
    load_image(Path(sys.argv[2]).read_bytes())  # warm-up: lazy imports, allocator arenas
    data = Path(sys.argv[1]).read_bytes()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    base = kib("VmRSS")
    try:
        image = load_image(data)
        result = {"ok": True, "shape": list(image.rgb.shape), "notes": list(image.notes)}
    except ImageError as exc:
        result = {"ok": False, "error": exc.message, "status": exc.status_code}
    result["peak_growth_mb"] = (kib("VmHWM") - base) / 1024
    print(json.dumps(result))
""")


def _png16(n: int) -> bytes:
    values = (np.add.outer(np.arange(n), np.arange(n)) * 7 % 65536).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def _huge_header_deflated() -> bytes:
    # a 40 MB private element before the pixel data: the header alone would inflate past the header cap
    return _deflated(edit=lambda ds: ds.add_new(0x00091010, "OB", bytes(40_000_000)))


# (id, builder, expectation): ("bad", message fragment) or ("ok", note fragment or None); every case must stay
# well under 150 MB of peak RSS growth (release 2 took 0.3-1.2 GB for these files)
MEMORY_CASES = [
    ("deflated_excess_pixel_data", lambda: _deflated(rows=32, cols=32, pixels=bytes(400_000_000)),
     (BAD, "more than the 1 frame(s)")),
    ("deflated_many_frames", lambda: _deflated(rows=64, cols=64, frames=40_000, pixels=bytes(64 * 64 * 40_000)),
     (OK, "40000 frames; frame 1 used")),
    ("deflated_huge_header", _huge_header_deflated, (BAD, "header is larger than")),
    ("deflated_declared_side_too_long", lambda: _deflated(rows=20_000, cols=20_000, pixels=bytes(2)),
     (BAD, "largest side allowed")),
    ("deflated_declared_too_many_px", lambda: _deflated(rows=16_000, cols=16_000, pixels=bytes(2)),
     (BAD, "more than the 64,000,000 allowed")),
    ("deflated_frame_over_byte_budget", lambda: _deflated(rows=7000, cols=7000, samples=3, bits=16,
                                                          photometric="RGB", pixels=bytes(2)),
     (BAD, "at most")),
    ("png16_3000x3000", lambda: _png16(3000), (OK, None)),
    ("png16_declared_16000", lambda: _bomb_png(16_000, 16_000), (BAD, "decompression bomb")),
]


@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c[0] for c in MEMORY_CASES])
def test_memory_bomb(case, tmp_path: Path):
    name, build, expect = case
    path, warm = tmp_path / f"{name}.bin", tmp_path / "warm.dcm"
    data = build()
    path.write_bytes(data)
    warm.write_bytes(_deflated())
    assert len(data) < 2_000_000  # a small upload...
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), str(warm)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(name, result)
    assert result["peak_growth_mb"] < 150, result  # ...must not make the server allocate hundreds of MB
    if expect[0] == OK:
        assert result["ok"], result
        assert expect[1] is None or any(expect[1] in note for note in result["notes"]), result
    else:
        assert not result["ok"] and 400 <= result["status"] < 500 and expect[1] in result["error"], result


def test_sixteen_bit_conversion_is_identical_to_release_2_and_chunked():
    """The chunked conversion keeps release 2's float64 arithmetic per value: identical 8-bit output."""
    from core.imaging import _to_uint8_chunked, to_uint8, to_uint8_channels

    rng = np.random.default_rng(0)
    ramp = rng.integers(0, 65535, (2100, 700)).astype(np.uint16)  # several row blocks
    lo, hi = float(ramp.min()), float(ramp.max())
    expected = np.clip(np.rint((ramp.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(ramp), expected)
    floats = rng.normal(size=(300, 50)) * 100
    floats[0, 0], floats[1, 1] = np.nan, np.inf  # non-finite values count as 0
    clean = np.where(np.isfinite(floats), floats, 0.0)
    want = np.clip(np.rint((clean - clean.min()) * (255.0 / (clean.max() - clean.min()))), 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(floats), want)
    twelve = rng.integers(0, 4096, (64, 48, 3)).astype(np.uint16)
    assert np.array_equal(to_uint8_channels(twelve),
                          np.clip(np.rint(twelve * (255.0 / 4095)), 0, 255).astype(np.uint8))
    assert to_uint8(np.array([[0.0, 0.5], [1.0, 0.25]])).tolist() == [[0, 128], [255, 64]]
    assert _to_uint8_chunked(np.zeros((3, 0))).shape == (3, 0)


# ================================================================================= 2. malformed inputs
# (id, filename, bytes, expectation): ("bad", fragment) → ImageError 400 from the decoder and 4xx from /v1/upload;
# ("ok", note fragment or None) → decoded, the note in LoadedImage.notes
DICOM_CASES = [
    ("rows_multi_valued", "a.dcm", lambda: _dicom(edit=_multi("Rows", [24, 24])), (BAD, "Rows has 2 values")),
    ("columns_multi_valued", "a.dcm", lambda: _dicom(edit=_multi("Columns", [32, 32, 32])),
     (BAD, "Columns has 3 values")),
    ("rows_missing", "a.dcm", lambda: _dicom(edit=lambda ds: delattr(ds, "Rows")), (BAD, "has no pixels")),
    ("frames_text", "a.dcm", lambda: _dicom(NumberOfFrames="7771", patch={b"7771": b"abc "}),
     (BAD, "NumberOfFrames is 'abc', not a whole number")),
    ("frames_fraction", "a.dcm", lambda: _dicom(NumberOfFrames="7771", patch={b"7771": b"1.5 "}),
     (BAD, "NumberOfFrames is '1.5'")),
    ("frames_zero", "a.dcm", lambda: _dicom(NumberOfFrames="7771", patch={b"7771": b"0   "}),
     (BAD, "NumberOfFrames is 0")),
    ("frames_negative", "a.dcm", lambda: _dicom(NumberOfFrames="7771", patch={b"7771": b"-3  "}),
     (BAD, "NumberOfFrames is -3")),
    ("frames_multi_valued", "a.dcm", lambda: _dicom(NumberOfFrames="7771", patch={b"7771": b"1\\2 "}),
     (BAD, "NumberOfFrames has 2 values")),
    ("samples_7", "a.dcm", lambda: _dicom(edit=_set("SamplesPerPixel", 7)), (BAD, "SamplesPerPixel 7")),
    ("bits_12", "a.dcm", lambda: _dicom(edit=_set("BitsAllocated", 12)), (BAD, "BitsAllocated 12")),
    ("bits_missing", "a.dcm", lambda: _dicom(edit=lambda ds: delattr(ds, "BitsAllocated")),
     (BAD, "no BitsAllocated")),
    ("window_center_text", "a.dcm", lambda: _dicom(WindowCenter="7772", WindowWidth="40",
                                                   patch={b"7772": b"abc "}),
     (OK, "display window was ignored")),
    ("window_center_multi_text", "a.dcm", lambda: _dicom(WindowCenter="7772", WindowWidth="40",
                                                         patch={b"7772": b"x\\y "}),
     (OK, "display window was ignored")),
    ("window_width_zero", "a.dcm", lambda: _dicom(WindowCenter="100", WindowWidth="0"), (OK, "WindowWidth is 0")),
    ("window_width_negative", "a.dcm", lambda: _dicom(WindowCenter="100", WindowWidth="-5"),
     (OK, "WindowWidth is -5")),
    ("window_function_bogus", "a.dcm", lambda: _dicom(WindowCenter="100", WindowWidth="50", VOILUTFunction="BOGUS"),
     (OK, "stored values were shown")),
    ("window_valid", "a.dcm", lambda: _dicom(bits=16, WindowCenter="100", WindowWidth="50"), (OK, None)),
    ("rescale_slope_text", "a.dcm", lambda: _dicom(RescaleSlope="7774", RescaleIntercept="0",
                                                   patch={b"7774": b"one "}),
     (OK, "RescaleSlope is 'one', not a number")),
    ("rescale_slope_zero", "a.dcm", lambda: _dicom(RescaleSlope="0", RescaleIntercept="0"),
     (OK, "RescaleSlope is 0")),
    ("rescale_intercept_text", "a.dcm", lambda: _dicom(RescaleSlope="1", RescaleIntercept="7775",
                                                       patch={b"7775": b"zz  "}),
     (OK, "RescaleIntercept is 'zz'")),
    ("rescale_valid_16bit", "a.dcm", lambda: _dicom(bits=16, RescaleSlope="1.5", RescaleIntercept="-100"),
     (OK, None)),
    ("palette_without_lut", "a.dcm", lambda: _dicom(photometric="PALETTE COLOR"),
     (BAD, "PALETTE COLOR DICOM without a usable colour lookup table")),
    ("palette_half_lut", "a.dcm", lambda: _dicom(photometric="PALETTE COLOR",
                                                 edit=_set("RedPaletteColorLookupTableDescriptor", [256, 0, 16])),
     (BAD, "without a usable colour lookup table")),
    ("palette_with_lut", "a.dcm", lambda: _dicom(photometric="PALETTE COLOR", edit=_palette), (OK, None)),
    ("monochrome1", "a.dcm", lambda: _dicom(photometric="MONOCHROME1"), (OK, None)),
    ("rgb_16bit", "a.dcm", lambda: _dicom(samples=3, bits=16, photometric="RGB"), (OK, None)),
    ("multiframe", "a.dcm", lambda: _dicom(frames=5), (OK, "5 frames; frame 1 used")),
    ("regions_multi_valued_units", "a.dcm", lambda: _dicom(SequenceOfUltrasoundRegions=[_region(ux=[3, 3])]),
     (OK, "SequenceOfUltrasoundRegions is malformed")),
    ("regions_not_a_sequence", "a.dcm", lambda: _dicom(edit=_regions_as_bytes),
     (OK, "SequenceOfUltrasoundRegions is malformed")),
    ("regions_implausible_5cm", "a.dcm", lambda: _dicom(SequenceOfUltrasoundRegions=[_region(dx=5, dy=5)]),
     (OK, "50 mm per pixel, implausible")),
    ("pixel_spacing_25mm", "a.dcm", lambda: _dicom(PixelSpacing=[25, 25]), (OK, "25 mm per pixel, implausible")),
    ("pixel_spacing_negative", "a.dcm", lambda: _dicom(PixelSpacing=[-0.1, -0.1]), (OK, "implausible")),
    ("pixel_spacing_text", "a.dcm", lambda: _dicom(PixelSpacing="7776", patch={b"7776": b"ab\\c"}),
     (OK, "PixelSpacing is not a number")),
    ("excess_pixel_data", "a.dcm", lambda: _dicom(pixels=bytes(24 * 32 * 3)), (BAD, "more than the 1 frame(s)")),
    ("short_pixel_data", "a.dcm", lambda: _dicom(pixels=bytes(100)), (BAD, "cannot decode the DICOM pixel data")),
    ("unknown_transfer_syntax", "a.dcm", lambda: _dicom(syntax="1.2.3.4.5"), (BAD, "transfer syntax '1.2.3.4.5'")),
    ("jpeg_frame_bigger_than_header", "a.dcm", lambda: _jpeg_dicom((320, 240)),
     (BAD, "compressed DICOM frame is 320x240 px but the header says 64x48")),
    ("jpeg_frame_matches", "a.dcm", lambda: _jpeg_dicom((64, 48)), (OK, None)),
    ("jpeg_frame_garbage", "a.dcm", lambda: _dicom(48, 64, syntax="1.2.840.10008.1.2.4.50", samples=3,
                                                   photometric="YBR_FULL_422",
                                                   pixels=__import__("pydicom.encaps").encaps.encapsulate(
                                                       [b"\xff\xd8garbage" * 10])),
     (BAD, "cannot decode the DICOM pixel data")),
    ("nested_sequences_3000", "a.dcm", lambda: _nested_sequences(3000), (BAD, "not a readable DICOM file")),
    ("deflated_valid", "a.dcm", lambda: _deflated(PixelSpacing=[0.1, 0.1]), (OK, None)),
    ("deflated_16bit_multiframe", "a.dcm", lambda: _deflated(bits=16, frames=3), (OK, "3 frames")),
    ("deflated_truncated", "a.dcm", lambda: _deflated()[:-200], (BAD, "shorter than its header declares")),
    ("deflated_corrupt", "a.dcm", lambda: (lambda d: d[:400] + b"\xff" * 50 + d[450:])(_deflated()),
     (BAD, "deflated DICOM data is corrupt")),
    ("deflated_no_pixels", "a.dcm", lambda: _deflated(edit=lambda ds: delattr(ds, "PixelData")),
     (BAD, "no pixel data")),
    ("not_dicom_named_dcm", "a.dcm", lambda: b"hello, not a DICOM" * 20, (BAD, "DICOM")),
]


@pytest.mark.parametrize("case", DICOM_CASES, ids=[c[0] for c in DICOM_CASES])
def test_malformed_dicom(world, case):
    name, filename, build, expect = case
    data = build()
    try:
        image, error = load_image(data), None
    except ImageError as exc:
        image, error = None, exc
    response = world["client"].post("/v1/upload", files={"file": (filename, data, "application/dicom")})
    print(name, response.status_code, response.text[:200], "|", image and image.notes, error and error.message)
    if expect[0] == OK:
        assert error is None, error.message
        assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3 and image.rgb.shape[2] == 3
        if expect[1] is not None:
            assert any(expect[1] in note for note in image.notes), image.notes
        assert response.status_code == 200, response.text
        if "implausible" in (expect[1] or "") or "malformed" in (expect[1] or ""):
            assert image.pixel_spacing_mm is None and "pixel_spacing_mm" not in response.json()
    else:
        assert error is not None and error.status_code == 400 and expect[1] in error.message, error
        assert 400 <= response.status_code < 500, response.text
        assert expect[1] in response.json()["detail"] and response.json()["error_type"] == "ImageError"
    _no_server_paths(world, response.text)
    _alive(world)


# paths: (id, img_path_relative, status, fragment)
PATH_CASES = [
    ("dot", ".", 400, "names a folder, not an image file"),
    ("dot_slash", "./", 400, "names a folder"),
    ("dot_slash_dot", "./.", 400, "names a folder"),
    ("dot_dot_slash_slash", ".//./", 400, "names a folder"),
    ("spaces_dot", "  .  ", 400, "names a folder"),
    ("backslash_dot", ".\\", 400, "names a folder"),
    ("api_in", "api_in", 400, "names the upload folder itself"),
    ("api_in_slash", "api_in/", 400, "names the upload folder itself"),
    ("api_in_dot", "api_in/.", 400, "names the upload folder itself"),
    ("api_in_dot_slash", "./api_in/", 400, "names the upload folder itself"),
    ("data_folder", "segmentation/DDTI/imgs/", 404, "no image file"),
    ("root_slash", "/", 403, "outside the data root"),
    ("dotdot_after_dot", "./../x.png", 403, "contains '..'"),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_hostile_path(world, case):
    name, rel, status, fragment = case
    body = {**world["seg"], "img_path_relative": rel}
    response = world["client"].post("/v1/predict", json=body)
    print(name, response.status_code, response.text[:200])
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"] and response.json()["error_type"] == "PathError"
    _no_server_paths(world, response.text)
    with pytest.raises(PathError) as raised:
        world["engine"].predict(body)
    assert raised.value.status_code == status and fragment in raised.value.message
    if "names a folder" in fragment:  # nothing to write a mask for either: the helpers refuse, never crash
        for helper in (lambda r: resolve_input(world["settings"], r), mask_relative_path,
                       lambda r: output_path(world["settings"].api_out, r)):
            with pytest.raises(PathError):
                helper(rel.strip())
    _alive(world)


def _nest(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


# nested JSON: (id, route, raw body, status, fragment)
NESTED_CASES = [
    ("list_100000", "/v1/predict", lambda good: _nest(100_000), 400, "nests arrays / objects more than 64"),
    ("objects_50000", "/v1/predict", lambda good: '{"a":' * 50_000 + "0" + "}" * 50_000, 400, "more than 64"),
    ("extras_depth_65", "/v1/predict", lambda good: json.dumps(good)[:-1] + ', "x": ' + _nest(64) + "}", 400,
     "more than 64"),
    ("batch_nested", "/v1/predict/batch", lambda good: '{"requests": ' + _nest(10_000) + "}", 400,
     "more than 64"),
    ("compat_nested", "/segment/", lambda good: _nest(10_000), 400, "more than 64"),
    ("envelope_nested", "/v1/predict", lambda good: '{"request": ' + '{"r":' * 5000 + "1" + "}" * 5000 + "}",
     400, "more than 64"),
    ("extras_depth_60_ok", "/v1/predict", lambda good: json.dumps(good)[:-1] + ', "x": ' + _nest(60) + "}",
     200, None),
    ("brackets_inside_a_string_ok", "/v1/predict", lambda good: json.dumps({**good, "note": "[" * 10_000}),
     200, None),
]


@pytest.mark.parametrize("case", NESTED_CASES, ids=[c[0] for c in NESTED_CASES])
def test_nested_json(world, case):
    name, route, build, status, fragment = case
    body = build(world["cls"]).encode()
    response = world["client"].post(route, content=body, headers={"content-type": "application/json"})
    print(name, response.status_code, response.text[:200])
    assert response.status_code == status, response.text
    if fragment:
        assert fragment in response.json()["detail"] and response.json()["error_type"] == "RequestError"
        if route == "/segment/":
            assert response.json()["error"] == response.json()["detail"]  # the earlier server's shape
    _alive(world)


def test_nested_json_helpers():
    assert json_depth_exceeds(_nest(MAX_JSON_DEPTH + 1)) and not json_depth_exceeds(_nest(MAX_JSON_DEPTH))
    assert not json_depth_exceeds('{"a": "' + "[" * 10_000 + '"}')  # inside a string
    assert not json_depth_exceeds('{"a\\"[[[[": 1}', 2)  # an escaped quote does not end the string
    assert json_depth_exceeds(b"[" * 10_000_000)
    with pytest.raises(RequestError, match="more than 64") as raised:
        loads_json(_nest(200_000))
    assert raised.value.status_code == 400
    with pytest.raises(RequestError, match="more than 64") as raised:
        PredictRequest.parse(_nest(200_000))  # a request given as JSON text: 422 like any bad request
    assert raised.value.status_code == 422
    start = time.perf_counter()
    assert not json_depth_exceeds(b"[" + b"[1]," * 250_000 + b"[1]]")  # 1 MB of shallow brackets
    assert time.perf_counter() - start < 1.0


def test_cli_refuses_nested_input_json(tmp_path: Path, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "ws"))
    deep = tmp_path / "deep.json"
    deep.write_text(_nest(200_000))
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for path, fragment in ((deep, "nests arrays / objects more than 64"), (folder, "cannot read input JSON")):
        code = main(["predict", "--input-json", str(path), "--input-dir", str(tmp_path),
                     "--output-dir", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


# pixel_spacing_mm: (id, raw JSON value, status, fragment)
SPACING_CASES = [
    ("zero", "0", 422, "between 0.01 and 2 mm per pixel"),
    ("negative", "-0.2", 422, "between 0.01 and 2 mm per pixel"),
    ("nan", "NaN", 422, "pixel_spacing_mm"),
    ("infinity", "Infinity", 422, "pixel_spacing_mm"),
    ("minus_infinity", "-Infinity", 422, "pixel_spacing_mm"),
    ("over_2", "2.5", 422, "between 0.01 and 2 mm per pixel"),
    ("too_fine", "0.005", 422, "between 0.01 and 2 mm per pixel"),
    ("huge", "1e308", 422, "between 0.01 and 2 mm per pixel"),
    ("bool", "true", 422, "not true/false"),
    ("text", '"abc"', 422, "pixel_spacing_mm"),
    ("list", "[0.1, 0.1]", 422, "pixel_spacing_mm"),
    ("exactly_2", "2", 200, None),
    ("typical", "0.08", 200, None),
    ("numeric_text", '"0.2"', 200, None),
    ("null", "null", 200, None),
]


@pytest.mark.parametrize("case", SPACING_CASES, ids=[c[0] for c in SPACING_CASES])
def test_pixel_spacing_plausible(world, case):
    name, raw, status, fragment = case
    body = json.dumps(world["seg"])[:-1] + f', "pixel_spacing_mm": {raw}}}'
    response = world["client"].post("/v1/predict", content=body.encode(), headers={"content-type": "application/json"})
    print(name, response.status_code, response.text[:200])
    assert response.status_code == status, response.text
    if fragment:
        assert fragment in response.json()["detail"] and response.json().get("field") == "pixel_spacing_mm"
    elif raw not in ("null",):
        assert response.json()["pixel_spacing_mm"] == pytest.approx(float(json.loads(raw)))


# ================================================================================= 3. streamed body limits
def _chunks(total: int, size: int = 8192, fill: bytes = b" "):
    sent = 0
    while sent < total:
        step = min(size, total - sent)
        yield fill * step
        sent += step


def _multipart_stream(file_bytes: int, boundary: str = "hostile2boundary"):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
           "Content-Type: image/png\r\n\r\n").encode()
    yield from _chunks(file_bytes, 65536, b"\x00")
    yield f"\r\n--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=hostile2boundary"


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory):
    """An in-process app with small body limits (100 kB JSON, 1 MB uploads)."""
    parent = tmp_path_factory.mktemp("limits")
    settings = Settings(workspace=parent / "ws", device="cpu", max_json_bytes=100_000, max_upload_mb=1,
                        **TORCH_ONLY)
    with TestClient(create_app(settings)) as client:
        yield client


# (id, route, content type, body builder, expected status)
STREAM_CASES = [
    ("predict_chunked_over", "/v1/predict", "application/json", lambda: _chunks(300_000), 413),
    ("predict_chunked_one_byte_over", "/v1/predict", "application/json", lambda: _chunks(100_001), 413),
    ("predict_chunked_at_limit", "/v1/predict", "application/json", lambda: _chunks(100_000), 400),  # not JSON
    ("batch_chunked_over", "/v1/predict/batch", "application/json", lambda: _chunks(500_000), 413),
    ("segment_chunked_over", "/segment/", "application/json", lambda: _chunks(300_000), 413),
    ("upload_chunked_over", "/v1/upload", MULTIPART, lambda: _multipart_stream(3 * 1024 * 1024), 413),
    ("compat_upload_chunked_over", "/upload", MULTIPART, lambda: _multipart_stream(2 * 1024 * 1024), 413),
    ("upload_chunked_under", "/v1/upload", MULTIPART, lambda: _multipart_stream(200_000), 400),  # not an image
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_streamed_body_limit_testclient(small_limits, case):
    name, route, content_type, build, status = case
    response = small_limits.post(route, content=build(), headers={"content-type": content_type})
    print(name, response.status_code, response.text[:200])
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and body["error_type"] in ("RequestError", "ImageError")
    if status == 413:
        assert "limit" in body["detail"]
        if route in ("/segment/", "/upload"):
            assert body["error"] == body["detail"]
    assert small_limits.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real ``python -m core serve`` (uvicorn, h11) with small limits: 100 kB JSON, 1 MB uploads, bodies that
    stall for 1.5 s cut, at most 8 connections."""
    parent = tmp_path_factory.mktemp("live")
    data = parent / "data" / "classification" / "BUSI" / "imgs"
    data.mkdir(parents=True)
    (data / "c.png").write_bytes(_png(48, 40))
    env = {**os.environ, "UUSIC_WORKSPACE": str(parent / "ws"), "UUSIC_DATA_ROOT": str(parent / "data"),
           "UUSIC_DEVICE": "cpu", "UUSIC_MAX_JSON_BYTES": "100000", "UUSIC_MAX_UPLOAD_MB": "1",
           "UUSIC_BODY_TIMEOUT_S": "1.5", "UUSIC_MAX_CONNECTIONS": "8", "OMP_NUM_THREADS": "1",
           "UUSIC_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
           **SERVER_ENV_EXTRA}
    for name in ("UUSIC_API_KEY", "UUSIC_API_URL", "UUSIC_ALLOWED_HOSTS", "UUSIC_MODEL", "UUSIC_WEIGHTS_DIR"):
        env.pop(name, None)
    with serve_api(env, parent / "server.log", args=("--threads", "1", "--log-level", "warning"),
                   timeout=120) as base:
        yield {"base": base, "port": int(base.rsplit(":", 1)[1]), "log": parent / "server.log"}


LIVE_STREAM_CASES = [
    ("predict_300k", "/v1/predict", "application/json", lambda: _chunks(300_000), 413),
    ("predict_100001", "/v1/predict", "application/json", lambda: _chunks(100_001), 413),
    ("predict_big_chunks", "/v1/predict", "application/json", lambda: _chunks(2_000_000, 65536), 413),
    ("batch_300k", "/v1/predict/batch", "application/json", lambda: _chunks(300_000), 413),
    ("segment_300k", "/segment/", "application/json", lambda: _chunks(300_000), 413),
    ("upload_3mb", "/v1/upload", MULTIPART, lambda: _multipart_stream(3 * 1024 * 1024), 413),
    ("upload_200k_not_an_image", "/v1/upload", MULTIPART, lambda: _multipart_stream(200_000), 400),
]


@pytest.mark.server
@pytest.mark.parametrize("case", LIVE_STREAM_CASES, ids=[c[0] for c in LIVE_STREAM_CASES])
def test_streamed_body_limit_real_server(live, case):
    """httpx streams a generator body (no Content-Length: chunked) to a real uvicorn: a clean 413 error body."""
    name, route, content_type, build, status = case
    with httpx.Client(base_url=live["base"], timeout=30) as client:
        try:
            response = client.post(route, content=build(), headers={"content-type": content_type})
        except httpx.TransportError:  # the server answered and closed while the client was still writing
            assert name in FAR_OVER, f"{name}: no answer"  # a refusal too, for a body far over limit + drain
        else:
            print(name, response.status_code, response.headers.get("connection"), response.text[:200])
            assert response.status_code == status, response.text
            assert response.json()["status_code"] == status and response.json()["detail"]
    assert httpx.get(live["base"] + "/healthz").status_code == 200


FAR_OVER = {"predict_big_chunks", "upload_3mb"}  # more than the drain allowance past the limit


@pytest.mark.server
@pytest.mark.parametrize("route, content_type, body", [
    ("/v1/predict", "application/json", lambda size: _chunks(size, 65536)),
    ("/v1/upload", MULTIPART, lambda size: _multipart_stream(size)),
], ids=["json", "upload"])
def test_a_chunked_body_far_over_the_limit_is_never_read_to_its_end(live, route, content_type, body):
    """Issue 22 class 12: 64 MB chunked to a 100 kB (1 MB upload) limit → 413 or a cut connection once the limit and
    the short drain are passed; the server does not read on to the end."""
    from core.api.limits import DRAIN_BYTES

    sent = 0

    def counted():
        nonlocal sent
        for chunk in body(64 * 1024 * 1024):
            sent += len(chunk)
            yield chunk

    start = time.monotonic()
    try:
        response = httpx.post(live["base"] + route, content=counted(), headers={"content-type": content_type},
                              timeout=30)
        assert response.status_code == 413 and response.headers.get("connection") == "close"
    except httpx.TransportError:
        pass
    assert sent < 2 * 1024 * 1024 + DRAIN_BYTES + 16 * 1024 * 1024  # socket buffers aside: not to the end
    assert time.monotonic() - start < 20
    assert httpx.get(live["base"] + "/healthz").status_code == 200



@pytest.mark.server
def test_endless_body_is_cut_off(live):
    """A body that never ends: 413 (or the connection cut) after at most the drain allowance; the server reads no
    further and keeps serving."""
    from core.api.limits import DRAIN_BYTES

    sent = 0

    def endless():
        nonlocal sent
        while sent < 200 * 1024 * 1024:
            sent += 65536
            yield b" " * 65536

    start = time.monotonic()
    try:
        response = httpx.post(live["base"] + "/v1/predict", content=endless(),
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 413 and response.headers.get("connection") == "close"
    except httpx.TransportError:
        pass  # the server closed while the client was still writing: also a refusal
    assert sent < 100_000 + DRAIN_BYTES + 16 * 1024 * 1024  # socket buffers aside, the server stopped reading
    assert time.monotonic() - start < 20
    assert httpx.get(live["base"] + "/healthz").status_code == 200


def _raw(port: int, payload: bytes, *, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``payload`` on a fresh socket and read until the server closes (or ``wait`` passes)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait)
    start = time.monotonic()
    sock.sendall(payload)
    received = b""
    try:
        while time.monotonic() - start < wait:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return received, time.monotonic() - start


@pytest.mark.server
def test_declared_huge_body_is_refused_without_reading_it(live):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999999\r\n\r\n")
    received, seconds = _raw(live["port"], head + b"{" * 1000)
    assert received.startswith(b"HTTP/1.1 413") and b"connection: close" in received.lower(), received[:300]
    assert b'"error_type":"RequestError"' in received and seconds < 5


# ================================================================================= 4. content types, hosts
# (id, method, path, content type (None: none), body, expected status)
GOOD_JSON = json.dumps({**CLS, "img_path_relative": "classification/BUSI/imgs/c.png"}).encode()
CONTENT_TYPE_CASES = [
    ("predict_text_plain", "/v1/predict", "text/plain", GOOD_JSON, 415),
    ("predict_text_plain_charset", "/v1/predict", "text/plain;charset=UTF-8", GOOD_JSON, 415),
    ("predict_form_urlencoded", "/v1/predict", "application/x-www-form-urlencoded", GOOD_JSON, 415),
    ("predict_multipart", "/v1/predict", MULTIPART, GOOD_JSON, 415),
    ("predict_no_type", "/v1/predict", None, GOOD_JSON, 415),
    ("predict_json_lookalike", "/v1/predict", "application/jsonp", GOOD_JSON, 415),
    ("predict_json", "/v1/predict", "application/json", GOOD_JSON, 200),
    ("predict_json_charset", "/v1/predict", "application/json; charset=utf-8", GOOD_JSON, 200),
    ("predict_json_upper", "/v1/predict", "APPLICATION/JSON", GOOD_JSON, 200),
    ("batch_text_plain", "/v1/predict/batch", "text/plain", b'{"requests": []}', 415),
    ("batch_json", "/v1/predict/batch", "application/json", b'{"requests": []}', 200),
    ("upload_text_plain", "/v1/upload", "text/plain", b"x", 415),
    ("upload_json", "/v1/upload", "application/json", b"{}", 415),
    ("upload_form_urlencoded", "/v1/upload", "application/x-www-form-urlencoded", b"file=x", 415),
    ("compat_segment_text_plain", "/segment/", "text/plain", GOOD_JSON, 415),
    ("compat_segment_form", "/segment/", "application/x-www-form-urlencoded", GOOD_JSON, 415),
    ("compat_segment_json", "/segment/", "application/json", GOOD_JSON, 200),
    ("compat_upload_text_plain", "/upload", "text/plain", b"x", 415),
]


@pytest.mark.parametrize("case", CONTENT_TYPE_CASES, ids=[c[0] for c in CONTENT_TYPE_CASES])
def test_content_type(world, case):
    name, path, content_type, body, status = case
    headers = {"content-type": content_type} if content_type else {}
    response = world["client"].post(path, content=body, headers=headers)
    print(name, response.status_code, response.text[:200])
    assert response.status_code == status, response.text
    if status == 415:
        assert response.json()["error_type"] == "RequestError" and "Content-Type" in response.json()["detail"]
        if path in ("/segment/", "/upload"):
            assert response.json()["error"]


def test_uploads_and_old_clients_still_pass(world):
    client = world["client"]
    for path in ("/v1/upload", "/upload"):
        upload = client.post(path, files={"file": ("u.png", _png(), "image/png")})
        assert upload.status_code == 200, upload.text
    old = {"img_name": "c.png", "img_path_relative": "data/classification/BUSI/imgs/c.png", "img_size_bytes": 1,
           "img_dimensions": [48, 40], "img_format": "png", "task": "classification", "dataset_name": "BUSI",
           "organ": "BUSI", "data_partition_group": "public_all", "mask_name": "", "mask_path_relative": "",
           "seg_target_info": {"old": "dict"}, "class_label_index": 0, "class_label_name": "benign"}
    assert client.post("/segment/", json=old).status_code == 200
    assert client.get("/random_sample/", params={"task": "segmentation", "dataset_name": "DDTI"}).status_code == 200


# (id, Host header, status)
HOST_CASES = [
    ("localhost", "localhost", 200),
    ("localhost_port", "localhost:8000", 200),
    ("loopback", "127.0.0.1", 200),
    ("loopback_port", "127.0.0.1:8000", 200),
    ("ipv6_loopback", "[::1]:8000", 200),
    ("upper_case", "LOCALHOST:8000", 200),
    ("testserver", "testserver", 200),
    ("rebinding_name", "attacker.example", 400),
    ("rebinding_name_port", "attacker.example:8000", 400),
    ("suffix_trick", "localhost.attacker.example", 400),
    ("prefix_trick", "127.0.0.1.attacker.example", 400),
    ("userinfo_trick", "localhost@attacker.example", 400),
    ("other_ip", "10.0.0.7", 400),
    ("empty", "", 400),
]


@pytest.mark.parametrize("case", HOST_CASES, ids=[c[0] for c in HOST_CASES])
def test_host_allow_list(world, case):
    name, host, status = case
    for method, path, kwargs in (("GET", "/healthz", {}), ("POST", "/v1/predict", {"json": world["cls"]})):
        response = world["client"].request(method, path, headers={"host": host}, **kwargs)
        print(name, method, response.status_code, response.text[:160])
        assert response.status_code == status, response.text
        if status == 400:
            body = response.json()
            assert body["error_type"] == "RequestError" and "UUSIC_ALLOWED_HOSTS" in body["detail"]


def test_host_allow_list_settings(tmp_path: Path):
    any_host = TestClient(create_app(Settings(workspace=tmp_path / "a", allowed_hosts=("*",), **TORCH_ONLY)))
    assert any_host.get("/healthz", headers={"host": "attacker.example"}).status_code == 200
    sub = TestClient(create_app(Settings(workspace=tmp_path / "b", allowed_hosts=("*.example.org", "api"),
                                         **TORCH_ONLY)))
    assert sub.get("/healthz", headers={"host": "a.example.org"}).status_code == 200
    assert sub.get("/healthz", headers={"host": "api:8000"}).status_code == 200
    assert sub.get("/healthz", headers={"host": "example.org.evil"}).status_code == 400
    assert sub.get("/healthz", headers={"host": "localhost"}).status_code == 400
    from_env = Settings.from_env({"UUSIC_ALLOWED_HOSTS": " uusic.lan , 10.0.0.7 "})
    assert from_env.allowed_hosts == ("uusic.lan", "10.0.0.7")
    assert Settings().allowed_hosts == ("localhost", "127.0.0.1", "::1", "testserver")
    for bad in ("http://uusic.lan", "a*b", "*example.org", "two words"):
        with pytest.raises(UUSICError, match="UUSIC_ALLOWED_HOSTS"):
            Settings.from_env({"UUSIC_ALLOWED_HOSTS": bad})


@pytest.mark.server
def test_real_server_hosts_and_simple_requests(live):
    base = live["base"]
    assert httpx.get(base + "/healthz").status_code == 200  # 127.0.0.1:<port>, as the dashboard / bench send it
    assert httpx.get(f"http://localhost:{live['port']}/healthz").status_code == 200
    rebinding = httpx.get(base + "/healthz", headers={"host": "attacker.example"})
    assert rebinding.status_code == 400 and rebinding.json()["error_type"] == "RequestError"
    simple = httpx.post(base + "/v1/predict", content=GOOD_JSON, headers={"content-type": "text/plain"})
    assert simple.status_code == 415
    ok = httpx.post(base + "/v1/predict", content=GOOD_JSON, headers={"content-type": "application/json"})
    assert ok.status_code == 200, ok.text


# ================================================================================= 5. mask files
MASK_PAIRS = [  # two different inputs of the same file name → two different mask files
    ("/data/left/x.png", "/data/right/x.png"),
    ("/data/a/imgs/x.jpg", "/data/b/imgs/x.jpg"),
    ("/x.png", "/y/x.png"),
    ("/data/imgs/x.png", "data/imgs/x.png"),
    ("/data/left/x.png", "api_in/x.png"),
    ("segmentation/A/imgs/x.png", "segmentation/B/imgs/x.png"),
    ("/srv/ünï cödé/x.png", "/srv/unicode/x.png"),
]
MASK_LAYOUT = [  # relative paths keep the challenge layout (tests/test_release_parity.py pins it)
    ("segmentation/BUSI/imgs/x.jpg", "segmentation/BUSI/masks/x.png"),
    ("segmentation/imgset/imgs/img_1.bmp", "segmentation/imgset/masks/img_1.png"),
    ("api_in/up-1a2b.jpeg", "masks/up-1a2b.png"),
    ("./segmentation/DDTI/imgs/a.png", "segmentation/DDTI/masks/a.png"),
]


@pytest.mark.parametrize("pair", MASK_PAIRS, ids=[f"{a}|{b}" for a, b in MASK_PAIRS])
def test_masks_of_same_named_inputs_differ(pair):
    first, second = pair
    assert mask_relative_path(first) != mask_relative_path(second)
    assert mask_relative_path(first) == mask_relative_path(first)  # stable: the same input, the same mask
    for rel in pair:
        mask = mask_relative_path(rel)
        assert mask.endswith("/x.png") and not mask.startswith("/") and ".." not in mask


@pytest.mark.parametrize("pair", MASK_LAYOUT, ids=[a for a, _ in MASK_LAYOUT])
def test_mask_layout_of_relative_paths(pair):
    assert mask_relative_path(pair[0]) == pair[1]


def test_two_absolute_inputs_of_one_name_keep_both_masks(world):
    data_root = Path(world["settings"].data_root).resolve()
    masks = []
    for folder in ("left", "right"):
        body = {**world["seg"], "img_path_relative": str(data_root / folder / "x.png")}
        response = world["client"].post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        masks.append(Path(response.json()["mask_path"]))
    assert masks[0] != masks[1] and masks[0].name == masks[1].name == "x.png"
    assert all(mask.is_file() for mask in masks)
    assert masks[0].read_bytes() != masks[1].read_bytes()  # different images, different masks, none overwritten


# ================================================================================= 6. workspace faults
def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m core ARGS`` in a fresh process (from the checkout)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **SERVER_ENV_EXTRA, **env}
    for name in ("UUSIC_API_URL", "UUSIC_MODEL", "UUSIC_WEIGHTS_DIR"):
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=PROJECT_ROOT, env=full, capture_output=True,
                          text=True, timeout=300)


def _one_error_line(run: subprocess.CompletedProcess, fragment: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr


@pytest.fixture()
def cli_input(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    (data / "segmentation/DDTI/imgs").mkdir(parents=True)
    (data / "segmentation/DDTI/imgs/a.png").write_bytes(_png(48, 40))
    entries = tmp_path / "in.json"
    entries.write_text(json.dumps([{**SEG, "img_path_relative": "segmentation/DDTI/imgs/a.png"}]))
    return data, entries


def _predict_in_process(monkeypatch, capsys, workspace: Path, entries: Path, data: Path, out: Path) -> tuple[int, str]:
    from core.cli import main

    monkeypatch.setenv("UUSIC_WORKSPACE", str(workspace))
    for name, value in SERVER_ENV_EXTRA.items():
        monkeypatch.setenv(name, value)
    code = main(["predict", "--input-json", str(entries), "--input-dir", str(data), "--output-dir", str(out),
                 "--device", "cpu", "--no-progress"])
    return code, capsys.readouterr().err


def _one_error(code: int, err: str, fragment: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and fragment in errors[0] and "Traceback" not in err, err


def test_cli_output_dir_is_a_file(tmp_path: Path, cli_input, monkeypatch, capsys):
    data, entries = cli_input
    blocker = tmp_path / "out.txt"
    blocker.write_text("not a folder")
    for out, fragment in ((blocker, "it is a file, not a folder"), (blocker / "below", "cannot be written")):
        code, err = _predict_in_process(monkeypatch, capsys, tmp_path / "ws", entries, data, out)
        _one_error(code, err, fragment)
    assert blocker.read_text() == "not a folder"


def test_cli_workspace_is_a_file(tmp_path: Path, cli_input, monkeypatch, capsys):
    data, entries = cli_input
    workspace = tmp_path / "ws"
    workspace.write_text("a file where the workspace should be")
    code, err = _predict_in_process(monkeypatch, capsys, workspace, entries, data, tmp_path / "out")
    _one_error(code, err, "the workspace cannot be used")


def test_cli_read_only_output_dir(tmp_path: Path, cli_input, monkeypatch, capsys):
    """A read-only --output-dir (simulated: the tests may run as root, which ignores permissions)."""
    import tempfile

    from core.cli import main

    data, entries = cli_input
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "ws"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code = main(["predict", "--input-json", str(entries), "--input-dir", str(data), "--output-dir",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be written: Read-only file system" in err and "Traceback" not in err


def test_serve_with_workspace_a_file(tmp_path: Path):
    workspace = tmp_path / "ws"
    workspace.write_text("not a folder")
    run = _cli(["serve", "--port", str(free_port())], {"UUSIC_WORKSPACE": str(workspace)})
    _one_error_line(run, "cannot be used")


@pytest.fixture()
def fragile(tmp_path: Path):
    """A fresh app over the demo model whose workspace we may break."""
    data = tmp_path / "data"
    for rel, seed in (("segmentation/DDTI/imgs/a.png", 1), ("classification/BUSI/imgs/c.png", 2)):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(_png(48, 40, seed=seed))
    settings = Settings(workspace=tmp_path / "ws", data_root=data, device="cpu", **TORCH_ONLY)
    with TestClient(create_app(settings)) as client:
        client.settings = settings
        yield client


SEG_REQ = {**SEG, "img_path_relative": "segmentation/DDTI/imgs/a.png"}
CLS_REQ = {**CLS, "img_path_relative": "classification/BUSI/imgs/c.png"}


def _check_5xx(response, tmp_path: Path, status: int, fragment: str, error_type: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type and fragment in body["detail"], body
    assert str(tmp_path) not in response.text and "api_out" not in body["detail"]


def test_api_output_folder_replaced_by_a_file(fragile, tmp_path: Path):
    api_out = Path(fragile.settings.api_out)
    api_out.rmdir()
    api_out.write_text("someone put a file here")
    response = fragile.post("/v1/predict", json=SEG_REQ)
    _check_5xx(response, tmp_path, 500, "could not read or write its files", "WorkspaceError")
    batch = fragile.post("/v1/predict/batch", json={"requests": [SEG_REQ]})  # its output folder cannot be made
    _check_5xx(batch, tmp_path, 500, "could not read or write its files", "WorkspaceError")
    assert fragile.post("/v1/predict", json=CLS_REQ).status_code == 200  # what needs no file still works


@pytest.mark.parametrize("fault", [(errno.EROFS, "Read-only file system", 500),
                                   (errno.EACCES, "Permission denied", 500),
                                   (errno.ENOSPC, "No space left on device", 507)],
                         ids=["read_only", "permission", "disk_full"])
def test_api_workspace_cannot_be_written(fragile, tmp_path: Path, monkeypatch, fault):
    code, reason, status = fault

    def refuse(*args, **kwargs):
        raise OSError(code, reason)

    monkeypatch.setattr("core.files.os.open", refuse)  # every product file goes through core.files
    upload = fragile.post("/v1/upload", files={"file": ("u.png", _png(), "image/png")})
    _check_5xx(upload, tmp_path, status, reason if status == 500 else "disk is full", "UploadError")
    predict = fragile.post("/v1/predict", json=SEG_REQ)
    _check_5xx(predict, tmp_path, status, reason, "WorkspaceError")
    monkeypatch.undo()
    assert fragile.post("/v1/predict", json=SEG_REQ).status_code == 200  # fixed: back to normal


def test_api_history_that_cannot_be_written_is_reported(fragile, tmp_path: Path):
    service = fragile.app.state.service
    check = getattr(service, "workspace_check", None)  # a start-up check may still be opening the real store
    if check is not None:
        check.wait(30)

    class BrokenStore:
        def add(self, record):
            raise HistoryError("cannot write sqlite:////secret/server/path/history.sqlite3")

    service.recorder.use_store(BrokenStore())
    for body in (CLS_REQ, SEG_REQ):
        response = fragile.post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result.get("run_id") is None
        notes = [n for n in result.get("notes", []) if n.startswith("not recorded in the history")]
        assert len(notes) == 1 and "secret" not in notes[0] and str(tmp_path) not in notes[0], result
    batch = fragile.post("/v1/predict/batch", json={"requests": [CLS_REQ]}).json()["results"][0]
    assert any(n.startswith("not recorded in the history") for n in batch["notes"])
    old = fragile.post("/segment/", json=CLS_REQ)
    assert old.status_code == 200 and old.json()["probability"]


# ================================================================================= 7. slow clients
def _post_head(length: int | None, path: str = "/v1/predict", content_type: str = "application/json") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{size}\r\n\r\n").encode()


STALL_CASES = [
    ("half_a_json_body", _post_head(1000) + b"{" + b" " * 499),
    ("headers_only", _post_head(1000)),
    ("chunked_then_stall", _post_head(None) + b"100\r\n" + b" " * 256 + b"\r\n"),
    ("half_a_multipart_upload", _post_head(50_000, "/v1/upload", MULTIPART)
     + next(_multipart_stream(10)) + b"\x00" * 1000),
    ("half_a_compat_body", _post_head(1000, "/segment/") + b"{" * 10),
]


@pytest.mark.server
@pytest.mark.parametrize("case", STALL_CASES, ids=[c[0] for c in STALL_CASES])
def test_stalled_body_gets_408_and_is_closed(live, case):
    name, payload = case
    received, seconds = _raw(live["port"], payload, wait=10)
    print(name, round(seconds, 2), received[:200])
    assert received.startswith(b"HTTP/1.1 408"), received[:300]
    assert b"connection: close" in received.lower() and b"UUSIC_BODY_TIMEOUT_S" in received
    assert 1.0 < seconds < 6  # UUSIC_BODY_TIMEOUT_S=1.5, then the server closed the connection (recv → b"")
    assert httpx.get(live["base"] + "/healthz").status_code == 200


@pytest.mark.server
def test_slow_but_steady_body_is_not_cut(live):
    body = GOOD_JSON
    sock = socket.create_connection(("127.0.0.1", live["port"]), timeout=15)
    try:
        sock.sendall(_post_head(len(body)))
        for start in range(0, len(body), len(body) // 3 + 1):
            time.sleep(0.8)  # each pause under the 1.5 s timeout; the whole body takes longer than it
            sock.sendall(body[start:start + len(body) // 3 + 1])
        received = sock.recv(65536)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200"), received[:300]


@pytest.mark.server
def test_oversized_headers_are_refused(live):
    sock = socket.create_connection(("127.0.0.1", live["port"]), timeout=10)
    received = b""
    try:  # headers that keep growing (as a slow client sends them): past 16 KiB the server gives up
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for index in range(40):
            sock.sendall(f"X-Pad-{index}: ".encode() + b"a" * 1000 + b"\r\n")
            time.sleep(0.01)
        sock.sendall(b"\r\n")
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 4") or received == b"", received[:200]  # refused and closed
    assert httpx.get(live["base"] + "/healthz").status_code == 200


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock``: it reads to the end (a 503 answered past the connection limit comes
    before the close) or the connection is reset; still open after 5 s of silence is False."""
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed while the client was still trickling
        return True


@pytest.mark.server
def test_trickled_and_idle_request_heads_are_closed_after_the_head_deadline(live):
    """Issue 22 class 13 (slowloris): 20 connections that never finish their request head (idle, a partial request
    line, headers a byte at a time, a kept-alive connection's half second request) are all closed by the server
    within the head deadline, and the server keeps answering."""
    partial = [b"", b"GET /healthz HTTP/1.1\r\n", b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ",
               b"G"]
    socks = []
    for index in range(20):  # past UUSIC_MAX_CONNECTIONS=8 the server answers 503 and closes at once
        sock = socket.create_connection(("127.0.0.1", live["port"]), timeout=HEAD_TIMEOUT_S + 10)
        if index == 0:  # a kept-alive connection: one full request, then half of the next
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        else:
            sock.sendall(partial[index % len(partial)])
        socks.append(sock)
    start = time.monotonic()
    closed = 0
    try:
        for tick in range(int(HEAD_TIMEOUT_S * 2) + 8):  # keep trickling a byte every half second
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a" if tick % 2 else b"b")
            time.sleep(0.5)
            if time.monotonic() - start > HEAD_TIMEOUT_S + 2:
                break
        closed = sum(_closed_by_server(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    assert closed == 20, f"{20 - closed} of 20 unfinished request heads still held after {HEAD_TIMEOUT_S + 2} s"
    assert httpx.get(live["base"] + "/healthz").status_code == 200


@pytest.mark.server
def test_connection_limit(live):
    idle = [socket.create_connection(("127.0.0.1", live["port"])) for _ in range(8)]  # UUSIC_MAX_CONNECTIONS=8
    try:
        time.sleep(0.3)
        refused = httpx.get(live["base"] + "/healthz", timeout=10)
        assert refused.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(live["base"] + "/healthz").status_code == 200


def test_serve_passes_the_connection_limits_to_uvicorn(tmp_path: Path, monkeypatch):
    import uvicorn

    from core.api.command import H11_MAX_HEADER_BYTES, KEEP_ALIVE_S, main

    captured: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(kwargs))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("UUSIC_DEVICE", "cpu")
    monkeypatch.setenv("UUSIC_MAX_CONNECTIONS", "17")
    assert main(["--port", "1"]) == 0
    assert captured["limit_concurrency"] == 17 and captured["timeout_keep_alive"] == KEEP_ALIVE_S
    from core.api.head_deadline import HeadDeadlineH11Protocol

    assert captured["h11_max_incomplete_event_size"] == H11_MAX_HEADER_BYTES
    assert issubclass(captured["http"], HeadDeadlineH11Protocol)  # h11, with a deadline for each request head
    assert captured["http"].head_timeout_s == Settings().head_timeout_s == 10
    assert Settings().max_connections == 64 and Settings().body_timeout_s == 30
    with pytest.raises(UUSICError, match="UUSIC_BODY_TIMEOUT_S"):
        Settings.from_env({"UUSIC_BODY_TIMEOUT_S": "0"})


def test_body_timeout_in_process(tmp_path: Path):
    """The same 408 through the ASGI app directly: a receive() that never delivers the rest of the body."""
    import anyio

    from core.api.limits import BodyLimit

    settings = Settings(workspace=tmp_path / "ws", body_timeout_s=0.2, **TORCH_ONLY)
    app = create_app(settings)
    sent: list[dict] = []

    async def scenario():
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"{", "more_body": True}
            await anyio.sleep(60)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "server": ("testserver", 80), "client": ("127.0.0.1", 1),
                 "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")]}
        with anyio.fail_after(10):
            await app(scope, receive, send)

    anyio.run(scenario)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert BodyLimit  # the middleware under test


# ================================================================================= 8. history rows
def _extras(size: int) -> dict:
    """Fields outside the schema taking about ``size`` bytes of JSON."""
    return {"notes_from_scanner": "x" * max(0, size - 26)}


# (id, extras builder, status)
EXTRAS_CASES = [
    ("small", lambda: {"my_tag": "kept", "n": 3}, 200),
    ("nested_small", lambda: {"meta": {"a": [1, 2, {"b": "c"}]}}, 200),
    ("just_under_16k", lambda: _extras(MAX_EXTRAS_BYTES - 100), 200),
    ("just_over_16k", lambda: _extras(MAX_EXTRAS_BYTES + 100), 413),
    ("many_small_over", lambda: {f"k{i}": "v" * 90 for i in range(200)}, 413),
    ("nested_over", lambda: {"deep": [[{"x": "y" * 100}] * 20] * 10}, 413),
    ("unicode_bytes_over", lambda: {"zh": "超" * 6000}, 413),  # 6000 chars, 18000 UTF-8 bytes
    ("unicode_under", lambda: {"zh": "超" * 5000}, 200),
]


@pytest.mark.parametrize("case", EXTRAS_CASES, ids=[c[0] for c in EXTRAS_CASES])
def test_history_extras(world, case):
    name, build, status = case
    extras = build()
    client = world["client"]
    response = client.post("/v1/predict", json={**world["cls"], **extras})
    print(name, response.status_code, response.text[:160])
    assert response.status_code == status, response.text
    rows = client.get("/v1/history", params={"limit": 1}).json()
    row = client.get(f"/v1/history/{rows['runs'][0]['id']}").json()
    stored = len(json.dumps(row.get("request"))) + len(json.dumps(row.get("response")))
    if status == 200:
        body = response.json()
        assert all(body[k] == v for k, v in extras.items())  # echoed in the response
        assert row["id"] == body["run_id"]
        assert all(row["request"][k] == v for k, v in extras.items())  # stored once, in the request
        assert not set(extras) & set(row.get("response") or {})  # ...and not again in the response
    else:
        detail = response.json()["detail"]
        assert "16,384 bytes (16 KiB)" in detail and response.json()["error_type"] == "RequestError"
        assert row["error_type"] == "RequestError" and "extras_omitted" in row["request"]
        assert not set(extras) & set(row["request"])
    assert stored < 40_000, stored  # the row stays small whatever was sent


def test_history_rows_are_bounded_for_refused_requests(world):
    client = world["client"]
    response = client.post("/v1/predict", json={**world["cls"], "img_name": "n" * 100_000})
    assert response.status_code == 422 and "img_name" in response.json()["detail"]
    rows = client.get("/v1/history", params={"limit": 1}).json()
    row = client.get(f"/v1/history/{rows['runs'][0]['id']}").json()
    assert row["error_type"] == "RequestError" and len(json.dumps(row)) < 20_000
    assert len(row["request"]["img_name"]) <= 4097


def test_record_run_drops_echoed_extras_and_caps(tmp_path: Path):
    from core.history import HistoryStore, decode_row, record_run

    store = HistoryStore(tmp_path / "h.sqlite3")
    request = {**CLS, "img_path_relative": "classification/BUSI/imgs/c.png", "tag": "t1", "blob": {"a": 1}}
    response = {**request, "probability": [0.4, 0.6], "prediction": 1, "tag": "t1", "blob": {"a": 2}}
    run = decode_row(store.get(record_run(store, request, response, source="api")))
    assert run["request"]["tag"] == "t1" and "tag" not in run["response"]
    assert run["response"]["blob"] == {"a": 2}  # not equal to the request's: kept
    huge = {**request, "blob": "z" * 50_000}
    run = decode_row(store.get(record_run(store, huge, None, source="api", error="x", error_type="RequestError")))
    assert "blob" not in run["request"] and "50,0" in run["request"]["extras_omitted"]
    store.close()
