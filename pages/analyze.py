"""Analyze: choose task / organ / dataset, load an image, edit it, run the model, read the result."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core import catalog, editing, i18n, overlay
from core.imaging import load_image
from pages.common import (
    choice,
    error_message,
    is_no_model,
    label,
    lang,
    md_literal,
    page_header,
    scrub_literal,
    service,
    settings,
    tr,
)

UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm"]
PLOT_CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}

current = settings()
page_header("nav_analyze")
L = lang()


# ---------------------------------------------------------------- selection
def select_dataset() -> catalog.Dataset:
    cols = st.columns(3)
    task = choice("radio", tr("task"), list(catalog.TASKS), format_func=lambda k: i18n.task_name(k, L), key="task",
                  container=cols[0], horizontal=True)
    groups = [g.key for g in catalog.groups_for(task)]
    group = choice("selectbox", tr("organ"), groups, format_func=lambda k: i18n.group_name(k, L), key=f"organ_{task}",
                   container=cols[1])
    choices = catalog.datasets_for(task, group)
    names = [d.name for d in choices]
    default = catalog.default_dataset(task, group).name
    name = cols[2].selectbox(tr("dataset"), names, index=names.index(default), key=f"dataset_{task}_{group}")
    return catalog.find_dataset(task, name)


# ---------------------------------------------------------------- image source
def _decode(data: bytes | Path):
    loaded = load_image(data, settings=current)
    return Image.fromarray(loaded.rgb), loaded.pixel_spacing_mm, loaded.format


def _set_image(**image) -> None:
    st.session_state["image"] = image
    st.session_state.pop("result", None)


def load_upload() -> None:
    uploaded = st.file_uploader(tr("upload_label"), type=UPLOAD_TYPES, key="upload")
    if uploaded is None:
        return
    data = uploaded.getvalue()
    token = f"upload:{uploaded.name}:{uploaded.file_id}"  # a new upload (the service hashes what it analyses)
    if st.session_state.get("image", {}).get("token") == token:
        return
    try:
        picture, spacing, fmt = _decode(data)
    except Exception as error:  # ImageError and anything a hostile file triggers
        st.error(tr("image_error", message=scrub_literal(error_message(error), current)))
        st.session_state.pop("image", None)
        return
    _set_image(token=token, name=uploaded.name, picture=picture, spacing=spacing, format=fmt, source="upload",
               sample=None, task=None, dataset=None)


def load_sample(dataset: catalog.Dataset) -> None:
    if not st.button(tr("random_button"), key="random_sample"):
        return
    from core.samples import random_sample

    sample = random_sample(current.data_root, dataset.task, dataset.name)
    if sample is None:
        st.session_state["no_samples"] = (dataset.task, dataset.name)
        st.session_state.pop("image", None)
        return
    st.session_state.pop("no_samples", None)
    path = current.data_root / sample["img_path_relative"]
    try:
        picture, spacing, fmt = _decode(path)
    except Exception as error:
        st.error(tr("image_error", message=scrub_literal(error_message(error), current)))
        return
    spacing = sample.get("pixel_spacing_mm") or spacing
    _set_image(token=f"sample:{sample['img_path_relative']}", name=sample.get("img_name") or path.name,
               picture=picture, spacing=spacing, format=fmt, source="sample", sample=sample,
               task=dataset.task, dataset=dataset.name)


# ---------------------------------------------------------------- editing
def edit_image(image: dict) -> tuple[Image.Image, list[dict]]:
    picture: Image.Image = image["picture"]
    with st.expander(tr("edit"), expanded=True):
        cols = st.columns([2, 3, 1, 1, 1])
        quarter = cols[0].select_slider(tr("rotate90"), options=[0, 90, 180, 270], key="rot90")
        angle = cols[1].slider(tr("free_angle"), -45.0, 45.0, 0.0, 0.5, key="angle")
        flip_h = cols[2].checkbox(tr("flip_h"), key="flip_h")
        flip_v = cols[3].checkbox(tr("flip_v"), key="flip_v")
        do_crop = cols[4].checkbox(tr("crop"), key="crop_on")
        turned_edits = editing.build_edits(quarter_turns=quarter // 90, angle=angle, flip_horizontal=flip_h,
                                           flip_vertical=flip_v)
        turned = editing.apply_edits(picture, turned_edits)
        box = None
        if do_crop:
            from streamlit_cropper import st_cropper

            st.caption(tr("crop_help"))
            # keyed on the rotation (and flips, image): a new geometry starts with a fresh box
            cropper_key = f"cropper_{image['token'][-16:]}_{quarter}_{angle}_{flip_h}_{flip_v}"
            rect = st_cropper(turned, realtime_update=True, return_type="box", key=cropper_key, box_color="#ff4040")
            box = editing.box_from_cropper(rect)
        edits = editing.build_edits(quarter_turns=quarter // 90, angle=angle, flip_horizontal=flip_h,
                                    flip_vertical=flip_v, crop_box=box)
        edited = editing.apply_edits(picture, edits)
        st.caption(tr("edited_size", w=edited.width, h=edited.height))
    return edited, edits


def _data_url(picture: Image.Image, max_side: int = 1024) -> str:
    import base64

    shown = picture.convert("RGB")
    if max(shown.size) > max_side:  # display copy only; the analysed image keeps every pixel
        shown.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def zoomable(picture: Image.Image, key: str) -> None:
    """The edited image in a plotly figure: scroll to zoom, drag to pan (axes in original pixels)."""
    width, height = picture.size
    figure = go.Figure()
    figure.add_layout_image(source=_data_url(picture), x=0, y=0, sizex=width, sizey=height, xref="x", yref="y",
                            sizing="stretch", layer="below")
    figure.update_xaxes(range=[0, width], visible=False, constrain="domain")
    figure.update_yaxes(range=[height, 0], visible=False, scaleanchor="x")
    figure.update_layout(margin=dict(l=0, r=0, t=0, b=0), dragmode="pan", height=420, plot_bgcolor="black")
    st.caption(tr("zoom_help"))
    st.plotly_chart(figure, config=PLOT_CONFIG, key=key, width="stretch")


# ---------------------------------------------------------------- run
def build_request(skeleton: dict, dataset: catalog.Dataset, image: dict, edits: list[dict]) -> dict:
    request = dict(skeleton)
    request.update(task=dataset.task, dataset_name=dataset.name, organ=dataset.organ)
    if dataset.task == "segmentation":
        request["seg_target_info"] = dataset.seg_target
    sample = image.get("sample") or {}
    if sample and image.get("dataset") == dataset.name and image.get("task") == dataset.task:
        request["data_partition_group"] = sample.get("data_partition_group")
        if sample.get("class_label_index") is not None:
            request["class_label_index"] = sample["class_label_index"]
            request["class_label_name"] = sample.get("class_label_name")
    if image.get("spacing"):
        request["pixel_spacing_mm"] = float(image["spacing"])
    return request


def models_for(dataset: catalog.Dataset) -> list[str]:
    """Names of this deployment's models that serve ``dataset`` (the default model first)."""
    try:
        entries = service(current).models().get("models") or []
    except Exception:  # noqa: BLE001 - the model picker is optional
        return []
    ordered = sorted(entries, key=lambda m: not m.get("default"))
    return [str(m["name"]) for m in ordered
            if catalog.serves(catalog.served_keys(m.get("datasets")), dataset.task, dataset.name)]


def pick_models(dataset: catalog.Dataset) -> tuple[str | None, str | None]:
    """(model, model to compare with) when several models serve ``dataset``; (None, None) otherwise."""
    names = models_for(dataset)
    if len(names) < 2:
        return None, None
    cols = st.columns(2)
    key = f"{dataset.task}_{dataset.name}"
    picked = cols[0].selectbox(tr("model_pick"), ["", *names], key=f"model_{key}",
                               format_func=lambda n: n or tr("model_auto"))
    others = [n for n in names if n != (picked or names[0])]
    other = cols[1].selectbox(tr("compare_with"), ["", *others], key=f"compare_{key}",
                              format_func=lambda n: n or tr("compare_none"))
    return picked or None, other or None


def run(dataset: catalog.Dataset, image: dict, edited: Image.Image, edits: list[dict],
        model: str | None = None, compare: str | None = None) -> None:
    """Store the edited image and analyse it through the service (which records the run, with its sha256);
    with ``compare``, the same saved image is analysed by a second model too."""
    clicked_at = time.perf_counter()
    buffer = io.BytesIO()
    edited.convert("RGB").save(buffer, format="PNG")
    stem = Path(image["name"]).stem or "image"
    analysis = service(current)
    try:
        skeleton = analysis.save_upload(buffer.getvalue(), f"{stem}.png")
        request = build_request(skeleton, dataset, image, edits)
        with st.spinner(tr("running")):
            response = analysis.analyze(request, source="dashboard", edits=edits, model=model)
            second = analysis.analyze(request, source="dashboard", edits=edits, model=compare) if compare else None
    except Exception as error:  # the service's typed errors (and anything else, as one line)
        st.session_state["result"] = {"error": error_message(error), "no_model": is_no_model(error),
                                      "dataset": dataset.name}
        return
    st.session_state["result"] = {
        "request": request, "response": response.to_json(), "edits": edits, "edited": edited,
        "run_id": response.run_id, "image_token": image["token"], "seconds": time.perf_counter() - clicked_at,
        "compare": second.to_json() if second is not None else None,
    }


def show_comparison(result: dict) -> None:
    """The two models' answers side by side (and, for masks, how much they agree)."""
    first, second = result["response"], result["compare"]
    rows = []
    for response in (first, second):
        answer = (label(response["task"], response["dataset_name"], int(response["prediction"]))
                  if response["task"] == "classification" else f"{int(response.get('mask_area_px') or 0):,} px²")
        rows.append({tr("model_pick"): response.get("model_name"), tr("result"): answer,
                     tr("inference_time"): f"{float(response.get('inference_time_sec', 0.0)) * 1000:.0f} ms"})
    st.subheader(tr("comparison"))
    st.table(pd.DataFrame(rows))
    if first["task"] == "segmentation":
        try:
            masks = [overlay.as_bool_mask(load_image(service(current).mask_png(r), settings=current).rgb)
                     for r in (first, second)]
        except Exception as error:  # noqa: BLE001 - shown, never raised
            st.error(tr("engine_error", message=scrub_literal(error_message(error), current)))
            return
        st.metric(tr("compare_agreement"), f"{_dice(masks[0], masks[1]):.3f}")


# ---------------------------------------------------------------- results
def show_classification(result: dict, image: dict) -> None:
    response, request = result["response"], result["request"]
    task, name = request["task"], request["dataset_name"]
    probabilities = [float(p) for p in response["probability"]]
    predicted = int(response["prediction"])
    names = [label(task, name, i) for i in range(len(probabilities))]
    colors = ["#e4572e" if i == predicted else "#9bb1c8" for i in range(len(probabilities))]
    figure = go.Figure(go.Bar(x=names, y=probabilities, marker_color=colors,
                              text=[f"{p:.1%}" for p in probabilities], textposition="outside"))
    figure.update_layout(yaxis=dict(range=[0, 1.1], title=tr("probability")), xaxis_title=tr("class"),
                         height=340, margin=dict(l=10, r=10, t=10, b=10))
    st.subheader(tr("prediction", label=names[predicted], p=probabilities[predicted]))
    st.plotly_chart(figure, config=PLOT_CONFIG, key="prob_chart", width="stretch")
    reference = request.get("class_label_index")
    if reference is not None:
        st.markdown(f"**{tr('ground_truth')}** — " + tr("gt_label", label=label(task, name, int(reference))))
        (st.success if int(reference) == predicted else st.warning)(
            tr("gt_correct") if int(reference) == predicted else tr("gt_wrong"))


def _measurement_table(measurements: dict) -> pd.DataFrame:
    rows = []
    for base in i18n.MEASURE_LABELS:
        px = measurements.get(f"{base}_px")
        if px is None:
            continue
        unit_px, unit_mm = ("px²", "mm²") if base == "area" else ("px", "mm")
        mm = measurements.get(f"{base}_mm2" if base == "area" else f"{base}_mm")
        value = f"{px:,.1f} {unit_px}" + (f"  ·  {mm:,.1f} {unit_mm}" if mm is not None else "")
        rows.append({tr("measure_name"): i18n.measure_label(base, L), tr("measure_value"): value})
    return pd.DataFrame(rows)


def _reference_mask(image: dict, request: dict, edits: list[dict], size: tuple[int, int]) -> np.ndarray | None:
    sample = image.get("sample") or {}
    relative = sample.get("mask_path_relative")
    if not relative or image.get("dataset") != request["dataset_name"] or image.get("task") != request["task"]:
        return None
    path = current.data_root / relative
    if not path.is_file():
        return None
    try:
        pixels = load_image(path, settings=current).rgb[..., 0]
    except Exception:  # noqa: BLE001 - a broken reference mask only hides the comparison
        return None
    mask = editing.apply_edits(Image.fromarray(np.ascontiguousarray(pixels)), edits, is_mask=True)
    return overlay.as_bool_mask(mask) if mask.size == size else None


def _dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    from core.evaluate import dice

    return float(dice(reference, prediction))


def _load_mask(result: dict) -> np.ndarray | None:
    """The predicted mask through the service (a local file or the API's mask route), decoded once per result."""
    if result.get("mask") is None:
        try:
            data = service(current).mask_png(result["response"])
            result["mask"] = overlay.as_bool_mask(load_image(data, settings=current).rgb)
        except Exception as error:
            st.error(tr("engine_error", message=scrub_literal(error_message(error), current)))
            return None
    return result["mask"]


def show_segmentation(result: dict, image: dict) -> None:
    response, request, edited = result["response"], result["request"], result["edited"]
    mask = _load_mask(result)
    if mask is None:
        return
    cols = st.columns([2, 1])
    alpha = cols[0].slider(tr("opacity"), 0.0, 1.0, 0.45, 0.05, key="opacity")
    mode = choice("radio", tr("display_mode"), ["fill", "contour"], key="overlay_mode", horizontal=True,
                  format_func=lambda m: tr(f"mode_{m}"), container=cols[1])
    blended = overlay.overlay(edited, mask, alpha=alpha, mode=mode)
    left, right = st.columns(2)
    left.image(edited, caption=tr("original"), width="stretch")
    right.image(blended, caption=tr("overlay"), width="stretch")
    st.subheader(tr("measurements"))
    measurements = response.get("measurements") or {}
    if not mask.any():
        st.info(tr("empty_mask"))
    table = _measurement_table(measurements)
    if not table.empty:
        st.table(table)
    stem = Path(request.get("img_name") or "image").stem
    d1, d2 = st.columns(2)
    d1.download_button(tr("download_mask"), overlay.png_bytes(overlay.mask_image(mask)), f"{stem}_mask.png",
                       "image/png", key="dl_mask")
    d2.download_button(tr("download_overlay"), overlay.png_bytes(blended), f"{stem}_overlay.png", "image/png",
                       key="dl_overlay")
    reference = _reference_mask(image, request, result["edits"], edited.size)
    if reference is not None:
        st.subheader(tr("ground_truth"))
        a, b = st.columns(2)
        a.image(overlay.overlay(edited, reference, alpha=0.45, color=overlay.REFERENCE_COLOR),
                caption=tr("gt_mask"), width="stretch")
        b.image(overlay.compare_overlay(edited, mask, reference), width="stretch")
        st.metric("Dice", f"{_dice(mask, reference):.3f}")


def _mb(value) -> str:
    return "—" if value is None else f"{float(value):,.1f} MB"


def show_resources(response: dict, seconds: float, run_id: int | None = None) -> None:
    st.subheader(tr("resources"))
    device = str(response.get("device") or "cpu")
    on_gpu = device.startswith("cuda")
    cols = st.columns(4)
    cols[0].metric(tr("inference_time"), f"{float(response.get('inference_time_sec', 0.0)) * 1000:.0f} ms")
    cols[1].metric(tr("rss"), _mb(response.get("memory_usage_mb")))
    if on_gpu:
        cols[2].metric(tr("gpu_used"), _mb(response.get("gpu_memory_usage_mb")))
        cols[3].metric(tr("gpu_reserved"), _mb(response.get("gpu_memory_reserved_mb")))
    else:
        cols[2].metric(tr("gpu_used"), "CPU")
        cols[3].metric(tr("gpu_reserved"), "CPU")
    run = f" · {tr('run_id', n=run_id)}" if run_id is not None else ""
    st.caption(f"{tr('device')}: {md_literal(device) if on_gpu else tr('cpu_only')} · "
               f"{md_literal(response.get('model_name', ''))}{run}")


@st.fragment(run_every=5)
def system_strip() -> None:
    try:
        from core.resources import system_snapshot

        snap = system_snapshot()
    except Exception:  # never break the page for a status strip
        return
    cols = st.columns(4)
    cols[0].metric(tr("cpu_percent"), f"{float(snap.get('cpu_percent') or 0.0):.0f} %")
    used, total = snap.get("ram_used_mb"), snap.get("ram_total_mb")
    cols[1].metric(tr("ram"), f"{used / 1024:.1f} / {total / 1024:.1f} GB" if used and total else "—")
    gpu = snap.get("gpu")
    if gpu:
        cols[2].metric(tr("gpu_util"), f"{gpu.get('util_percent', 0):.0f} %")
        cols[3].metric(tr("gpu_mem"), f"{gpu.get('mem_used_mb', 0):,.0f} / {gpu.get('mem_total_mb', 0):,.0f} MB")
    else:
        cols[2].metric(tr("gpu_util"), "CPU")
        cols[3].metric(tr("gpu_mem"), "CPU")


# ---------------------------------------------------------------- page
dataset = select_dataset()
try:
    served = service(current).serves(dataset.task, dataset.name)
except Exception as error:
    st.error(tr("weights_error", message=scrub_literal(error_message(error), current)))
    st.stop()
if not served:
    st.info(tr("no_model", dataset=dataset.name))

source = choice("radio", tr("source"), ["sample", "upload"], format_func=lambda s: tr(f"source_{s}"), key="source",
                horizontal=True)
if source == "upload":
    load_upload()
else:
    load_sample(dataset)
    if st.session_state.get("no_samples") == (dataset.task, dataset.name):
        st.info(tr("no_samples", root=md_literal(current.data_root), dataset=md_literal(dataset.name)))

image = st.session_state.get("image")
if image and image["source"] == "sample" and (image["task"], image["dataset"]) != (dataset.task, dataset.name):
    image = None  # a sample belongs to its dataset
if not image:
    st.caption(tr("pick_image"))
    system_strip()
    st.stop()

st.caption(tr("current_image", name=md_literal(image["name"]), w=image["picture"].width, h=image["picture"].height))
edited, edits = edit_image(image)
zoomable(edited, key="zoom_view")

chosen_model, compare_model = pick_models(dataset) if served else (None, None)
if st.button(tr("run"), type="primary", key="run", disabled=not served):
    run(dataset, image, edited, edits, chosen_model, compare_model)

result = st.session_state.get("result")
if result and result.get("error"):
    if result["no_model"]:
        st.info(tr("no_model", dataset=md_literal(result["dataset"])))
    else:
        st.error(tr("engine_error", message=scrub_literal(result["error"], current)))
elif result and result.get("image_token") == image["token"]:
    with st.expander(tr("request_json")):
        st.json(result["request"])
    st.header(tr("result"))
    if result["request"]["task"] == "classification":
        show_classification(result, image)
    else:
        show_segmentation(result, image)
    if result.get("compare"):
        show_comparison(result)
    with st.expander(tr("response_json")):
        st.code(json.dumps(result["response"], ensure_ascii=False, indent=2, default=str), language="json")
    show_resources(result["response"], result["seconds"], result.get("run_id"))
system_strip()
