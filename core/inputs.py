"""What can be analysed: uploads, data-root samples, and a cine's frames (probed, or one decoded); what the organ
recogniser makes of an image's bytes (the dashboard's suggestion)."""

from __future__ import annotations

import numpy as np

from core import catalog, recognition
from core.errors import NotFoundError, RequestError
from core.settings import Settings


def save_upload(settings: Settings, data: bytes, filename: str) -> dict:
    """Store an upload in ``api_in/`` and return the request skeleton: a still image re-encoded (pixels only), a
    cine (multi-frame DICOM, video) kept as uploaded, any DICOM's original kept (``source_path_relative``)."""
    from core.samples import save_upload as store

    return store(settings, data, filename)


def random_sample(settings: Settings, task: str, dataset_name: str) -> dict:
    """The request skeleton of a random image of ``dataset_name`` under the data root."""
    from core.samples import random_sample as pick

    try:
        dataset = catalog.find_dataset(task, dataset_name)
    except catalog.UnknownDataset as exc:
        raise RequestError(exc.message, field="dataset_name") from None
    sample = pick(settings.data_root, dataset.task, dataset.name)
    if sample is None:
        raise NotFoundError(f"no images of {dataset.task}/{dataset.name} under the data root", field="dataset_name")
    return with_spacing_source(sample)


def with_spacing_source(skeleton: dict) -> dict:
    """A data-root sample's skeleton whose ``pixel_spacing_mm`` (from ``ground_truth.json``) says where it came
    from (uploads get theirs from the DICOM loader in :func:`core.samples.save_upload`)."""
    if skeleton.get("pixel_spacing_mm") and not skeleton.get("pixel_spacing_source"):
        skeleton["pixel_spacing_source"] = "ground_truth"
    return skeleton


def probe(settings: Settings, img_path_relative: str) -> dict:
    """``{frame_count, fps, width, height, format}`` of an input (a still image: 1 frame, fps None)."""
    from core.imaging import probe_frames
    from core.paths import resolve_input

    return probe_frames(resolve_input(settings, img_path_relative), settings=settings).as_dict()


def load_frame(settings: Settings, img_path_relative: str, frame_index: int) -> np.ndarray:
    """One frame of an input as RGB uint8 (only that frame is decoded; a video: up to it)."""
    from core.imaging import load_image
    from core.paths import resolve_input

    if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
        raise RequestError(f"frame_index must be a whole number >= 0, got {frame_index!r}", field="frame_index")
    path = resolve_input(settings, img_path_relative)
    return load_image(path, settings=settings, frame_index=frame_index).rgb


def recognise(settings: Settings, data: bytes, filename: str = "image") -> recognition.Recognition | None:
    """What the organ recogniser makes of an image's bytes (a cine: its first frame; None: no recogniser here),
    under the upload's budgets and checks (size: 413 naming ``file``; not an image: :class:`ImageError`)."""
    from core.imaging import load_image
    from core.samples import check_upload_size, display_name

    check_upload_size(settings, len(data), filename)
    rgb = load_image(bytes(data), settings=settings, name=display_name(filename)).rgb
    return recognition.recognise(rgb, settings.weights_dir)
