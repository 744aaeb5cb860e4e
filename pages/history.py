"""History: every run of this workspace, filterable, exportable to CSV, and re-openable.

Stored names, paths and errors are user-controlled: they are shown inert (dataframe, ``st.text``, ``st.json``,
select box labels, or :func:`pages.common.md_literal` inside Markdown elements), never as Markdown. Images and
masks are read only through the service (``run_image`` / ``run_mask``: data root and workspace only); a failed
run's file is never re-opened.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core import catalog, i18n, overlay
from core.history import HistoryStore
from pages.common import (
    choice,
    error_message,
    lang,
    md_literal,
    page_header,
    scrub_literal,
    scrub_paths,
    service,
    settings,
    tr,
)

current = settings()
page_header("nav_history")
L = lang()


def _value(row: dict, *names, default=None):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return default


def filtered_rows(rows: list[dict]) -> list[dict]:
    cols = st.columns(4)
    tasks = ["", *catalog.TASKS]
    task = choice("selectbox", tr("filter_task"), tasks, key="h_task", container=cols[0],
                  format_func=lambda k: i18n.task_name(k, L) if k else tr("all"))
    datasets = ["", *sorted({str(_value(r, "dataset_name", "dataset", default="")) for r in rows} - {""})]
    dataset = cols[1].selectbox(tr("filter_dataset"), datasets, key="h_dataset",
                                format_func=lambda k: k or tr("all"))
    organs = ["", *sorted({str(_value(r, "organ", default="")) for r in rows} - {""})]
    organ = cols[2].selectbox(tr("filter_organ"), organs, key="h_organ", format_func=lambda k: k or tr("all"))
    name = cols[3].text_input(tr("filter_name"), key="h_name").strip().lower()
    return [
        r for r in rows
        if (not task or _value(r, "task") == task)
        and (not dataset or _value(r, "dataset_name", "dataset") == dataset)
        and (not organ or _value(r, "organ") == organ)
        and (not name or name in str(_value(r, "img_name", "image_name", default="")).lower())
    ]


def _load(what, run_id: int):
    """``what(run_id)`` (the service's ``run_image`` / ``run_mask``); a typed error becomes a warning (no paths)."""
    try:
        return what(run_id)
    except Exception as error:  # NotFoundError, PathError, ServiceUnavailableError ...
        st.warning(tr("reopen_unavailable", message=scrub_literal(error_message(error), current)))
        return None


def _show_segmentation(run_id: int, picture: np.ndarray) -> None:
    mask = _load(service(current).run_mask, run_id)
    if mask is None:
        st.image(picture, width="stretch")
        return
    left, right = st.columns(2)
    left.image(picture, caption=tr("original"), width="stretch")
    if mask.shape == picture.shape[:2]:
        right.image(overlay.overlay(Image.fromarray(picture), mask), caption=tr("overlay"), width="stretch")
    else:
        right.warning(tr("reopen_unavailable", message=f"mask {mask.shape[::-1]} ≠ image {picture.shape[1::-1]}"))


def _show_classification(row: dict, picture: np.ndarray) -> None:
    st.image(picture, width=360)
    prediction = _value(row, "prediction")
    dataset = _value(row, "dataset_name", "dataset")
    if prediction is not None and dataset:
        try:
            st.subheader(i18n.class_name("classification", str(dataset), int(prediction), L))
        except Exception:  # noqa: BLE001 - a dataset the catalog does not know: the stored value, inert
            st.subheader(md_literal(prediction))
    probabilities = _value(row, "probabilities", "probability")
    if isinstance(probabilities, str):
        try:
            probabilities = json.loads(probabilities)
        except ValueError:
            probabilities = None
    if isinstance(probabilities, list) and dataset:
        try:
            names = i18n.class_names("classification", str(dataset), L)
        except Exception:  # noqa: BLE001 - unknown dataset: class indices
            names = [str(i) for i in range(len(probabilities))]
        try:
            shown = [f"{float(p):.1%}" for p in probabilities]
        except (TypeError, ValueError):
            shown = [str(p) for p in probabilities]
        st.table(pd.DataFrame({tr("class"): names[: len(probabilities)], tr("probability"): shown}))


def reopen(run_id: int) -> None:
    """One recorded run, its image and (segmentation) mask or (classification) probabilities, via the service."""
    row = _load(service(current).run, run_id)
    if row is None:
        return
    st.json({k: v for k, v in row.items() if k not in ("probability_json",)}, expanded=False)
    if row.get("error") or row.get("error_type"):
        # a failed run (PathError: its path was refused) is shown as recorded; its file is never opened
        st.info(tr("run_failed"))
        st.text(f"{row.get('error_type') or 'Error'}: {scrub_paths(str(row.get('error') or ''), current)}")
        return
    picture = _load(service(current).run_image, run_id)
    if picture is None:
        return
    if _value(row, "task") == "segmentation":
        _show_segmentation(run_id, picture)
    else:
        _show_classification(row, picture)


try:
    rows = service(current).runs(limit=5000)
except Exception as error:
    st.error(error_message(error))
    st.stop()

if not rows:
    st.info(tr("history_empty"))
    st.stop()

shown = filtered_rows(rows)
st.caption(tr("rows", n=len(shown)))
HIDDEN = ("request", "response")  # full JSON stays in the CSV and in the re-opened view
st.dataframe(pd.DataFrame([{k: v for k, v in r.items() if k not in HIDDEN} for r in shown]), width="stretch",
             hide_index=True, key="history_table")
st.download_button(tr("download_csv"), HistoryStore.to_csv(shown).encode("utf-8"), "uusic_history.csv", "text/csv",
                   key="history_csv", disabled=not shown)

if shown:
    st.subheader(tr("reopen"))
    ids = [_value(r, "id", "run_id") for r in shown]
    labels = {
        i: f"#{i} · {_value(r, 'timestamp', 'created_at', default='')} · {_value(r, 'source', default='')} · "
           f"{_value(r, 'img_name', default='')}"
        for i, r in zip(ids, shown, strict=True)
    }
    chosen = st.selectbox(tr("reopen"), ids, format_func=lambda i: labels.get(i, str(i)), key="h_reopen",
                          label_visibility="collapsed")
    if chosen is not None:
        reopen(int(chosen))
