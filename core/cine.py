"""Cine loops: which frames to analyse, and what a whole loop's results say.

A multi-frame DICOM or a video (:mod:`core.imaging`) is analysed frame by frame through the service's batch
machinery (:meth:`core.service.AnalysisService.analyze_frames`): one history row per frame, one ``batch_id``.
:class:`CineResult` carries the per-frame items in frame order and a :func:`summarize` of the loop: the segmented
area over time (px, and mm² when calibrated), its largest and smallest frames and — for cardiac views (dataset group
``heart``) — the end-diastole / end-systole candidates (largest / smallest left-ventricle area) and the fractional
area change ``(EDA - ESA) / EDA``; for classification, the probabilities per frame.
"""

from __future__ import annotations

from typing import Any

from core import catalog
from core.errors import RequestError
from core.response import AnalysisFailure, AnalysisResponse, BatchItem, BatchResult

CARDIAC_GROUP = "heart"  # catalog group whose loops get ED / ES candidates and a fractional area change


def parse_frames(spec: Any, frame_count: int, *, max_frames: int | None = None) -> list[int]:
    """The frame indices a caller asked for: None / ``"all"`` = every frame, a list of ints, or text ``"0,3,5"``;
    each must exist (:class:`RequestError`, field ``frames``); duplicates dropped, order kept.

    ``max_frames`` (``Settings.max_frames``): more frames than that is refused (413) by arithmetic before any list is
    built — a header claiming 4,294,967,295 frames never becomes a list of that length."""
    if frame_count < 1:
        raise RequestError(f"the file has {frame_count} frames; there is nothing to analyse", field="frames")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        _check_count(frame_count, max_frames, every=True)
        return list(range(frame_count))
    if isinstance(spec, str):
        try:
            spec = [int(part) for part in spec.replace(" ", "").split(",") if part]
        except ValueError:
            raise RequestError(f"frames must be 'all' or frame numbers like 0,3,5; got {spec[:60]!r}",
                               field="frames") from None
    if not isinstance(spec, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        raise RequestError("frames must be null (all) or a list of frame numbers", field="frames")
    if not spec:
        raise RequestError("frames is an empty list; name at least one frame (or null for all)", field="frames")
    wrong = [i for i in spec if i < 0 or i >= frame_count]
    if wrong:
        raise RequestError(f"frames {wrong[:5]} out of range: the file has {frame_count} frame(s) "
                           f"(0..{frame_count - 1})", field="frames")
    chosen = list(dict.fromkeys(spec))
    _check_count(len(chosen), max_frames)
    return chosen


def _check_count(count: int, max_frames: int | None, *, every: bool = False) -> None:
    if max_frames is None or count <= max_frames:
        return
    what = f"the file has {count:,} frames (all asked for)" if every else f"{count:,} frames asked for"
    raise RequestError(f"{what}; at most {max_frames:,} are analysed in one call (UUSIC_MAX_FRAMES): choose fewer "
                       "frames", field="frames", status_code=413)


def check_budget(count: int, width: int, height: int, max_frames: int, max_decoded_mb: int) -> None:
    """Refuse a cine call that would decode more frames, or more RGB bytes, than the settings allow."""
    if count > max_frames:
        raise RequestError(f"{count} frames asked for; at most {max_frames} are analysed in one call "
                           "(UUSIC_MAX_FRAMES): choose fewer frames", field="frames", status_code=413)
    total = count * width * height * 3
    if total > max_decoded_mb * 1024 * 1024:
        raise RequestError(f"{count} frames of {width}x{height} px decode to {total / 1048576:,.0f} MB; at most "
                           f"{max_decoded_mb:,} MB are held in one call (UUSIC_MAX_DECODED_MB): choose fewer frames",
                           field="frames", status_code=413)


def _area_px(item: BatchItem) -> int | None:
    if not isinstance(item, AnalysisResponse) or item.task != "segmentation":
        return None
    if item.mask_area_px is not None:
        return int(item.mask_area_px)
    value = (item.measurements or {}).get("area_px")
    return int(value) if value is not None else None


def _area_mm2(item: BatchItem) -> float | None:
    if not isinstance(item, AnalysisResponse):
        return None
    value = (item.measurements or {}).get("area_mm2")
    if value is not None:
        return float(value)
    area, spacing = _area_px(item), item.pixel_spacing_mm
    return float(area * spacing * spacing) if area is not None and spacing else None


def summarize(items: list[BatchItem], frames: list[int], *, frame_count: int, fps: float | None,
              dataset: catalog.Dataset | None) -> dict[str, Any]:
    """The loop's summary (see the module docstring); frame numbers are the file's frame indices."""
    segmentation = dataset is not None and dataset.task == "segmentation"
    areas = [_area_px(item) for item in items] if segmentation else None
    areas_mm2 = [_area_mm2(item) for item in items] if segmentation else None
    if areas_mm2 is not None and all(a is None for a in areas_mm2):
        areas_mm2 = None
    summary: dict[str, Any] = {
        "frame_count": frame_count, "frames": list(frames), "fps": fps,
        "analysed": sum(1 for item in items if isinstance(item, AnalysisResponse)),
        "failed": sum(1 for item in items if isinstance(item, AnalysisFailure)),
        "area_px": areas, "area_mm2": areas_mm2, "largest_frame": None, "smallest_frame": None,
        "ed_frame": None, "es_frame": None, "fractional_area_change": None,
        "target": dataset.seg_target if segmentation and dataset is not None else None,  # what the areas are of
        "probability": None if segmentation else [
            list(item.probability) if isinstance(item, AnalysisResponse) and item.probability is not None else None
            for item in items],
    }
    curve = areas_mm2 if areas_mm2 is not None else areas
    known = [(value, frame) for value, frame in zip(curve or [], frames, strict=False) if value is not None]
    if not known:
        return summary
    largest = max(known, key=lambda pair: (pair[0], -pair[1]))  # ties: the earliest frame
    smallest = min(known, key=lambda pair: (pair[0], pair[1]))
    summary["largest_frame"], summary["smallest_frame"] = largest[1], smallest[1]
    if dataset is not None and dataset.group == CARDIAC_GROUP:
        summary["ed_frame"], summary["es_frame"] = largest[1], smallest[1]
        if largest[0] > 0:
            summary["fractional_area_change"] = float((largest[0] - smallest[0]) / largest[0])
    return summary


CineResult = BatchResult  # a cine's frames: the one result type, with its loop ``summary``
