"""Image edits before analysis: 90° rotation, free rotation, flips and crops.

Pure functions on PIL images. An edit log is a list of small dicts (stored in the history)::

    {"op": "rotate90", "k": 1}            # k quarter turns counter-clockwise
    {"op": "rotate", "angle": 12.5}       # free angle, counter-clockwise, canvas expanded, black fill
    {"op": "flip", "axis": "horizontal"}  # or "vertical"
    {"op": "crop", "box": [left, top, right, bottom]}

:func:`apply_edits` replays a log; with ``is_mask=True`` it uses nearest-neighbour resampling so a
reference mask follows the image exactly.
"""

from __future__ import annotations

from PIL import Image

_TRANSPOSE_90 = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}


def rotate90(image: Image.Image, k: int) -> Image.Image:
    """Rotate by ``k`` quarter turns counter-clockwise (lossless)."""
    k = int(k) % 4
    return image.copy() if k == 0 else image.transpose(_TRANSPOSE_90[k])


def rotate(image: Image.Image, angle: float, *, is_mask: bool = False) -> Image.Image:
    """Rotate by ``angle`` degrees counter-clockwise, expanding the canvas so nothing is cut off."""
    angle = float(angle)
    if angle % 90 == 0:
        return rotate90(image, int(angle // 90))
    resample = Image.Resampling.NEAREST if is_mask else Image.Resampling.BILINEAR
    return image.rotate(angle, resample=resample, expand=True, fillcolor=0)


def flip(image: Image.Image, axis: str) -> Image.Image:
    if axis == "horizontal":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if axis == "vertical":
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    raise ValueError(f"unknown flip axis {axis!r}; expected 'horizontal' or 'vertical'")


def clamp_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box ``(left, top, right, bottom)`` clipped to the image and at least one pixel wide and high."""
    width, height = size
    left, top, right, bottom = (int(round(v)) for v in box)
    left = min(max(left, 0), width - 1)
    top = min(max(top, 0), height - 1)
    right = min(max(right, left + 1), width)
    bottom = min(max(bottom, top + 1), height)
    return left, top, right, bottom


def crop(image: Image.Image, box) -> Image.Image:
    return image.crop(clamp_box(box, image.size))


def box_from_cropper(rect: dict) -> list[int]:
    """``streamlit-cropper``'s ``{left, top, width, height}`` as ``[left, top, right, bottom]``."""
    left, top = int(rect["left"]), int(rect["top"])
    return [left, top, left + int(rect["width"]), top + int(rect["height"])]


def apply_edit(image: Image.Image, edit: dict, *, is_mask: bool = False) -> Image.Image:
    op = edit.get("op")
    if op == "rotate90":
        return rotate90(image, edit.get("k", 0))
    if op == "rotate":
        return rotate(image, edit.get("angle", 0.0), is_mask=is_mask)
    if op == "flip":
        return flip(image, edit.get("axis", "horizontal"))
    if op == "crop":
        return crop(image, edit["box"])
    raise ValueError(f"unknown edit {op!r}; expected rotate90, rotate, flip or crop")


def apply_edits(image: Image.Image, edits: list[dict] | None, *, is_mask: bool = False) -> Image.Image:
    """Replay an edit log on ``image`` (a copy is returned; the input is untouched)."""
    result = image.copy()
    for edit in edits or []:
        result = apply_edit(result, edit, is_mask=is_mask)
    return result


def build_edits(
    *,
    quarter_turns: int = 0,
    angle: float = 0.0,
    flip_horizontal: bool = False,
    flip_vertical: bool = False,
    crop_box: list[int] | None = None,
) -> list[dict]:
    """The edit log of the dashboard's controls, in the order they are applied (no-ops left out)."""
    edits: list[dict] = []
    if int(quarter_turns) % 4:
        edits.append({"op": "rotate90", "k": int(quarter_turns) % 4})
    if float(angle) % 360:
        edits.append({"op": "rotate", "angle": float(angle)})
    if flip_horizontal:
        edits.append({"op": "flip", "axis": "horizontal"})
    if flip_vertical:
        edits.append({"op": "flip", "axis": "vertical"})
    if crop_box is not None:
        edits.append({"op": "crop", "box": [int(v) for v in crop_box]})
    return edits


def changes_geometry(edits: list[dict] | None) -> bool:
    """True when the log moves pixels (every edit does; an empty log does not)."""
    return bool(edits)
