"""Pixel spacing (mm per pixel) and where it came from: DICOM, the user, a drawn line, the ground truth.

* :data:`SPACING_SOURCES` — the values of ``pixel_spacing_source`` in requests and responses:
  ``dicom`` (``PixelSpacing`` / ``ImagerPixelSpacing``), ``dicom_region`` (``SequenceOfUltrasoundRegions``),
  ``user`` (typed in), ``line`` (:func:`spacing_from_line`: a line of known length drawn on the image, e.g. along
  the scanner's depth ruler), ``ground_truth`` (the data root's ``ground_truth.json``).
* The plausibility band :data:`MIN_PIXEL_SPACING_MM` … :data:`MAX_PIXEL_SPACING_MM`: clinical ultrasound images
  sit between about 0.03 and 1 mm per pixel (HC18: 0.05-0.99); outside the band a value is a typo or a wrong unit
  (cm, µm), refused with a :class:`~core.errors.RequestError` naming ``pixel_spacing_mm`` and the band.
* :func:`header_spacing` — a spacing a file states (DICOM ``PixelSpacing`` / ultrasound regions, an upload's
  skeleton, ``ground_truth.json``) outside the band is dropped with a note, never refused: the image stays
  analysable without calibration. A spacing the user gives is refused (:func:`check_spacing`, the request schema).
* :func:`resolve_spacing` — the one rule for which spacing a segmentation uses: the request's (with its source,
  ``user`` when it names none), else the image's own (DICOM), else none.
"""

from __future__ import annotations

import math
from typing import Any

from core.errors import RequestError

SPACING_SOURCES = ("dicom", "dicom_region", "user", "line", "ground_truth")
MIN_PIXEL_SPACING_MM = 0.01  # 10 µm per pixel: finer than any ultrasound scan converter writes
MAX_PIXEL_SPACING_MM = 2.0  # 2 mm per pixel: a 256-pixel image would span 51 cm
MIN_LINE_PX = 10.0  # a calibration line shorter than this is too imprecise (±1 px is > 10 %)


def band_text() -> str:
    """The plausibility band in words (used in every refusal)."""
    return f"{MIN_PIXEL_SPACING_MM:g}-{MAX_PIXEL_SPACING_MM:g} mm per pixel"


def is_plausible(spacing: Any) -> bool:
    """Whether ``spacing`` is a finite number inside the band (bools are not numbers here)."""
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)):
        return False
    return math.isfinite(spacing) and MIN_PIXEL_SPACING_MM <= spacing <= MAX_PIXEL_SPACING_MM


def spacing_problem(spacing: float) -> str | None:
    """Why ``spacing`` is refused (a sentence with the band), or None when it is plausible."""
    if is_plausible(spacing):
        return None
    shown = f"{spacing:g}" if isinstance(spacing, (int, float)) else repr(spacing)
    return (f"{shown} mm per pixel is not a plausible ultrasound pixel spacing; "
            f"expected between {MIN_PIXEL_SPACING_MM:g} and {MAX_PIXEL_SPACING_MM:g} mm per pixel")


def header_spacing(spacing: Any, what: str) -> tuple[float | None, str | None]:
    """A spacing a file states (a DICOM header, ``ground_truth.json``) through the band: ``(spacing, None)`` when
    plausible, else ``(None, note)`` — the value is dropped with a note saying why, so the image stays analysable
    (without mm); only a spacing the user gives is refused (:func:`check_spacing`)."""
    if is_plausible(spacing):
        return float(spacing), None
    number = isinstance(spacing, (int, float)) and not isinstance(spacing, bool)
    shown = f"{spacing:g}" if number else repr(spacing)[:40]
    return None, (f"{what} gives {shown} mm per pixel, implausible for ultrasound (expected {band_text()}); "
                  "ignored, no measurements in mm")


def check_spacing(spacing: float, *, field: str = "pixel_spacing_mm") -> float:
    """``spacing`` as a float, or :class:`RequestError` naming ``field`` and the band."""
    problem = spacing_problem(spacing)
    if problem is not None:
        raise RequestError(f"{field}: {problem}", field=field)
    return float(spacing)


def check_source(source: str | None) -> str | None:
    """A known ``pixel_spacing_source`` (lower-cased) or None; anything else is a :class:`RequestError`."""
    if source is None:
        return None
    value = str(source).strip().lower()
    if value not in SPACING_SOURCES:
        raise RequestError(f"pixel_spacing_source: {source!r:.60} is not one of {', '.join(SPACING_SOURCES)}",
                           field="pixel_spacing_source")
    return value


def spacing_from_line(p0: tuple[float, float], p1: tuple[float, float], length_mm: float) -> float:
    """Millimetres per pixel from a line ``p0``-``p1`` (image pixels, x/y) that is ``length_mm`` long.

    Refuses (:class:`RequestError`) a line shorter than :data:`MIN_LINE_PX`, a length that is not a positive
    number, and a result outside the plausibility band.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in (*p0, *p1))
        length = float(length_mm)
    except (TypeError, ValueError):
        raise RequestError("a calibration line needs two (x, y) points and a length in mm",
                           field="pixel_spacing_mm") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RequestError("the calibration line's end points must be finite numbers", field="pixel_spacing_mm")
    if isinstance(length_mm, bool) or not math.isfinite(length) or length <= 0:
        raise RequestError(f"the calibration line's length must be a positive number of mm, got {length_mm!r}",
                           field="pixel_spacing_mm")
    pixels = math.hypot(x1 - x0, y1 - y0)
    if pixels < MIN_LINE_PX:
        raise RequestError(f"the calibration line is {pixels:.1f} px long; draw at least {MIN_LINE_PX:g} px "
                           "(longer is more precise)", field="pixel_spacing_mm")
    spacing = length / pixels
    problem = spacing_problem(spacing)
    if problem is not None:
        raise RequestError(f"a line of {pixels:.1f} px for {length:g} mm gives {problem}", field="pixel_spacing_mm")
    return spacing


def resolve_spacing(request_spacing: float | None, request_source: str | None, image_spacing: float | None,
                    image_source: str | None) -> tuple[float | None, str | None, list[str]]:
    """(spacing, source, notes) a segmentation uses: the request's value first (its source, ``user`` when it names
    none, the image's source when the value is the image's own), else the image's (DICOM) when plausible."""
    notes: list[str] = []
    if request_spacing:
        source = request_source
        if source is None:
            same = image_spacing is not None and math.isclose(request_spacing, image_spacing, rel_tol=1e-9)
            source = image_source if same and image_source else "user"
        return float(request_spacing), source, notes
    if image_spacing is None:
        return None, None, notes
    if not is_plausible(image_spacing):
        notes.append(f"the image's pixel spacing ({image_spacing:g} mm per pixel) is outside the plausible band "
                     f"({band_text()}); ignored, no measurements in mm")
        return None, None, notes
    return float(image_spacing), image_source or "dicom", notes


def dicom_spacing_source(ds: Any) -> str:
    """Which DICOM element gave the spacing: ``dicom`` when ``PixelSpacing`` / ``ImagerPixelSpacing`` parse as
    numbers (the loader reads them first), else ``dicom_region`` (``SequenceOfUltrasoundRegions``)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword, None)
        except Exception:  # noqa: BLE001 - an unreadable element: the loader skipped it too
            continue
        if value is None or value == "":
            continue
        try:
            items = value if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) else [value]
            values = [float(v) for v in items]
        except (TypeError, ValueError):
            continue
        if values:
            return "dicom"
    return "dicom_region"
