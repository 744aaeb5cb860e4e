"""Mask overlays and contours drawn with numpy / PIL (no UI code)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Okabe–Ito colours, told apart with every common colour-vision deficiency: prediction orange, reference blue
PREDICTION_COLOR = (230, 159, 0)
REFERENCE_COLOR = (0, 114, 178)


def readable_thickness(size: tuple[int, int], *, shown_side: int = 700) -> int:
    """A contour width (pixels of an image of ``size``) that stays about 3 screen pixels wide when the image is
    shown ``shown_side`` pixels across."""
    return max(2, round(3 * max(size) / shown_side))


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
        rgb[edge] = paint  # opaque: a blended outline is too faint on a bright image
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def compare_overlay(
    image: Image.Image | np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    thickness: int = 2,
) -> Image.Image:
    """Prediction (orange) and reference (blue) contours on one image (Okabe–Ito, colour-blind safe)."""
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
