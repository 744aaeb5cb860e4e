"""A stored run as plain values: its JSON columns as text or dicts, its measurements as flat columns named with
their unit, the name and time people see, and the spreadsheet-safe CSV cell every CSV writer of the project uses.

Pure functions on row dicts (no database): :mod:`core.history` stores rows, :mod:`core.runs_table` writes them as
CSV, the History page and the reports show them.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any

MEASUREMENT_UNITS = ("_px", "_mm", "_mm2", "_deg")  # a measurement key names its unit: area_mm2, longest_diameter_px
MEASUREMENT_ORDER = ("area_px", "area_mm2", "longest_diameter_px", "longest_diameter_mm", "perpendicular_diameter_px",
                     "perpendicular_diameter_mm", "longest_diameter_angle_deg", "head_circumference_px",
                     "head_circumference_mm", "biparietal_diameter_px", "biparietal_diameter_mm",
                     "occipitofrontal_diameter_px", "occipitofrontal_diameter_mm", "components")
RUN_FIELDS = ("pixel_spacing_mm", "pixel_spacing_source", "frame_index", "frame_count", "original_name")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def json_text(value: Any) -> str | None:
    """A JSON column's stored text: None and text as they are, anything else as JSON (non-ASCII kept)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def json_dict(value: Any) -> dict:
    """A JSON column as a dict (text is parsed); anything else is ``{}``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def spreadsheet_cell(value: Any) -> Any:
    """One CSV cell, safe to open in a spreadsheet (every CSV writer of the project uses it): text that starts
    with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so it is never run as a
    formula; numbers (``-1.5``, ``+3``, ``-2e-3``, as numbers or as text) stay numbers, lists and dicts JSON."""
    if value is None or isinstance(value, int) or (isinstance(value, float) and abs(value) < float("inf")):
        return value  # numbers (and booleans) as they are; NaN and infinities go on as text
    text = (json_text(value) or "") if isinstance(value, (list, dict, tuple)) else str(value)
    return "'" + text if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text) else text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flat_fields(row: dict) -> dict:
    """The run's measurements as flat columns named with their unit (``area_px``, ``area_mm2``,
    ``head_circumference_mm`` ...), plus ``pixel_spacing_mm``, ``pixel_spacing_source``, ``frame_index``,
    ``frame_count`` and ``original_name`` from the stored response / request (left out where the run has none)."""
    measurements = json_dict(row.get("measurements"))
    response, request = json_dict(row.get("response")), json_dict(row.get("request"))
    flat: dict[str, Any] = {key: value for key, value in measurements.items()
                            if _is_number(value) and (key.endswith(MEASUREMENT_UNITS) or key == "components")}
    for name in RUN_FIELDS:
        value = response.get(name, request.get(name))
        if value is None and name == "pixel_spacing_mm":
            value = measurements.get(name)
        if value is not None and not isinstance(value, (dict, list)):
            flat[name] = value
    return flat


def flat_order(names: set[str]) -> list[str]:
    """Flat column names (those some row has): the known measurements in a fixed order, other measurements by name,
    then the run fields (``pixel_spacing_mm``, ``pixel_spacing_source``, ``frame_index`` ...)."""
    known = [n for n in MEASUREMENT_ORDER if n in names]
    others = sorted(names - set(MEASUREMENT_ORDER) - set(RUN_FIELDS))
    return [*known, *others, *(n for n in RUN_FIELDS if n in names)]


def display_name(row: dict) -> str:
    """The image name as the user gave it (the request's ``original_name``), else the stored ``img_name``."""
    request = json_dict(row.get("request"))
    for value in (row.get("original_name"), request.get("original_name"), json_dict(row.get("response"))
                  .get("original_name"), row.get("img_name")):
        if isinstance(value, str) and value.strip():
            return value
    return ""


def display_zone(zone: str | None = None) -> Any:
    """The time zone History shows times in: ``zone`` (an IANA name; the ``timezone`` setting), else ``TZ``, else the
    server's local zone (never the browser's, so every viewer sees the same time). An unknown name falls back."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    for name in (zone, os.environ.get("TZ")):
        if name and name.strip():
            try:
                return ZoneInfo(name.strip().lstrip(":"))
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return datetime.now().astimezone().tzinfo


def local_time(timestamp: Any, zone: str | None = None) -> str:
    """A stored UTC ISO timestamp as ``2026-11-28 09:45:52 CST`` in :func:`display_zone` (the zone's abbreviation,
    or its UTC offset when it has none); text that is no timestamp comes back as it is."""
    try:
        moment = datetime.fromisoformat(str(timestamp))
    except ValueError:
        return "" if timestamp is None else str(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(display_zone(zone))
    label = moment.tzname() or ""
    if not label or label[0] in "+-":
        offset = moment.strftime("%z")
        label = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    return f"{moment:%Y-%m-%d %H:%M:%S} {label}"
