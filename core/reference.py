"""Reference measurements from a case's ground truth, next to the predicted ones, with the differences.

A request names its ground truth the way the data root's ``ground_truth.json`` does: ``mask_path_relative``
(the ground-truth mask; measured with :func:`core.measure.measure_mask`, the same function and spacing as the
prediction) and, for HC18 fetal heads, ``head_circumference_mm`` (the dataset's own reference HC, which wins over
the mask's for that key). A reference is given only when the analysed image has the ground truth's size (an image
cropped, resized or rotated by 90° is no longer comparable; the dashboard handles edited images itself).

``reference = {"source": "ground_truth_mask" | "ground_truth_json", "measurements": {...}, "difference":
{key: predicted - reference}, "sources": {key: source}}``; ``source`` is the mask when one was measured.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UUSICError
from core.schema import PredictRequest
from core.settings import Settings
from core.tta import SPREAD_KEYS

log = logging.getLogger(__name__)
MASK_SOURCE, JSON_SOURCE = "ground_truth_mask", "ground_truth_json"


def load_reference_mask(settings: Settings, relative: str, *, input_dir: Path | None = None) -> np.ndarray | None:
    """The ground-truth mask (bool, ``> 127`` as :mod:`core.evaluate` reads it), or None when it cannot be read."""
    from core.imaging import load_image
    from core.paths import resolve_input

    try:
        path = resolve_input(settings, relative, input_dir=input_dir)
        return load_image(path, settings=settings).rgb[..., 0] > 127
    except (UUSICError, OSError, ValueError) as exc:
        log.info("no reference from %s: %s", relative, getattr(exc, "message", exc))
        return None


def _json_hc(request: PredictRequest, shape: tuple[int, int]) -> float | None:
    """``head_circumference_mm`` of the request when it is a positive number and the image keeps its listed size."""
    value = request.extras.get("head_circumference_mm")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    if request.img_dimensions is not None and tuple(request.img_dimensions) != (shape[1], shape[0]):
        return None
    return float(value)


def reference_for(settings: Settings, request: PredictRequest, predicted: dict[str, Any], shape: tuple[int, int],
                  spacing: float | None, *, input_dir: Path | None = None) -> dict | None:
    """The reference block for a segmentation whose mask has ``shape`` (H, W), or None without a usable truth."""
    fetal_head = request.dataset.group == "fetal_head"
    measurements: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if request.mask_path_relative:
        truth = load_reference_mask(settings, request.mask_path_relative, input_dir=input_dir)
        if truth is not None and truth.shape == tuple(shape):
            from core.measure import measure_mask

            measurements = measure_mask(truth, pixel_spacing_mm=spacing, fetal_head=fetal_head)
            sources = {key: MASK_SOURCE for key in SPREAD_KEYS if key in measurements}
    hc = _json_hc(request, shape) if fetal_head else None
    if hc is not None:
        measurements["head_circumference_mm"] = hc
        sources["head_circumference_mm"] = JSON_SOURCE
    if not sources:
        return None
    return {"source": MASK_SOURCE if MASK_SOURCE in sources.values() else JSON_SOURCE,
            "measurements": measurements, "difference": differences(predicted, measurements), "sources": sources}


def differences(predicted: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """``{key: predicted - reference}`` for every measurement both have as a number."""
    out: dict[str, float] = {}
    for key in SPREAD_KEYS:
        a, b = predicted.get(key), reference.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and _number(a) and _number(b):
            out[key] = float(a) - float(b)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def edited_mask(data: bytes, edits: list[dict], size: tuple[int, int], *,
                settings: Settings | None = None) -> np.ndarray | None:
    """A ground-truth mask file (its bytes, e.g. from ``input_file``) with an image's edits replayed on it
    (nearest neighbour) as a bool array; None when it cannot be read or its edited size (W, H) is not ``size``."""
    from PIL import Image

    from core import editing, overlay
    from core.imaging import load_image

    try:
        pixels = load_image(data, settings=settings, name="reference mask").rgb[..., 0]
        mask = editing.apply_edits(Image.fromarray(np.ascontiguousarray(pixels)), edits, is_mask=True)
    except (UUSICError, OSError, ValueError) as exc:
        log.info("no edited reference: %s", getattr(exc, "message", exc))
        return None
    return overlay.as_bool_mask(mask) if mask.size == tuple(size) else None


def edited_reference(mask: np.ndarray, predicted: dict[str, Any], spacing: float | None, *,
                     fetal_head: bool) -> dict:
    """The reference block of an edited image: its ground-truth mask after the same edits (:func:`edited_mask`),
    measured as the prediction is (``source`` ``ground_truth_mask_edited``)."""
    from core.measure import measure_mask

    measured = measure_mask(mask, pixel_spacing_mm=spacing, fetal_head=fetal_head)
    return {"source": "ground_truth_mask_edited", "measurements": measured,
            "difference": differences(predicted, measured)}
