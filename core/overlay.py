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


def agreement_view(picture: Image.Image | np.ndarray, agreement: np.ndarray) -> Image.Image:
    """The TTA agreement map over ``picture``: orange where the views disagree (agreement near 0.5), blue where most
    views found the target, clear where all agree on background (one picture for the screen and the report)."""
    base = as_rgb_array(picture).astype(np.float32)
    agreement = np.clip(np.asarray(agreement, dtype=np.float32), 0.0, 1.0)
    if agreement.shape != base.shape[:2]:
        agreement = np.asarray(Image.fromarray((agreement * 255).astype(np.uint8)).resize(
            (base.shape[1], base.shape[0]), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    doubt = (1.0 - np.abs(2.0 * agreement - 1.0))[..., None]  # 0 all agree, 1 half and half
    found = (agreement >= 0.5)[..., None] * 0.25
    colour = np.array(PREDICTION_COLOR, dtype=np.float32)
    mixed = base * (1 - 0.8 * doubt - found) + colour * 0.8 * doubt + np.array(REFERENCE_COLOR) * found
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def mask_image(mask: np.ndarray) -> Image.Image:
    """A 0/255 single-channel PNG-ready image of a boolean mask."""
    return Image.fromarray(as_bool_mask(mask).astype(np.uint8) * 255, mode="L")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------ calipers (issue 23 item 4)
CALIPER_COLOR = (86, 180, 233)  # Okabe–Ito sky blue: max diameter and its perpendicular
ELLIPSE_COLOR = (204, 121, 167)  # Okabe–Ito reddish purple: the HC ellipse and the BPD line
Point = tuple[float, float]
Segment = tuple[Point, Point]


def diameter_lines(mask: np.ndarray) -> dict[str, Segment]:
    """The longest (Feret) diameter's endpoints and the perpendicular caliper, as :func:`core.measure.feret_diameters`
    measures them (x, y in the mask's pixels): ``{"longest": ((x0, y0), (x1, y1)), "perpendicular": ...}``; the
    perpendicular spans the mask's whole extent across the longest, drawn through its middle. Empty mask: ``{}``."""
    from core.measure import _hull_points

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        return {}
    points = _hull_points(mask)
    dist2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    start, end = points[i], points[j]
    length = float(np.hypot(*(end - start)))
    if length == 0:
        return {}
    direction = (end - start) / length
    normal = np.array([-direction[1], direction[0]])
    across = points @ normal
    low, high = points[int(np.argmin(across))], points[int(np.argmax(across))]
    base = start + direction * float(((low + high) / 2 - start) @ direction)  # on the longest, mid-way
    offset = float(base @ normal)
    near, far = base + normal * (across.min() - offset), base + normal * (across.max() - offset)
    return {"longest": (_point(start), _point(end)), "perpendicular": (_point(near), _point(far))}


def _point(value: np.ndarray) -> Point:
    return float(value[0]), float(value[1])


def ellipse_outline(ellipse: dict, steps: int = 180) -> list[Point]:
    """Points around the HC ellipse ``{cx, cy, a, b, angle_deg}`` (core.measure.fit_ellipse; y down)."""
    theta = np.radians(float(ellipse["angle_deg"]))
    t = np.linspace(0.0, 2 * np.pi, steps, endpoint=False)
    x = float(ellipse["a"]) * np.cos(t)
    y = float(ellipse["b"]) * np.sin(t)
    cx, cy = float(ellipse["cx"]), float(ellipse["cy"])
    return [(cx + xi * np.cos(theta) - yi * np.sin(theta), cy + xi * np.sin(theta) + yi * np.cos(theta))
            for xi, yi in zip(x, y, strict=True)]


def bpd_line(ellipse: dict) -> Segment:
    """The biparietal diameter: the ellipse's minor axis, end to end (length ``2 b``)."""
    theta = np.radians(float(ellipse["angle_deg"]))
    dx, dy = -np.sin(theta) * float(ellipse["b"]), np.cos(theta) * float(ellipse["b"])
    cx, cy = float(ellipse["cx"]), float(ellipse["cy"])
    return (cx - dx, cy - dy), (cx + dx, cy + dy)


def draw_calipers(image: Image.Image, *, lines: dict[str, Segment] | None = None, ellipse: dict | None = None,
                  scale: float = 1.0, width: int = 2) -> Image.Image:
    """A copy of ``image`` with the caliper ``lines`` (sky blue, end ticks) and the HC ``ellipse`` with its BPD line
    (purple) drawn; coordinates are in the analysed image's pixels, multiplied by ``scale`` for this picture."""
    from PIL import ImageDraw

    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)

    def at(point: Point) -> Point:
        return point[0] * scale, point[1] * scale

    for start, end in (lines or {}).values():
        draw.line([at(start), at(end)], fill=CALIPER_COLOR, width=width)
        for x, y in (at(start), at(end)):
            draw.ellipse([x - width * 1.5, y - width * 1.5, x + width * 1.5, y + width * 1.5], fill=CALIPER_COLOR)
    if ellipse:
        outline = [at(p) for p in ellipse_outline(ellipse)]
        draw.line([*outline, outline[0]], fill=ELLIPSE_COLOR, width=width)
        start, end = bpd_line(ellipse)
        draw.line([at(start), at(end)], fill=ELLIPSE_COLOR, width=width)
    return picture
