"""Decode an uploaded or on-disk image into 8-bit RGB, refusing anything hostile with a clear :class:`ImageError`.

Accepted: PNG, JPEG, BMP, TIFF, GIF (first frame; animations are reduced to frame 1 and say so in ``notes``)
and ultrasound DICOM (pydicom; pixel spacing from ``PixelSpacing`` or ``SequenceOfUltrasoundRegions``).
EXIF orientation is applied. 16-bit / float images are rescaled to 8 bits, palette / CMYK / grayscale
become RGB, alpha is composited on black (the ultrasound background). Images larger than
``Settings.max_image_pixels`` or ``max_image_side`` are refused before their pixels are decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError
from core.settings import Settings

Image.init()  # register every plugin so the allow-list below can be checked
PIL_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "GIF") if f in Image.OPEN)
FORMAT_NAMES = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}
MIN_SIDE = 8  # pixels; smaller images carry nothing a model can read
_DEFAULTS = Settings()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``rgb`` is ``H x W x 3`` uint8, C-contiguous."""

    rgb: np.ndarray
    format: str  # png | jpeg | bmp | tiff | gif | dicom
    pixel_spacing_mm: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    sha256: str | None = None  # of the file's bytes as read (history: which input was analysed)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _limits(settings: Settings | None) -> tuple[int, int]:
    s = settings or _DEFAULTS
    return int(s.max_image_pixels), int(s.max_image_side)


def check_size(width: int, height: int, settings: Settings | None = None, *, what: str = "image") -> None:
    """Refuse absurd or tiny dimensions before decoding any pixels."""
    max_pixels, max_side = _limits(settings)
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has no pixels ({width}x{height})")
    if width > max_side or height > max_side:
        raise ImageError(f"{what} is {width}x{height} px; the largest side allowed is {max_side} px")
    if width * height > max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height:,} px, more than the {max_pixels:,} allowed "
            "(decompression bomb?)"
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{what} is only {width}x{height} px; at least {MIN_SIDE} px per side are needed")


def _read_bytes(source: Path | str | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<upload>"
    path = Path(source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path.name}", status_code=404) from None
    except IsADirectoryError:
        raise ImageError(f"{path.name} is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    return data, path.name


def _is_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def load_image(source: Path | str | bytes, *, settings: Settings | None = None) -> LoadedImage:
    """Decode ``source`` (a path or the file's bytes) into :class:`LoadedImage`; raises :class:`ImageError`."""
    data, name = _read_bytes(source)
    if not data:
        raise ImageError(f"{name}: the file is empty")
    image = _load_dicom(data, name, settings) if _is_dicom(data, name) else _load_pil(data, name, settings)
    return replace(image, sha256=hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------------------------- PIL formats


def _load_pil(data: bytes, name: str, settings: Settings | None) -> LoadedImage:
    notes: list[str] = []
    with warnings.catch_warnings():
        # our own size check replaces PIL's global MAX_IMAGE_PIXELS warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(PIL_FORMATS))
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: refused, image too large (decompression bomb): more than the "
                             f"{_limits(settings)[0]:,} pixels allowed") from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{name}: not a recognised image; supported formats are PNG, JPEG, BMP, TIFF, GIF and DICOM"
            ) from None
        except (OSError, SyntaxError, ValueError, KeyError, EOFError) as exc:
            raise ImageError(f"{name}: cannot read image header ({exc})") from None
        fmt = FORMAT_NAMES.get(image.format or "", (image.format or "unknown").lower())
        width, height = image.size
        check_size(width, height, settings, what=name)
        frames = int(getattr(image, "n_frames", 1) or 1)
        if frames > 1:
            notes.append(f"{fmt} has {frames} frames; frame 1 used")
        try:
            image.seek(0)
            image.load()
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: refused, image too large (decompression bomb): more than the "
                             f"{_limits(settings)[0]:,} pixels allowed") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
            raise ImageError(f"{name}: the {fmt.upper()} data is truncated or corrupt ({exc})") from None
    try:
        orientation = image.getexif().get(0x0112)
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
            notes.append(f"EXIF orientation {orientation} applied")
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        notes.append("EXIF orientation unreadable; ignored")
    rgb = _pil_to_rgb8(image, name)
    return LoadedImage(rgb=rgb, format=fmt, pixel_spacing_mm=None, notes=tuple(notes))


def _pil_to_rgb8(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode in ("RGB",):
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = to_uint8(np.asarray(image))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.ascontiguousarray(np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8))
    try:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except (ValueError, OSError) as exc:
        raise ImageError(f"{name}: cannot convert colour mode {mode} to RGB ({exc})") from None


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Any-depth grayscale → uint8: values already in 0..255 (or floats in 0..1) kept, otherwise min–max scaled."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if np.issubdtype(np.asarray(array).dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- DICOM


def _load_dicom(data: bytes, name: str, settings: Settings | None) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    notes: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise ImageError(f"{name}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{name}: the DICOM file has no pixel data (a structured report or header only?)")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(cols, rows, settings, what=name)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing codec, truncated data, inconsistent header
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        hint = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise ImageError(f"{name}: cannot decode the DICOM pixel data{hint}: {exc}") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
        notes.append(f"DICOM has {frames} frames; frame 1 used")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = to_uint8_channels(apply_color_lut(pixels, ds))
    elif samples >= 3 or pixels.ndim == 3:
        rgb = to_uint8_channels(pixels[..., :3])
    else:
        gray = _dicom_gray(pixels, ds, photometric)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if rgb.shape[0] != rows or rgb.shape[1] != cols:
        raise ImageError(f"{name}: DICOM pixel data ({rgb.shape[1]}x{rgb.shape[0]}) disagrees with its header")
    return LoadedImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        format="dicom",
        pixel_spacing_mm=dicom_pixel_spacing_mm(ds),
        notes=tuple(notes),
    )


def to_uint8_channels(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255:
        bits = max(8, int(np.ceil(np.log2(float(a.max()) + 1))))
        return np.clip(np.rint(a.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    return to_uint8(a)


def _dicom_gray(pixels: np.ndarray, ds, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(np.asarray(pixels), ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    gray = to_uint8(values)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray


def dicom_pixel_spacing_mm(ds) -> float | None:
    """Millimetres per pixel: ``PixelSpacing`` (mean of row/col), else the first ultrasound region in cm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = ds.get(keyword)
        if spacing is not None:
            try:
                values = [float(v) for v in spacing]
            except (TypeError, ValueError):
                continue
            if values and all(v > 0 and np.isfinite(v) for v in values):
                return float(np.mean(values[:2]))
    regions = ds.get("SequenceOfUltrasoundRegions")
    for region in regions or ():
        try:
            units_x = int(region.get("PhysicalUnitsXDirection", 0))
            units_y = int(region.get("PhysicalUnitsYDirection", 0))
            dx = abs(float(region.get("PhysicalDeltaX", 0.0)))
            dy = abs(float(region.get("PhysicalDeltaY", 0.0)))
        except (TypeError, ValueError):
            continue
        if units_x == 3 and units_y == 3 and dx > 0 and dy > 0:  # 3 = centimetres
            return float((dx + dy) / 2.0 * 10.0)
    return None
