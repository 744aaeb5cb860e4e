"""Image edits before analysis: 90° rotation, free rotation, flips and crops.

Pure functions on PIL images. An edit log is a list of small dicts (stored in the history)::

    {"op": "rotate90", "k": 1}            # k quarter turns counter-clockwise
    {"op": "rotate", "angle": 12.5}       # free angle, counter-clockwise, canvas expanded, black fill
    {"op": "flip", "axis": "horizontal"}  # or "vertical"
    {"op": "crop", "box": [left, top, right, bottom]}

:func:`apply_edits` replays a log; with ``is_mask=True`` it uses nearest-neighbour resampling so a
reference mask follows the image exactly.

Every door checks a log with the one validator before any pixel moves: :func:`parse_edits` (types, finite numbers,
at most :data:`MAX_EDIT_STEPS` steps; 422 naming the field) and :func:`check_edit_budget` (the size of every step,
worked out by :func:`edited_sizes` with PIL's own arithmetic, against the image budget; 413).

The dashboard edits a small preview (:func:`proxy_of`); :func:`full_resolution_edits` turns what was drawn on it
into the log for the full-resolution image (a crop box scaled by :func:`scale_box`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator

from core.errors import RequestError

MAX_EDIT_STEPS = 32  # a dashboard log has at most 5 (turn, angle, two flips, crop)
MAX_EDIT_GROWTH = 4  # pixels an edited image may have, times the original's (one free turn doubles them at most)

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


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rotate90Step(_Step):
    op: Literal["rotate90"]
    k: StrictInt = Field(default=0, ge=-1_000, le=1_000)


class RotateStep(_Step):
    op: Literal["rotate"]
    angle: float = Field(default=0.0, ge=-360.0, le=360.0, allow_inf_nan=False, strict=True)


class FlipStep(_Step):
    op: Literal["flip"]
    axis: Literal["horizontal", "vertical"] = "horizontal"


class CropStep(_Step):
    op: Literal["crop"]
    box: tuple[float, float, float, float]

    @field_validator("box")
    @classmethod
    def _finite_box(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if not all(math.isfinite(v) and abs(v) < 2**31 for v in box):
            raise ValueError("expected four finite pixel coordinates [left, top, right, bottom]")
        return box


EditStep = Annotated[Rotate90Step | RotateStep | FlipStep | CropStep, Field(discriminator="op")]
_EDIT_LOG = TypeAdapter(list[EditStep])


def parse_edits(raw: Any) -> list[dict]:
    """A checked edit log (canonical dicts, as stored in the history) from untrusted JSON; :class:`RequestError`
    (422) naming the step and field (``edits[2].angle``) for anything else. ``None`` is no edit."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RequestError(f"edits must be a list of edit steps, got {type(raw).__name__}", field="edits")
    if len(raw) > MAX_EDIT_STEPS:
        raise RequestError(f"edits has {len(raw):,} steps; at most {MAX_EDIT_STEPS} are accepted", field="edits")
    try:
        steps = _EDIT_LOG.validate_python(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [part for part in error.get("loc", ()) if part not in ("rotate90", "rotate", "flip", "crop")]
        field = "edits" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        raise RequestError(f"{field}: {message} (each step is rotate90 {{k}}, rotate {{angle}}, flip {{axis}} or "
                           "crop {box})", field=field) from None
    return [_as_log(step) for step in steps]


def _as_log(step: _Step) -> dict:
    data = step.model_dump()
    if isinstance(step, CropStep):
        data["box"] = [int(round(v)) for v in step.box]
    return data


def rotated_size(size: tuple[int, int], angle: float) -> tuple[int, int]:
    """The size :func:`rotate` gives an image of ``size`` (PIL's expand arithmetic, no pixels touched)."""
    width, height = size
    angle = float(angle)
    if angle % 90 == 0:
        return (height, width) if int(angle // 90) % 2 else (width, height)
    radians = -math.radians(angle % 360.0)
    cos, sin = round(math.cos(radians), 15), round(math.sin(radians), 15)
    cx, cy = width / 2, height / 2
    tx, ty = cos * -cx + sin * -cy + cx, -sin * -cx + cos * -cy + cy  # PIL turns about the centre
    corners = ((0, 0), (width, 0), (width, height), (0, height))
    xs = [cos * x + sin * y + tx for x, y in corners]
    ys = [-sin * x + cos * y + ty for x, y in corners]
    return math.ceil(max(xs)) - math.floor(min(xs)), math.ceil(max(ys)) - math.floor(min(ys))


def step_size(size: tuple[int, int], edit: dict) -> tuple[int, int]:
    """The size after one checked step."""
    op = edit.get("op")
    if op == "rotate90":
        return (size[1], size[0]) if int(edit.get("k", 0)) % 2 else size
    if op == "rotate":
        return rotated_size(size, edit.get("angle", 0.0))
    if op == "crop":
        left, top, right, bottom = clamp_box(edit["box"], size)
        return right - left, bottom - top
    return size


def edited_sizes(size: tuple[int, int], edits: list[dict]) -> list[tuple[int, int]]:
    """The size after each step of a checked log (arithmetic only)."""
    sizes = []
    for edit in edits:
        size = step_size(size, edit)
        sizes.append(size)
    return sizes


def edited_size(size: tuple[int, int], edits: list[dict]) -> tuple[int, int]:
    """The size of an image of ``size`` after a checked log."""
    sizes = edited_sizes(size, edits)
    return sizes[-1] if sizes else size


def check_edit_budget(size: tuple[int, int], edits: list[dict], *, max_pixels: int, max_side: int) -> None:
    """:class:`RequestError` (413) when any step of ``edits`` would make an image larger than the budget before any
    pixel is allocated: the image limits (``0`` = none) and :data:`MAX_EDIT_GROWTH` times the original's pixels."""
    grown = MAX_EDIT_GROWTH * size[0] * size[1]
    limit = min(max_pixels, grown) if max_pixels else grown
    for index, (width, height) in enumerate(edited_sizes(size, edits)):
        if width * height > limit or (max_side and max(width, height) > max_side):
            raise RequestError(f"edits[{index}] would make the {size[0]}×{size[1]} image {width}×{height} pixels; "
                               f"edits may give at most {limit:,} pixels (the image limit, or {MAX_EDIT_GROWTH}× the "
                               f"original) and {max_side:,} per side", status_code=413, field=f"edits[{index}]")


# ------------------------------------------------------------------------------------------ the editing preview
PROXY_MAX_SIDE = 1024


def proxy_of(picture: Image.Image, max_side: int = PROXY_MAX_SIDE) -> Image.Image:
    """A copy of ``picture`` whose longer side is at most ``max_side`` (the picture itself when already small):
    the editing preview works on it so sliders stay quick on a 4000×2700 image."""
    width, height = picture.size
    scale = max_side / max(width, height)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def scale_box(box: list[int], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[int]:
    """A crop box ``[left, top, right, bottom]`` drawn on an image of ``from_size`` in the coordinates of the same
    image at ``to_size`` (each edge at the same fraction of the side, rounded to the nearest pixel, clamped)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    left, top, right, bottom = box
    scaled = [round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)]
    return list(clamp_box(scaled, to_size))


def full_resolution_edits(full_size: tuple[int, int], turn_edits: list[dict], crop_box: list[int] | None,
                          proxy_turned_size: tuple[int, int]) -> list[dict]:
    """The edit log for the full-resolution image of the preview's edits: rotations and flips as they are, the
    crop box (drawn on the turned preview of ``proxy_turned_size``) scaled to the turned full-resolution image."""
    edits = [dict(edit) for edit in turn_edits]
    if crop_box is not None:
        full_turned = edited_size(full_size, turn_edits)
        edits.append({"op": "crop", "box": scale_box(crop_box, proxy_turned_size, full_turned)})
    return edits
