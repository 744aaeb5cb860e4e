"""What a door reads from the data root besides analysing it: one input file (path-checked, DICOM de-identified),
the challenge JSON files under it (listed, read, parsed), which dataset a file name belongs to, and a batch scored
against the ground truth there. The service exposes each; the dashboard never opens the data root itself, so its
remote mode (:class:`core.client.ApiClient`) reads the same things through ``/v1/inputs/…``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from core import catalog
from core.errors import NotFoundError, RequestError
from core.settings import Settings

JSON_MAX_DEPTH = 3  # data_root/x.json, data_root/a/x.json, data_root/a/b/x.json
JSON_MAX_FILES = 500
JSON_MAX_MB = 64


def input_file(settings: Settings, relative: str) -> bytes:
    """The bytes of an input under the data root or ``api_in/`` (:func:`core.paths.resolve_input`; at most the
    upload limit), a DICOM with the de-identification profile applied unless ``UUSIC_KEEP_IDENTITY``."""
    from core.paths import resolve_input
    from core.samples import check_upload_size, display_name

    path = resolve_input(settings, relative)
    check_upload_size(settings, path.stat().st_size, display_name(relative))
    data = path.read_bytes()
    if not settings.keep_identity and (path.suffix.lower() in (".dcm", ".dicom") or data[128:132] == b"DICM"):
        from core import deidentify

        data = deidentify.deidentify_dicom(data, name=display_name(relative),
                                           max_bytes=int(settings.max_decoded_mb) * 1024 * 1024)
    return data


def json_files(settings: Settings) -> list[str]:
    """The ``.json`` files under the data root at most :data:`JSON_MAX_DEPTH` levels deep, as POSIX paths relative
    to it (``ground_truth.json`` first, then by depth and name); hidden entries and links leading out are skipped;
    at most :data:`JSON_MAX_FILES`."""
    try:
        base = Path(settings.data_root).resolve()
    except OSError:
        return []
    found: list[str] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or len(found) >= JSON_MAX_FILES:
                continue
            try:
                if not Path(entry.path).resolve().is_relative_to(base):
                    continue
                if entry.is_file() and entry.name.lower().endswith(".json"):
                    found.append("/".join((*parts, entry.name)))
                elif entry.is_dir() and len(parts) + 1 < JSON_MAX_DEPTH:
                    walk(Path(entry.path), (*parts, entry.name))
            except OSError:
                continue

    walk(base, ())
    return sorted(found, key=lambda rel: (rel != "ground_truth.json", rel.count("/"),
                                          not rel.endswith("/ground_truth.json"), rel))


def json_entries(settings: Settings, relative: str) -> list[dict]:
    """The request objects of one listed JSON file (re-checked to lie inside the data root, size-capped)."""
    if relative not in json_files(settings):
        raise NotFoundError("not one of the JSON files under the data root", field="path")
    base = Path(settings.data_root).resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise NotFoundError("not one of the JSON files under the data root", field="path")
    if path.stat().st_size > JSON_MAX_MB * 1024 * 1024:
        raise RequestError(f"larger than {JSON_MAX_MB} MB", field="path", status_code=413)
    return parse_entries(path.read_bytes())


def parse_entries(data: bytes) -> list[dict]:
    """The request objects of a challenge JSON (a list, or ``{"data": [...]}`` / ``{"requests": [...]}``); a
    :class:`RequestError` (a ``ValueError``) says what is wrong."""
    if len(data) > JSON_MAX_MB * 1024 * 1024:
        raise RequestError(f"larger than {JSON_MAX_MB} MB", field="file", status_code=413)
    try:
        entries = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise RequestError("not UTF-8 text", field="file") from None
    except RecursionError:
        raise RequestError("nested too deeply", field="file") from None
    except ValueError as exc:
        raise RequestError(str(exc), field="file") from None
    if isinstance(entries, dict):
        entries = entries.get("data") or entries.get("requests") or list(entries.values())
    if not isinstance(entries, list):
        raise RequestError("expected a list of request objects", field="file")
    return [e for e in entries if isinstance(e, dict)]


def known_names(settings: Settings, task: str) -> dict[str, str]:
    """File name (lower case) → dataset of the data root's entries of ``task``; a name two datasets share is left
    out (it says nothing). No (readable) data root: nothing is known."""
    from core.samples import read_entries

    if task not in catalog.TASKS:
        raise RequestError(f"unknown task {task!r}; expected one of {', '.join(catalog.TASKS)}", field="task")
    try:
        entries = read_entries(settings.data_root)
    except (OSError, ValueError):
        return {}
    found: dict[str, set[str]] = {}
    for entry in entries:
        path = str(entry.get("img_path_relative") or "")
        if path and str(entry.get("task") or "") == task and entry.get("dataset_name"):
            found.setdefault(PurePosixPath(path.replace("\\", "/")).name.lower(), set()).add(str(entry["dataset_name"]))
    return {name: next(iter(names)) for name, names in found.items() if len(names) == 1}


def batch_metrics(settings: Settings, requests: list[dict], result: Any) -> dict | None:
    """Metrics (:func:`core.evaluate.evaluate`) of a batch whose requests carry ground truth, scored against the
    data root; None without ground truth or when the batch's masks are not on this machine."""
    from core.evaluate import evaluate
    from core.response import write_classification_json

    with_truth = [r for r in requests if r.get("class_label_index") is not None or r.get("mask_path_relative")]
    if not with_truth or getattr(result, "output_dir", None) is None:
        return None
    write_classification_json(Path(result.output_dir), result.items)
    return evaluate(with_truth, settings.data_root, result.output_dir)
