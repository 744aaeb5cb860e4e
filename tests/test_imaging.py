"""Hostile and unusual images: every one decodes to 8-bit RGB or raises a clear ImageError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.imaging import load_image
from core.settings import Settings


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _gradient(width=40, height=30) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    return np.stack([x, x[::-1, ::-1], np.full_like(x, 128)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpeg"), ("BMP", "bmp"), ("TIFF", "tiff")])
def test_common_formats_decode_to_rgb8(tmp_path: Path, fmt: str, ext: str):
    path = tmp_path / f"x.{ext}"
    Image.fromarray(_gradient()).save(path, format=fmt)
    loaded = load_image(path)
    assert loaded.rgb.shape == (30, 40, 3) and loaded.rgb.dtype == np.uint8
    assert loaded.rgb.flags["C_CONTIGUOUS"]
    assert loaded.format == ext and loaded.pixel_spacing_mm is None
    assert (loaded.width, loaded.height) == (40, 30)


def test_empty_file(tmp_path: Path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(path)


def test_truncated_png_and_jpeg():
    for fmt in ("PNG", "JPEG"):
        data = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)),
                          format=fmt)
        with pytest.raises(ImageError, match=r"truncated or corrupt|cannot read"):
            load_image(data[: len(data) // 2])


def test_text_named_png(tmp_path: Path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am not an image\n" * 10)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_image(path)


def test_unsupported_format_is_refused():
    data = _png_bytes(Image.fromarray(_gradient()), format="WEBP") if "WEBP" in Image.SAVE else b"RIFF\0\0\0\0WEBP"
    with pytest.raises(ImageError, match="supported formats"):
        load_image(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but carries no pixel data: only the header may be read."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError, match="decompression bomb"):  # beyond PIL's own hard limit
        load_image(_png_header_only(20000, 20000))
    with pytest.raises(ImageError, match="more than the 64,000,000 allowed"):  # our limit
        load_image(_png_header_only(9000, 8000))
    with pytest.raises(ImageError, match="largest side allowed is 16384"):
        load_image(_png_header_only(20000, 100))
    small_limit = Settings(max_image_pixels=1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_bytes(Image.new("L", (100, 100))), settings=small_limit)


def test_tiny_image_refused():
    with pytest.raises(ImageError, match="1x1"):
        load_image(_png_bytes(Image.new("RGB", (1, 1))))


def test_sixteen_bit_png_scaled_to_8_bits():
    ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
    loaded = load_image(_png_bytes(Image.fromarray(ramp)))
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb[..., 0].min() == 0 and loaded.rgb[..., 0].max() == 255
    assert np.all(np.diff(loaded.rgb[0, :, 0].astype(int)) >= 0)  # order preserved


def test_palette_cmyk_alpha_grayscale():
    rgb = _gradient()
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    assert load_image(_png_bytes(palette)).rgb.shape == (30, 40, 3)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    loaded = load_image(_png_bytes(cmyk, format="JPEG"))
    assert loaded.rgb.shape == (30, 40, 3)
    rgba = np.dstack([rgb, np.zeros((30, 40), np.uint8)])
    rgba[:, :20, 3] = 255
    loaded = load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    assert (loaded.rgb[:, 20:] == 0).all()  # transparent → black (ultrasound background)
    assert np.array_equal(loaded.rgb[:, :20], rgb[:, :20])
    gray = load_image(_png_bytes(Image.fromarray(rgb[..., 0])))
    assert np.array_equal(gray.rgb[..., 0], gray.rgb[..., 2]) and np.array_equal(gray.rgb[..., 0], rgb[..., 0])
    la = load_image(_png_bytes(Image.fromarray(rgb[..., 0]).convert("LA")))
    assert la.rgb.shape == (30, 40, 3)


def test_exif_orientation_applied():
    image = Image.fromarray(_gradient(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = load_image(_png_bytes(image, format="JPEG", exif=exif.tobytes()))
    assert (loaded.width, loaded.height) == (30, 40)
    assert any("EXIF orientation 6" in note for note in loaded.notes)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("L", (20, 20), color=c) for c in (10, 200, 90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    loaded = load_image(buffer.getvalue())
    assert loaded.format == "gif" and abs(int(loaded.rgb.mean()) - 10) <= 2
    assert any("3 frames; frame 1 used" in note for note in loaded.notes)


def _dicom_bytes(pixels: np.ndarray | None, **elements) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("us.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = UltrasoundImageStorage
    ds.Modality = "US"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_with_pixel_spacing(tmp_path: Path):
    pixels = (np.arange(32 * 48) % 256).astype(np.uint8).reshape(32, 48)
    path = tmp_path / "scan.dcm"
    path.write_bytes(_dicom_bytes(pixels, PixelSpacing=[0.2, 0.2]))
    loaded = load_image(path)
    assert loaded.format == "dicom" and loaded.rgb.shape == (32, 48, 3)
    assert np.array_equal(loaded.rgb[..., 1], pixels)
    assert loaded.pixel_spacing_mm == pytest.approx(0.2)


def test_dicom_ultrasound_regions_and_16_bit():
    from pydicom.dataset import Dataset

    region = Dataset()
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = 0.015  # cm per pixel
    region.PhysicalDeltaY = 0.015
    pixels = (np.arange(24 * 24, dtype=np.uint16) * 100).reshape(24, 24)
    loaded = load_image(_dicom_bytes(pixels, SequenceOfUltrasoundRegions=[region]))
    assert loaded.pixel_spacing_mm == pytest.approx(0.15)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.max() == 255 and loaded.rgb.min() == 0


def test_dicom_without_pixel_data():
    with pytest.raises(ImageError, match="no pixel data"):
        load_image(_dicom_bytes(None))


def test_dicom_with_short_pixel_data():
    data = _dicom_bytes(np.zeros((32, 32), np.uint8))
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.PixelData = b"\0" * 100
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ImageError, match="DICOM"):
        load_image(buffer.getvalue())


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
