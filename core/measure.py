"""Measurements from a binary mask: area, longest diameter and its perpendicular, fetal-head ellipse (HC18).

Conventions: ``x`` = column, ``y`` = row (image coordinates, y down); every pixel is a unit square, so a
``w x h`` rectangle of pixels measures exactly ``w x h``.

* ``area_px``: number of mask pixels.
* ``longest_diameter_px``: the maximum Feret diameter, the largest distance between two points of the mask's
  convex hull (the hull of the pixels' corners).
* ``perpendicular_diameter_px``: the mask's extent perpendicular to that longest diameter (its width measured
  across it), as used for lesions' "longest diameter and the perpendicular one".
* Fetal head (``fetal_head=True``), the HC18 method: the largest component, holes filled, is fitted with the
  ellipse of equal second moments (exact for a filled ellipse); head circumference = Ramanujan's perimeter,
  biparietal diameter = the minor axis. ``ellipse`` = ``{cx, cy, a, b, angle_deg}`` with semi-axes ``a >= b`` in px
  and the major axis' angle from the +x axis, degrees in (-90, 90], clockwise on screen (y down).
* ``*_mm`` / ``area_mm2`` are added when ``pixel_spacing_mm`` (mm per pixel, isotropic) is known.

An empty mask gives zeros and ``"empty": True``, never an exception.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError


def ramanujan_perimeter(a: float, b: float) -> float:
    """Perimeter of an ellipse with semi-axes ``a``, ``b`` (Ramanujan's first approximation)."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def _hull_points(mask: np.ndarray) -> np.ndarray:
    """Corners (x, y) of the boundary pixels' unit squares, on the convex hull."""
    boundary = mask & ~ndimage.binary_erosion(mask)
    rows, cols = np.nonzero(boundary)
    corners = np.concatenate([np.stack([cols + dx, rows + dy], axis=1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)])
    corners = np.unique(corners, axis=0)
    try:
        return corners[ConvexHull(corners).vertices]
    except QhullError:  # cannot happen for unit squares, but stay safe
        return corners


def feret_diameters(mask: np.ndarray) -> tuple[float, float, float]:
    """(longest diameter, perpendicular extent, angle of the longest in degrees) of a non-empty mask, px."""
    points = _hull_points(mask)
    diff = points[:, None, :] - points[None, :, :]
    dist2 = (diff ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    longest = float(math.sqrt(dist2[i, j]))
    direction = (points[j] - points[i]) / longest
    normal = np.array([-direction[1], direction[0]])
    projection = points @ normal
    angle = math.degrees(math.atan2(direction[1], direction[0]))
    angle = angle - 180 if angle > 90 else angle + 180 if angle <= -90 else angle
    return longest, float(projection.max() - projection.min()), angle


def fit_ellipse(mask: np.ndarray) -> dict:
    """Ellipse with the same area centre and second moments as the mask (pixels as unit squares)."""
    rows, cols = np.nonzero(mask)
    cx, cy = float(cols.mean()), float(rows.mean())
    x, y = cols - cx, rows - cy
    # covariance of the region covered by the pixels: centres' covariance + 1/12 per axis (unit squares)
    cov = np.array([[np.mean(x * x), np.mean(x * y)], [np.mean(x * y), np.mean(y * y)]]) + np.eye(2) / 12.0
    eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
    b, a = (2 * math.sqrt(max(v, 0.0)) for v in eigenvalues)
    vx, vy = eigenvectors[:, 1]
    angle = math.degrees(math.atan2(vy, vx))
    angle = angle - 180 if angle > 90 else angle + 180 if angle <= -90 else angle
    return {"cx": cx, "cy": cy, "a": a, "b": b, "angle_deg": angle}


def _head_region(mask: np.ndarray) -> np.ndarray:
    """Largest connected component with holes filled (a predicted head can have specks and gaps)."""
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def measure_mask(mask: np.ndarray, *, pixel_spacing_mm: float | None = None, fetal_head: bool = False) -> dict:
    """Area, longest/perpendicular diameters and, for a fetal head, HC and BPD from an ellipse fit."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"measure_mask needs a 2-D mask, got shape {mask.shape}")
    mask = mask.astype(bool)
    spacing = float(pixel_spacing_mm) if pixel_spacing_mm else None
    if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"pixel_spacing_mm must be a positive number, got {pixel_spacing_mm!r}")
    out: dict = {"empty": not mask.any(), "pixel_spacing_mm": spacing, "area_px": int(mask.sum()),
                 "components": int(ndimage.label(mask)[1]) if mask.any() else 0}
    if out["empty"]:
        out.update(longest_diameter_px=0.0, perpendicular_diameter_px=0.0, longest_diameter_angle_deg=None)
    else:
        longest, perpendicular, angle = feret_diameters(mask)
        out.update(longest_diameter_px=longest, perpendicular_diameter_px=perpendicular,
                   longest_diameter_angle_deg=angle)
    if fetal_head:
        if out["empty"]:
            out.update(head_circumference_px=0.0, biparietal_diameter_px=0.0,
                       occipitofrontal_diameter_px=0.0, ellipse=None)
        else:
            ellipse = fit_ellipse(_head_region(mask))
            out.update(head_circumference_px=ramanujan_perimeter(ellipse["a"], ellipse["b"]),
                       biparietal_diameter_px=2 * ellipse["b"], occipitofrontal_diameter_px=2 * ellipse["a"],
                       ellipse=ellipse)
    if spacing is not None:
        out["area_mm2"] = out["area_px"] * spacing * spacing
        for key in ("longest_diameter", "perpendicular_diameter", "head_circumference", "biparietal_diameter",
                    "occipitofrontal_diameter"):
            if f"{key}_px" in out:
                out[f"{key}_mm"] = out[f"{key}_px"] * spacing
    return out
