"""Geometry: the baseline centre crop reproduced exactly, and exact inverses (round trips on masks)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from core.geometry import CenterCrop, Letterbox, make_transform

RNG = np.random.default_rng(20250)
EDGE_SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (223, 224), (224, 224), (225, 224), (300, 300), (710, 480),
              (480, 710), (800, 540), (544, 465), (2000, 17), (17, 2000), (224, 1000), (999, 225)]
RANDOM_SIZES = [tuple(int(v) for v in RNG.integers(1, 1200, 2)) for _ in range(120)]
SIZES = EDGE_SIZES + RANDOM_SIZES


def baseline_label_crop(mask: np.ndarray, size: int = 224) -> np.ndarray:
    """What the baseline's CenterCropGenerator does to a label map (written out from its description)."""
    h, w = mask.shape
    f = size / min(h, w)
    zoomed = ndimage.zoom(mask, (f, f), order=0)
    r0, c0 = zoomed.shape[0] // 2 - size // 2, zoomed.shape[1] // 2 - size // 2
    return zoomed[r0 : r0 + size, c0 : c0 + size]


def baseline_image_crop(image: np.ndarray, size: int = 224) -> np.ndarray:
    h, w = image.shape[:2]
    f = size / min(h, w)
    zoomed = ndimage.zoom(image / 255.0, (f, f, 1), order=1)
    r0, c0 = zoomed.shape[0] // 2 - size // 2, zoomed.shape[1] // 2 - size // 2
    return zoomed[r0 : r0 + size, c0 : c0 + size].astype(np.float32)


def scipy_valid(cc: CenterCrop) -> np.ndarray:
    """224 pixels scipy really read from the input (at some sizes its last row/column is cval 0)."""
    return baseline_label_crop(np.ones((cc.height, cc.width), np.uint8), cc.size).astype(bool)


@pytest.mark.parametrize("width,height", SIZES)
def test_apply_mask_equals_scipy_zoom_and_crop(width, height):
    mask = RNG.integers(0, 3, (height, width)).astype(np.uint8)
    out = CenterCrop(width, height).apply_mask(mask)
    assert out.shape == (224, 224)
    np.testing.assert_array_equal(out, baseline_label_crop(mask))


def test_apply_mask_keeps_bool_dtype():
    mask = RNG.random((61, 90)) > 0.5
    out = CenterCrop(90, 61).apply_mask(mask)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, baseline_label_crop(mask.astype(np.uint8)).astype(bool))


@pytest.mark.parametrize("width,height", [(300, 300), (544, 465), (37, 90), (800, 540)])
def test_apply_image_equals_baseline(width, height):
    image = RNG.integers(0, 256, (height, width, 3)).astype(np.uint8)
    out = CenterCrop(width, height).apply(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, baseline_image_crop(image))


@pytest.mark.parametrize("width,height", [s for s in SIZES if min(s) >= 224])
def test_forward_of_inverse_is_identity_when_downsampling(width, height):
    cc = CenterCrop(width, height)
    m224 = RNG.integers(0, 2, (224, 224)).astype(np.uint8)
    back = cc.invert_mask(m224)
    assert back.shape == (height, width)
    valid = scipy_valid(cc)  # where scipy wrote cval, the model sees 0 whatever the input says
    np.testing.assert_array_equal(cc.apply_mask(back)[valid], m224[valid])
    assert valid.mean() > 0.99


@pytest.mark.parametrize("width,height", [s for s in SIZES if min(s) < 224])
def test_inverse_of_forward_is_identity_inside_crop_when_upsampling(width, height):
    cc = CenterCrop(width, height)
    coverage = cc.coverage()
    mask = (RNG.integers(0, 2, (height, width)) * coverage).astype(np.uint8)
    forward = cc.apply_mask(mask)
    valid = scipy_valid(cc)
    # pixels scipy did not read (cval edge) cannot come back; everything else does
    lost = cc.invert_mask((~valid).astype(np.uint8)).astype(bool)
    back = cc.invert_mask(forward)
    np.testing.assert_array_equal(back[~lost], mask[~lost])
    assert coverage.sum() > 0


@pytest.mark.parametrize("side", [1, 5, 100, 224, 300, 512, 777])
def test_square_inverse_is_plain_nearest_resize(side):
    cc = CenterCrop(side, side)
    assert cc.offset == (0, 0) and cc.coverage().all()
    m224 = RNG.integers(0, 2, (224, 224)).astype(np.uint8)
    expected = ndimage.zoom(m224, side / 224, order=0, mode="nearest")
    np.testing.assert_array_equal(cc.invert_mask(m224), expected)


@pytest.mark.parametrize("width,height", [(710, 480), (480, 710), (641, 300), (300, 641)])
def test_coverage_is_the_centred_short_side_square(width, height):
    cc = CenterCrop(width, height)
    cov = cc.coverage()
    rows_in, cols_in = np.flatnonzero(cov.any(1)), np.flatnonzero(cov.any(0))
    assert cov.sum() == rows_in.size * cols_in.size  # one rectangle
    short = min(width, height)
    slack = int(np.ceil(1 / cc.factor)) + 1  # one zoomed pixel on each side
    assert abs(rows_in.size - short) <= slack and abs(cols_in.size - short) <= slack
    # centred on the long axis: margins equal within one original pixel (+ one zoomed pixel)
    band, length = (cols_in, width) if width > height else (rows_in, height)
    assert abs(band[0] - (length - 1 - band[-1])) <= 2


def test_single_pixel_lands_where_it_came_from():
    cc = CenterCrop(710, 480)
    for y, x in [(0, 200), (240, 355), (477, 500), (100, 130)]:
        gt = np.zeros((480, 710), np.uint8)
        gt[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = 1
        back = cc.invert_mask(cc.apply_mask(gt))
        assert back[y, x] == 1 and back.sum() <= 2 * gt.sum()


def _ellipse(width, height, cx, cy, a, b):
    yy, xx = np.mgrid[:height, :width]
    return (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1).astype(np.uint8)


def dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_oracle_mask_dice_on_710x480_beats_stretch():
    """Ground truth → baseline forward → inverse: ours ≥ 0.99; the baseline model.py's stretch ~0.8."""
    gt = _ellipse(710, 480, cx=340, cy=250, a=110, b=70)
    cc = CenterCrop(710, 480)
    m224 = cc.apply_mask(gt)
    ours = cc.invert_mask(m224)
    # model.py: cv2.resize(m224, (W, H), INTER_NEAREST) = pixel-centre nearest over the whole image
    ri = np.minimum((np.arange(480) * 224 / 480).astype(int), 223)
    ci = np.minimum((np.arange(710) * 224 / 710).astype(int), 223)
    stretch = m224[np.ix_(ri, ci)]
    assert dice(ours, gt) >= 0.99
    assert dice(stretch, gt) < 0.9
    assert dice(ours, gt) - dice(stretch, gt) > 0.1


@pytest.mark.parametrize("width,height", SIZES[:40])
def test_letterbox_round_trips(width, height):
    lb = Letterbox(width, height, 256)
    rows, cols = lb.inner_shape
    r0, c0 = lb.offset
    assert lb.coverage().all()
    canvas = np.zeros((256, 256), np.uint8)
    canvas[r0 : r0 + rows, c0 : c0 + cols] = RNG.integers(0, 2, (rows, cols))
    if rows <= height and cols <= width:  # downsampling: forward(inverse(x)) is x
        np.testing.assert_array_equal(lb.apply_mask(lb.invert_mask(canvas)), canvas)
    if rows >= height and cols >= width:  # upsampling: inverse(forward(m)) is m
        mask = RNG.integers(0, 2, (height, width)).astype(np.uint8)
        np.testing.assert_array_equal(lb.invert_mask(lb.apply_mask(mask)), mask)
    image = RNG.integers(0, 256, (height, width, 3)).astype(np.uint8)
    out = lb.apply(image)
    assert out.shape == (256, 256, 3)
    outside = np.ones((256, 256), bool)
    outside[r0 : r0 + rows, c0 : c0 + cols] = False
    assert not out[outside].any()
    prob = lb.invert_probability(canvas.astype(np.float32))
    assert prob.shape == (height, width)


def test_make_transform():
    assert isinstance(make_transform("center_crop", 10, 20, 224), CenterCrop)
    assert isinstance(make_transform("letterbox", 10, 20, 256), Letterbox)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        make_transform("stretch", 10, 20, 224)
