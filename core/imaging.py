"""Decode an uploaded or on-disk image into 8-bit RGB, refusing anything hostile with a clear :class:`ImageError`.

Accepted: PNG, JPEG, BMP, TIFF, GIF, ultrasound DICOM (pydicom; pixel spacing from ``PixelSpacing`` or
``SequenceOfUltrasoundRegions``) and cine videos (MP4 / AVI / MOV / WebM / MKV through PyAV). A multi-frame file gives
one frame: ``frame_index`` (default the first, and ``notes`` say the file has more); a multi-frame DICOM decodes only
that frame, a video decodes up to it (``Settings.max_frames`` / ``max_decoded_mb`` bound the work, every frame counted
at its real decoded size). A DICOM pixel spacing outside :mod:`core.calibration`'s band is dropped with a note.
EXIF orientation is applied. 16-bit / float images are rescaled to 8 bits, palette / CMYK / grayscale
become RGB, alpha is composited on black (the ultrasound background). Images larger than
``Settings.max_image_pixels`` or ``max_image_side`` are refused before their pixels are decoded.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageError, RequestError, UUSICError
from core.settings import Settings

Image.init()  # register every plugin so the allow-list below can be checked
PIL_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "GIF") if f in Image.OPEN)
FORMAT_NAMES = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}
MIN_SIDE = 8  # pixels; smaller images carry nothing a model can read
_CHUNK_ELEMENTS = 1 << 20  # values converted per step (8 MB of float64 at most)
_DEFAULTS = Settings()


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: ``rgb`` is ``H x W x 3`` uint8, C-contiguous."""

    rgb: np.ndarray
    format: str  # png | jpeg | bmp | tiff | gif | dicom
    pixel_spacing_mm: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    sha256: str | None = None  # of the file's bytes as read (history: which input was analysed)
    frame_index: int = 0  # which frame of the file this is
    frame_count: int = 1  # frames in the file (1 for a still image)
    fps: float | None = None  # frames per second of a cine (None: unknown or a still image)
    pixel_spacing_source: str | None = None  # "dicom" | "dicom_region" (core.calibration) when spacing is known
    pixel_spacing_note: str | None = None  # why a spacing the file states was dropped (outside the band, malformed)

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


@dataclass(frozen=True)
class FrameInfo:
    """How many frames a file has, at what rate and size (:func:`probe_frames`)."""

    frame_count: int
    fps: float | None
    width: int
    height: int
    format: str

    def as_dict(self) -> dict[str, Any]:
        return {"frame_count": self.frame_count, "fps": self.fps, "width": self.width, "height": self.height,
                "format": self.format}


def load_image(source: Path | str | bytes, *, settings: Settings | None = None, frame_index: int | None = None,
               name: str | None = None) -> LoadedImage:
    """Decode ``source`` (a path or the file's bytes) into :class:`LoadedImage`; raises :class:`ImageError`.

    ``frame_index``: the frame of a multi-frame file (None = the first, noted as such); beyond the file's frames →
    :class:`RequestError` (field ``frame_index``). ``name``: the file name errors use for bytes (an upload's)."""
    cached = _cached_frame(source, frame_index)
    if cached is not None:
        return cached
    data, read_name = _read_bytes(source)
    name = name or read_name
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        if _is_video(data, name):
            image = next(_video_frames(data, name, settings, [frame_index], field="frame_index"))
        elif _is_dicom(data, name):
            image = _load_dicom(data, name, settings, frame_index)
        else:
            image = _load_pil(data, name, settings, frame_index)
    except UUSICError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other decoder failure on untrusted bytes is the file's fault
        raise ImageError(f"{name}: the image cannot be decoded ({_reason(exc)})") from None
    return replace(image, sha256=hashlib.sha256(data).hexdigest())


def probe_frames(source: Path | str | bytes, *, settings: Settings | None = None,
                 name: str | None = None) -> FrameInfo:
    """Frame count, rate, size and format of ``source``: a video's header only, other files' first frame."""
    data, read_name = _read_bytes(source)
    name = name or read_name
    if data and _is_video(data, name):
        try:
            return _probe_video(data, name, settings)
        except UUSICError:
            raise
        except Exception as exc:  # noqa: BLE001 - a demuxer failure on untrusted bytes is the file's fault
            raise ImageError(f"{name}: the video cannot be read ({_reason(exc)})") from None
    image = load_image(data if data else source, settings=settings, frame_index=0, name=name)
    return FrameInfo(image.frame_count, image.fps, image.width, image.height, image.format)


def frame_out_of_range(frame_index: int, frame_count: int, name: str) -> RequestError:
    """The one error for a frame the file does not have."""
    last = f"0..{frame_count - 1}" if frame_count > 1 else "only 0"
    return RequestError(f"frame_index {frame_index} is out of range: {name} has {frame_count} frame(s) ({last})",
                        field="frame_index")


def frames_missing(decoded: int, promised: int, name: str) -> ImageError:
    """The error of every frame a video's header promises but the file ends (or breaks off) before."""
    last = f"frame {decoded}" if decoded == promised - 1 else f"frames {decoded}..{promised - 1}"
    return ImageError(f"{name}: the video ends after {decoded} of the {promised} frames its header promises "
                      f"({last} cannot be decoded)", field="frame_index")


def _frame_note(kind: str, frame_count: int, frame_index: int | None) -> list[str]:
    """``notes`` for a multi-frame file: how many frames it has, and which one this is."""
    if frame_count <= 1:
        return []
    if frame_index is None:
        return [f"{kind} has {frame_count} frames; frame 1 used (choose another with frame_index)"]
    return [f"{kind} has {frame_count} frames; this is frame {frame_index + 1} of {frame_count}"]


def _check_frame_index(frame_index: int | None, frame_count: int, name: str) -> int:
    index = int(frame_index or 0)
    if index < 0 or index >= frame_count:
        raise frame_out_of_range(index, frame_count, name)
    return index


def _max_decoded_bytes(settings: Settings | None) -> int:
    return int((settings or _DEFAULTS).max_decoded_mb) * 1024 * 1024


def _max_frames(settings: Settings | None) -> int:
    return int((settings or _DEFAULTS).max_frames)


class DecodeBudget:
    """The RGB bytes of the frames one call decodes, each counted at its real decoded size (never the header's) by
    :meth:`spend` before its pixels are converted: past ``Settings.max_decoded_mb`` → :class:`RequestError` (413,
    naming ``field``). A header that claims small frames cannot make a call hold more than the budget."""

    def __init__(self, settings: Settings | None, name: str, field: str = "frames",
                 declared: tuple[int, int] | None = None):
        self.limit, self.name, self.field, self.declared = _max_decoded_bytes(settings), name, field, declared
        self.spent = 0

    def spend(self, width: int, height: int, position: int) -> None:
        """Count one decoded frame (``position``: its index in the file) of ``width`` x ``height`` px."""
        self.spent += int(width) * int(height) * 3
        if self.spent <= self.limit:
            return
        lie = ""
        if self.declared is not None and self.declared != (width, height):
            lie = f" (its header says {self.declared[0]}x{self.declared[1]} px)"
        raise RequestError(f"{self.name}: the frame at index {position} decodes to {width}x{height} px{lie}; the "
                           f"frames decoded up to it take {self.spent:,} bytes of RGB, more than the "
                           f"{self.limit // 1048576:,} MB ({self.limit:,} bytes) allowed in one call "
                           "(UUSIC_MAX_DECODED_MB): choose fewer or earlier frames", field=self.field, status_code=413)


# --------------------------------------------------------------------------------------------- PIL formats


def _load_pil(data: bytes, name: str, settings: Settings | None, frame_index: int | None = None,
              budget: DecodeBudget | None = None) -> LoadedImage:
    notes: list[str] = []
    with warnings.catch_warnings():
        # our own size check replaces PIL's global MAX_IMAGE_PIXELS warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image: Image.Image = Image.open(io.BytesIO(data), formats=list(PIL_FORMATS))
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: refused, image too large (decompression bomb): more than the "
                             f"{_limits(settings)[0]:,} pixels allowed") from None
        except UnidentifiedImageError:
            raise ImageError(
                f"{name}: not a recognised image; supported formats are PNG, JPEG, BMP, TIFF, GIF, DICOM and "
                "cine videos (MP4, MOV, AVI, WebM, MKV)"
            ) from None
        except (OSError, SyntaxError, ValueError, KeyError, EOFError) as exc:
            raise ImageError(f"{name}: cannot read image header ({exc})") from None
        fmt = FORMAT_NAMES.get(image.format or "", (image.format or "unknown").lower())
        width, height = image.size
        check_size(width, height, settings, what=name)
        frames = int(getattr(image, "n_frames", 1) or 1)
        index = _check_frame_index(frame_index, frames, name)
        if index >= max(1, _max_frames(settings)):  # GIF / TIFF frames are reached one after the other
            raise RequestError(f"frame_index {index}: only the first {_max_frames(settings)} frames of {name} are "
                               "read (UUSIC_MAX_FRAMES)", field="frame_index")
        notes += _frame_note(fmt, frames, frame_index)
        _seek_and_load(image, index, name, fmt, settings, budget)
    try:
        orientation = image.getexif().get(0x0112)
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
            notes.append(f"EXIF orientation {orientation} applied")
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        notes.append("EXIF orientation unreadable; ignored")
    rgb = _pil_to_rgb8(image, name)
    return LoadedImage(rgb=rgb, format=fmt, pixel_spacing_mm=None, notes=tuple(notes), frame_index=index,
                       frame_count=frames)


def _seek_and_load(image: Image.Image, index: int, name: str, fmt: str, settings: Settings | None,
                   budget: DecodeBudget | None) -> None:
    """Go to frame ``index`` and decode it, after its own size (a TIFF page may be larger than the first) passed the
    pixel limits and, for several frames in one call, the decode budget."""
    try:
        image.seek(index)
        if index:
            check_size(image.width, image.height, settings, what=f"{name} frame {index + 1}")
        if budget is not None:
            budget.spend(image.width, image.height, index)
        image.load()
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: refused, image too large (decompression bomb): more than the "
                         f"{_limits(settings)[0]:,} pixels allowed") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        if isinstance(exc, UUSICError):
            raise
        raise ImageError(f"{name}: the {fmt.upper()} data is truncated or corrupt ({exc})") from None


def _pil_to_rgb8(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode in ("RGB",):
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if mode in ("L", "1"):
        gray = np.asarray(image.convert("L"), dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = _to_uint8_chunked(_PilRows(image))  # row blocks straight from PIL: no full-size numpy copy
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


class _PilRows:
    """A single-band PIL image read as numpy row blocks (``image[rows]``), for :func:`_to_uint8_chunked`."""

    def __init__(self, image: Image.Image):
        self.image, self.shape, self.ndim = image, (image.height, image.width), 2

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.image.crop((0, rows.start, self.image.width, rows.stop)))


def _row_slices(rows: int, row_elements: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _to_uint8_chunked(array: np.ndarray | _PilRows, transform: Callable[[np.ndarray], np.ndarray] | None = None, *,
                      channels: bool = False) -> np.ndarray:
    """``transform(array)`` mapped to uint8, a few rows at a time (never a full-size float copy).

    Two passes over row blocks of about ``_CHUNK_ELEMENTS`` values: the first finds the value range, the second
    scales into a preallocated uint8 array; ``transform`` (pointwise, e.g. a DICOM rescale / window) runs per block.
    Gray rule (:func:`to_uint8`): 0..255 kept, floats in 0..1 times 255, otherwise min–max; non-finite values
    count as 0. ``channels`` (:func:`to_uint8_channels`): integers above 255 are scaled by their bit depth.
    The arithmetic per value is the one of release 2 (float64), so results are identical.
    """
    a = array if isinstance(array, _PilRows) else np.asarray(array)
    if a.ndim == 0:
        return _to_uint8_chunked(np.asarray(a).reshape(1), transform, channels=channels).reshape(())
    row_elements = int(np.prod(a.shape[1:], dtype=np.int64)) if a.ndim > 1 else 1
    blocks = _row_slices(int(a.shape[0]), row_elements)
    apply = transform or (lambda block: block)
    lo, hi = math.inf, -math.inf
    floating = integer = False
    for index, rows in enumerate(blocks):
        block = np.asarray(apply(a[rows]))
        if index == 0:
            floating = bool(np.issubdtype(block.dtype, np.floating))
            integer = bool(np.issubdtype(block.dtype, np.integer))
        if block.size == 0:
            continue
        if floating:
            finite = np.isfinite(block)
            if not finite.all():
                block = np.where(finite, block, 0.0)
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if lo > hi:  # no values at all
        lo = hi = 0.0
    offset, factor = 0.0, 1.0
    if channels and integer and hi > 255:
        bits = max(8, int(np.ceil(np.log2(hi + 1))))
        factor = 255.0 / (2**bits - 1)
    elif floating and lo >= 0.0 and hi <= 1.0:
        factor = 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif hi > lo:
        offset, factor = lo, 255.0 / (hi - lo)
    else:
        factor = 0.0
    out: np.ndarray | None = None
    for rows in blocks:
        values = np.asarray(apply(a[rows])).astype(np.float64)
        if floating:
            finite = np.isfinite(values)
            if not finite.all():
                values = np.where(finite, values, 0.0)
        scaled = (values - offset) * factor if factor else np.zeros_like(values)
        if out is None:
            out = np.empty((a.shape[0], *values.shape[1:]), dtype=np.uint8)
        out[rows] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if out is None:
        out = np.zeros(a.shape, dtype=np.uint8)
    return out


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Any-depth grayscale → uint8: values already in 0..255 (or floats in 0..1) kept, otherwise min–max scaled.

    Works through the array a few rows at a time: a large 16-bit image never gets a full-size float64 copy."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    return _to_uint8_chunked(a)


# --------------------------------------------------------------------------------------------------- videos
# Cine loops as video files, through PyAV (FFmpeg). Only the demuxers below are accepted; the stream's declared size
# passes check_size before any frame is decoded, every decoded frame is checked again, and a frame is reached by
# decoding the ones before it: at most Settings.max_frames of them and Settings.max_decoded_mb of RGB in all — counted
# at each frame's real decoded size (DecodeBudget), never the header's. A header's frame count is only a claim: a
# video that ends sooner fails the missing frames (frames_missing), and a count of 4,294,967,295 builds nothing.

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv")
STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")  # what the uploaders offer
_MAX_COUNTED_PACKETS = 100_000
_STILL_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")  # ISO-BMFF images, not cine loops


def _video_demuxer(data: bytes) -> str | None:
    """The FFmpeg demuxer the file's signature names (the only one it is opened with), else None."""
    head = data[:16]
    if head[4:8] == b"ftyp":
        return None if head[8:12] in _STILL_BRANDS else "mp4"
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime without ftyp
        return "mov"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return "matroska"
    return None


def _is_video(data: bytes, name: str) -> bool:
    """A video signature, or a video file name on bytes that are no DICOM (refused later when unreadable)."""
    return _video_demuxer(data) is not None or (name.lower().endswith(VIDEO_SUFFIXES) and not _is_dicom(data, ""))


def _open_video(data: bytes, name: str, settings: Settings | None) -> tuple[Any, Any, str]:
    """(container, its first video stream, format name) after the demuxer and declared size checks."""
    try:
        import av
    except ImportError:
        raise ImageError(f"{name}: video files need PyAV (pip install av), which is not installed") from None
    demuxer = _video_demuxer(data)
    if demuxer is None:  # never let FFmpeg guess: a playlist demuxer (HLS, concat) would open other files
        raise ImageError(f"{name}: not a readable video (no MP4, MOV, AVI, WebM or MKV signature)")
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer)
    except Exception as exc:  # noqa: BLE001 - not a video FFmpeg can read
        raise ImageError(f"{name}: not a readable video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise ImageError(f"{name}: the file has no video stream")
    stream = container.streams.video[0]
    try:
        check_size(int(stream.codec_context.width or 0), int(stream.codec_context.height or 0), settings, what=name)
    except ImageError:
        container.close()
        raise
    return container, stream, _video_format(demuxer, data, name)


def _video_format(demuxer: str, data: bytes, name: str) -> str:
    """mp4 | mov | avi | webm | mkv (the stored upload's extension)."""
    if demuxer == "matroska":
        return "webm" if b"webm" in data[:64] and not name.lower().endswith(".mkv") else "mkv"
    if demuxer == "mp4" and (name.lower().endswith(".mov") or data[8:12] == b"qt  "):
        return "mov"
    return demuxer


def _video_fps(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    try:
        fps = float(rate) if rate else None
    except (TypeError, ZeroDivisionError):
        return None
    return round(fps, 3) if fps and math.isfinite(fps) and 0 < fps <= 1000 else None


def _video_frame_count(container: Any, stream: Any, name: str) -> int:
    """The header's frame count, else the video packets counted by demuxing (nothing decoded; at most
    ``_MAX_COUNTED_PACKETS``: a file of countless tiny packets is refused, not counted for minutes)."""
    if int(stream.frames or 0) > 0:
        return int(stream.frames)
    count = 0
    for packet in container.demux(stream):
        count += 1 if packet.size else 0
        if count > _MAX_COUNTED_PACKETS:
            raise ImageError(f"{name}: the video has more than {_MAX_COUNTED_PACKETS:,} frames")
    if count < 1:  # nothing to decode (and nothing to seek back to)
        raise ImageError(f"{name}: the video has no frames")
    container.seek(0)
    return count


def _probe_video(data: bytes, name: str, settings: Settings | None) -> FrameInfo:
    container, stream, fmt = _open_video(data, name, settings)
    with container:
        count = _video_frame_count(container, stream, name)
        if count < 1:
            raise ImageError(f"{name}: the video has no frames")
        return FrameInfo(count, _video_fps(stream), int(stream.codec_context.width),
                         int(stream.codec_context.height), fmt)


def _video_frames(data: bytes, name: str, settings: Settings | None, indices: Sequence[int | None], *,
                  field: str = "frames") -> Iterator[LoadedImage]:
    """The frames ``indices`` (None = the first) of a video, decoded in one pass up to the highest one and yielded
    in frame order. Every frame decoded on the way is checked and counted at its real size (:class:`DecodeBudget`,
    errors naming ``field``), whatever the header declared."""
    container, stream, fmt = _open_video(data, name, settings)
    with container:
        count = _video_frame_count(container, stream, name)  # at least 1: a video of no frames is refused there
        wanted = [int(i or 0) for i in indices]
        last = max(wanted)
        if last >= count:
            raise frame_out_of_range(last, count, name)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        _check_video_budget(name, last, width * height * 3, settings, field)
        budget = DecodeBudget(settings, name, field, declared=(width, height))
        fps, todo, decoded = _video_fps(stream), dict.fromkeys(wanted), 0
        for position, frame in enumerate(_decoded_until_broken(container, stream)):
            if position > last:
                break
            decoded = position + 1
            check_size(frame.width, frame.height, settings, what=f"{name} frame {position + 1}")
            budget.spend(frame.width, frame.height, position)  # the real size, before it is converted to RGB
            if position not in todo:
                continue
            rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
            for index in (i for i in indices if int(i or 0) == position):
                yield LoadedImage(rgb=rgb, format=fmt, notes=tuple(_frame_note("video", count, index)),
                                  frame_index=position, frame_count=count, fps=fps)
            del todo[position]
        if todo:  # the header promised more frames than could be decoded
            raise frames_missing(decoded, count, name)


def _decoded_until_broken(container: Any, stream: Any) -> Iterator[Any]:
    """The stream's frames; a file that breaks off after its first frame (truncated, corrupt tail) ends there, so the
    frames before the break stay usable (the first frame's failure is the file's: raised)."""
    frames = container.decode(stream)
    decoded = 0
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - FFmpeg's errors on untrusted bytes
            if decoded == 0:
                raise
            return
        decoded += 1
        yield frame


def _check_video_budget(name: str, last: int, frame_bytes: int, settings: Settings | None,
                        field: str = "frame_index") -> None:
    """Reaching frame ``last`` decodes every frame before it: bounded by max_frames and max_decoded_mb (by the
    header's frame size here, by arithmetic; each decoded frame is counted again at its real size)."""
    if last >= _max_frames(settings):
        raise RequestError(f"{field} {last}: only the first {_max_frames(settings)} frames of {name} are "
                           "decoded (UUSIC_MAX_FRAMES)", field=field)
    if (last + 1) * frame_bytes > _max_decoded_bytes(settings):
        raise RequestError(f"{field} {last}: reaching it decodes {(last + 1) * frame_bytes / 1048576:,.0f} MB "
                           f"of frames, more than the {_max_decoded_bytes(settings) // 1048576:,} MB allowed "
                           "(UUSIC_MAX_DECODED_MB)", field=field)


# --------------------------------------------------------------------------------------------------- DICOM
# Everything read from a DICOM header is untrusted: a tag may be missing, multi-valued, non-numeric or absurd. The
# structure (Rows, Columns, SamplesPerPixel, BitsAllocated, NumberOfFrames, a palette's LUT) must be sound, else the
# file is refused with an ImageError naming the tag; display and measurement hints (window, rescale, pixel spacing,
# ultrasound regions) that cannot be used are ignored with a note. Only the requested frame is ever decoded, and only
# after its size (rows x columns x samples x bytes) has passed the pixel limits; a deflated data set is inflated only
# as far as its header and that one frame need (the frames before it are inflated in steps and dropped, at most
# Settings.max_decoded_mb of them).

DEFLATE_HEADER_LIMIT = 8 * 1024 * 1024  # bytes: a deflated file's inflated header (all before the pixel data)
_DEFLATE_PROBE = 64 * 1024
_BYTES_PER_PIXEL_BUDGET = 4  # a decoded frame may take at most 4 bytes per allowed pixel (e.g. 16-bit RGB: 2/3)
_DROP_STEP = 4 * 1024 * 1024  # bytes inflated at a time while skipping the frames before the requested one


@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    samples: int
    bits: int
    frames: int

    @property
    def frame_bytes(self) -> int:
        return (self.rows * self.cols * self.samples * self.bits + 7) // 8

    @property
    def total_bytes(self) -> int:
        """Bytes of all the frames the header declares (1-bit frames are packed end to end): arithmetic only."""
        return (self.frames * self.rows * self.cols * self.samples * self.bits + 7) // 8


_UNREADABLE = object()


def _dicom_value(ds: Any, keyword: str) -> Any:
    try:
        return ds[keyword].value if keyword in ds else None
    except Exception:  # noqa: BLE001 - a value pydicom cannot even convert
        return _UNREADABLE


def _is_multi(value: Any) -> bool:
    return not isinstance(value, (str, bytes)) and isinstance(value, Sequence)


def _dicom_int(ds: Any, keyword: str, name: str, default: int | None = None) -> int:
    """An integer tag that the pixel layout depends on: exactly one whole number, else :class:`ImageError`."""
    value = _dicom_value(ds, keyword)
    if value is None or value == "":
        if default is None:
            raise ImageError(f"{name}: the DICOM header has no {keyword}; the pixel data cannot be laid out")
        return default
    if value is _UNREADABLE:
        raise ImageError(f"{name}: the DICOM {keyword} value is unreadable")
    if _is_multi(value):
        raise ImageError(f"{name}: the DICOM {keyword} has {len(value)} values; exactly one is expected")
    try:
        number = float(str(value).strip()) if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: the DICOM {keyword} is {str(value)[:40]!r}, not a whole number") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ImageError(f"{name}: the DICOM {keyword} is {str(value)[:40]!r}, not a whole number")
    return int(number)


def _dicom_float(ds: Any, keyword: str) -> float | None:
    """One finite number, or None when the tag is absent; ValueError (with a reason) when it is malformed."""
    value = _dicom_value(ds, keyword)
    if value is None or value == "":
        return None
    if value is _UNREADABLE or _is_multi(value):
        raise ValueError(f"{keyword} is unreadable or has several values")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} is {str(value)[:40]!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{keyword} is not a finite number")
    return number


def _dicom_geometry(ds: Any, name: str, settings: Settings | None) -> _Geometry:
    """The pixel layout from the header, checked against the limits before any pixel is decoded."""
    rows = _dicom_int(ds, "Rows", name, default=0)
    cols = _dicom_int(ds, "Columns", name, default=0)
    check_size(cols, rows, settings, what=name)
    samples = _dicom_int(ds, "SamplesPerPixel", name, default=1)
    if samples not in (1, 3):
        raise ImageError(f"{name}: DICOM SamplesPerPixel {samples} is not supported (1 or 3)")
    float_pixels = "PixelData" not in ds and ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
    default_bits = (64 if "DoubleFloatPixelData" in ds else 32) if float_pixels else None
    bits = _dicom_int(ds, "BitsAllocated", name, default=default_bits)
    if bits not in (1, 8, 16, 32, 64):
        raise ImageError(f"{name}: DICOM BitsAllocated {bits} is not supported (1, 8, 16, 32 or 64)")
    frames = _dicom_int(ds, "NumberOfFrames", name, default=1)
    if frames < 1:
        raise ImageError(f"{name}: DICOM NumberOfFrames is {frames}; at least 1 is needed")
    geometry = _Geometry(rows, cols, samples, bits, frames)
    budget = _limits(settings)[0] * _BYTES_PER_PIXEL_BUDGET
    if geometry.frame_bytes > budget:
        raise ImageError(f"{name}: one DICOM frame of {cols}x{rows} px x {samples} sample(s) x {bits} bits would "
                         f"take {geometry.frame_bytes:,} bytes; at most {budget:,} are decoded")
    return geometry


class _Inflater:
    """A raw-deflate stream inflated on demand, never past the size asked for."""

    def __init__(self, data: bytes, offset: int):
        self._data, self._pos = memoryview(data), offset
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._tail = b""
        self.out = bytearray()

    @property
    def finished(self) -> bool:
        return self._zlib.eof or (self._pos >= len(self._data) and not self._tail)

    def fill(self, size: int) -> None:
        """Inflate until ``size`` bytes are out or the stream ends (``zlib.error`` when it is corrupt)."""
        while len(self.out) < size and not self.finished:
            if not self._tail:
                self._tail = bytes(self._data[self._pos:self._pos + _DEFLATE_PROBE])
                self._pos += _DEFLATE_PROBE
            self.out += self._zlib.decompress(self._tail, size - len(self.out))
            self._tail = self._zlib.unconsumed_tail

    def drop(self, count: int) -> None:
        """Forget the next ``count`` bytes (those in ``out`` first), inflating the rest in bounded steps."""
        while count > 0:
            if not self.out:
                self.fill(min(count, _DROP_STEP))
                if not self.out:
                    return  # the stream ended early: the caller finds the frame short
            step = min(count, len(self.out))
            del self.out[:step]
            count -= step


def _read_header(buffer: bytes) -> tuple[Any, int | None]:
    """The data set before the pixel data in an explicit-VR little-endian ``buffer``, and the offset of the pixel
    data element (None when ``buffer`` ends before one)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    stream = DicomBytesIO(buffer)
    stream.is_little_endian, stream.is_implicit_VR = True, False
    header = read_dataset(cast(BinaryIO, stream), False, True,
                          stop_when=lambda tag, vr, length: int(tag) >> 16 == 0x7FE0)
    at = stream.tell()
    if at + 12 <= len(buffer):
        group, _ = struct.unpack("<HH", buffer[at:at + 4])
        if group == 0x7FE0:
            return header, at
    return header, None


def _read_deflated(data: bytes, offset: int, meta: Any, name: str, settings: Settings | None,
                   frame_index: int | None) -> tuple[Any, int | None]:
    """A deflated data set inflated with a cap: first its header (at most DEFLATE_HEADER_LIMIT), then exactly the
    requested frame of its pixel data, whose size the header's (checked) dimensions give. Returns the data set
    (holding that one frame) and the file's frame count (None without pixel data)."""
    from pydicom.uid import ExplicitVRLittleEndian

    inflater, probe = _Inflater(data, offset), _DEFLATE_PROBE
    try:
        while True:
            inflater.fill(probe)
            header, at = _read_header(bytes(inflater.out))
            if at is not None or inflater.finished:
                break
            if probe >= DEFLATE_HEADER_LIMIT:
                raise ImageError(f"{name}: the deflated DICOM header is larger than {DEFLATE_HEADER_LIMIT:,} bytes")
            probe *= 4
        header.file_meta = meta
        if at is None:
            return header, None
        group, element = struct.unpack("<HH", inflater.out[at:at + 4])
        if (group, element) != (0x7FE0, 0x0010):
            raise ImageError(f"{name}: float pixel data in a deflated DICOM file is not supported")
        vr = bytes(inflater.out[at + 4:at + 6])
        length = struct.unpack("<I", inflater.out[at + 8:at + 12])[0]
        if vr not in (b"OB", b"OW") or length == 0xFFFFFFFF:
            raise ImageError(f"{name}: a deflated DICOM file must carry native (uncompressed) pixel data")
        geometry = _dicom_geometry(header, name, settings)
        _check_native_length(length, geometry, name)
        index = _check_frame_index(frame_index, geometry.frames, name)
        skip = index * geometry.frame_bytes
        if skip + geometry.frame_bytes > _max_decoded_bytes(settings):
            raise ImageError(f"{name}: reaching frame {index + 1} of this deflated DICOM means inflating "
                             f"{skip + geometry.frame_bytes:,} bytes, more than the {_max_decoded_bytes(settings):,} "
                             "allowed (UUSIC_MAX_DECODED_MB)")
        inflater.fill(at + 12)
        del inflater.out[:at + 12]  # the pixel data from here on
        inflater.drop(skip)
        inflater.fill(geometry.frame_bytes)
    except zlib.error as exc:
        raise ImageError(f"{name}: the deflated DICOM data is corrupt ({exc})") from None
    pixels = bytes(inflater.out[:geometry.frame_bytes])
    if len(pixels) < geometry.frame_bytes or length < skip + geometry.frame_bytes:
        raise ImageError(f"{name}: the DICOM pixel data is shorter than its header declares "
                         f"({min(len(pixels), max(0, length - skip)):,} of {geometry.frame_bytes:,} bytes)")
    header.PixelData = pixels
    header["PixelData"].VR = "OW" if geometry.bits > 8 else "OB"
    if geometry.frames > 1:
        header.NumberOfFrames = 1
    meta = copy.copy(meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated now
    header.file_meta = meta
    return header, geometry.frames


def _check_native_length(length: int, geometry: _Geometry, name: str) -> None:
    """Uncompressed pixel data must hold the frames the header declares, by arithmetic before any is decoded: a whole
    frame more is refused (a bomb's shape), and so is less (a NumberOfFrames that lies, e.g. 4,294,967,295)."""
    if length >= (geometry.frames + 1) * geometry.frame_bytes:
        raise ImageError(f"{name}: the DICOM pixel data is {length:,} bytes, more than the {geometry.frames} "
                         f"frame(s) of {geometry.cols}x{geometry.rows} px its header declares")
    if length < geometry.total_bytes:
        raise ImageError(f"{name}: cannot decode the DICOM pixel data: its {length:,} bytes hold "
                         f"{length // max(1, geometry.frame_bytes):,} whole frame(s) of {geometry.cols}x"
                         f"{geometry.rows} px, fewer than the {geometry.frames:,} its header declares (NumberOfFrames)")


def _check_fragments(ds: Any, geometry: _Geometry, name: str) -> None:
    """Encapsulated pixel data needs at least one fragment per frame the header declares (counted by walking the
    item headers: no frame is decoded); a NumberOfFrames beyond that lies and is refused."""
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    if geometry.frames == 1:
        return
    try:
        buffer = io.BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        fragments = parse_fragments(buffer)[0]
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{name}: the compressed DICOM pixel data is malformed ({_reason(exc)})") from None
    if fragments < geometry.frames:
        raise ImageError(f"{name}: the compressed DICOM pixel data holds at most {fragments:,} frame(s), fewer than "
                         f"the {geometry.frames:,} its header declares (NumberOfFrames)")


def _file_meta(data: bytes) -> tuple[Any, str | None, int]:
    """(file meta, TransferSyntaxUID, offset of the data set) of a DICOM file; (None, None, 0) without readable
    file meta (dcmread then guesses, or refuses)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        stream = cast(BinaryIO, DicomBytesIO(data))
        read_preamble(stream, True)
        meta = _read_file_meta_info(stream)
        return meta, meta.get("TransferSyntaxUID"), stream.tell()
    except Exception:  # noqa: BLE001 - untrusted bytes: no file meta
        return None, None, 0


def check_inflated_size(data: bytes, name: str, max_bytes: int) -> None:
    """A deflated DICOM's whole data set inflated in bounded steps and counted (nothing kept): refused (413) past
    ``max_bytes`` before anything reads it whole; corrupt → ImageError. Other files pass untouched."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    _, syntax, offset = _file_meta(data)
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater, total = _Inflater(data, offset), 0
    try:
        while not inflater.finished:
            inflater.fill(_DROP_STEP)
            if not inflater.out and not inflater.finished:  # no step forward: never loop
                raise ImageError(f"{name}: the deflated DICOM data set cannot be inflated")
            total += len(inflater.out)
            inflater.out.clear()
            if total > max_bytes:
                raise ImageError(f"{name}: the deflated DICOM inflates to more than {max_bytes:,} bytes; it cannot "
                                 "be read (UUSIC_MAX_DECODED_MB)", status_code=413)
    except zlib.error as exc:
        raise ImageError(f"{name}: the deflated DICOM data is corrupt ({exc})") from None


def _read_dicom(data: bytes, name: str, settings: Settings | None,
                frame_index: int | None = None) -> tuple[Any, int | None]:
    """The data set, and for a deflated file (inflated to the one requested frame) its real frame count."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta, syntax, offset = _file_meta(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every odd value; we check what we use
            if syntax == DeflatedExplicitVRLittleEndian:
                return _read_deflated(data, offset, meta, name, settings, frame_index)
            return pydicom.dcmread(io.BytesIO(data), force=True), None
    except UUSICError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is the file's fault
        raise ImageError(f"{name}: not a readable DICOM file ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def _check_compressed_frame(ds: Any, geometry: _Geometry, name: str, index: int = 0) -> None:
    """For encapsulated pixel data: a JPEG / JPEG 2000 frame must have the header's size (else its own, possibly
    huge, dimensions would drive the decoder)."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=geometry.frames)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"{name}: the compressed DICOM pixel data is malformed ({_reason(exc)})") from None
    formats = {b"\xff\xd8": ["JPEG"], b"\xff\x4f": ["JPEG2000"], b"\x00\x00": ["JPEG2000"]}.get(bytes(frame[:2]))
    if not formats:
        return
    try:
        with Image.open(io.BytesIO(frame), formats=formats) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not parsable here: the decoder reports it (within the size checked above)
        return
    if (width, height) != (geometry.cols, geometry.rows):
        raise ImageError(f"{name}: the compressed DICOM frame is {width}x{height} px but the header says "
                         f"{geometry.cols}x{geometry.rows}")


@dataclass
class _DicomFile:
    """A parsed DICOM data set ready to decode frames from (``local``: a deflated file holds only one frame)."""

    ds: Any
    geometry: _Geometry
    name: str
    frame_count: int
    deflated: bool
    syntax: Any
    compressed: bool


def _open_dicom(data: bytes, name: str, settings: Settings | None, frame_index: int | None) -> _DicomFile:
    ds, deflated_frames = _read_dicom(data, name, settings, frame_index)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageError(f"{name}: the DICOM file has no pixel data (a structured report or header only?)")
    geometry = _dicom_geometry(ds, name, settings)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        compressed = bool(syntax is not None and syntax.is_compressed)
    except ValueError:  # not a transfer syntax UID at all
        raise ImageError(f"{name}: the DICOM transfer syntax {str(syntax)[:64]!r} is unknown") from None
    if "PixelData" in ds and not compressed:
        _check_native_length(len(ds.PixelData or b""), geometry, name)
    elif "PixelData" in ds:
        _check_fragments(ds, geometry, name)
    return _DicomFile(ds, geometry, name, deflated_frames or geometry.frames, deflated_frames is not None, syntax,
                      compressed)


def _load_dicom(data: bytes, name: str, settings: Settings | None, frame_index: int | None = None) -> LoadedImage:
    return _dicom_frame(_open_dicom(data, name, settings, frame_index), frame_index)


def _dicom_frame(file: _DicomFile, frame_index: int | None) -> LoadedImage:
    """Decode one frame of an opened DICOM file (only that frame's pixels)."""
    from pydicom.pixels import pixel_array

    ds, geometry, name = file.ds, file.geometry, file.name
    index = _check_frame_index(frame_index, file.frame_count, name)
    local = 0 if file.deflated else index
    if file.compressed and "PixelData" in ds:
        _check_compressed_frame(ds, geometry, name, local)
    notes = _frame_note("DICOM", file.frame_count, frame_index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about excess or odd data; only one frame is read
            pixels = pixel_array(ds, index=local)
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, inconsistent header
        hint = f" (transfer syntax {file.syntax.name})" if file.syntax is not None else ""
        raise ImageError(f"{name}: cannot decode the DICOM pixel data{hint}: {_reason(exc)}") from None
    if pixels.ndim == 3 + (geometry.samples > 1):  # a decoder that ignored index
        pixels = pixels[0]
    if photometric == "PALETTE COLOR":
        rgb = _dicom_palette(pixels, ds, name)
    elif geometry.samples >= 3 or pixels.ndim == 3:
        rgb = to_uint8_channels(pixels[..., :3])
    else:
        gray = _dicom_gray(pixels, ds, photometric, notes)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if rgb.shape[0] != geometry.rows or rgb.shape[1] != geometry.cols:
        raise ImageError(f"{name}: DICOM pixel data ({rgb.shape[1]}x{rgb.shape[0]}) disagrees with its header")
    spacing, spacing_notes = _dicom_spacing(ds)
    return LoadedImage(rgb=np.ascontiguousarray(rgb, dtype=np.uint8), format="dicom", pixel_spacing_mm=spacing,
                       pixel_spacing_source=_spacing_source(ds) if spacing is not None else None,
                       pixel_spacing_note=" ".join(spacing_notes) if spacing is None and spacing_notes else None,
                       notes=tuple(notes + spacing_notes), frame_index=index, frame_count=file.frame_count,
                       fps=_dicom_fps(ds) if file.frame_count > 1 else None)


def _dicom_fps(ds: Any) -> float | None:
    """Frames per second from ``FrameTime`` (ms), ``CineRate`` or ``RecommendedDisplayFrameRate``; None when none
    is usable."""
    for keyword, per_ms in (("FrameTime", True), ("CineRate", False), ("RecommendedDisplayFrameRate", False)):
        try:
            value = _dicom_float(ds, keyword)
        except ValueError:
            continue
        if value is not None and value > 0:
            fps = 1000.0 / value if per_ms else value
            if 0 < fps <= 1000:
                return round(fps, 3)
    return None


def to_uint8_channels(array: np.ndarray) -> np.ndarray:
    """Colour channels → uint8: integers above 255 scaled by their bit depth, anything else as :func:`to_uint8`."""
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    return _to_uint8_chunked(a, channels=True)


def _dicom_palette(pixels: np.ndarray, ds: Any, name: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        apply_color_lut(pixels[:1], ds)  # the LUT must exist and be usable before the whole image is mapped
        return _to_uint8_chunked(pixels, lambda block: apply_color_lut(block, ds), channels=True)
    except Exception as exc:  # noqa: BLE001 - missing or malformed palette LUT
        raise ImageError(f"{name}: PALETTE COLOR DICOM without a usable colour lookup table ({_reason(exc)})") from None


def _sanitise_display_tags(ds: Any, notes: list[str]) -> None:
    """Drop rescale / window tags that cannot be used (non-numeric, several values, a width below 1), with a note."""
    try:
        slope = _dicom_float(ds, "RescaleSlope")
        _dicom_float(ds, "RescaleIntercept")
        if slope == 0:
            raise ValueError("RescaleSlope is 0")
    except ValueError as exc:
        notes.append(f"DICOM {exc}; the modality rescale was ignored")
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            if keyword in ds:
                del ds[keyword]
    if "WindowCenter" in ds or "WindowWidth" in ds:
        reason = None
        try:
            centers, widths = (_dicom_numbers(ds, keyword) for keyword in ("WindowCenter", "WindowWidth"))
            if not centers or not widths or not all(map(math.isfinite, centers + widths)):
                reason = "WindowCenter / WindowWidth are missing or not finite"
            elif widths[0] < 1:
                reason = f"WindowWidth is {widths[0]:g}; it must be at least 1"
        except Exception:  # noqa: BLE001
            reason = "WindowCenter / WindowWidth are not numbers"
        if reason:
            notes.append(f"DICOM {reason}; the display window was ignored")
            for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
                if keyword in ds:
                    del ds[keyword]


def _dicom_numbers(ds: Any, keyword: str) -> list[float]:
    """Every value of a (possibly multi-valued) numeric tag; ValueError / TypeError when one is not a number."""
    value = ds[keyword].value if keyword in ds else None
    if value is None or value == "":
        return []
    return [float(v) for v in (value if _is_multi(value) else [value])]


def _dicom_gray(pixels: np.ndarray, ds: Any, photometric: str, notes: list[str] | None = None) -> np.ndarray:
    """Modality LUT / rescale, then VOI LUT / window, then 8 bits — a few rows at a time (no full float copy)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    notes = notes if notes is not None else []
    _sanitise_display_tags(ds, notes)
    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds

    def transform(block: np.ndarray) -> np.ndarray:
        values = apply_modality_lut(block, ds)
        return apply_voi_lut(values, ds) if windowed else values

    try:
        transform(np.asarray(pixels[:1]))  # fail here, not halfway through the image
        gray = _to_uint8_chunked(pixels, transform)
    except Exception as exc:  # noqa: BLE001 - a malformed modality / VOI LUT: show the stored values instead
        notes.append(f"DICOM display lookup tables unusable ({_reason(exc)}); the stored values were shown")
        gray = to_uint8(pixels)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _plausible(spacing: float, what: str, notes: list[str]) -> float | None:
    """``spacing`` when inside core.calibration's band (the one band of every door), else None and a note."""
    from core.calibration import header_spacing

    checked, note = header_spacing(spacing, f"DICOM {what}")
    if note is not None:
        notes.append(note)
    return checked


def _dicom_spacing(ds: Any) -> tuple[float | None, list[str]]:
    """Millimetres per pixel and notes: ``PixelSpacing`` (mean of row/col), else the first ultrasound region in cm;
    malformed or implausible values are ignored with a note."""
    notes: list[str] = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _dicom_value(ds, keyword)
        if spacing is None or spacing == "":
            continue
        try:
            values = [float(v) for v in (spacing if _is_multi(spacing) else [spacing])]
        except (TypeError, ValueError):
            notes.append(f"DICOM {keyword} is not a number; ignored")
            continue
        if values:
            return _plausible(float(np.mean(values[:2])), keyword, notes), notes
    try:
        regions = _dicom_value(ds, "SequenceOfUltrasoundRegions")
        if regions is _UNREADABLE or (regions is not None and not _is_multi(regions)):
            raise TypeError("not a sequence")
        for region in regions or ():
            units_x = int(region.get("PhysicalUnitsXDirection", 0))
            units_y = int(region.get("PhysicalUnitsYDirection", 0))
            dx = abs(float(region.get("PhysicalDeltaX", 0.0)))
            dy = abs(float(region.get("PhysicalDeltaY", 0.0)))
            if units_x == 3 and units_y == 3 and dx > 0 and dy > 0:  # 3 = centimetres
                return _plausible(float((dx + dy) / 2.0 * 10.0), "SequenceOfUltrasoundRegions", notes), notes
    except Exception:  # noqa: BLE001 - malformed regions: no spacing, the image is still usable
        notes.append("DICOM SequenceOfUltrasoundRegions is malformed; ignored, no measurements in mm")
    return None, notes


def _spacing_source(ds: Any) -> str:
    from core.calibration import dicom_spacing_source

    return dicom_spacing_source(ds)


def dicom_pixel_spacing_mm(ds: Any) -> float | None:
    """Millimetres per pixel from a DICOM data set, or None (missing, malformed or implausible)."""
    return _dicom_spacing(ds)[0]


# ------------------------------------------------------------------------------------------ several frames at once
# A cine analysed frame by frame (core.service.analyze_frames) decodes its frames once, in one pass, and holds them
# while the batch runs: load_image(path, frame_index=i) then takes frame i from memory (the file must be unchanged).
# The caller bounds what is held by the header's size first (frames x width x height x 3 <= Settings.max_decoded_mb,
# core.cine.check_budget); decode_frames then counts every frame it decodes at its real size (DecodeBudget), so a
# header that claims small frames cannot make one call hold more.

# (path, index) → (stat, the frame or the error of a frame the file ends before, holders)
_HELD: dict[tuple[str, int], tuple[tuple[int, int], LoadedImage | ImageError, int]] = {}
_HELD_LOCK = threading.Lock()


def decode_frames(source: Path | str | bytes, indices: Sequence[int], *, settings: Settings | None = None,
                  name: str | None = None) -> Iterator[LoadedImage]:
    """The frames ``indices`` of one file with one read and one parse (a video: one decoding pass), in frame
    order; the same checks and errors as :func:`load_image`, and every frame decoded counted at its real size
    against ``Settings.max_decoded_mb`` (:class:`DecodeBudget`: a :class:`RequestError` 413 naming ``frames``)."""
    data, read_name = _read_bytes(source)
    name = name or read_name
    wanted = sorted({int(i) for i in indices})
    if not data:
        raise ImageError(f"{name}: the file is empty")
    if not wanted:
        return
    digest = hashlib.sha256(data).hexdigest()
    try:
        if _is_video(data, name):
            frames: Iterator[LoadedImage] = _video_frames(data, name, settings, wanted)
        elif _is_dicom(data, name):
            frames = _dicom_frames(data, name, settings, wanted, DecodeBudget(settings, name))
        else:
            budget = DecodeBudget(settings, name)
            frames = (_load_pil(data, name, settings, index, budget) for index in wanted)
        for image in frames:
            yield replace(image, sha256=digest)
    except UUSICError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other decoder failure on untrusted bytes is the file's fault
        raise ImageError(f"{name}: the image cannot be decoded ({_reason(exc)})") from None


def _dicom_frames(data: bytes, name: str, settings: Settings | None, indices: list[int],
                  budget: DecodeBudget) -> Iterator[LoadedImage]:
    """Frames of one DICOM parsed once (a deflated file is inflated again per frame: it holds only one), each
    counted against ``budget`` at the header's (checked) size before it is decoded."""
    opened = _open_dicom(data, name, settings, indices[0])
    for index in indices:
        if opened.deflated and index != indices[0]:
            opened = _open_dicom(data, name, settings, index)
        budget.spend(opened.geometry.cols, opened.geometry.rows, index)
        yield _dicom_frame(opened, index)


def _stat_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@contextmanager
def held_frames(path: Path, indices: Sequence[int], *, settings: Settings | None = None) -> Iterator[list[int]]:
    """Decode ``indices`` of the file at ``path`` once and serve them to ``load_image(path, frame_index=i)`` until
    the block ends; yields the indices decoded. A video that ends before frames its header promises: those frames'
    error is held instead (each fails alone, the others are served)."""
    resolved = Path(path).resolve()
    stat = _stat_key(resolved)
    keys: list[tuple[str, int]] = []

    def hold(index: int, image: LoadedImage | ImageError) -> None:
        key = (str(resolved), index)
        with _HELD_LOCK:
            held = _HELD.get(key)
            _HELD[key] = (stat, image, (held[2] if held else 0) + 1)
        keys.append(key)

    try:
        decoded: list[int] = []
        try:
            for image in decode_frames(resolved, indices, settings=settings):
                hold(image.frame_index, image)
                decoded.append(image.frame_index)
        except ImageError as exc:  # a video that ends before frames its header promises: those frames fail alone
            if exc.field != "frame_index" or not decoded:
                raise
            for index in sorted({int(i) for i in indices} - set(decoded)):
                hold(index, exc)
        yield decoded
    finally:
        with _HELD_LOCK:
            for key in keys:
                held = _HELD.pop(key, None)
                if held is not None and held[2] > 1:
                    _HELD[key] = (held[0], held[1], held[2] - 1)


def _cached_frame(source: Path | str | bytes, frame_index: int | None) -> LoadedImage | None:
    """A frame :func:`held_frames` holds for ``source``, when the file is still the one decoded (a frame the file
    ends before: its error is raised)."""
    if frame_index is None or not _HELD or isinstance(source, (bytes, bytearray, memoryview)):
        return None
    try:
        resolved = Path(source).resolve()
        with _HELD_LOCK:
            held = _HELD.get((str(resolved), int(frame_index)))
        if held is None or held[0] != _stat_key(resolved):
            return None
    except (OSError, ValueError):
        return None
    if isinstance(held[1], ImageError):
        raise ImageError(held[1].message, field=held[1].field)
    return held[1]


def frame_mask_path(relative: str, image: LoadedImage) -> str:
    """A mask path per frame for a multi-frame input (``x.png`` → ``x_f0003.png``); a still image's is unchanged."""
    if image.frame_count <= 1:
        return relative
    stem, dot, suffix = relative.rpartition(".")
    return f"{stem}_f{image.frame_index:04d}{dot}{suffix}" if dot else f"{relative}_f{image.frame_index:04d}"
