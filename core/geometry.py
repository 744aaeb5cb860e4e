"""Square-input geometry: the baseline's centre crop and a letterbox, each with an exact inverse.

Forward maps an original ``H x W`` image to the model's ``S x S`` input; ``invert_mask`` maps an
``S x S`` prediction back onto the original pixel grid (background where the model saw nothing).

Centre crop reproduces ``CenterCropGenerator`` of the UUSIC25 baseline: the short side is zoomed
to ``S`` with ``scipy.ndimage.zoom`` (order 1 for images, order 0 for labels), then the centre
``S x S`` window is cut. The inverse maps every original pixel through the same affine grid
(``scipy``'s corner-aligned mapping) instead of stretching the square over the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PREPROCESSINGS = ("center_crop", "letterbox")


def _zoomed_length(length: int, factor: float) -> int:
    return int(round(length * factor))


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """For each of ``n_out`` samples, the nearest of ``n_in`` inputs on scipy's corner-aligned grid."""
    if n_out == 1 or n_in == 1:
        return np.zeros(n_out, dtype=np.int64)
    coords = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    return np.clip(np.floor(coords + 0.5).astype(np.int64), 0, n_in - 1)


@dataclass(frozen=True)
class CenterCrop:
    """Short side to ``size`` (scipy zoom), centre ``size x size`` window."""

    width: int
    height: int
    size: int = 224

    @property
    def factor(self) -> float:
        return self.size / min(self.width, self.height)

    @property
    def zoomed_shape(self) -> tuple[int, int]:
        """(rows, cols) of the zoomed image before the crop."""
        return _zoomed_length(self.height, self.factor), _zoomed_length(self.width, self.factor)

    @property
    def offset(self) -> tuple[int, int]:
        """(row, col) of the crop window's corner in zoomed coordinates."""
        rows, cols = self.zoomed_shape
        return rows // 2 - self.size // 2, cols // 2 - self.size // 2

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``H x W x 3`` uint8 (or float in [0,1]) → ``size x size x 3`` float32 in [0,1], as the baseline."""
        array = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
        from scipy import ndimage  # here: scipy costs ~0.3 s to import, letterbox models never need it (issue 27)

        zoomed = ndimage.zoom(array, (self.factor, self.factor, 1), order=1)
        r0, c0 = self.offset
        return zoomed[r0 : r0 + self.size, c0 : c0 + self.size, :].astype(np.float32)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Original ``H x W`` label map → ``size x size``, exactly as the baseline (scipy order-0 zoom, crop).

        scipy itself is called: at some sizes its last zoomed row/column falls a hair outside the
        input and gets ``cval`` 0 instead of the nearest label; the baseline trains and scores on that.
        """
        source = mask.astype(np.uint8) if mask.dtype == bool else mask
        from scipy import ndimage

        zoomed = ndimage.zoom(source, (self.factor, self.factor), order=0)
        r0, c0 = self.offset
        return zoomed[r0 : r0 + self.size, c0 : c0 + self.size].astype(mask.dtype, copy=False)

    def invert_mask(self, mask: np.ndarray, background: int = 0) -> np.ndarray:
        """``size x size`` prediction → original ``H x W``; pixels outside the crop get ``background``."""
        rows, cols = self.zoomed_shape
        r0, c0 = self.offset
        # each original pixel → nearest zoomed pixel on the same corner-aligned grid
        zr = _nearest_index(self.height, rows) - r0
        zc = _nearest_index(self.width, cols) - c0
        inside_r = (zr >= 0) & (zr < self.size)
        inside_c = (zc >= 0) & (zc < self.size)
        out = np.full((self.height, self.width), background, dtype=mask.dtype)
        sub = mask[np.ix_(zr[inside_r], zc[inside_c])]
        out[np.ix_(np.flatnonzero(inside_r), np.flatnonzero(inside_c))] = sub
        return out

    def coverage(self) -> np.ndarray:
        """Boolean ``H x W``: which original pixels the model saw."""
        return self.invert_mask(np.ones((self.size, self.size), dtype=bool), background=False)


@dataclass(frozen=True)
class Letterbox:
    """Long side to ``size`` (bilinear), centred on a black ``size x size`` canvas: nothing is cut."""

    width: int
    height: int
    size: int = 256

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def inner_shape(self) -> tuple[int, int]:
        """(rows, cols) of the resized image inside the canvas."""
        return (
            max(1, min(self.size, _zoomed_length(self.height, self.scale))),
            max(1, min(self.size, _zoomed_length(self.width, self.scale))),
        )

    @property
    def offset(self) -> tuple[int, int]:
        rows, cols = self.inner_shape
        return (self.size - rows) // 2, (self.size - cols) // 2

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``H x W x 3`` uint8 → ``size x size x 3`` float32 in [0,1]."""
        rows, cols = self.inner_shape
        r0, c0 = self.offset
        resized = np.asarray(Image.fromarray(image).resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)
        canvas = np.zeros((self.size, self.size, 3), dtype=np.float32)
        canvas[r0 : r0 + rows, c0 : c0 + cols] = resized / 255.0
        return canvas

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        rows, cols = self.inner_shape
        r0, c0 = self.offset
        ri = _nearest_index(rows, self.height)
        ci = _nearest_index(cols, self.width)
        canvas = np.zeros((self.size, self.size), dtype=mask.dtype)
        canvas[r0 : r0 + rows, c0 : c0 + cols] = mask[np.ix_(ri, ci)]
        return canvas

    def invert_mask(self, mask: np.ndarray, background: int = 0) -> np.ndarray:
        rows, cols = self.inner_shape
        r0, c0 = self.offset
        inner = mask[r0 : r0 + rows, c0 : c0 + cols]
        return inner[np.ix_(_nearest_index(self.height, rows), _nearest_index(self.width, cols))]

    def invert_probability(self, probability: np.ndarray) -> np.ndarray:
        """``size x size`` float map → original ``H x W`` by bilinear resampling (smooth mask edges)."""
        rows, cols = self.inner_shape
        r0, c0 = self.offset
        inner = np.ascontiguousarray(probability[r0 : r0 + rows, c0 : c0 + cols], dtype=np.float32)
        return np.asarray(Image.fromarray(inner, mode="F").resize((self.width, self.height), Image.Resampling.BILINEAR))

    def coverage(self) -> np.ndarray:
        return np.ones((self.height, self.width), dtype=bool)


def make_transform(preprocessing: str, width: int, height: int, size: int) -> CenterCrop | Letterbox:
    """The square transform a model's manifest asks for."""
    if preprocessing == "center_crop":
        return CenterCrop(width, height, size)
    if preprocessing == "letterbox":
        return Letterbox(width, height, size)
    raise ValueError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}")
