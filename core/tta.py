"""Test-time augmentation: the same image seen in a few views (flips, small rotations), outputs averaged.

Each :class:`View` acts on the model's square input (``S x S``, after :mod:`core.geometry`'s crop or letterbox);
its :meth:`View.invert` brings a view's ``S x S`` output back to the unaugmented square frame, and the model's
transform (``invert_probability`` / ``invert_mask``) then puts it on the ORIGINAL image's pixels. All views of an
image go through one forward pass (the engine stacks them into its batch).

* Classification: softmax probabilities averaged over the views; the uncertainty block gives each class's
  min / max / standard deviation over the views.
* Segmentation: each view's foreground probability (letterbox models) or foreground vote (label models), mapped to
  the original frame, is averaged where the view saw the pixel (a rotation leaves the square's corners unseen);
  the mask is ``mean > 0.5``. ``agreement`` = fraction of the views voting foreground per pixel (0..1), written as
  an 8-bit PNG; ``agreement_mean`` = mean of ``max(agreement, 1 - agreement)`` over the pixels any view calls
  foreground (1.0: every view drew the same mask); ``measurement_spread`` = mean / min / max / sd (population) over
  the views of each view's own measurements (area, diameters, HC / BPD, in mm too when the spacing is known).

Views are named in the setting ``tta_views`` (``UUSIC_TTA_VIEWS``): ``identity``, ``hflip``, ``vflip``,
``rot<degrees>`` (e.g. ``rot-10``, ``rot+10``, ``rot90``) and combinations joined by ``+`` (``hflip+rot10``).
Whether a request uses TTA: its ``tta`` field, else the setting ``tta`` (``on`` / ``off`` / ``auto``);
``auto`` is :data:`TTA_AUTO`, decided from the CPU cost measured by ``bench/bench_tta.py`` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

# auto: on where TTA costs < 2x on the CPU, else off. Measured (bench/bench_tta.py, docs/PERFORMANCE.md "Test-time
# augmentation"): the default 4 views cost 3.1x per image with the default CPU backend (OpenVINO fp32), so off.
TTA_AUTO = False
DEFAULT_VIEWS = "identity,hflip,rot-10,rot+10"
MAX_VIEWS = 16
SPREAD_KEYS = ("area_px", "area_mm2", "longest_diameter_px", "longest_diameter_mm", "perpendicular_diameter_px",
               "perpendicular_diameter_mm", "head_circumference_px", "head_circumference_mm",
               "biparietal_diameter_px", "biparietal_diameter_mm", "occipitofrontal_diameter_px",
               "occipitofrontal_diameter_mm")
_ROT = re.compile(r"^rot([+-]?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class View:
    """Flip(s) then a rotation about the centre of the square (degrees, counter-clockwise on screen)."""

    name: str
    hflip: bool = False
    vflip: bool = False
    angle_deg: float = 0.0

    @property
    def is_identity(self) -> bool:
        return not (self.hflip or self.vflip or self.angle_deg)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``S x S`` or ``S x S x C`` → the same array seen in this view (bilinear, zeros outside)."""
        out = array
        if self.hflip:
            out = out[:, ::-1]
        if self.vflip:
            out = out[::-1]
        if self.angle_deg:
            out = _rotate(out, self.angle_deg)
        return np.ascontiguousarray(out, dtype=array.dtype)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """A view's ``S x S`` output → the unaugmented square frame (rotation back first, then the flips)."""
        out = array
        if self.angle_deg:
            out = _rotate(out, -self.angle_deg)
        if self.vflip:
            out = out[::-1]
        if self.hflip:
            out = out[:, ::-1]
        return np.ascontiguousarray(out, dtype=array.dtype)

    def seen(self, size: int) -> np.ndarray:
        """``S x S`` float32: 1 where the view's output covers the unaugmented frame, 0 where it saw nothing."""
        return _seen(self, size)


@functools.lru_cache(maxsize=64)
def _seen(view: View, size: int) -> np.ndarray:
    if not view.angle_deg:
        seen = np.ones((size, size), dtype=np.float32)
    else:
        seen = (view.invert(view.apply(np.ones((size, size), dtype=np.float32))) > 0.5).astype(np.float32)
    seen.flags.writeable = False  # shared by every call
    return seen


def _rotate(array: np.ndarray, angle: float) -> np.ndarray:
    if float(angle) % 360 == 0:
        return array
    if float(angle) % 90 == 0:  # exact, no interpolation
        return np.rot90(array, k=int(round(angle / 90)) % 4, axes=(0, 1))
    from scipy import ndimage  # only a free-angle view needs it (~0.7 s to import)

    return ndimage.rotate(array, angle, axes=(1, 0), reshape=False, order=1, mode="constant", cval=0.0,
                          prefilter=False)


def parse_view(token: str) -> View:
    """One view from its name (``identity``, ``hflip``, ``vflip``, ``rot<deg>``, parts joined by ``+``)."""
    name = token.strip().lower()
    if name in ("identity", "id", "none"):
        return View("identity")
    hflip = vflip = False
    angle = 0.0
    parts = re.split(r"\+(?=[a-z])", name)
    for part in parts:
        match = _ROT.match(part)
        if part == "hflip":
            hflip = True
        elif part == "vflip":
            vflip = True
        elif match and math.isfinite(float(match.group(1))) and abs(float(match.group(1))) <= 180:
            angle += float(match.group(1))
        else:
            raise ValueError(f"unknown TTA view {token.strip()!r}: expected identity, hflip, vflip, rot<degrees> "
                             "(-180..180) or a combination such as hflip+rot10")
    return View(name, hflip, vflip, angle)


def parse_views(spec: str) -> tuple[View, ...]:
    """The views of a comma-separated list (at least one, at most :data:`MAX_VIEWS`, no duplicates)."""
    views = tuple(parse_view(t) for t in str(spec).split(",") if t.strip())
    if not views:
        raise ValueError("tta_views names no view; e.g. identity,hflip,rot-10,rot+10")
    if len(views) > MAX_VIEWS:
        raise ValueError(f"tta_views names {len(views)} views; at most {MAX_VIEWS}")
    if len({v.name for v in views}) != len(views):
        raise ValueError(f"tta_views repeats a view: {spec!r}")
    return views


def tta_enabled(request_tta: bool | None, setting: str) -> bool:
    """The request's choice, else the setting (``on`` / ``off`` / ``auto`` = :data:`TTA_AUTO`)."""
    if request_tta is not None:
        return bool(request_tta)
    return {"on": True, "off": False}.get(setting, TTA_AUTO)


def view_inputs(views: tuple[View, ...], array: np.ndarray) -> np.ndarray:
    """``V x S x S x 3`` float32: the model input seen in every view (stacked into the forward pass)."""
    return np.stack([view.apply(array) for view in views]).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- classification

def fuse_probabilities(probabilities: np.ndarray, views: tuple[View, ...]) -> tuple[np.ndarray, dict]:
    """``V x C`` softmax rows → (mean over views, uncertainty block)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    mean = probs.mean(axis=0)
    winner = int(np.argmax(mean))
    return mean.astype(np.float32), {
        "views": len(views),
        "view_names": [v.name for v in views],
        "probability_min": [float(v) for v in probs.min(axis=0)],
        "probability_max": [float(v) for v in probs.max(axis=0)],
        "probability_sd": [float(v) for v in probs.std(axis=0)],
        "prediction_agreement": float(np.mean(np.argmax(probs, axis=1) == winner)),
    }


# ---------------------------------------------------------------------------------------------- segmentation

@dataclass
class FusedMask:
    """The TTA result of one image in its original frame."""

    mask: np.ndarray  # H x W bool: mean foreground > 0.5
    probability: np.ndarray  # H x W float32: mean foreground probability / vote over the views that saw the pixel
    agreement: np.ndarray  # H x W float32 0..1: fraction of those views voting foreground
    view_masks: list[np.ndarray]  # per view, H x W bool (its own vote; unseen pixels are background)


def fuse_masks(views: tuple[View, ...], maps: list[np.ndarray], to_original) -> FusedMask:
    """Per-view ``S x S`` foreground maps (probabilities or 0/1 votes, in each view's frame) → :class:`FusedMask`.

    ``to_original`` maps an ``S x S`` float map in the unaugmented square frame onto the original ``H x W``
    pixels (the model's transform: ``invert_probability`` for a letterbox, ``invert_mask`` for a crop).
    """
    size = maps[0].shape[0]
    total = weights = votes = None
    view_masks = []
    for view, fg in zip(views, maps, strict=True):
        probability = np.asarray(to_original(view.invert(np.asarray(fg, dtype=np.float32))), dtype=np.float32)
        seen = np.asarray(to_original(view.seen(size)), dtype=np.float32) > 0.5
        vote = (probability > 0.5) & seen
        view_masks.append(vote)
        weight = seen.astype(np.float32)
        total = probability * weight if total is None else total + probability * weight
        weights = weight if weights is None else weights + weight
        votes = vote.astype(np.float32) if votes is None else votes + vote
    assert total is not None and weights is not None and votes is not None
    safe = np.maximum(weights, 1.0)
    mean = np.where(weights > 0, total / safe, 0.0).astype(np.float32)
    agreement = np.where(weights > 0, votes / safe, 0.0).astype(np.float32)
    return FusedMask(mask=mean > 0.5, probability=mean, agreement=agreement, view_masks=view_masks)


def agreement_png(agreement: np.ndarray) -> np.ndarray:
    """0..1 float map → uint8 0..255 (the PNG the dashboard overlays)."""
    return np.clip(np.rint(np.asarray(agreement, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def spread(per_view: list[dict]) -> dict[str, dict[str, float]]:
    """``{key: {mean, min, max, sd}}`` over the views' measurement dicts (numeric keys of :data:`SPREAD_KEYS`)."""
    out: dict[str, dict[str, float]] = {}
    for key in SPREAD_KEYS:
        values = [float(m[key]) for m in per_view if isinstance(m.get(key), (int, float))
                  and not isinstance(m.get(key), bool) and math.isfinite(float(m[key]))]
        if len(values) == len(per_view) and values:
            array = np.asarray(values, dtype=np.float64)
            out[key] = {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max()),
                        "sd": float(array.std())}
    return out
