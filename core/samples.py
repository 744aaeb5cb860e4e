"""Images to analyse: random samples from a UUSIC-layout data root, and uploads stored in ``api_in/``.

A data root has ``ground_truth.json`` (a list of request objects) or, without it, the layout
``<task>/<dataset>/imgs/*`` (segmentation masks in ``masks/``) or ``classification/<dataset>/<class index>/*``.
Uploads are re-encoded (no EXIF / metadata survives) under a safe unique name and never overwrite a file; cine
containers (a multi-frame DICOM, a video) are kept as uploaded, and every DICOM upload also keeps its original file
(``source_path_relative``: what a DICOM SEG refers to). The skeleton names the file as the user gave it
(``original_name``, for display); the stored names stay unique.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import random as _random
import re
import threading
import unicodedata
import uuid
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from core import calibration, catalog
from core.errors import ImageError, UploadError
from core.files import atomic_write_bytes
from core.imaging import LoadedImage, load_image
from core.settings import Settings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".gif", ".mp4", ".avi", ".mov",
                  ".webm", ".mkv")
CINE_FORMATS = ("mp4", "mov", "avi", "webm", "mkv")  # videos: always kept as uploaded (multi-frame DICOM too)
_GT_CACHE: dict[str, tuple[float, list]] = {}
_GT_LOCK = threading.Lock()


def _key(task: str, dataset_name: str) -> tuple[str, str]:
    try:
        return catalog.find_dataset(task, dataset_name).key
    except catalog.UnknownDataset:
        return (task, dataset_name)


def _ground_truth(data_root: Path) -> list | None:
    """The parsed ``ground_truth.json`` (cached by modification time), or ``None`` when there is none."""
    path = data_root / "ground_truth.json"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    with _GT_LOCK:
        cached = _GT_CACHE.get(str(path))
        if cached and cached[0] == mtime:
            return cached[1]
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(entries, dict):
        entries = next((v for k, v in entries.items()
                        if k in ("entries", "data", "images", "items") and isinstance(v, list)),
                       [])
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    with _GT_LOCK:
        _GT_CACHE[str(path)] = (mtime, entries)
    return entries


def _scan(data_root: Path, task: str, dataset_name: str) -> list[dict]:
    """Request skeletons from the folder layout when there is no ground_truth.json."""
    base = data_root / task / dataset_name
    if not base.is_dir():
        return []
    found: list[dict] = []
    folders: list[tuple[Path, int | None]] = [(base / "imgs", None)]
    if task == "classification":
        folders += [(p, int(p.name)) for p in sorted(base.iterdir()) if p.is_dir() and p.name.isdigit()]
    for folder, label in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = path.relative_to(data_root).as_posix()
            entry: dict[str, str | int] = {
                "img_name": path.name, "img_path_relative": rel, "task": task, "dataset_name": dataset_name,
                "img_format": path.suffix.lower().lstrip("."),
            }
            if label is not None:
                entry["class_label_index"] = label
            if task == "segmentation":
                mask = base / "masks" / (path.stem + ".png")
                if mask.is_file():
                    entry["mask_name"] = mask.name
                    entry["mask_path_relative"] = mask.relative_to(data_root).as_posix()
            found.append(entry)
    return found


def read_entries(data_root: Path | str) -> list[dict]:
    """Every entry of a data root: its ``ground_truth.json``, else a scan of the ``<task>/<dataset>/`` folders."""
    root = Path(data_root)
    entries = _ground_truth(root)
    if entries is not None:
        return [dict(e) for e in entries]
    found: list[dict] = []
    for task in catalog.TASKS:
        if (root / task).is_dir():
            for dataset_dir in sorted(p for p in (root / task).iterdir() if p.is_dir()):
                found += _scan(root, task, dataset_dir.name)
    return found


def list_samples(data_root: Path | str, task: str, dataset_name: str) -> list[dict]:
    """The data root's entries for ``(task, dataset_name)`` (names match as in the catalog)."""
    root = Path(data_root)
    key = _key(task, dataset_name)
    entries = _ground_truth(root)
    if entries is None:
        return _scan(root, key[0], key[1])
    return [dict(e) for e in entries if _key(str(e.get("task", "")), str(e.get("dataset_name", ""))) == key]


def _skeleton(root: Path, entry: dict, task: str, dataset_name: str) -> dict:
    """A full request object for ``entry``: catalog names, organ, size and dimensions filled in."""
    sample = dict(entry)
    try:
        dataset = catalog.find_dataset(task, dataset_name)
        sample["task"], sample["dataset_name"], sample["organ"] = dataset.task, dataset.name, dataset.organ
        if dataset.task == "classification" and sample.get("class_label_index") is not None \
                and not sample.get("class_label_name"):
            sample["class_label_name"] = dataset.class_name(int(sample["class_label_index"]), "en")
        if dataset.task == "segmentation":
            sample.setdefault("seg_target_info", dataset.seg_target)
    except (catalog.UnknownDataset, ValueError, IndexError):
        pass
    path = root / sample["img_path_relative"]
    sample.setdefault("img_name", path.name)
    if not sample.get("img_size_bytes"):
        sample["img_size_bytes"] = path.stat().st_size
    if not sample.get("img_dimensions"):
        try:
            with Image.open(path) as image:
                sample["img_dimensions"] = list(image.size)
        except Exception:  # DICOM or unreadable: the engine reports it when analysed
            sample["img_dimensions"] = None
    sample.setdefault("img_format", path.suffix.lower().lstrip("."))
    _ground_truth_spacing(sample)
    for name in ("data_partition_group", "mask_name", "mask_path_relative", "seg_target_info", "class_label_index",
                 "class_label_name"):
        sample.setdefault(name, None)
    return sample


def _ground_truth_spacing(sample: dict) -> None:
    """A ``ground_truth.json`` spacing outside core.calibration's band (or not a number) is dropped from the
    skeleton with ``pixel_spacing_note``: predict would refuse it, and the image is still analysable without it."""
    value = sample.get("pixel_spacing_mm")
    if value is None or value == "":  # none stated (the schema would refuse the empty text)
        sample.pop("pixel_spacing_mm", None)
        return
    number = value
    if isinstance(value, str):  # numeric text: the request schema reads it as a number too
        with contextlib.suppress(ValueError):
            number = float(value)
    if calibration.is_plausible(number):
        return
    _, note = calibration.header_spacing(number, "ground_truth.json's pixel_spacing_mm")
    sample.pop("pixel_spacing_mm")
    sample.pop("pixel_spacing_source", None)
    sample["pixel_spacing_note"] = note


def random_sample(data_root: Path | str, task: str, dataset_name: str, rng=None) -> dict | None:
    """A request skeleton (with its ground-truth fields) for a random existing image; ``None`` when there is none."""
    root = Path(data_root)
    entries = list_samples(root, task, dataset_name)
    rng = rng or _random.Random()
    rng.shuffle(entries)
    for entry in entries[:50]:
        rel = entry.get("img_path_relative")
        if not isinstance(rel, str) or ".." in PurePosixPath(rel).parts or Path(rel).is_absolute():
            continue
        if (root / rel).is_file():
            return _skeleton(root, entry, task, dataset_name)
    return None


# ------------------------------------------------------------------------------------------------ uploads


def safe_stem(filename: str, limit: int = 40) -> str:
    """A file-system and URL friendly stem: letters (any script), digits, ``-`` and ``_``."""
    stem = PurePosixPath(str(filename).replace("\\", "/")).name
    stem = unicodedata.normalize("NFC", stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem)
    stem = re.sub(r"[^\w-]+", "_", stem, flags=re.UNICODE).strip("._-")
    return stem[:limit].rstrip("._-") or "image"


def _encode(rgb: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """Re-encode pixels only (no metadata): png stays png, jpeg stays jpeg, anything else becomes png."""
    gray = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    image = Image.fromarray(rgb[..., 0] if gray else rgb, mode="L" if gray else "RGB")
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
        return buffer.getvalue(), "jpg"
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), "png"


def display_name(filename: str, limit: int = 120) -> str:
    """The file name as the user gave it, fit for messages and display: its last path part, no control characters,
    at most ``limit`` characters."""
    name = PurePosixPath(str(filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C").strip()
    return (name[: limit - 1] + "…" if len(name) > limit else name) or "upload"


def upload_limit(settings: Settings) -> int:
    """The most bytes one upload may have (``UUSIC_MAX_UPLOAD_MB``)."""
    return int(settings.max_upload_mb) * 1024 * 1024


def check_upload_size(settings: Settings, size: int, filename: str) -> None:
    """The one upload size check of every door (API, dashboard, PACS): 413 naming the file past the limit."""
    if size > upload_limit(settings):
        raise UploadError(f"{display_name(filename)}: the upload is {size / 1048576:.1f} MB or more; the limit is "
                          f"{settings.max_upload_mb} MB", status_code=413, field="file")


def save_upload(settings: Settings, data: bytes, filename: str) -> dict:
    """Store an uploaded image or cine in ``api_in/`` and return its request skeleton.

    Single images are re-encoded (pixels only); a multi-frame DICOM or a video is kept as uploaded
    (``img_path_relative`` names the container; ``frame_count`` / ``fps`` say what it holds). Any DICOM also keeps
    its original file (``source_path_relative``). Raises :class:`ImageError` (not an image, hostile) or
    :class:`UploadError` (too large: 413; disk full: 507), naming the uploaded file.
    """
    shown = display_name(filename)
    check_upload_size(settings, len(data), filename)
    data = bytes(data)
    loaded = load_image(data, settings=settings, name=shown)  # the first frame: the whole file must be sound
    keep = loaded.format in CINE_FORMATS or (loaded.format == "dicom" and loaded.frame_count > 1)
    if not settings.keep_identity:  # what reaches the disk carries no identity (core.deidentify)
        data = _deidentified(data, loaded.format, shown, max_bytes=int(settings.max_decoded_mb) * 1024 * 1024)
        if loaded.format in CINE_FORMATS:  # re-muxed: the skeleton states what the stored file holds
            loaded = load_image(data, settings=settings, name=shown)
    if keep:
        stored, ext = data, ("dcm" if loaded.format == "dicom" else loaded.format)
    else:
        stored, ext = _encode(loaded.rgb, loaded.format)
    folder = Path(settings.api_in)
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_stem(filename)
    name = _store(folder, stem, stored, ext)
    skeleton = {
        "img_name": name,
        "img_path_relative": f"api_in/{name}",
        "img_size_bytes": len(stored),
        "img_dimensions": [loaded.width, loaded.height],
        "img_format": ext,
        "frame_count": loaded.frame_count if keep else 1,
        "fps": loaded.fps if keep else None,
        "original_name": shown,
    }
    if loaded.format == "dicom":
        skeleton["source_path_relative"] = f"api_in/{name if keep else _store(folder, stem, data, 'dcm')}"
    skeleton.update(_upload_spacing(loaded))
    return skeleton


def _deidentified(data: bytes, fmt: str, name: str, *, max_bytes: int) -> bytes:
    """A DICOM with the PS3.15 basic profile applied (UIDs kept), a video without its container metadata; other
    formats are re-encoded (pixels only) anyway."""
    from core import deidentify

    if fmt == "dicom":
        return deidentify.deidentify_dicom(data, name=name, max_bytes=max_bytes)
    if fmt in CINE_FORMATS:
        return deidentify.strip_video_metadata(data, fmt, name=name)
    return data


def _upload_spacing(loaded: LoadedImage) -> dict:
    """The skeleton's spacing fields: the file's own spacing only inside core.calibration's band (the one predict
    accepts), else none and ``pixel_spacing_note`` saying why — an upload the app accepts stays analysable."""
    if loaded.pixel_spacing_mm is None:
        return {"pixel_spacing_note": loaded.pixel_spacing_note} if loaded.pixel_spacing_note else {}
    spacing, note = calibration.header_spacing(loaded.pixel_spacing_mm, "the file's pixel spacing")
    if spacing is None:
        return {"pixel_spacing_note": note}
    fields: dict = {"pixel_spacing_mm": spacing}
    if loaded.pixel_spacing_source:  # which DICOM element, as the (bounded) loader read it
        fields["pixel_spacing_source"] = loaded.pixel_spacing_source
    return fields


def _store(folder: Path, stem: str, data: bytes, ext: str) -> str:
    """Write ``data`` under a new unique name ``<stem>-<digest><random>.<ext>`` in ``folder``; returns the name."""
    digest = hashlib.sha256(data).hexdigest()
    for _ in range(20):
        name = f"{stem}-{digest[:8]}{uuid.uuid4().hex[:6]}.{ext}"
        try:
            atomic_write_bytes(folder / name, data, exclusive=True)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _storage_error(exc) from None
        return name
    raise UploadError("could not find a free file name in api_in/", status_code=500)  # pragma: no cover


def _storage_error(exc: OSError) -> UploadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadError("the server's disk is full: the upload could not be stored (free space in the "
                           "workspace and try again)", status_code=507)
    return UploadError(f"the upload could not be stored: {exc.strerror or exc}", status_code=500)


__all__ = ["ImageError", "UploadError", "list_samples", "random_sample", "safe_stem", "save_upload"]
