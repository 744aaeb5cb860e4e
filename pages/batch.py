"""Batch: run many images (uploads or a challenge JSON) through the analysis service; download a zip; see metrics.

Every item, result or failure, is recorded in the history by the service (source ``batch``).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from core import catalog, i18n
from core.response import AnalysisResponse
from pages.common import choice, error_message, is_remote, lang, page_header, service, settings, tr

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm"]
current = settings()
page_header("nav_batch")
L = lang()


def _requests_from_uploads() -> list[dict] | None:
    cols = st.columns(2)
    task = choice("radio", tr("task"), list(catalog.TASKS), format_func=lambda k: i18n.task_name(k, L),
                  key="b_task", horizontal=True, container=cols[0])
    names = catalog.dataset_names(task)
    default = catalog.default_dataset(task, catalog.groups_for(task)[0].key).name
    name = cols[1].selectbox(tr("dataset"), names, index=names.index(default), key=f"b_dataset_{task}")
    dataset = catalog.find_dataset(task, name)
    files = st.file_uploader(tr("batch_uploads"), type=UPLOAD_TYPES, accept_multiple_files=True, key="b_files")
    if not st.button(tr("batch_run"), type="primary", key="b_run"):
        return None
    st.session_state.pop("batch", None)  # a new run: the previous result (and its success message) goes
    if not files:
        st.warning(tr("batch_no_files"))
        return None
    requests = []
    for uploaded in files:
        try:
            skeleton = service(current).save_upload(uploaded.getvalue(), uploaded.name)
        except Exception as error:  # one bad file is named and skipped; the batch goes on
            st.error(tr("image_error", message=f"{uploaded.name}: {error_message(error)}"))
            continue
        requests.append({**skeleton, "task": task, "dataset_name": dataset.name, "organ": dataset.organ})
    return requests


def _read_entries(json_path: str) -> list[dict]:
    """The request objects of a challenge JSON file (a list, or ``{"data": [...]}``)."""
    entries = json.loads(Path(json_path).read_text(encoding="utf-8"))
    if isinstance(entries, dict):
        entries = entries.get("data") or entries.get("requests") or list(entries.values())
    if not isinstance(entries, list):
        raise ValueError("expected a list of request objects")
    return [e for e in entries if isinstance(e, dict)]


def _requests_from_json() -> tuple[list[dict], Path] | None:
    json_path = st.text_input(tr("batch_json_path"), key="b_json",
                              value=str(current.data_root / "ground_truth.json"))
    input_dir = st.text_input(tr("batch_input_dir"), key="b_dir", value=str(current.data_root))
    limit = st.number_input("max", min_value=1, max_value=100_000, value=50, step=10, key="b_limit")
    if not st.button(tr("batch_run"), type="primary", key="b_run_json"):
        return None
    st.session_state.pop("batch", None)
    try:
        entries = _read_entries(json_path)
    except (OSError, ValueError) as error:  # the user's own file: its reason is shown as is
        st.error(tr("batch_json_error", message=str(error) or type(error).__name__))
        return None
    return entries[: int(limit)], Path(input_dir)


def _run(requests: list[dict], data_root: Path) -> None:
    """One batch through the service (it screens unserved datasets and records every item)."""
    st.session_state.pop("batch", None)
    bar = st.progress(0.0, text=f"0 / {len(requests)}")

    def progress(done: int, total: int) -> None:
        bar.progress(min(float(done) / max(total, 1), 1.0), text=f"{done} / {total}")

    extra = {}
    if not is_remote(current) and data_root.resolve() != current.data_root.resolve():
        extra["input_dir"] = data_root.resolve()
    try:
        result = service(current).analyze_batch(requests, source="batch", progress=progress, **extra)
    except Exception as error:  # the model cannot load, the API is down ...
        st.error(tr("engine_error", message=error_message(error)))
        return
    bar.progress(1.0, text=f"{len(requests)} / {len(requests)}")
    st.session_state["batch"] = {"result": result, "requests": requests, "data_root": str(data_root)}


def _zip(result) -> bytes:
    """classification.json (the service's writer) and every mask PNG (through the service, local or remote)."""
    analysis = service(current)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("classification.json", json.dumps(result.classification_json(), indent=4))
        for item in result.responses:
            if not item.mask_path_relative:
                continue
            try:
                archive.writestr(item.mask_path_relative, analysis.mask_png(item))
            except Exception as error:  # noqa: BLE001 - one missing mask does not sink the zip
                st.warning(error_message(error))
    return buffer.getvalue()


def _metrics(batch: dict) -> pd.DataFrame | None:
    """Per-dataset metrics (core.evaluate) where requests carry ground truth; local mode only (needs the files)."""
    from core.evaluate import evaluate
    from core.service import write_classification_json

    result = batch["result"]
    with_truth = [r for r in batch["requests"]
                  if r.get("class_label_index") is not None or r.get("mask_path_relative")]
    if not with_truth or result.output_dir is None:
        return None
    write_classification_json(Path(result.output_dir), result.items)
    report = evaluate(with_truth, batch["data_root"], result.output_dir)
    rows = []
    for task in ("classification", "segmentation"):
        for name, values in report[task].items():
            row = {"dataset": f"{task}/{name}"}
            row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()})
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _summary(result) -> pd.DataFrame:
    label_key = "label_name_zh" if L == "zh" else "label_name"
    return pd.DataFrame([
        {"image": item.img_path_relative, "task": item.task, "dataset": item.dataset_name,
         "prediction": item.get(label_key, item.prediction) if isinstance(item, AnalysisResponse) else None,
         "mask_area_px": item.mask_area_px if isinstance(item, AnalysisResponse) else None,
         "error": None if isinstance(item, AnalysisResponse) else item.error,
         "run_id": item.run_id}
        for item in result.items
    ])


def show(batch: dict) -> None:
    result = batch["result"]
    st.success(tr("batch_done", n=len(result.items), sec=result.seconds))
    skipped = [f for f in result.failures if f.error_type == "NoModelError"]
    if skipped:
        names = ", ".join(sorted({f.dataset_name or "?" for f in skipped}))
        st.info(tr("batch_skipped", n=result.count("NoModelError"), names=names))
    st.dataframe(_summary(result), width="stretch", hide_index=True)
    if "zip" not in batch:
        batch["zip"] = _zip(result)
    st.download_button(tr("batch_zip"), batch["zip"], "uusic_batch.zip", "application/zip", key="b_zip")
    if "metrics" not in batch:
        batch["metrics"] = _metrics(batch)
    if batch["metrics"] is not None:
        st.subheader(tr("batch_metrics"))
        st.dataframe(batch["metrics"], width="stretch", hide_index=True)
    elif result.output_dir is None:
        st.caption(tr("batch_metrics_remote"))


source = choice("radio", tr("batch_source"), ["uploads", "json"], key="b_source", horizontal=True,
                format_func=lambda s: tr("batch_uploads") if s == "uploads" else tr("batch_json"))
if source == "uploads":
    new_requests = _requests_from_uploads()
    if new_requests:
        _run(new_requests, current.data_root)
else:
    loaded = _requests_from_json()
    if loaded:
        _run(*loaded)

if st.session_state.get("batch"):
    show(st.session_state["batch"])
