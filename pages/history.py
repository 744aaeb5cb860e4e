"""History: every run of this workspace, filterable, exportable to CSV, re-openable, and two runs side by side.

Stored names, paths and errors are user-controlled: they are shown inert (dataframe, ``st.text``, ``st.json``,
select box labels, or :func:`pages.common.md_literal` inside Markdown elements), never as Markdown. Images and
masks are read only through the service (``run_image`` / ``run_mask``: data root and workspace only); a failed
run's file is never re-opened. Times: ``UUSIC_TIMEZONE``, else TZ, else the server's zone, with the zone shown;
file names are the ones the user gave (``original_name``), the stored unique names stay underneath.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core import catalog, i18n, overlay
from core.history import decode_row
from core.history_format import display_name, display_zone, flat_fields, json_dict, local_time
from core.measure_table import is_number
from core.runs_table import cine_groups, frame_number, readable_csv
from pages.common import (
    choice,
    english_detail,
    error_message,
    fold_detail,
    lang,
    md_literal,
    measure_rows,
    measurement_table,
    page_header,
    scrub_literal,
    scrub_paths,
    service,
    settings,
    tr,
)

current = settings()


def _when(timestamp) -> str:
    """A stored UTC timestamp in the deployment's time zone (``timezone`` setting), zone shown."""
    return local_time(timestamp, current.timezone)


page_header("nav_history")
L = lang()
PLOT_CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
TABLE_COLUMNS = ("id", "timestamp", "source", "img_name", "task", "dataset_name", "organ", "frames", "model_name",
                 "label_name", "mask_area_px", "inference_time_sec", "error_type")
CINE_EXPANDERS = 10  # the newest cine analyses shown unfolded-on-click under the table
COMPARE_SIDE = 768  # the comparison figure's longer side (display copies only)


def _value(row: dict, *names, default=None):
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return default


def organ_name(organ: str) -> str:
    """A stored organ string ("Breast", "Head" …) in the page's language (the first organ group naming it)."""
    group = next((g for g in catalog.ORGAN_GROUPS.values() if g.organ.lower() == str(organ).lower()), None)
    return group.name(L) if group else str(organ)


def source_name(source) -> str:
    return tr(f"src_{source}") if f"src_{source}" in i18n.STRINGS else str(source or "—")


def task_label(task) -> str:
    return i18n.task_name(str(task), L) if task in catalog.TASKS else str(task or "—")


def class_label(row: dict, index) -> str:
    try:
        return i18n.class_name(str(row.get("task")), str(row.get("dataset_name")), int(index), L)
    except Exception:  # noqa: BLE001 - a dataset the catalog does not know: the stored value
        return str(row.get("label_name") or index)


# ---------------------------------------------------------------------------------------------- the table
def filtered_rows(rows: list[dict]) -> list[dict]:
    top, bottom = st.columns(2), st.columns(2)
    everything = tr("all")  # bound now: a format function may be called outside this run
    tasks = ["", *catalog.TASKS]
    task = choice("selectbox", tr("filter_task"), tasks, key="h_task", container=top[0],
                  format_func=lambda k: i18n.task_name(k, L) if k else everything)
    datasets = ["", *sorted({str(_value(r, "dataset_name", "dataset", default="")) for r in rows} - {""})]
    dataset = top[1].selectbox(tr("filter_dataset"), datasets, key="h_dataset", format_func=lambda k: k or everything)
    organs = ["", *sorted({str(_value(r, "organ", default="")) for r in rows} - {""})]
    organs_shown = {k: organ_name(k) if k else everything for k in organs}
    organ = bottom[0].selectbox(tr("filter_organ"), organs, key="h_organ", format_func=organs_shown.__getitem__)
    name = bottom[1].text_input(tr("filter_name"), key="h_name").strip().lower()
    corrected = st.toggle(tr("h_corrected_only"), key="h_corrected")  # issue 26: runs with a correction version
    return [
        r for r in rows
        if (not task or _value(r, "task") == task)
        and (not dataset or _value(r, "dataset_name", "dataset") == dataset)
        and (not organ or _value(r, "organ") == organ)
        and (not name or name in f"{display_name(r)} {_value(r, 'img_name', default='')}".lower())
        and (not corrected or bool(r.get("corrected") or r.get("correction_version")))
    ]


def _cell(value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _entry_values(entry: list[dict]) -> dict:
    """The shown values that differ for a cine analysis (several frames): frame count, area range, total time."""
    if len(entry) < 2 and frame_number(entry[0]) is None:
        r = entry[0]
        return {"frames_shown": "—", "mask_area_px_shown": _cell(r.get("mask_area_px")),
                "inference_time_sec_shown": _cell(r.get("inference_time_sec"))}
    areas = [r["mask_area_px"] for r in entry if is_number(r.get("mask_area_px"))]
    seconds = [r["inference_time_sec"] for r in entry if is_number(r.get("inference_time_sec"))]
    span = _cell(min(areas)) if areas and min(areas) == max(areas) else (
        f"{_cell(min(areas))} – {_cell(max(areas))}" if areas else "—")
    return {"frames_shown": tr("h_cine_frames", n=len(entry)), "mask_area_px_shown": span,
            "inference_time_sec_shown": _cell(round(float(sum(seconds)), 3)) if seconds else "—"}


def table(entries: list[list[dict]]) -> pd.DataFrame:
    """One row per entry (a run, or a cine analysis: its first frame's row): the raw columns (for programs) and,
    for the page, translated ``*_shown`` ones: local time, the user's file name, task / organ / source names, the
    number of frames of a cine, "—" for nothing."""
    frame = []
    for entry in entries:
        r = entry[0]
        shown = {"id_shown": r.get("id"), "timestamp_shown": _when(r.get("timestamp")),
                 "source_shown": source_name(r.get("source")), "img_name_shown": display_name(r) or "—",
                 "task_shown": task_label(r.get("task")), "organ_shown": organ_name(r["organ"]) if r.get("organ")
                 else "—", "label_name_shown": class_label(r, r["prediction"]) if is_number(r.get("prediction"))
                 else _cell(r.get("label_name"))}
        for column in ("dataset_name", "model_name", "error_type"):
            shown[f"{column}_shown"] = _cell(r.get(column))
        shown.update(_entry_values(entry))
        raw = {k: v for k, v in r.items() if k not in ("request", "response")}
        for column in ("mask_path", "error"):  # may name server folders: only their part inside the workspace
            if isinstance(raw.get(column), str):
                raw[column] = scrub_paths(raw[column], current)
        frame.append({**raw, **shown})
    return pd.DataFrame(frame)


def frames_table(entry: list[dict]) -> pd.DataFrame:
    """The frames of one cine analysis: frame (numbered from 1), run, time, area and measurements, model."""
    rows = []
    for r in entry:
        measurements = json_dict(r.get("measurements"))
        length = measurements.get("longest_diameter_mm")
        rows.append({tr("h_frame_col"): frame_number(r), tr("hcol_id"): r.get("id"),
                     tr("hcol_timestamp"): _when(r.get("timestamp")),
                     tr("hcol_mask_area_px"): _cell(r.get("mask_area_px")),
                     tr("h_frame_area_mm2"): _cell(measurements.get("area_mm2")),
                     tr("h_frame_length"): _cell(length),
                     tr("hcol_label_name"): class_label(r, r["prediction"]) if is_number(r.get("prediction"))
                     else _cell(r.get("label_name")),
                     tr("hcol_error_type"): _cell(r.get("error_type"))})
    shown = pd.DataFrame(rows)
    return shown.loc[:, [c for c in shown.columns if c in (tr("h_frame_col"), tr("hcol_id"))
                         or set(shown[c]) != {"—"}]]


def cine_entries(entries: list[list[dict]]) -> None:
    """Each cine analysis (the newest :data:`CINE_EXPANDERS`) folded under the table: its frames, one row each."""
    for entry in [e for e in entries if len(e) > 1 or frame_number(e[0]) is not None][:CINE_EXPANDERS]:
        first = entry[0]
        title = tr("h_cine_entry", name=display_name(first) or "—", n=len(entry), time=_when(first.get("timestamp")))
        with st.expander(title, icon=":material/movie:"):
            st.dataframe(frames_table(entry), hide_index=True, width="stretch",
                         key=f"h_cine_{first.get('batch_id')}")


def show_table(entries: list[list[dict]]) -> None:
    order = [f"{c}_shown" for c in TABLE_COLUMNS]
    config = {f"{c}_shown": st.column_config.Column(tr(f"hcol_{c}")) for c in TABLE_COLUMNS}
    st.dataframe(table(entries), width="stretch", hide_index=True, key="history_table", column_order=order,
                 column_config=config)
    st.caption(tr("h_time_zone", zone=md_literal(str(display_zone(current.timezone)))))


def _zip_name(dataset: str) -> str:
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in dataset)[:40]
    return f"uusic_labels_{safe}.zip" if safe else "uusic_labels.zip"


def labels_export(dataset: str) -> None:
    """Issue 26: the corrected runs (of the dataset filter, else all) as a UUSIC-layout ZIP for ``core train``
    (:func:`core.label_export.export_zip`: its size is known before it is built, within a budget)."""
    st.markdown(f"**{tr('h_labels_title')}**")
    store = getattr(service(current), "store", None)
    if store is None:  # remote mode: the API server holds the images and the corrected masks
        st.caption(tr("h_labels_remote"))
        return
    key = f"_h_labels_{dataset}"
    scope = md_literal(dataset) if dataset else tr("h_labels_all")
    if st.button(tr("h_labels_make", scope=scope), key="h_labels_make", help=tr("h_labels_help")):
        from core.label_export import export_zip

        try:
            st.session_state[key] = export_zip(current, store, dataset=dataset or None)
        except Exception as error:  # noqa: BLE001 - a typed error or a full disk: said, no paths
            st.session_state[key] = error_message(error)
    made = st.session_state.get(key)
    if isinstance(made, str):
        st.warning(scrub_literal(made, current))
    elif isinstance(made, dict):
        _labels_result(made, dataset)


def _labels_result(made: dict, dataset: str) -> None:
    from core.label_export import ZIP_BUDGET_BYTES

    if made["skipped"]:
        st.caption(tr("h_labels_skipped", n=made["skipped"]))
    if not made["written"]:
        st.info(tr("h_labels_none"))
    elif made["zip"] is None:
        st.warning(tr("h_labels_too_big", mb=f"{made['size'] / (1 << 20):,.0f}", limit=ZIP_BUDGET_BYTES >> 20))
    else:
        st.download_button(tr("h_labels_download", n=made["written"]), made["zip"], _zip_name(dataset),
                            "application/zip", key="h_labels_zip", on_click="ignore")


# ---------------------------------------------------------------------------------------------- re-open
def _load(what, run_id: int):
    """``what(run_id)`` (the service's ``run_image`` / ``run_mask``); a typed error becomes a warning (no paths)."""
    try:
        return what(run_id)
    except Exception as error:  # NotFoundError, PathError, ServiceUnavailableError ...
        st.warning(tr("reopen_unavailable", message=scrub_literal(error_message(error), current)))
        return None


def spacing_line(response: dict) -> str:
    spacing = response.get("pixel_spacing_mm")
    if not is_number(spacing):
        return tr("h_spacing_none")
    source = response.get("pixel_spacing_source")
    key = f"cl_source_{source or 'unknown'}"
    named = tr(key) if key in i18n.STRINGS else md_literal(source)
    return tr("h_spacing", spacing=f"{float(spacing):.4g}", source=named)


def _overlay_of(picture: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    shown = Image.fromarray(picture)
    if mask is None or mask.shape != picture.shape[:2]:
        return shown
    return overlay.overlay(shown, mask, thickness=overlay.readable_thickness(shown.size))


def show_segmentation(row: dict, picture: np.ndarray) -> None:
    run_id = int(row["id"])
    mask = _load(service(current).run_mask, run_id)
    if mask is None:
        st.image(picture, width="stretch")
        return
    left, right = st.columns(2)
    left.image(picture, caption=tr("h_original"), width="stretch")
    if mask.shape == picture.shape[:2]:
        right.image(_overlay_of(picture, mask), caption=tr("overlay"), width="stretch")
    else:
        right.warning(tr("reopen_unavailable", message=f"mask {mask.shape[::-1]} ≠ image {picture.shape[1::-1]}"))
    response = row.get("response") if isinstance(row.get("response"), dict) else {}
    measurements = row.get("measurements") if isinstance(row.get("measurements"), dict) else {}
    st.subheader(tr("measurements"))
    if not mask.any():
        st.info(tr("empty_mask"))
    measured = measurement_table(measurements)
    if not measured.empty:
        st.table(measured)
    st.caption(spacing_line({**measurements, **response}))


def probability_chart(row: dict, probabilities: list[float], uncertainty: dict | None = None) -> go.Figure:
    predicted = int(row["prediction"]) if is_number(row.get("prediction")) else -1
    names = [class_label(row, i) for i in range(len(probabilities))]
    colors = ["#e4572e" if i == predicted else "#9bb1c8" for i in range(len(probabilities))]
    figure = go.Figure(go.Bar(x=names, y=probabilities, marker_color=colors,
                              text=[f"{p:.1%}" for p in probabilities], textposition="outside"))
    low, high = (uncertainty or {}).get("probability_min"), (uncertainty or {}).get("probability_max")
    if low and high and len(low) == len(high) == len(probabilities):
        above = [max(0.0, float(h) - p) for h, p in zip(high, probabilities, strict=True)]
        below = [max(0.0, p - float(lo)) for lo, p in zip(low, probabilities, strict=True)]
        figure.data[0].update(error_y=dict(type="data", symmetric=False, color="#333333", array=above,
                                           arrayminus=below))
    figure.update_layout(yaxis=dict(range=[0, 1.15], title=tr("probability")), xaxis_title=tr("class"),
                         height=320, margin=dict(l=10, r=10, t=10, b=10))
    return figure


def _probabilities(row: dict) -> list[float] | None:
    values = _value(row, "probabilities", "probability")
    if not isinstance(values, list):
        return None
    try:
        return [float(p) for p in values]
    except (TypeError, ValueError):
        return None


def show_classification(row: dict, picture: np.ndarray) -> None:
    left, right = st.columns([1, 2])
    left.image(picture, width="stretch")
    probabilities = _probabilities(row)
    if is_number(row.get("prediction")):
        index = int(row["prediction"])
        share = f" ({probabilities[index]:.1%})" if probabilities and 0 <= index < len(probabilities) else ""
        right.subheader(md_literal(class_label(row, index)) + share)
    if probabilities:
        response = row.get("response") if isinstance(row.get("response"), dict) else {}
        right.plotly_chart(probability_chart(row, probabilities, response.get("uncertainty")),
                           config={"displaylogo": False}, key=f"h_prob_{row['id']}", width="stretch")


def show_reference(response: dict) -> None:
    """Contract B: the reference (ground truth) measurements next to the predicted ones, with the difference."""
    reference = response.get("reference")
    if not isinstance(reference, dict):
        return
    difference = reference.get("difference") or {}
    keys = [k for k in difference if k.endswith(("_mm", "_mm2"))] or list(difference)
    rows = measure_rows(keys, {tr("cl_predicted"): response.get("measurements") or {},
                                tr("cl_reference"): reference.get("measurements") or {},
                                tr("cl_difference"): difference})
    if not rows.empty:
        st.subheader(tr("cl_reference_title"))
        st.table(rows)
        key = f"cl_ref_{reference.get('source')}"
        st.caption(tr(key) if key in i18n.STRINGS else tr("cl_ref_None"))


def show_uncertainty(response: dict) -> None:
    """Contract B: the TTA spread (classification: the chart's error bars; segmentation: agreement and spread)."""
    spread = response.get("uncertainty")
    if not isinstance(spread, dict) or not spread:
        return
    st.subheader(tr("cl_uncertainty", n=spread.get("views", "?")))
    if response.get("task") == "classification":
        st.caption(tr("cl_tta_bars"))
        return
    if is_number(spread.get("agreement_mean")):
        st.metric(tr("cl_agreement"), f"{float(spread['agreement_mean']):.3f}")
    stats = spread.get("measurement_spread") or {}
    columns = {tr(f"cl_stat_{name}"): {k: (v or {}).get(name) for k, v in stats.items()}
               for name in ("mean", "min", "max", "sd")}
    rows = measure_rows(list(stats), columns)
    if not rows.empty:
        st.table(rows)


def _is_dicom_run(row: dict) -> bool:
    request = row.get("request") if isinstance(row.get("request"), dict) else {}
    names = [request.get("source_path_relative"), row.get("img_path_relative"), display_name(row)]
    return any(str(n or "").lower().endswith((".dcm", ".dicom")) for n in names)


def _made(kind: str, run_id: int, make) -> bytes | None:
    """The bytes of a report / DICOM SEG, made once per run (and language) when its button is clicked; a failure
    is shown as the service's message, without server paths."""
    key = f"_h_{kind}_{run_id}_{L}"
    if st.button(tr("h_report_make" if kind == "pdf" else "h_seg_make"), key=f"h_make_{kind}"):
        try:
            st.session_state[key] = make()
        except Exception as error:  # NotFoundError, RequestError, a missing library ...
            st.session_state[key] = error_message(error)
            st.session_state[f"{key}_detail"] = english_detail(error)  # the English words, folded below
    made = st.session_state.get(key)
    if isinstance(made, str):
        text = "h_report_error" if kind == "pdf" else "cl_seg_unavailable"
        st.warning(tr(text, message=scrub_literal(made, current)))
        fold_detail(st.session_state.get(f"{key}_detail"), current)
        return None
    return made


def downloads(row: dict) -> None:
    """Issue 11 §5: "Report (PDF)" for every successful run; "DICOM SEG" for a segmentation of a DICOM input."""
    run_id, analysis = int(row["id"]), service(current)
    stem = (display_name(row) or "case").rsplit(".", 1)[0] or "case"
    left, right = st.columns(2)
    with left:
        pdf = _made("pdf", run_id, lambda: analysis.report_pdf(run_id, L))
        if pdf:
            st.download_button(tr("cl_report_pdf"), pdf, f"{stem}_run{run_id}_report.pdf", "application/pdf",
                               key="h_report", on_click="ignore")
    with right:
        if row.get("task") != "segmentation" or not _is_dicom_run(row):
            st.caption(tr("h_seg_not_dicom"))
            return
        seg = _made("seg", run_id, lambda: analysis.dicom_seg(run_id))
        if seg:
            st.download_button(tr("cl_dicom_seg"), seg, f"{stem}_run{run_id}_seg.dcm", "application/dicom",
                               key="h_seg", on_click="ignore")


def run_heading(row: dict) -> None:
    title = tr("h_run_title", n=row.get("id"), name=md_literal(display_name(row) or "—"),
               time=_when(row.get("timestamp")))
    st.markdown(f"**{title}**")
    st.caption(tr("h_run_facts", task=task_label(row.get("task")), dataset=md_literal(row.get("dataset_name") or "—"),
                  model=md_literal(row.get("model_name") or "—"), source=source_name(row.get("source"))))
    flat = flat_fields(row)  # the response's frame, else the request's (a cine's frames record the count there)
    if int(flat.get("frame_count") or 1) > 1:
        st.caption(tr("h_frame", k=int(flat.get("frame_index") or 0) + 1, n=int(flat["frame_count"])))


def reopen(run_id: int) -> None:
    """One recorded run as it was shown: image, overlay + measurements (with spacing) or class names + chart, the
    reference and uncertainty blocks when present, and the report / DICOM SEG downloads."""
    row = _load(service(current).run, run_id)
    if row is None:
        return
    run_heading(row)
    if row.get("error") or row.get("error_type"):
        # a failed run (PathError: its path was refused) is shown as recorded; its file is never opened
        st.info(tr("run_failed"))
        st.text(f"{row.get('error_type') or 'Error'}: {scrub_paths(str(row.get('error') or ''), current)}")
    else:
        picture = _load(service(current).run_image, run_id)
        if picture is not None:
            (show_segmentation if _value(row, "task") == "segmentation" else show_classification)(row, picture)
            response = row.get("response") if isinstance(row.get("response"), dict) else {}
            show_uncertainty(response)
            show_reference(response)
            downloads(row)
            from pages.correction import correction_panel  # issue 26: a new version of the result

            correction_panel(row, picture, current)
    with st.expander(tr("h_raw_json")):
        st.json(scrubbed({k: v for k, v in row.items() if k not in ("probability_json",)}), expanded=False)


def scrubbed(value):
    """``value`` (JSON) with every text's server folders taken out (:func:`pages.common.scrub_paths`)."""
    if isinstance(value, dict):
        return {k: scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrubbed(v) for v in value]
    return scrub_paths(value, current) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------- compare
def same_image(a: dict, b: dict) -> bool:
    """Two runs of one image: the same input bytes, stored file, or the name the user gave it (another edit)."""
    return any(a.get(k) and a.get(k) == b.get(k) for k in ("input_sha256", "img_path_relative")) or bool(
        display_name(a) and display_name(a) == display_name(b))


def _view(row: dict) -> Image.Image | None:
    """The run's image, with its mask over it for a segmentation run (None when its files are gone)."""
    picture = _load(service(current).run_image, int(row["id"]))
    if picture is None:
        return None
    mask = _load(service(current).run_mask, int(row["id"])) if row.get("task") == "segmentation" else None
    return _overlay_of(picture, mask)


def _data_url(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def linked_figure(views: list[Image.Image], titles: list[str]) -> go.Figure:
    """Two images in one figure whose x and y axes are linked: zooming or panning one moves the other."""
    from plotly.subplots import make_subplots

    scale = min(1.0, COMPARE_SIDE / max(max(v.size) for v in views))
    figure = make_subplots(rows=1, cols=2, shared_xaxes=True, shared_yaxes=True, subplot_titles=titles,
                           horizontal_spacing=0.02)
    for column, view in enumerate(views, start=1):
        size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
        figure.add_trace(go.Image(source=_data_url(view.resize(size)), hoverinfo="skip"), row=1, col=column)
    figure.update_xaxes(matches="x", showticklabels=False)
    figure.update_yaxes(matches="y", showticklabels=False, autorange="reversed", scaleanchor="x")
    figure.update_layout(height=460, margin=dict(l=5, r=5, t=30, b=5), dragmode="pan")
    return figure


def compare_numbers(a: dict, b: dict) -> pd.DataFrame:
    """The two runs' numbers side by side: model, prediction and probabilities or measurements, and B − A."""
    first, second = f"A · #{a['id']}", f"B · #{b['id']}"
    rows = [{tr("measure_name"): tr("model_pick"), first: a.get("model_name") or "—", second: b.get("model_name")
             or "—", tr("h_difference"): ""}]
    if a.get("task") == "classification":
        pa, pb = _probabilities(a) or [], _probabilities(b) or []
        rows.append({tr("measure_name"): tr("class"), first: class_label(a, a.get("prediction")),
                     second: class_label(b, b.get("prediction")), tr("h_difference"): ""})
        for index in range(max(len(pa), len(pb))):
            va = pa[index] if index < len(pa) else None
            vb = pb[index] if index < len(pb) else None
            rows.append({tr("measure_name"): f"{tr('probability')} · {class_label(a, index)}",
                         first: f"{va:.1%}" if va is not None else "—", second: f"{vb:.1%}" if vb is not None else "—",
                         tr("h_difference"): f"{vb - va:+.1%}" if va is not None and vb is not None else "—"})
        return pd.DataFrame(rows)
    ma = a.get("measurements") if isinstance(a.get("measurements"), dict) else {}
    mb = b.get("measurements") if isinstance(b.get("measurements"), dict) else {}
    keys = [k for k in dict.fromkeys([*ma, *mb]) if is_number(ma.get(k)) or is_number(mb.get(k))]
    difference = {k: float(mb[k]) - float(ma[k]) for k in keys if is_number(ma.get(k)) and is_number(mb.get(k))}
    table_rows = measure_rows(keys, {first: ma, second: mb, tr("h_difference"): difference})
    return pd.concat([pd.DataFrame(rows), table_rows], ignore_index=True)


def compare(row: dict, rows: list[dict]) -> None:
    """Issue 11 §6: this run next to another run of the same image, with linked zoom and their numbers."""
    st.subheader(tr("h_compare"))
    others = [r for r in rows if r.get("id") != row.get("id") and not (r.get("error") or r.get("error_type"))
              and r.get("task") == row.get("task") and same_image(row, r)]
    if not others:
        st.caption(tr("h_compare_none"))
        return
    labels = {r["id"]: f"#{r['id']} · {_when(r.get('timestamp'))} · {r.get('model_name') or '—'}" for r in others}
    chosen = st.selectbox(tr("h_compare_with"), ["", *labels], key="h_compare",
                          format_func=lambda i: labels.get(i, "—") if i else "—")
    if not chosen:
        return
    runs = [decode_row(row), _load(service(current).run, int(chosen))]
    if runs[1] is None:
        return
    views = [_view(r) for r in runs]
    if all(v is not None for v in views):
        titles = [f"A · #{runs[0]['id']}", f"B · #{runs[1]['id']}"]
        st.plotly_chart(linked_figure(views, titles), config=PLOT_CONFIG, key="h_compare_chart", width="stretch")
        st.caption(tr("h_compare_linked"))
    st.markdown(f"**{tr('h_compare_numbers')}**")
    st.table(compare_numbers(*runs))


# ---------------------------------------------------------------------------------------------- the page
try:
    rows = service(current).runs(limit=5000)
except Exception as error:
    st.error(scrub_literal(error_message(error), current))
    st.stop()

if not rows:
    st.info(tr("history_empty"))
    st.stop()

def pick_frame(entry: list[dict]) -> int:
    """The run of the frame to re-open from a cine analysis (a choice of frames numbered from 1)."""
    if len(entry) < 2:
        return int(entry[0]["id"])
    count = flat_fields(entry[0]).get("frame_count") or len(entry)
    names = {int(r["id"]): tr("h_frame", k=frame_number(r), n=count) for r in entry}  # bound now (see above)
    picked = st.selectbox(tr("h_frame_pick"), list(names), key="h_reopen_frame", format_func=names.__getitem__)
    return int(picked if picked is not None else entry[0]["id"])


def _entry_label(entry: list[dict]) -> str:
    r = entry[0]
    label = (f"#{r.get('id')} · {_when(_value(r, 'timestamp', 'created_at', default=''))} · "
             f"{source_name(r.get('source'))} · {display_name(r)}")
    return label + f" · {tr('h_cine_frames', n=len(entry))}" if len(entry) > 1 else label


shown = filtered_rows(rows)
entries = cine_groups(shown)
st.caption(tr("rows", n=len(entries)))
show_table(entries)
cine_entries(entries)
st.download_button(tr("download_csv"), readable_csv(shown, L, current.timezone).encode("utf-8"), "uusic_history.csv",
                   "text/csv", key="history_csv", disabled=not shown)
labels_export(str(st.session_state.get("h_dataset") or ""))

if entries:
    st.subheader(tr("reopen"))
    by_id = {_value(e[0], "id", "run_id"): e for e in entries}
    labels = {i: _entry_label(e) for i, e in by_id.items()}
    chosen = st.selectbox(tr("reopen"), list(by_id), format_func=lambda i: labels.get(i, str(i)), key="h_reopen",
                          label_visibility="collapsed")
    if chosen is not None:
        run_id = pick_frame(by_id[chosen])
        reopen(run_id)
        picked = next((r for r in shown if r.get("id") == run_id), None)
        if picked is not None and not (picked.get("error") or picked.get("error_type")):
            compare(decode_row(picked), [decode_row(r) for r in rows])
