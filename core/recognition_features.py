"""The recogniser's texture and geometry features (feature version 2) of a 128 × 128 squashed thumbnail: local
binary patterns and gradient-orientation histograms at two scales, the shape of the ultrasound cone (the
non-dark region), speckle statistics at two scales and a depth profile (version 2; version 3 adds
:mod:`core.recognition_tissue`). numpy only; used by :mod:`core.recognition`."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

FINE = 128  # side of the thumbnail these features are computed on
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


def mean(a: np.ndarray) -> Any:
    """``a.mean()`` (the same sum, divided alike: bit for bit) without its Python overhead (~3 µs a call)."""
    return a.sum() / a.size


def std(a: np.ndarray) -> Any:
    """``a.std()`` bit for bit (numpy's own steps: mean, squared deviations, their mean, root), in half the time."""
    deviation = a - a.sum() / a.size
    deviation *= deviation
    return np.sqrt(deviation.sum() / a.size)


def share(a: np.ndarray) -> float:
    """``a.mean()`` of a boolean array (the share of True), counted rather than summed in float64."""
    return np.count_nonzero(a) / a.size


def pool2(a: np.ndarray) -> np.ndarray:
    """2 × 2 mean pooling of a 2-D array with even sides."""
    return np.asarray((a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]) / 4.0)


@functools.lru_cache(maxsize=1)
def _lbp_table() -> np.ndarray:
    """Rotation-invariant uniform LBP: code → number of set bits (0..8) when uniform, else 9."""
    table = np.zeros(256, np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else 9
    return table


def lbp_hist(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """10-bin histogram of rotation-invariant uniform local binary patterns over the interior pixels in ``mask``."""
    centre = grey[1:-1, 1:-1]
    h, w = centre.shape
    level = centre + 1.0
    code, brighter = np.zeros((h, w), np.uint8), np.empty((h, w), bool)
    for bit, (dy, dx) in enumerate(_OFFSETS):  # uint8 codes: a quarter of the int64 work
        np.greater_equal(grey[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], level, out=brighter)
        code |= brighter.view(np.uint8) << np.uint8(bit)
    counts = np.bincount(code[mask[1:-1, 1:-1]], minlength=256)  # per code, then per pattern: same whole counts
    return np.bincount(_lbp_table(), weights=counts, minlength=10)[:10] / max(1, int(counts.sum()))


@functools.lru_cache(maxsize=4)
def _cell_offsets(side: int, cells: int) -> np.ndarray:
    """8 × the row-major cell index of each pixel of a ``side`` × ``side`` image cut in ``cells`` × ``cells``."""
    index = np.arange(side) // (side // cells)
    return np.asarray((index[:, None] * cells + index[None, :]) * 8, np.int64)


def orientation_bins(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The 8 orientation bins (0..π in π/8 steps) of gradients; the exact ties (0°, 45°, 90°, 135°, common on whole
    grey levels) are set by comparison, not by arctan2, whose last bit differs between CPUs' vector kernels (AVX-512
    gives 45° one ulp low: bin 1 instead of 2)."""
    bins = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * 8).astype(np.int64), 7)
    bins[(gx == gy) & (gx != 0)] = 2
    bins[(gx == -gy) & (gx != 0)] = 6
    bins[gx == 0] = 4
    bins[gy == 0] = 0  # also where both are 0 (arctan2(0, 0) = 0; no weight there)
    return bins


def orientation_hist(grey: np.ndarray, mask: np.ndarray, cells: int = 2) -> np.ndarray:
    """Magnitude-weighted 8-bin histogram of gradient orientation (0..π) in each of ``cells`` × ``cells`` cells."""
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
    gy[1:-1] = grey[2:] - grey[:-2]
    magnitude = np.hypot(gx, gy) * mask
    bins = orientation_bins(gx, gy)
    # one bincount over (cell, bin): each bin adds its pixels in the same (row-major) order as one per cell did
    hists = np.bincount((bins + _cell_offsets(grey.shape[0], cells)).ravel(), weights=magnitude.ravel(),
                        minlength=8 * cells * cells).reshape(cells * cells, 8)
    return np.concatenate([hist / (hist.sum() + 1e-3) for hist in hists])


def cone(grey32: np.ndarray) -> np.ndarray:
    """Shape of the non-dark region at 32 × 32: row / column coverage, left and right edges and the width change
    in 8 bands (a sector, a rectangle, a cropped frame), and its area."""
    mask = grey32 > 10
    rows, cols, any_row = mask.mean(axis=1), mask.mean(axis=0), mask.any(axis=1)
    left = np.where(any_row, np.argmax(mask, axis=1), 16) / 32
    right = np.where(any_row, 31 - np.argmax(mask[:, ::-1], axis=1), 16) / 32
    bands = [v.reshape(8, 4).mean(axis=1) for v in (rows, cols, left, right)]
    width = bands[3] - bands[2]
    return np.concatenate([*bands, width[1:] - width[:-1], [share(mask)]])


def _blur3(grey: np.ndarray) -> np.ndarray:
    padded = np.pad(grey, 1, mode="edge")
    h, w = grey.shape
    return np.asarray(sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0)


def speckle(grey: np.ndarray, mask: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """Speckle in ``mask`` (``blur``: the 3 × 3 mean of ``grey``): high-pass coefficient of variation and kurtosis,
    signal-to-noise, the normalised autocorrelation at lags 1, 2, 4 (horizontal, vertical) and the share of strong
    high-pass peaks (10 values)."""
    if mask.sum() < 16:
        return np.zeros(10, np.float32)
    high = (grey - blur)[mask]
    spread = std(high) + 1e-3
    inside = grey[mask]
    centred = (high - mean(high)) ** 2  # squared then squared: float32 ** 4 is ~30 x slower (equal to 1e-6)
    out = [float(spread / (mean(blur[mask]) + 1.0)), float(mean(centred * centred) / spread ** 4) / 10,
           float(mean(inside) / (std(inside) + 1.0)) / 5]
    g = (grey - mean(inside)) / (std(inside) + 1e-3)
    for lag in (1, 2, 4):
        across, down = mask[:, :-lag] & mask[:, lag:], mask[:-lag] & mask[lag:]
        out.append(float(mean((g[:, :-lag] * g[:, lag:])[across])) if across.any() else 0.0)
        out.append(float(mean((g[:-lag] * g[lag:])[down])) if down.any() else 0.0)
    out.append(share(high > 2 * spread) * 5)
    return np.asarray(out, np.float32)


def depth_profile(grey64: np.ndarray, mask64: np.ndarray, blur64: np.ndarray) -> np.ndarray:
    """Mean intensity and mean high-pass magnitude inside ``mask64`` in 8 depth (row) bands."""
    inside = mask64.astype(np.float32)
    counts = inside.reshape(8, -1).sum(axis=1)
    high = np.abs(grey64 - blur64)
    sums = [(v * inside).reshape(8, -1).sum(axis=1) / np.maximum(counts, 1.0) for v in (grey64, high)]
    return np.concatenate([sums[0] / 255, sums[1] / 32]).astype(np.float32)


def texture_features(grey128: np.ndarray, grey64: np.ndarray | None = None) -> np.ndarray:
    """The 118 version-2 features of a ``FINE`` × ``FINE`` grey thumbnail (float, 0..255), computed at 64 and 32
    (the 128-pixel scale added 1.7 ms for no organ accuracy). ``grey64``: its :func:`pool2` when already made."""
    grey64 = pool2(grey128) if grey64 is None else grey64
    grey32 = pool2(grey64)
    m64, m32 = grey64 > 16, grey32 > 16
    blur64 = _blur3(grey64)
    return np.concatenate([lbp_hist(grey64, m64), lbp_hist(grey32, m32), orientation_hist(grey64, m64),
                           cone(grey32), speckle(grey64, m64, blur64), depth_profile(grey64, m64, blur64)]
                          ).astype(np.float32)
