"""The one measurement table renderer: measurements (``area_px``, ``area_mm2``, ``head_circumference_mm`` …) as rows
of text in a language, with units; "—" for nothing. Pure functions; a page turns the rows into a DataFrame.

- :func:`value_rows`: one row per measurement of one result: its name, the pixel value, the millimetre value;
- :func:`comparison_rows`: one row per key, one cell per source (predicted, reference, difference, another run …).
"""

from __future__ import annotations

import math
from typing import Any

from core import i18n

_UNITS = {"px": "px", "mm2": "mm²", "mm": "mm"}


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def key_label(key: str, lang: str) -> str | None:
    """``area_px`` → ``Area (px²)``, ``head_circumference_mm`` → ``头围 (HC) (mm)``; None for a key that is not a
    measurement of :data:`core.i18n.MEASURE_LABELS` with a unit."""
    base, _, unit = key.rpartition("_")
    text = "px²" if (base, unit) == ("area", "px") else _UNITS.get(unit)
    if text is None or base not in i18n.MEASURE_LABELS:
        return None
    return f"{i18n.measure_label(base, lang)} ({text})"


def _cell(value: Any) -> str:
    return f"{float(value):,.2f}" if is_number(value) else "—"


def comparison_rows(keys: list[str], columns: dict[str, dict], lang: str) -> list[tuple[str, list[str]]]:
    """``(label, cells)`` per measurement key (others skipped), a cell per column: the value with two decimals and
    thousands separators, "—" for nothing."""
    rows = []
    for key in keys:
        label = key_label(key, lang)
        if label is None:
            continue
        rows.append((label, [_cell(values.get(key)) for values in columns.values()]))
    return rows


def value_rows(measurements: dict, lang: str, *, short: bool = False) -> list[tuple[str, str, str]]:
    """``(name, px text, mm text)`` per measurement of one result that has a pixel value, in catalog order:
    ``123.0 px²`` / ``1.23 mm²`` ("—" when uncalibrated); ``short``: the narrow names ("HC", "Max diam.")."""
    rows = []
    for base in i18n.MEASURE_LABELS:
        px = measurements.get(f"{base}_px")
        if not is_number(px):
            continue
        area = base == "area"
        mm = measurements.get(f"{base}_mm2" if area else f"{base}_mm")
        rows.append((i18n.measure_label(base, lang, short=short), f"{px:,.1f} {'px²' if area else 'px'}",
                     f"{mm:,.2f} {'mm²' if area else 'mm'}" if is_number(mm) else "—"))
    return rows
