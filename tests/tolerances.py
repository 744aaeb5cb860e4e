"""How model outputs are compared in tests: with tolerances that fp32 kernels keep on any x86 CPU, any thread count
and any test order (issue 20), never bit for bit.

Why these numbers are enough and still catch a regression:
- probabilities: two fp32 runs of one network on different kernels (AVX-512 / AVX2 / scalar, 1 or 2 threads,
  another batch size) differ by ~1e-8 (seen: 0.019993335 vs 0.019993324); a changed class, prompt or preprocessing
  moves them by far more than :data:`PROBABILITY_ATOL`.
- masks: a pixel flips between two such runs only where a logit is within ~1e-6 of the threshold (rare: a few pixels
  at most); a mask moved by one pixel row differs along its whole width. :func:`masks_agree` allows 0.1 % of the
  pixels and asks Dice ≥ 0.999 (or at most :data:`MASK_FLIPS` pixels for a small mask), so a one-row shift still
  fails (``tests/test_release_parity.py`` checks that against every pinned mask).
- measurements: derived from the mask and the spacing; relative 1e-4 holds while a few boundary pixels flip on masks of
  ten thousand pixels and more, and a pixel count (``area_px``) may also be off by :data:`MASK_FLIPS` pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROBABILITY_ATOL = 1e-5
MASK_MAX_DISAGREEMENT = 1e-3  # fraction of the image's pixels
MASK_MIN_DICE = 0.999
MASK_FLIPS = 2  # pixels that may flip on a small mask (where one pixel alone is more than 0.1 % of it)
MEASURE_RTOL = 1e-4


def probabilities_close(got: Sequence[float], want: Sequence[float], atol: float = PROBABILITY_ATOL) -> bool:
    """Same length and every class within ``atol``."""
    return len(got) == len(want) and all(abs(float(g) - float(w)) <= atol for g, w in zip(got, want, strict=True))


def assert_probabilities_close(got: Sequence[float], want: Sequence[float], atol: float = PROBABILITY_ATOL,
                               where: str = "") -> None:
    assert probabilities_close(got, want, atol), f"{where}: probabilities {list(got)} != {list(want)} (±{atol})"


def as_mask(mask: Any) -> np.ndarray:
    """A boolean mask from an array, a PIL image, a PNG path or PNG bytes."""
    if isinstance(mask, (str, Path)):
        mask = Image.open(mask)
    elif isinstance(mask, bytes):
        import io

        mask = Image.open(io.BytesIO(mask))
    return np.asarray(mask) > 0


def mask_difference(got: Any, want: Any) -> tuple[int, float, float]:
    """(differing pixels, their fraction of the image, Dice) of two masks of one shape."""
    a, b = as_mask(got), as_mask(want)
    assert a.shape == b.shape, f"mask shapes differ: {a.shape} vs {b.shape}"
    differing = int(np.count_nonzero(a != b))
    total = int(a.sum()) + int(b.sum())
    dice = 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total
    return differing, differing / max(a.size, 1), dice


def masks_agree(got: Any, want: Any) -> bool:
    """At most 0.1 % of the pixels differ, and Dice ≥ 0.999 (or only a pixel or two flipped on a small mask)."""
    differing, fraction, dice = mask_difference(got, want)
    return fraction <= MASK_MAX_DISAGREEMENT and (dice >= MASK_MIN_DICE or differing <= MASK_FLIPS)


def assert_masks_agree(got: Any, want: Any, where: str = "") -> None:
    differing, fraction, dice = mask_difference(got, want)
    assert masks_agree(got, want), f"{where}: masks differ in {differing} px ({fraction:.4%}), Dice {dice:.5f}"


def number_close(got: Any, want: Any, rtol: float = MEASURE_RTOL, atol: float = 0.0) -> bool:
    """Numbers within ``rtol`` (relative) or ``atol``; None / text / bool compared exactly."""
    if isinstance(want, bool) or isinstance(got, bool) or not isinstance(want, (int, float)):
        return got == want
    if not isinstance(got, (int, float)):
        return False
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return math.isclose(got, want, rel_tol=rtol, abs_tol=atol)


def measurements_close(got: Any, want: Any, rtol: float = MEASURE_RTOL, pixel_slack: float = 0.0) -> bool:
    """Nested measurement dicts / lists with the same keys and numbers within ``rtol``; ``pixel_slack`` adds an
    absolute slack for pixel counts (``area_px``), where a few boundary pixels may flip."""
    if isinstance(want, Mapping):
        return isinstance(got, Mapping) and set(got) == set(want) and all(
            measurements_close(got[k], want[k], rtol, pixel_slack if _counts_pixels(str(k)) else 0.0) for k in want)
    if isinstance(want, (list, tuple)):
        return isinstance(got, (list, tuple)) and len(got) == len(want) and all(
            measurements_close(g, w, rtol, pixel_slack) for g, w in zip(got, want, strict=True))
    return number_close(got, want, rtol, pixel_slack)


def _counts_pixels(key: str) -> bool:
    return key in ("area_px", "mask_area_px")


def assert_measurements_close(got: Any, want: Any, rtol: float = MEASURE_RTOL, pixel_slack: float = 0.0,
                              where: str = "") -> None:
    assert measurements_close(got, want, rtol, pixel_slack), f"{where}: measurements {got} != {want} (rtol {rtol})"
