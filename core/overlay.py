"""Mask overlays and contours drawn with numpy / PIL (no UI code)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PREDICTION_COLOR = (255, 64, 64)
REFERENCE_COLOR = (64, 220, 64)


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 array from a PIL image or an array (grey, RGB or RGBA)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.shape[-1] == 4:
        array = array[..., :3]
    return array.astype(np.uint8, copy=False)


def as_bool_mask(mask: Image.Image | np.ndarray) -> np.ndarray:
    """A boolean HxW mask from a 0/255 (or 0/1) image or array."""
    array = np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask)
    if array.ndim == 3:
        array = array[..., 0]
    return array > (127 if array.dtype == np.uint8 and array.max(initial=0) > 1 else 0)


def contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Boundary pixels of a boolean mask: the mask minus its erosion, ``thickness`` pixels wide."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(1, thickness)):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return mask & ~inner


def overlay(
    image: Image.Image | np.ndarray,
    mask: Image.Image | np.ndarray,
    *,
    alpha: float = 0.45,
    mode: str = "fill",
    color: tuple[int, int, int] = PREDICTION_COLOR,
    thickness: int = 2,
) -> Image.Image:
    """The image with ``mask`` blended in (``mode="fill"``) or outlined (``mode="contour"``)."""
    rgb = as_rgb_array(image).astype(np.float32)
    region = as_bool_mask(mask)
    if region.shape != rgb.shape[:2]:
        raise ValueError(f"mask size {region.shape[::-1]} does not match image size {rgb.shape[1::-1]}")
    if mode not in ("fill", "contour"):
        raise ValueError(f"unknown overlay mode {mode!r}; expected 'fill' or 'contour'")
    alpha = float(min(max(alpha, 0.0), 1.0))
    paint = np.array(color, dtype=np.float32)
    if mode == "fill":
        rgb[region] = (1 - alpha) * rgb[region] + alpha * paint
        edge = contour(region, 1)
        rgb[edge] = paint
    else:
        edge = contour(region, thickness)
        rgb[edge] = (1 - max(alpha, 0.6)) * rgb[edge] + max(alpha, 0.6) * paint
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def compare_overlay(
    image: Image.Image | np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    thickness: int = 2,
) -> Image.Image:
    """Prediction (red) and reference (green) contours on one image."""
    rgb = as_rgb_array(image).copy()
    rgb[contour(as_bool_mask(reference), thickness)] = REFERENCE_COLOR
    rgb[contour(as_bool_mask(prediction), thickness)] = PREDICTION_COLOR
    return Image.fromarray(rgb)


def mask_image(mask: np.ndarray) -> Image.Image:
    """A 0/255 single-channel PNG-ready image of a boolean mask."""
    return Image.fromarray(as_bool_mask(mask).astype(np.uint8) * 255, mode="L")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
