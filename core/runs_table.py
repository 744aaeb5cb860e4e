"""The run history as CSV: the machine-readable table (:func:`history_csv`, ``GET /v1/history.csv``) and the table
people read (:func:`readable_csv`, the dashboard's download, issue 23 item 6). Every cell of both goes through
:func:`core.history_format.spreadsheet_cell`.

The readable table has one row per run, the user's file name first, headers with units in the UI's language
(``lang`` "zh" or "en"), local times with the zone named, one value per cell (measurements flattened into named
columns, no JSON), the segmented target named from :mod:`core.catalog`, and no server paths (a mask is named by its
file name only). This module only reads rows.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from core import catalog, i18n
from core.errors import UnknownDataset
from core.history import COLUMN_NAMES
from core.history_format import (
    MEASUREMENT_ORDER,
    display_name,
    display_zone,
    flat_fields,
    flat_order,
    local_time,
    spreadsheet_cell,
)

HEADERS: dict[str, tuple[str, str]] = {  # column key → (zh, en) header
    "file": ("文件名", "File name"), "time": ("时间（{zone}）", "Time ({zone})"), "run": ("运行编号", "Run id"),
    "source": ("来源", "Source"), "task": ("任务", "Task"), "organ": ("器官", "Organ"),
    "dataset": ("数据集", "Dataset"), "target": ("分割目标", "Segmented target"),
    "prediction": ("预测", "Prediction"), "probability": ("预测概率（%）", "Probability of the prediction (%)"),
    "frame": ("帧", "Frame"), "spacing": ("像素间距（mm/像素）", "Pixel spacing (mm/px)"),
    "spacing_source": ("间距来源", "Spacing source"), "components": ("连通区域数", "Connected regions"),
    "model": ("模型", "Model"), "device": ("设备", "Device"), "seconds": ("推理时间（秒）", "Inference time (s)"),
    "mask": ("掩膜文件", "Mask file"), "error": ("错误", "Error"),
}
UNITS = {"_px": "px", "_mm2": "mm²", "_mm": "mm", "_deg": "°"}


def history_csv(rows: list[dict]) -> str:
    """CSV text of ``rows`` (the store's columns first, then one flat column per measurement with its unit in
    the name, as :func:`core.history_format.flat_fields` gives them, then any others); lists and dicts as JSON.

    The one machine-readable CSV writer of the history (API ``/v1/history.csv``). Safe to open in a spreadsheet:
    a cell (header included) that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
    leading ``'`` so it is never run as a formula; numbers (``-1.5``, ``+3``, ``-2e-3``, as numbers or as text)
    stay numbers."""
    flats = [flat_fields(row) for row in rows]
    flat_names = flat_order({k for flat in flats for k in flat})
    extra = sorted({str(k) for r in rows for k in r} - set(COLUMN_NAMES) - set(flat_names))
    fields = [*COLUMN_NAMES, *flat_names, *extra]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([spreadsheet_cell(name) for name in fields])
    for row, flat in zip(rows, flats, strict=True):
        values = {**flat, **{str(k): v for k, v in row.items()}}
        writer.writerow([spreadsheet_cell(values.get(name)) for name in fields])
    return buffer.getvalue()


def _header(key: str, lang: str, **values: Any) -> str:
    zh, en = HEADERS[key]
    return (zh if lang == "zh" else en).format(**values)


def measurement_header(key: str, lang: str) -> str:
    """``area_mm2`` → ``Area (mm²)`` / ``面积（mm²）``; ``area_px`` → px²; unknown stems keep their name."""
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            unit = "px²" if key == "area_px" else unit
            name = i18n.measure_label(stem, lang)
            if name == stem:
                name = stem.replace("_", " ")
            return f"{name}（{unit}）" if lang == "zh" else f"{name} ({unit})"
    return key


def _dataset(row: dict) -> catalog.Dataset | None:
    try:
        return catalog.find_dataset(str(row.get("task") or ""), str(row.get("dataset_name") or ""))
    except UnknownDataset:
        return None


def _prediction(row: dict, dataset: catalog.Dataset | None, lang: str) -> tuple[Any, Any]:
    """(class name in ``lang``, its probability in %) of a classification run; (None, None) otherwise."""
    prediction = row.get("prediction")
    if row.get("task") != "classification" or prediction is None:
        return None, None
    index = int(prediction)
    name = (dataset.class_name(index, lang) if dataset is not None and 0 <= index < dataset.num_classes
            else row.get("label_name"))
    probabilities = row.get("probabilities")
    if isinstance(probabilities, str):
        try:
            probabilities = json.loads(probabilities)
        except ValueError:
            probabilities = None
    value = probabilities[index] if isinstance(probabilities, list) and 0 <= index < len(probabilities) else None
    return name, round(float(value) * 100, 1) if isinstance(value, (int, float)) else None


def _frame(flat: dict) -> str | None:
    """``3 / 16`` (numbered from 1) for a frame of a cine; ``3`` when the count is not recorded; None for a still
    image."""
    index, count = flat.get("frame_index"), flat.get("frame_count")
    if isinstance(count, int) and not isinstance(count, bool):
        return f"{int(index or 0) + 1} / {count}" if count >= 2 else None
    if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
        return str(index + 1)
    return None


def frame_number(row: dict) -> int | None:
    """The run's frame of a cine, numbered from 1 as DICOM does; None for a still image (one frame)."""
    flat = flat_fields(row)
    index, count = flat.get("frame_index"), flat.get("frame_count")
    if isinstance(count, int) and count < 2:
        return None
    return index + 1 if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else None


def cine_groups(rows: Iterable[dict]) -> list[list[dict]]:
    """The runs as history entries, in their order: the frames of one cine analysis (rows sharing a ``batch_id``
    that carry a ``frame_index``) are one entry, its frames sorted by frame; every other run is an entry alone.
    The stored rows stay one per frame; this only groups them for display."""
    entries: list[list[dict]] = []
    cines: dict[str, list[dict]] = {}
    for row in rows:
        batch = row.get("batch_id")
        if batch and frame_number(row) is not None:
            if str(batch) not in cines:
                cines[str(batch)] = []
                entries.append(cines[str(batch)])
            cines[str(batch)].append(row)
        else:
            entries.append([row])
    for frames in cines.values():
        frames.sort(key=lambda r: (frame_number(r) or 0, r.get("id") or 0))
    return entries


def readable_row(row: dict, lang: str = "en", zone: str | None = None) -> dict[str, Any]:
    """One run as {column key or measurement key: one plain value} (see :data:`HEADERS`)."""
    dataset, flat = _dataset(row), flat_fields(row)
    group = catalog.ORGAN_GROUPS.get(dataset.group) if dataset is not None else None
    prediction, probability = _prediction(row, dataset, lang)
    mask = row.get("mask_path_relative") or row.get("mask_path")
    source = str(row.get("source") or "")
    values: dict[str, Any] = {
        "file": display_name(row), "time": local_time(row.get("timestamp"), zone), "run": row.get("id"),
        "source": i18n.t(f"src_{source}", lang) if f"src_{source}" in i18n.STRINGS else source,
        "task": i18n.task_name(str(row.get("task") or ""), lang),
        "organ": group.name(lang) if group is not None else row.get("organ"), "dataset": row.get("dataset_name"),
        "target": dataset.class_name(1, lang) if dataset is not None and dataset.task == "segmentation" else None,
        "prediction": prediction, "probability": probability, "frame": _frame(flat),
        "spacing": flat.get("pixel_spacing_mm"), "spacing_source": flat.get("pixel_spacing_source"),
        "components": flat.get("components"), "model": row.get("model_name"), "device": row.get("device"),
        "seconds": row.get("inference_time_sec"),
        "mask": PurePosixPath(str(mask).replace("\\", "/")).name if mask else None,
        "error": row.get("error"),
    }
    values.update({key: value for key, value in flat.items() if key.endswith(tuple(UNITS))})
    return values


def _cell(value: Any) -> Any:
    """A spreadsheet-safe cell (:func:`core.history_format.spreadsheet_cell`), its text on one line."""
    return spreadsheet_cell(" ".join(value.split()) if isinstance(value, str) else value)


def _measurement_keys(rows: list[dict]) -> list[str]:
    present = {key for row in rows for key in row if key.endswith(tuple(UNITS)) and key not in HEADERS}
    return [*(k for k in MEASUREMENT_ORDER if k in present), *sorted(present - set(MEASUREMENT_ORDER))]


def readable_csv(rows: Iterable[dict], lang: str = "en", zone: str | None = None) -> str:
    """The runs as CSV for people (UTF-8 with a BOM so spreadsheets read Chinese): file name first, then time,
    case, result, measurements with units, spacing, model; columns no run fills are left out."""
    lang = i18n.normalise_lang(lang)
    table = [readable_row(row, lang, zone) for row in rows]
    shown_zone = str(display_zone(zone))
    fixed = list(HEADERS)
    order = ["file", "time", "run", "source", "task", "organ", "dataset", "target", "prediction", "probability",
             "frame", *_measurement_keys(table), "components", "spacing", "spacing_source", "model", "device",
             "seconds", "mask", "error"]
    keep = [key for key in order if key in ("file", "time", "run") or any(r.get(key) not in (None, "") for r in table)]
    headers = [_header(k, lang, zone=shown_zone) if k in fixed else measurement_header(k, lang) for k in keep]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([_cell(h) for h in headers])
    for row in table:
        writer.writerow([_cell(row.get(key)) for key in keep])
    return "\ufeff" + buffer.getvalue()
