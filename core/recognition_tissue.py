"""The recogniser's tissue-texture features (feature version 3) of a 128 × 128 grey thumbnail: what tells tissue
textures apart without having seen them (a thyroid's fine, even speckle from a breast's layered ligaments and fat
lobules): the structure tensor's coherence and edge direction in blocks at two scales, the spread of local mean
and variation in blocks, grey-level co-occurrence, speckle autocorrelation out to 8 pixels, ridge
(second-derivative) directions at three scales, log-intensity moments, dark / bright shares and local binary
patterns at full size. numpy only; used by :mod:`core.recognition`, mostly by its out-of-distribution score."""

from __future__ import annotations

import numpy as np

from core.recognition_features import lbp_hist, mean, pool2, share, std

TISSUE_COUNT = 79  # length of tissue_features()


def quantiles(values: np.ndarray, qs: list[float]) -> np.ndarray:
    """``np.quantile(values, qs)`` (linear), without its overhead on small arrays."""
    ordered = np.sort(values, axis=None)
    position = np.asarray(qs, np.float64) * (ordered.size - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, ordered.size - 1)
    return np.asarray(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _block_sum(a: np.ndarray, block: int) -> np.ndarray:
    n = a.shape[0] // block
    return np.asarray(a.reshape(n, block, n, block).sum(axis=(1, 3)))


def structure(grey: np.ndarray, mask: np.ndarray, block: int) -> list[float]:
    """Structure tensor in ``block`` × ``block`` blocks (over half inside ``mask``): the mean, spread and 90th
    percentile of the blocks' coherence (1 = one edge direction), the mean and spread of their share of horizontal
    edges, and the whole image's coherence and horizontal-edge share (7 values)."""
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    gx[:, 1:-1] = (grey[:, 2:] - grey[:, :-2]) / 2
    gy[1:-1] = (grey[2:] - grey[:-2]) / 2
    gx, gy = gx * mask, gy * mask
    bxx, byy, bxy = _block_sum(gx * gx, block), _block_sum(gy * gy, block), _block_sum(gx * gy, block)
    trace = bxx + byy + 1e-3
    valid = _block_sum(mask.astype(np.float32), block) > block * block * 0.5
    coherence, vertical = np.zeros(1), np.zeros(1)
    if valid.any():
        coherence = (np.sqrt((bxx - byy) ** 2 + 4 * bxy ** 2) / trace)[valid]
        vertical = (byy / trace)[valid]
    sxx, syy, sxy = bxx.sum(), byy.sum(), bxy.sum()
    total = sxx + syy + 1e-3
    return [float(mean(coherence)), float(std(coherence)), float(quantiles(coherence, [0.9])[0]),
            float(mean(vertical)), float(std(vertical)), float(np.sqrt((sxx - syy) ** 2 + 4 * sxy ** 2) / total),
            float(syy / total)]


def local_variation(grey: np.ndarray, mask: np.ndarray, block: int) -> list[float]:
    """Blocks (``block`` × ``block``, over 90 % inside ``mask``): 10/50/90th percentiles and spread of their
    coefficient of variation, and of their mean relative to the image's (8 values; zeros under 4 blocks)."""
    count = block * block  # block sums, not mean / std over axes (1, 3): a third of the time, equal to 1e-6
    means = _block_sum(grey, block) / count
    deviation = grey - np.repeat(np.repeat(means, block, axis=0), block, axis=1)
    stds = np.sqrt(_block_sum(deviation * deviation, block) / count)
    valid = _block_sum(mask.astype(np.float32), block) / count > 0.9
    if valid.sum() < 4:
        return [0.0] * 8
    variation, level = stds[valid] / (means[valid] + 1.0), means[valid]
    relative = quantiles(level, [0.1, 0.5, 0.9]) / (mean(level) + 1.0)
    return [*quantiles(variation, [0.1, 0.5, 0.9]).tolist(), float(std(variation)), *relative.tolist(),
            float(std(level) / (mean(level) + 1.0))]


def cooccurrence(grey: np.ndarray, mask: np.ndarray, levels: int = 8) -> list[float]:
    """Grey-level co-occurrence (``levels`` levels between the 2nd and 98th percentile inside ``mask``) at distances
    1, 2, 4, across and down: contrast, homogeneity and energy (18 values)."""
    inside = grey[mask]
    if inside.size < 16:
        return [0.0] * 18
    low, high = quantiles(inside, [0.02, 0.98])
    q = np.clip(((grey - low) / (high - low + 1e-3) * levels).astype(np.int64), 0, levels - 1)
    gap = np.abs(np.arange(levels)[:, None] - np.arange(levels)[None, :]).ravel().astype(np.float64)
    contrast, closeness = gap ** 2, 1 / (1 + gap)
    first = q * levels
    out: list[float] = []
    for d in (1, 2, 4):
        for a, b, both in ((first[:, :-d], q[:, d:], mask[:, :-d] & mask[:, d:]),
                           (first[:-d], q[d:], mask[:-d] & mask[d:])):
            p = np.bincount((a + b)[both], minlength=levels * levels).astype(np.float64)  # pair codes, one selection
            p /= p.sum() + 1e-9
            out += [float(p @ contrast) / 10, float(p @ closeness), float(p @ p) * 5]
    return out


def autocorrelation(grey: np.ndarray, mask: np.ndarray) -> list[float]:
    """Normalised autocorrelation inside ``mask`` at lags 1, 2, 4, 8 across and down, and down minus across at 8
    (9 values)."""
    inside = grey[mask]
    if inside.size < 16:
        return [0.0] * 9
    z = (grey - mean(inside)) / (std(inside) + 1e-3)
    weight = mask.astype(grey.dtype)
    out: list[float] = []
    for lag in (1, 2, 4, 8):
        across, down = weight[:, :-lag] * weight[:, lag:], weight[:-lag] * weight[lag:]
        n_across, n_down = float(across.sum()), float(down.sum())
        out.append(float((z[:, :-lag] * z[:, lag:] * across).sum()) / n_across if n_across else 0.0)
        out.append(float((z[:-lag] * z[lag:] * down).sum()) / n_down if n_down else 0.0)
    return [*out, out[-1] - out[-2]]


Levels = list[tuple[np.ndarray, np.ndarray]]  # (grey, share of the pixels inside the mask) at 128, 64, 32


def pyramid(grey: np.ndarray, mask: np.ndarray, grey64: np.ndarray | None = None) -> Levels:
    """``grey`` and ``mask`` (as a float share) 2 × 2 mean-pooled twice: computed once for the features below."""
    out = [(grey, mask.astype(np.float32))]
    for index in range(2):
        current, inside = out[-1]
        out.append((grey64 if index == 0 and grey64 is not None else pool2(current), pool2(inside)))
    return out


def ridges(grey: np.ndarray, mask: np.ndarray, pooled: Levels | None = None) -> list[float]:
    """Second derivatives at 128 / 64 / 32: the shares of |d²/dy²| and |d²/dxdy| in their sum, and the sum's log
    (9 values). ``pooled``: :func:`pyramid` of ``grey`` and ``mask`` when already made."""
    out: list[float] = []
    for c, inside in pooled or pyramid(grey, mask):
        keep = inside > 0.5
        if keep.sum() < 16:
            out += [0.0] * 3
            continue
        dxx, dyy, dxy = np.zeros_like(c), np.zeros_like(c), np.zeros_like(c)
        dxx[:, 1:-1] = c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]
        dyy[1:-1] = c[2:] - 2 * c[1:-1] + c[:-2]
        dxy[1:-1, 1:-1] = (c[2:, 2:] - c[2:, :-2] - c[:-2, 2:] + c[:-2, :-2]) / 4
        count = float(keep.sum())
        across, down, diagonal = (float((np.abs(d) * keep).sum()) / count for d in (dxx, dyy, dxy))
        total = across + down + diagonal + 1e-3
        out += [down / total, diagonal / total, float(np.log10(total + 1e-2) / 3)]
    return out


def log_statistics(grey: np.ndarray, mask: np.ndarray, pooled: Levels | None = None) -> list[float]:
    """Spread, skew, kurtosis and dark-tail share of log intensity inside ``mask`` at 128 and 64 (8 values)."""
    grey64, inside64 = (pooled or pyramid(grey, mask))[1]
    out: list[float] = []
    for values in (grey[mask], grey64[inside64 > 0.5]):
        if values.size < 16:
            out += [0.0] * 4
            continue
        logs = np.log(values + 1.0)
        average, spread = mean(logs), std(logs) + 1e-6
        centred = (logs - average) / spread
        squared = centred * centred  # products, not ** 3 / ** 4: float32 pow is ~60 x slower (1.2 ms an image)
        out += [float(spread), float(mean(squared * centred)) / 3, float(mean(squared * squared)) / 10,
                share(logs < average - 1.0) * 5]
    return out


def dark_share(grey: np.ndarray, mask: np.ndarray, pooled: Levels | None = None) -> list[float]:
    """At 32 × 32 (blocks over 90 % inside ``mask``): shares under 0.5 and 0.7 × and over 1.5 × the median (3)."""
    grey32, inside32 = (pooled or pyramid(grey, mask))[2]
    keep = inside32 > 0.9
    if keep.sum() < 16:
        return [0.0] * 3
    values = grey32[keep]
    median = np.median(values)
    return [share(values < 0.5 * median), share(values < 0.7 * median),
            share(values > 1.5 * median)]


def tissue_features(grey128: np.ndarray, grey64: np.ndarray | None = None) -> np.ndarray:
    """The 79 version-3 features of a 128 × 128 grey thumbnail (float, 0..255): structure at 128 / 64, local
    variation at 128, co-occurrence at 64, autocorrelation, ridges, log statistics, dark share, LBP at 128 (structure
    at 32, local variation at 64 and Laplacian band energies were tried and dropped: no better, 0.7 ms). ``grey64``:
    its 2 × 2 mean pooling when already made."""
    grey64 = pool2(grey128) if grey64 is None else grey64
    m128, m64 = grey128 > 16, grey64 > 16
    pooled = pyramid(grey128, m128, grey64)
    return np.array(structure(grey128, m128, 16) + structure(grey64, m64, 8) + local_variation(grey128, m128, 8)
                    + cooccurrence(grey64, m64) + autocorrelation(grey128, m128) + ridges(grey128, m128, pooled)
                    + log_statistics(grey128, m128, pooled) + dark_share(grey128, m128, pooled)
                    + list(lbp_hist(grey128, m128)), np.float32)
