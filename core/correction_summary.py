"""The newest correction of a run as it rides on the run's history row: the record itself and its flat summary keys.

Pure functions on dicts (no database, no tables): :mod:`core.history` reads each run's newest correction in the
same transaction as the run and :func:`attach` adds it; :mod:`core.corrections` saves and reads the corrections.
"""

from __future__ import annotations

import json
from contextlib import suppress
from typing import Any

# the latest correction of a run, as flat keys on its history row (only runs that have one get them)
CORRECTION_SUMMARY = {"correction_version": "version", "correction_kind": "kind", "corrected_by": "author",
                      "corrected_at": "timestamp", "correction_mask": "mask_path",
                      "corrected_prediction": "class_index", "corrected_area_px": "area_px",
                      "corrected_area_mm2": "area_mm2", "correction_dice": "dice",
                      "correction_pixels_added": "pixels_added", "correction_pixels_removed": "pixels_removed"}


def correction_record(row: Any) -> dict:
    """One ``corrections`` row as a dict, its ``measurements`` parsed."""
    record = dict(row)
    if isinstance(record.get("measurements"), str):
        with suppress(ValueError):
            record["measurements"] = json.loads(record["measurements"])
    return record


def attach(row: dict, record: dict | None, *, nested: bool = False) -> dict:
    """``row`` (a run) with its newest correction ``record``, if any: the :data:`CORRECTION_SUMMARY` keys and
    ``corrected: True``, and with ``nested`` the record itself under ``correction``."""
    if record is not None:
        row.update(corrected=True, **{key: record[column] for key, column in CORRECTION_SUMMARY.items()})
        if nested:
            row["correction"] = record
    return row
