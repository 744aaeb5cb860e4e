"""The recogniser's texture and geometry features (feature version 2) of a 128 × 128 squashed thumbnail: local
binary patterns and gradient-orientation histograms at two scales, the shape of the ultrasound cone (the
non-dark region), speckle statistics at two scales and a depth profile (version 2; version 3 adds
:mod:`core.recognition_tissue`). numpy only; used by :mod:`core.recognition`."""

from __future__ import annotations

import functools

import numpy as np

FINE = 128  # side of the thumbnail these features are computed on
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]


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
    code = np.zeros(centre.shape, np.int64)
    for bit, (dy, dx) in enumerate(_OFFSETS):
        code |= (grey[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] >= centre + 1.0).astype(np.int64) << bit
    values = _lbp_table()[code[mask[1:-1, 1:-1]]]
    return np.bincount(values, minlength=10)[:10] / max(1, values.size)


def orientation_hist(grey: np.ndarray, mask: np.ndarray, cells: int = 2) -> np.ndarray:
    """Magnitude-weighted 8-bin histogram of gradient orientation (0..π) in each of ``cells`` × ``cells`` cells."""
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
    gy[1:-1] = grey[2:] - grey[:-2]
    magnitude = np.hypot(gx, gy) * mask
    bins = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * 8).astype(np.int64), 7)
    n = grey.shape[0] // cells
    out = []
    for i in range(cells):
        for j in range(cells):
            cell = (slice(i * n, (i + 1) * n), slice(j * n, (j + 1) * n))
            hist = np.bincount(bins[cell].ravel(), weights=magnitude[cell].ravel(), minlength=8)
            out.append(hist / (hist.sum() + 1e-3))
    return np.concatenate(out)


def cone(grey32: np.ndarray) -> np.ndarray:
    """Shape of the non-dark region at 32 × 32: row / column coverage, left and right edges and the width change
    in 8 bands (a sector, a rectangle, a cropped frame), and its area."""
    mask = grey32 > 10
    rows, cols, any_row = mask.mean(axis=1), mask.mean(axis=0), mask.any(axis=1)
    left = np.where(any_row, np.argmax(mask, axis=1), 16) / 32
    right = np.where(any_row, 31 - np.argmax(mask[:, ::-1], axis=1), 16) / 32
    bands = [v.reshape(8, 4).mean(axis=1) for v in (rows, cols, left, right)]
    width = bands[3] - bands[2]
    return np.concatenate([*bands, width[1:] - width[:-1], [mask.mean()]])


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
    spread = high.std() + 1e-3
    inside = grey[mask]
    out = [float(spread / (blur[mask].mean() + 1.0)), float(((high - high.mean()) ** 4).mean() / spread ** 4) / 10,
           float(inside.mean() / (inside.std() + 1.0)) / 5]
    g = (grey - inside.mean()) / (inside.std() + 1e-3)
    for lag in (1, 2, 4):
        across, down = mask[:, :-lag] & mask[:, lag:], mask[:-lag] & mask[lag:]
        out.append(float((g[:, :-lag] * g[:, lag:])[across].mean()) if across.any() else 0.0)
        out.append(float((g[:-lag] * g[lag:])[down].mean()) if down.any() else 0.0)
    out.append(float((high > 2 * spread).mean()) * 5)
    return np.asarray(out, np.float32)


def depth_profile(grey64: np.ndarray, mask64: np.ndarray, blur64: np.ndarray) -> np.ndarray:
    """Mean intensity and mean high-pass magnitude inside ``mask64`` in 8 depth (row) bands."""
    inside = mask64.astype(np.float32)
    counts = inside.reshape(8, -1).sum(axis=1)
    high = np.abs(grey64 - blur64)
    sums = [(v * inside).reshape(8, -1).sum(axis=1) / np.maximum(counts, 1.0) for v in (grey64, high)]
    return np.concatenate([sums[0] / 255, sums[1] / 32]).astype(np.float32)


def texture_features(grey128: np.ndarray) -> np.ndarray:
    """The 118 version-2 features of a ``FINE`` × ``FINE`` grey thumbnail (float, 0..255), computed at 64 and 32
    (the 128-pixel scale added 1.7 ms for no organ accuracy)."""
    grey64 = pool2(grey128)
    grey32 = pool2(grey64)
    m64, m32 = grey64 > 16, grey32 > 16
    blur64 = _blur3(grey64)
    return np.concatenate([lbp_hist(grey64, m64), lbp_hist(grey32, m32), orientation_hist(grey64, m64),
                           cone(grey32), speckle(grey64, m64, blur64), depth_profile(grey64, m64, blur64)]
                          ).astype(np.float32)
