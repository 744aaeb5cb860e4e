"""Issue 23 item 4: the measurements drawn on the image. The caliper lines come from the same geometry as the
numbers (core.measure), and their pixels are on the drawn picture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from tolerances import MEASURE_RTOL

from core import overlay
from core.measure import measure_mask


def _ellipse_mask(a: float = 40, b: float = 22, angle: float = 30.0, size=(160, 120)) -> np.ndarray:
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    t = math.radians(angle)
    x, y = xx - size[0] / 2, yy - size[1] / 2
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _length(segment) -> float:
    (x0, y0), (x1, y1) = segment
    return math.hypot(x1 - x0, y1 - y0)


def _colour_pixels(picture: Image.Image, colour) -> int:
    return int(np.all(np.asarray(picture) == np.array(colour, dtype=np.uint8), axis=-1).sum())


def test_diameter_lines_have_the_measured_lengths_and_are_perpendicular():
    mask = _ellipse_mask()
    measured = measure_mask(mask)
    lines = overlay.diameter_lines(mask)
    assert _length(lines["longest"]) == pytest.approx(measured["longest_diameter_px"], rel=MEASURE_RTOL)
    assert _length(lines["perpendicular"]) == pytest.approx(measured["perpendicular_diameter_px"], rel=MEASURE_RTOL)
    (a0, a1), (b0, b1) = lines["longest"], lines["perpendicular"]
    along = np.subtract(a1, a0) / _length(lines["longest"])
    across = np.subtract(b1, b0) / _length(lines["perpendicular"])
    assert abs(float(along @ across)) < 1e-6
    assert overlay.diameter_lines(np.zeros((10, 10), bool)) == {}


def test_hc_ellipse_and_bpd_follow_the_fit():
    measured = measure_mask(_ellipse_mask(), fetal_head=True)
    ellipse = measured["ellipse"]
    assert _length(overlay.bpd_line(ellipse)) == pytest.approx(measured["biparietal_diameter_px"], rel=1e-9)
    points = np.array(overlay.ellipse_outline(ellipse, steps=720))
    perimeter = float(np.hypot(*np.diff(np.vstack([points, points[:1]]), axis=0).T).sum())
    assert perimeter == pytest.approx(measured["head_circumference_px"], rel=1e-3)


def test_the_caliper_pixels_are_drawn_on_the_overlay_and_scaled():
    mask = _ellipse_mask()
    measured = measure_mask(mask, fetal_head=True)
    base = overlay.overlay(Image.new("RGB", (160, 120), (20, 20, 20)), mask, alpha=0.45)
    assert _colour_pixels(base, overlay.CALIPER_COLOR) == 0 and _colour_pixels(base, overlay.ELLIPSE_COLOR) == 0
    drawn = overlay.draw_calipers(base, lines=overlay.diameter_lines(mask), ellipse=measured["ellipse"])
    assert _colour_pixels(drawn, overlay.CALIPER_COLOR) >= measured["longest_diameter_px"]  # a line, 2 px wide
    assert _colour_pixels(drawn, overlay.ELLIPSE_COLOR) >= measured["head_circumference_px"]
    assert _colour_pixels(base, overlay.CALIPER_COLOR) == 0  # a copy: the overlay itself is untouched
    (x0, y0), _ = overlay.diameter_lines(mask)["longest"]
    half = overlay.draw_calipers(base.resize((80, 60)), lines=overlay.diameter_lines(mask), scale=0.5)
    assert tuple(half.getpixel((round(x0 / 2), round(y0 / 2)))) == overlay.CALIPER_COLOR  # an end, scaled
    only_lines = overlay.draw_calipers(base, lines=overlay.diameter_lines(mask))
    assert _colour_pixels(only_lines, overlay.ELLIPSE_COLOR) == 0  # each measurement drawn only when asked
