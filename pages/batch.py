"""Batch: run many images (uploads or a challenge JSON) through the analysis service; download a zip; see metrics.

Every item, result or failure, is recorded in the history by the service (source ``batch``). A challenge JSON is
one of the JSON files under the data root (at most 3 levels deep; listed and read by the service,
:mod:`core.data_root`) or an uploaded one, never a server path typed by the user; its images are read from the data
root (the service refuses paths that leave it). The page never opens the data root itself, so remote mode works the
same. File names and errors are shown inert (:func:`pages.common.md_literal`).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import PurePosixPath

import pandas as pd
import streamlit as st

from core import catalog, i18n
from core.data_root import parse_entries
from core.imaging import STILL_SUFFIXES
from core.response import AnalysisResponse
from pages.common import (
    choice,
    default_dataset_name,
    default_task,
    error_message,
    lang,
    md_literal,
    page_header,
    scrub_literal,
    scrub_paths,
    served_first,
    served_keys,
    service,
    settings,
    settings_key,
    tr,
)

UPLOAD_TYPES = [suffix.lstrip(".") for suffix in STILL_SUFFIXES]  # a batch is of still images
current = settings()
page_header("nav_batch")
L = lang()


def _marked(name: str, is_served: bool) -> str:
    return name if is_served else f"{name} {tr('no_model_mark')}"


def select_dataset() -> catalog.Dataset:
    """Task and dataset: served datasets first (the demo pick of the first served organ by default), the others
    marked "· no model"."""
    served = served_keys(current)
    cols = st.columns(2)
    task = choice("radio", tr("task"), list(catalog.TASKS), format_func=lambda k: i18n.task_name(k, L),
                  key="b_task", horizontal=True, container=cols[0], default=default_task(served))
    datasets = served_first(catalog.datasets_for(task), served)
    names = [d.name for d in datasets]
    first_group = next((d.group for d in datasets if d.key in served), catalog.groups_for(task)[0].key)
    default = default_dataset_name(task, first_group, served)
    shown = {n: _marked(n, (task, n) in served) for n in names}  # bound now, not when the label is drawn
    name = cols[1].selectbox(tr("dataset"), names, index=names.index(default), key=f"b_dataset_{task}",
                             format_func=shown.__getitem__)
    if served and (task, name) not in served:
        st.info(tr("b_unserved_dataset"))
    return catalog.find_dataset(task, name)


@st.cache_data(ttl=300, show_spinner=False, max_entries=8)
def known_datasets(key: str, task: str, _current) -> dict[str, str]:
    """File name (lower case) → dataset of the data root's entries of ``task`` (the service's ``known_names``);
    nothing when the service cannot say."""
    try:
        return service(_current).known_names(task)
    except Exception:  # noqa: BLE001 - no (readable) data root, the API is down: nothing is known
        return {}


def dataset_per_file(files: list, page_dataset: catalog.Dataset) -> list[catalog.Dataset]:
    """A dataset for each uploaded image, in a table (file | dataset): a file the data root knows starts at its
    entry's dataset, any other at the page's selection; the user changes any row (issue 23 item 2)."""
    task = page_dataset.task
    served = served_keys(current)
    datasets = served_first(catalog.datasets_for(task), served)
    names = [d.name for d in datasets]
    known = known_datasets(settings_key(current), task, current)
    shown = {n: _marked(n, (task, n) in served) for n in names}
    st.caption(tr("b_per_file"))
    head = st.columns([3, 2])
    head[0].markdown(f"**{tr('bcol_image')}**")
    head[1].markdown(f"**{tr('dataset')}**")
    chosen = []
    for index, uploaded in enumerate(files):
        default = known.get(str(uploaded.name).lower(), page_dataset.name)
        default = default if default in names else page_dataset.name
        row = st.columns([3, 2], vertical_alignment="center")
        row[0].text(str(uploaded.name))  # inert: a file name is user text
        key = f"b_file_dataset_{task}_{index}_{getattr(uploaded, 'file_id', '')}"
        name = row[1].selectbox(tr("dataset"), names, index=names.index(default), format_func=shown.__getitem__,
                                key=key, label_visibility="collapsed")
        chosen.append(catalog.find_dataset(task, name))
    return chosen


def _requests_from_uploads() -> list[dict] | None:
    page_dataset = select_dataset()
    files = st.file_uploader(tr("batch_uploads"), type=UPLOAD_TYPES, accept_multiple_files=True, key="b_files")
    per_file = dataset_per_file(list(files or []), page_dataset)
    if not st.button(tr("batch_run"), type="primary", key="b_run"):
        return None
    st.session_state.pop("batch", None)  # a new run: the previous result (and its success message) goes
    if not files:
        st.warning(tr("batch_no_files"))
        return None
    requests = []
    for uploaded, dataset in zip(files, per_file, strict=True):
        try:
            skeleton = service(current).save_upload(uploaded.getvalue(), uploaded.name)
        except Exception as error:  # one bad file is named and skipped; the batch goes on
            st.error(tr("image_error", message=md_literal(f"{uploaded.name}: {scrub_paths(error_message(error))}")))
            continue
        skeleton.setdefault("original_name", uploaded.name)  # the user's name, for display and the zip
        requests.append({**skeleton, "task": dataset.task, "dataset_name": dataset.name, "organ": dataset.organ})
    return requests


def _requests_from_json() -> list[dict] | None:
    """A challenge JSON from the data root (select box) or an upload; its images come from the data root."""
    try:
        files = service(current).json_files()
    except Exception as error:  # noqa: BLE001 - the API is down ...: no data-root JSON to choose, the reason shown
        st.warning(scrub_literal(error_message(error), current))
        files = []
    chosen = st.selectbox(tr("batch_json_file"), files, key="b_json_file", index=0 if files else None)
    if not files:
        st.caption(tr("batch_json_none"))
    uploaded = st.file_uploader(tr("batch_json_upload"), type=["json"], key="b_json_upload")
    limit = st.number_input(tr("b_limit"), min_value=1, max_value=100_000, value=50, step=10, key="b_limit")
    if not st.button(tr("batch_run"), type="primary", key="b_run_json"):
        return None
    st.session_state.pop("batch", None)
    try:
        if uploaded is not None:
            entries = parse_entries(uploaded.getvalue())
        elif chosen:
            entries = service(current).json_entries(str(chosen))
        else:
            raise ValueError(tr("batch_json_none"))
    except Exception as error:  # noqa: BLE001 - RequestError, NotFoundError, the API is down ...: shown inert
        message = scrub_paths(str(error) or type(error).__name__, current)
        st.error(tr("batch_json_error", message=md_literal(message)))
        return None
    if not entries:
        st.warning(tr("batch_json_error", message=md_literal("no request objects")))
        return None
    return entries[: int(limit)]


def _run(requests: list[dict]) -> None:
    """One batch through the service (it screens unserved datasets and records every item)."""
    st.session_state.pop("batch", None)
    bar = st.progress(0.0, text=f"0 / {len(requests)}")

    def progress(done: int, total: int) -> None:
        bar.progress(min(float(done) / max(total, 1), 1.0), text=f"{done} / {total}")

    try:  # images from the data root (and api_in/ for uploads): the service resolves and refuses the rest
        result = service(current).analyze_batch(requests, source="batch", progress=progress)
    except Exception as error:  # the model cannot load, the API is down ...
        st.error(tr("engine_error", message=scrub_literal(error_message(error), current)))
        return
    bar.progress(1.0, text=f"{len(requests)} / {len(requests)}")
    st.session_state["batch"] = {"result": result, "requests": requests}


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``stem (2).ext``, ``stem (3).ext`` … when an earlier entry took it (case-insensitively);
    records the name it returns in ``taken``."""
    path = PurePosixPath(name.replace("\\", "/").strip("/") or "image")
    candidate, number = path.as_posix(), 2
    while candidate.lower() in taken:
        candidate = path.with_name(f"{path.stem} ({number}){path.suffix}").as_posix()
        number += 1
    taken.add(candidate.lower())
    return candidate


def original_names(requests: list[dict]) -> dict[str, str]:
    """Stored image path → the file name the user gave (uploads); data-root entries keep their path."""
    return {str(r.get("img_path_relative")): str(r["original_name"]) for r in requests
            if r.get("original_name") and r.get("img_path_relative")}


def _mask_entry(item, names: dict[str, str], taken: set[str]) -> str:
    """The zip entry of one mask: ``masks/<the user's file stem>_mask.png`` for an upload (unique), the
    challenge layout (``mask_path_relative``) for a data-root image."""
    given = names.get(str(item.img_path_relative))
    if not given:
        return unique_name(str(item.mask_path_relative), taken)
    return unique_name(f"masks/{PurePosixPath(given.replace(chr(92), '/')).stem}_mask.png", taken)


def _zip(result, requests: list[dict]) -> bytes:
    """classification.json (the service's writer, stored paths as the challenge wants), every mask PNG (through
    the service, local or remote) under the user's file names, and names.csv: user name ↔ stored name ↔ run."""
    analysis, names, taken = service(current), original_names(requests), {"classification.json", "names.csv"}
    buffer, index = io.BytesIO(), io.StringIO()
    table = csv.writer(index)
    table.writerow(["original_name", "img_path_relative", "mask_file", "run_id"])
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("classification.json", json.dumps(result.classification_json(), indent=4))
        for item in result.responses:
            entry = ""
            if item.mask_path_relative:
                try:
                    data = analysis.mask_png(item)
                    entry = _mask_entry(item, names, taken)
                    archive.writestr(entry, data)
                except Exception as error:  # noqa: BLE001 - one missing mask does not sink the zip
                    st.warning(scrub_literal(error_message(error), current))
            table.writerow([names.get(str(item.img_path_relative), ""), item.img_path_relative, entry, item.run_id])
        archive.writestr("names.csv", index.getvalue())
    return buffer.getvalue()


def _metrics(batch: dict) -> pd.DataFrame | None:
    """Per-dataset metrics (the service's ``batch_metrics``: core.evaluate) where requests carry ground truth; local
    mode only (the masks stay on the server in remote mode)."""
    report = service(current).batch_metrics(batch["requests"], batch["result"])
    if report is None:
        return None
    rows = []
    for task in ("classification", "segmentation"):
        for name, values in report[task].items():
            row = {"dataset": f"{task}/{name}", "dataset_shown": f"{i18n.task_name(task, L)} / {name}"}
            row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()})
            row.update({f"{k}_shown": "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
                        for k, v in values.items()})
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _shown(value) -> str:
    """A table cell: "—" for nothing, numbers with thousands separators."""
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _prediction(item) -> str | None:
    if not isinstance(item, AnalysisResponse) or item.task != "classification" or item.prediction is None:
        return None
    try:
        return i18n.class_name(item.task, str(item.dataset_name), int(item.prediction), L)
    except Exception:  # noqa: BLE001 - a dataset the catalog does not know: the response's own label
        return item.get("label_name_zh" if L == "zh" else "label_name", item.prediction)


def _summary(result, requests: list[dict]) -> pd.DataFrame:
    """One row per item; the raw columns (``image`` = stored path, ``mask_area_px``, ``run_id`` …) stay for
    programs, the page shows the translated ``*_shown`` ones (the user's file names, "—" for nothing)."""
    names = original_names(requests)
    rows = []
    for item in result.items:
        ok = isinstance(item, AnalysisResponse)
        error = None if ok else scrub_paths(str(item.error or ""), current)
        area = item.mask_area_px if ok else None
        rows.append({"image": item.img_path_relative, "task": item.task, "dataset": item.dataset_name,
                     "prediction": _prediction(item), "mask_area_px": _shown(area), "error": error,
                     "run_id": item.run_id,
                     "image_shown": names.get(str(item.img_path_relative)) or _shown(
                         scrub_paths(item.img_path_relative, current) if item.img_path_relative else None),
                     "task_shown": i18n.task_name(str(item.task), L) if item.task else "—",
                     "dataset_shown": _shown(item.dataset_name), "prediction_shown": _shown(_prediction(item)),
                     "error_shown": _shown(error)})
    return pd.DataFrame(rows)


SUMMARY_SHOWN = {"run_id": "bcol_run_id", "image_shown": "bcol_image", "task_shown": "bcol_task",
                 "dataset_shown": "bcol_dataset", "prediction_shown": "bcol_prediction",
                 "mask_area_px": "bcol_mask_area_px", "error_shown": "bcol_error"}


def _columns(shown: dict[str, str]) -> dict:
    """Translated headers (``column_config``) for the columns a table shows."""
    return {column: st.column_config.Column(tr(key)) for column, key in shown.items()}


def _metric_columns(frame: pd.DataFrame) -> dict[str, str]:
    shown = {"dataset_shown": "mcol_dataset"}
    shown.update({c: f"metric_{c[: -len('_shown')]}" for c in frame.columns
                  if c.endswith("_shown") and c != "dataset_shown"})
    return shown


def show(batch: dict) -> None:
    result = batch["result"]
    if result.responses:
        st.success(tr("batch_done", n=len(result.items), sec=result.seconds))
    elif result.count("NoModelError") < len(result.items):  # nothing came back: no success message
        st.error(tr("batch_failed_all", n=len(result.items)))
    skipped = [f for f in result.failures if f.error_type == "NoModelError"]
    if skipped:
        names = ", ".join(sorted({str(f.dataset_name or "?") for f in skipped}))
        st.info(tr("batch_skipped", n=result.count("NoModelError"), names=md_literal(names)))
    st.dataframe(_summary(result, batch["requests"]), width="stretch", hide_index=True,
                 column_order=list(SUMMARY_SHOWN), column_config=_columns(SUMMARY_SHOWN))
    if "zip" not in batch:
        batch["zip"] = _zip(result, batch["requests"])
    st.download_button(tr("batch_zip"), batch["zip"], "uusic_batch.zip", "application/zip", key="b_zip")
    if "metrics" not in batch:
        batch["metrics"] = _metrics(batch)
    if batch["metrics"] is not None:
        st.subheader(tr("batch_metrics"))
        shown = _metric_columns(batch["metrics"])
        st.dataframe(batch["metrics"], width="stretch", hide_index=True, column_order=list(shown),
                     column_config=_columns(shown))
    elif result.output_dir is None:
        st.caption(tr("batch_metrics_remote"))


source = choice("radio", tr("batch_source"), ["uploads", "json"], key="b_source", horizontal=True,
                format_func={"uploads": tr("batch_uploads"), "json": tr("batch_json")}.__getitem__)
if source == "uploads":
    new_requests = _requests_from_uploads()
    if new_requests:
        _run(new_requests)
else:
    loaded = _requests_from_json()
    if loaded:
        _run(loaded)

if st.session_state.get("batch"):
    show(st.session_state["batch"])
