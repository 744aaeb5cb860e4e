"""core.measure: exact on rasterised rectangles and ellipses; empty masks never raise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.measure import measure_mask, ramanujan_perimeter


def ellipse_mask(shape, cx, cy, a, b, angle_deg):
    """Pixels whose centre lies inside the ellipse (semi-axes a, b; major axis at angle_deg, y down)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    t = math.radians(angle_deg)
    u = (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t)
    v = -(xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def test_rectangle_exact():
    mask = np.zeros((100, 200), bool)
    mask[20:50, 40:120] = True  # 30 rows x 80 columns
    m = measure_mask(mask)
    assert m["area_px"] == 2400 and not m["empty"] and m["components"] == 1
    diagonal = math.hypot(80, 30)
    assert m["longest_diameter_px"] == pytest.approx(diagonal, rel=1e-9)
    # extent of the rectangle across its diagonal: 2 * area / diagonal
    assert m["perpendicular_diameter_px"] == pytest.approx(2 * 80 * 30 / diagonal, rel=1e-9)


def test_rectangle_in_mm():
    mask = np.zeros((50, 50), bool)
    mask[10:20, 10:20] = True
    m = measure_mask(mask, pixel_spacing_mm=0.5)
    assert m["area_mm2"] == pytest.approx(100 * 0.25)
    assert m["longest_diameter_mm"] == pytest.approx(math.hypot(10, 10) * 0.5)


@pytest.mark.parametrize("angle", [0.0, 30.0, -60.0, 90.0])
def test_ellipse_diameters_and_head_circumference(angle):
    a, b = 120.0, 75.0
    mask = ellipse_mask((400, 400), 200.3, 190.7, a, b, angle)
    m = measure_mask(mask, pixel_spacing_mm=0.2, fetal_head=True)
    assert m["area_px"] == pytest.approx(math.pi * a * b, rel=0.01)
    assert m["longest_diameter_px"] == pytest.approx(2 * a, rel=0.01)
    assert m["perpendicular_diameter_px"] == pytest.approx(2 * b, rel=0.015)
    e = m["ellipse"]
    assert e["a"] == pytest.approx(a, rel=0.01) and e["b"] == pytest.approx(b, rel=0.01)
    assert (e["cx"], e["cy"]) == pytest.approx((200.3, 190.7), abs=0.2)
    if angle != 90.0:  # 90 and -90 are the same axis
        assert e["angle_deg"] == pytest.approx(angle, abs=1.0)
    hc = ramanujan_perimeter(a, b)
    assert m["head_circumference_px"] == pytest.approx(hc, rel=0.01)
    assert m["head_circumference_mm"] == pytest.approx(hc * 0.2, rel=0.01)
    assert m["biparietal_diameter_mm"] == pytest.approx(2 * b * 0.2, rel=0.01)


def test_ramanujan_circle_is_exact():
    assert ramanujan_perimeter(10, 10) == pytest.approx(2 * math.pi * 10)


def test_head_fit_ignores_specks_and_holes():
    mask = ellipse_mask((300, 300), 150, 150, 100, 60, 15)
    clean = measure_mask(mask, fetal_head=True)
    noisy = mask.copy()
    noisy[140:150, 140:150] = False  # a hole
    noisy[5:8, 5:8] = True  # a speck
    m = measure_mask(noisy, fetal_head=True)
    assert m["components"] == 2
    assert m["head_circumference_px"] == pytest.approx(clean["head_circumference_px"], rel=1e-6)


def test_empty_mask_gives_zeros_and_flag():
    m = measure_mask(np.zeros((10, 10), bool), pixel_spacing_mm=0.3, fetal_head=True)
    assert m["empty"] is True and m["area_px"] == 0 and m["longest_diameter_px"] == 0.0
    assert m["head_circumference_mm"] == 0.0 and m["ellipse"] is None


def test_single_pixel_and_bad_input():
    one = np.zeros((5, 5), bool)
    one[2, 2] = True
    m = measure_mask(one)
    assert m["longest_diameter_px"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="2-D"):
        measure_mask(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="positive"):
        measure_mask(one, pixel_spacing_mm=-1)
