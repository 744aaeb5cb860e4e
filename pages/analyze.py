"""Analyze: choose task / organ / dataset, load an image, edit it, run the model, read the result."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core import catalog, editing, i18n, overlay
from core.errors import NotFoundError
from core.imaging import STILL_SUFFIXES, VIDEO_SUFFIXES, load_image
from pages import clinical, organ_hint, pacs_source  # clinical hook; organ recogniser (issue 25); PACS hook
from pages.common import (
    choice,
    default_dataset_name,
    default_task,
    english_detail,
    error_message,
    fold_detail,
    group_served,
    is_no_model,
    label,
    lang,
    md_literal,
    measure_rows,
    measurement_table,
    page_header,
    scrub_literal,
    served_first,
    served_keys,
    service,
    set_url_params,
    settings,
    target_name,
    tr,
    url_param,
)

UPLOAD_TYPES = [suffix.lstrip(".") for suffix in (*STILL_SUFFIXES, *VIDEO_SUFFIXES)]  # stills, DICOM, cine loops
PLOT_CONFIG = {"scrollZoom": True, "displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}

PAGE_STARTED = time.perf_counter()  # this script run began just after the click that started it
current = settings()
page_header("nav_analyze")
L = lang()


# ---------------------------------------------------------------- selection
def _apply_url_state() -> None:
    """Once per browser session: the task / organ / dataset a reloaded or shared link names become the selectors'
    choices; an invalid one is a visible error (``_link_problem``), never a silent fallback."""
    if st.session_state.get("_url_applied"):
        return
    st.session_state["_url_applied"] = True
    task, group, name = url_param("task"), url_param("organ"), url_param("dataset")
    if task is None and group is None and name is None:
        return
    if task not in catalog.TASKS:
        if task is not None:
            _link_problem("task", task, list(catalog.TASKS))
        return
    st.session_state["_choice_task"] = task
    groups = [g.key for g in catalog.groups_for(task)]
    if group not in groups:
        if group is not None:
            _link_problem("organ", group, groups)
        return
    st.session_state[f"_choice_organ_{task}"] = group
    names = [d.name for d in catalog.datasets_for(task, group)]
    if name in names:
        st.session_state[f"_choice_dataset_{task}_{group}"] = name
    elif name is not None:
        _link_problem("dataset", name, names)


def _link_problem(what: str, value: str, known: list[str]) -> None:
    """Remember an invalid link value: shown above the selectors until the user chooses something else."""
    st.session_state["_link_problem"] = {"what": what, "value": value[:60], "known": known, "shown_for": None}


def _show_link_problem(selection: tuple[str, str, str]) -> None:
    """The invalid link value, in words, while the selection is still the one the page fell back to."""
    problem = st.session_state.get("_link_problem")
    if not problem:
        return
    if problem["shown_for"] is None:
        problem["shown_for"] = selection
    if problem["shown_for"] != selection:  # the user has chosen: the link's mistake no longer applies
        st.session_state.pop("_link_problem", None)
        return
    st.error(tr("link_invalid", what=tr(f"link_what_{problem['what']}"), value=md_literal(problem["value"]),
                known=", ".join(problem["known"])))


def _marked(text: str, is_served: bool) -> str:
    # option labels use this run's language L (format functions may be called after the run)
    return text if is_served else f"{text} {i18n.t('no_model_mark', L)}"


def select_dataset() -> catalog.Dataset:
    """Task, organ and dataset: served choices first, the others marked "no model"; defaults that give a result."""
    _apply_url_state()
    served = served_keys(current)
    cols = st.columns([2, 3, 3])
    task = choice("radio", tr("task"), list(catalog.TASKS), format_func=lambda k: i18n.task_name(k, L), key="task",
                  container=cols[0], default=default_task(served), horizontal=True)
    groups = sorted((g.key for g in catalog.groups_for(task)), key=lambda g: not group_served(task, g, served))
    group = choice("selectbox", tr("organ"), groups, key=f"organ_{task}", container=cols[1],
                   format_func=lambda k: _marked(i18n.group_name(k, L), group_served(task, k, served)))
    names = [d.name for d in served_first(catalog.datasets_for(task, group), served)]
    name = choice("selectbox", tr("dataset"), names, key=f"dataset_{task}_{group}", container=cols[2],
                  default=default_dataset_name(task, group, served),
                  format_func=lambda n: _marked(n, (task, n) in served))
    _show_link_problem((task, group, name))
    set_url_params(task=task, organ=group, dataset=name)
    return catalog.find_dataset(task, name)


# ---------------------------------------------------------------- image source
def _decode(data: bytes | Path, name: str | None = None):
    loaded = load_image(data, settings=current, name=name)
    return Image.fromarray(loaded.rgb), loaded.pixel_spacing_mm, loaded.format


def _set_image(**image) -> None:
    st.session_state["image"] = image
    st.session_state.pop("result", None)


def load_upload(dataset: catalog.Dataset) -> None:
    uploaded = st.file_uploader(tr("upload_label"), type=UPLOAD_TYPES, key="upload")
    if uploaded is None:
        return
    data = uploaded.getvalue()
    token = f"upload:{uploaded.name}:{uploaded.file_id}"  # a new upload (the service hashes what it analyses)
    if st.session_state.get("image", {}).get("token") == token:
        return
    clinical.remember_upload(data, uploaded.name, token)  # clinical hook
    try:
        picture, spacing, fmt = _decode(data)
    except Exception as error:  # ImageError and anything a hostile file triggers
        st.error(tr("image_error_named", name=md_literal(uploaded.name),
                    message=scrub_literal(error_message(error).replace("<upload>", uploaded.name), current)))
        fold_detail((english_detail(error) or "").replace("<upload>", uploaded.name), current)
        st.session_state.pop("image", None)
        st.session_state.pop("result", None)
        return
    _set_image(token=token, name=uploaded.name, picture=picture, spacing=spacing, format=fmt, source="upload",
               sample=None, task=dataset.task, dataset=dataset.name, data=data)  # it belongs to this dataset


def load_sample(dataset: catalog.Dataset, where=None) -> None:
    if not (where or st).button(tr("random_button"), key="random_sample", icon=":material/shuffle:"):
        return
    analysis = service(current)
    try:  # the skeleton and the file through the service (in-process, or the API in remote mode)
        sample = analysis.random_sample(dataset.task, dataset.name)
    except NotFoundError:
        st.session_state["no_samples"] = (dataset.task, dataset.name)
        st.session_state.pop("image", None)
        return
    except Exception as error:  # noqa: BLE001 - the API is down ...: shown, never raised
        st.error(tr("image_error", message=scrub_literal(error_message(error), current)))
        return
    st.session_state.pop("no_samples", None)
    relative = str(sample["img_path_relative"])
    try:
        picture, spacing, fmt = _decode(analysis.input_file(relative), Path(relative).name)
    except Exception as error:
        st.error(tr("image_error", message=scrub_literal(error_message(error), current)))
        fold_detail(english_detail(error), current)
        return
    spacing = sample.get("pixel_spacing_mm") or spacing
    _set_image(token=f"sample:{relative}", name=sample.get("img_name") or Path(relative).name,
               picture=picture, spacing=spacing, format=fmt, source="sample", sample=sample,
               task=dataset.task, dataset=dataset.name)


def own_image(image: dict | None, dataset: catalog.Dataset) -> dict | None:
    """The loaded image when it belongs to the chosen dataset. A sample of another dataset is dropped; an upload made
    under another organ / dataset is set aside with a notice and a button to use it here (a confirmed choice)."""
    if not image or (image.get("task"), image.get("dataset")) == (dataset.task, dataset.name):
        return image
    if image["source"] == "sample":
        return None
    try:
        old = catalog.find_dataset(str(image.get("task")), str(image.get("dataset")))
        before = f"{i18n.group_name(old.group, L)} / {old.name}"
    except catalog.UnknownDataset:
        before = "—"
    now = f"{i18n.group_name(dataset.group, L)} / {dataset.name}"
    st.warning(tr("image_other_dataset", name=md_literal(image["name"]), old=before, new=now))
    if st.button(tr("image_use_here", dataset=dataset.name), key="image_use_here"):
        image.update(task=dataset.task, dataset=dataset.name)
        st.session_state.pop("result", None)
        return image
    return None


# ---------------------------------------------------------------- editing
def edit_image(image: dict, folded: bool = False) -> tuple[Image.Image, list[dict]]:
    """The edit controls on the preview proxy (folded while a result is shown): returns the edited preview and the
    edit log for the full-resolution image (a crop box drawn on the preview is scaled to full-resolution pixels)."""
    picture: Image.Image = image["picture"]
    if image.get("proxy_source") != id(picture):  # a new picture (e.g. another frame): a new proxy
        image["proxy"], image["proxy_source"] = editing.proxy_of(picture), id(picture)
    proxy: Image.Image = image["proxy"]
    with st.expander(tr("edit"), expanded=not folded, icon=":material/tune:"):
        top = st.columns(2)
        quarter = top[0].select_slider(tr("rotate90"), options=[0, 90, 180, 270], key="rot90")
        angle = top[1].slider(tr("free_angle"), -45.0, 45.0, 0.0, 0.5, key="angle")
        row = st.columns(3)
        flip_h = row[0].checkbox(tr("flip_h"), key="flip_h")
        flip_v = row[1].checkbox(tr("flip_v"), key="flip_v")
        do_crop = row[2].checkbox(tr("crop"), key="crop_on")
        turned_edits = editing.build_edits(quarter_turns=quarter // 90, angle=angle, flip_horizontal=flip_h,
                                           flip_vertical=flip_v)
        turned = editing.apply_edits(proxy, turned_edits)
        box = None
        if do_crop:
            from streamlit_cropper import st_cropper

            st.caption(tr("crop_help"))
            # keyed on the rotation (and flips, image): a new geometry starts with a fresh box
            cropper_key = f"cropper_{image['token'][-16:]}_{quarter}_{angle}_{flip_h}_{flip_v}"
            rect = st_cropper(turned, realtime_update=True, return_type="box", key=cropper_key, box_color="#ff4040")
            box = editing.box_from_cropper(rect)
        preview = editing.apply_edits(turned, editing.build_edits(crop_box=box))
        edits = editing.full_resolution_edits(picture.size, turned_edits, box, turned.size)
        width, height = editing.edited_size(picture.size, edits)
        st.caption(tr("edited_size", w=width, h=height))
        if proxy is not picture:
            st.caption(tr("preview_scaled", w=proxy.width, h=proxy.height))
    return preview, edits


def _data_url(picture: Image.Image, max_side: int = 1024) -> str:
    import base64

    shown = picture.convert("RGB")
    if max(shown.size) > max_side:  # display copy only; the analysed image keeps every pixel
        shown.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


VIEW_HEIGHT = 420  # the input view's height in pixels, as a picture or as the zoom figure


def zoomable(picture: Image.Image, key: str, size: tuple[int, int] | None = None) -> None:
    """The edited image, drawn as a picture; with "zoom and pan" on (a switch kept for the session) in a plotly
    figure instead: scroll to zoom, drag to pan (axes in the analysed image's pixels, ``size``, when ``picture`` is
    its preview). The picture by default keeps a result quick (issue 27): the figure's first drawing held the browser
    ~0.8 s, which the first result waited for."""
    if not st.toggle(tr("zoom_toggle"), key="zoom_on", help=tr("zoom_help")):
        st.image(picture, width=max(1, round(min(900, VIEW_HEIGHT * picture.width / max(1, picture.height)))))
        return
    width, height = size or picture.size
    figure = go.Figure()
    figure.add_layout_image(source=_data_url(picture), x=0, y=0, sizex=width, sizey=height, xref="x", yref="y",
                            sizing="stretch", layer="below")
    figure.update_xaxes(range=[0, width], visible=False, constrain="domain")
    figure.update_yaxes(range=[height, 0], visible=False, scaleanchor="x")
    figure.update_layout(margin=dict(l=0, r=0, t=0, b=0), dragmode="pan", height=VIEW_HEIGHT, plot_bgcolor="black")
    st.caption(tr("zoom_help"))
    st.plotly_chart(figure, config=PLOT_CONFIG, key=key, width="stretch")


RESULT_ROW = [1, 1, 1.2]  # a result's rows: original | overlay | its numbers (and controls under them)


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
                               format_func=lambda n: n or i18n.t("model_auto", L))
    others = [n for n in names if n != (picked or names[0])]
    other = cols[1].selectbox(tr("compare_with"), ["", *others], key=f"compare_{key}",
                              format_func=lambda n: n or i18n.t("compare_none", L))
    return picked or None, other or None


def _input_bytes(image: dict, edits: list[dict]) -> tuple[bytes, Image.Image]:
    """What is stored and analysed: an unedited upload as uploaded (its format, e.g. DICOM, kept), anything else
    the full-resolution image with ``edits`` applied, as PNG (its size checked against the budget first)."""
    edits = editing.parse_edits(edits)
    editing.check_edit_budget(image["picture"].size, edits, max_pixels=current.max_image_pixels,
                              max_side=current.max_image_side)
    edited = editing.apply_edits(image["picture"], edits)
    if not edits and image.get("data") is not None:
        return image["data"], edited
    buffer = io.BytesIO()
    edited.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), edited


def run(dataset: catalog.Dataset, image: dict, edits: list[dict], inputs: dict,
        model: str | None = None, compare: str | None = None) -> None:
    """Store the full-resolution edited image and analyse it through the service (which records the run, with its
    sha256); with ``compare``, the same saved image is analysed by a second model too. ``inputs`` (what the
    page showed when Run was clicked) is kept with the result, so a later change marks it out of date."""
    clicked_at = PAGE_STARTED
    analysis = service(current)
    try:
        data, edited = _input_bytes(image, edits)
        skeleton = analysis.save_upload(data, image["name"])
        skeleton.setdefault("original_name", image["name"])
        request = build_request(skeleton, dataset, image, edits)
        request = clinical.extend_request(request, dataset, image, edits)  # clinical hook
        with st.spinner(tr("running")):
            response = analysis.analyze(request, source="dashboard", edits=edits, model=model)
            second = analysis.analyze(request, source="dashboard", edits=edits, model=compare) if compare else None
    except Exception as error:  # the service's typed errors (and anything else, as one line)
        message = error_message(error).replace("<upload>", str(image["name"]))
        detail = (english_detail(error) or "").replace("<upload>", str(image["name"])) or None
        st.session_state["result"] = {"error": message, "no_model": is_no_model(error), "dataset": dataset.name,
                                      "inputs": inputs, "image_token": image["token"], "detail": detail}
        return
    st.session_state["result"] = {
        "request": request, "response": response.to_json(), "edits": edits, "edited": edited,
        "run_id": response.run_id, "image_token": image["token"], "seconds": time.perf_counter() - clicked_at,
        "compare": second.to_json() if second is not None else None, "inputs": inputs,
        "run_number": st.session_state.get("_run_number", 0) + 1,
    }
    st.session_state["_run_number"] = st.session_state["result"]["run_number"]


def show_comparison(result: dict) -> None:
    """The two models' answers side by side (and, for masks, how much they agree)."""
    first, second = result["response"], result["compare"]
    rows = []
    for response in (first, second):
        answer = (label(response["task"], response["dataset_name"], int(response["prediction"]))
                  if response["task"] == "classification" else _area_text(response))
        rows.append({tr("model_pick"): response.get("model_name"), tr("result"): answer,
                     tr("inference_time"): f"{float(response.get('inference_time_sec', 0.0)) * 1000:.0f} ms"})
    st.subheader(tr("comparison"))
    import pandas as pd  # only here and in result tables: not on the first page's path (issue 27)

    st.table(pd.DataFrame(rows))
    if first["task"] == "segmentation":
        measured = [r.get("measurements") or {} for r in (first, second)]
        keys = list(dict.fromkeys([*measured[0], *measured[1]]))
        titles = [f"{tag} · {r.get('model_name') or '—'}" for tag, r in zip("AB", (first, second), strict=True)]
        st.table(measure_rows(keys, dict(zip(titles, measured, strict=True))))  # mm too when calibrated
        try:
            masks = [overlay.as_bool_mask(load_image(service(current).mask_png(r), settings=current).rgb)
                     for r in (first, second)]
        except Exception as error:  # noqa: BLE001 - shown, never raised
            st.error(tr("engine_error", message=scrub_literal(error_message(error), current)))
            return
        st.metric(tr("compare_agreement"), f"{_dice(masks[0], masks[1]):.3f}")


def _area_text(response: dict) -> str:
    """The mask's area in px², and in mm² when the run is calibrated."""
    text = f"{int(response.get('mask_area_px') or 0):,} px²"
    area_mm2 = (response.get("measurements") or {}).get("area_mm2")
    return f"{text} · {float(area_mm2):,.1f} mm²" if isinstance(area_mm2, (int, float)) else text


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
    clinical.add_error_bars(figure, response)  # clinical hook
    st.plotly_chart(figure, config=PLOT_CONFIG, key="prob_chart", width="stretch")
    reference = request.get("class_label_index")
    if reference is not None:
        st.markdown(f"**{tr('ground_truth')}** — " + tr("gt_label", label=label(task, name, int(reference))))
        (st.success if int(reference) == predicted else st.warning)(
            tr("gt_correct") if int(reference) == predicted else tr("gt_wrong"))


def _reference_mask(image: dict, request: dict, edits: list[dict], size: tuple[int, int]) -> np.ndarray | None:
    """The sample's ground-truth mask after the image's edits (its file read once per image through the service)."""
    from core.reference import edited_mask

    sample = image.get("sample") or {}
    relative = sample.get("mask_path_relative")
    if not relative or image.get("dataset") != request["dataset_name"] or image.get("task") != request["task"]:
        return None
    data = clinical.reference_file(image, relative)
    return None if data is None else edited_mask(data, edits, size, settings=current)


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


def show_segmentation(result: dict, image: dict) -> bool:
    response, request, edited = result["response"], result["request"], result["edited"]
    mask = _load_mask(result)
    if mask is None:
        return False
    left, right, numbers = st.columns(RESULT_ROW)  # the overlay and the key numbers side by side, in view
    cols = st.columns(RESULT_ROW)  # the display controls in one row under the images
    alpha = cols[0].slider(tr("opacity"), 0.0, 1.0, 0.45, 0.05, key="opacity")
    mode = choice("radio", tr("display_mode"), ["fill", "contour"], key="overlay_mode", horizontal=True,
                  format_func=lambda m: i18n.t(f"mode_{m}", L), container=cols[1])
    blended = _full_overlay(result, mask, alpha, mode)
    shown, shown_mask = _display_pair(result, mask)
    drawn, calipers = caliper_choice(response, mask, cols[2])
    width = overlay.readable_thickness(shown.size)
    picture = overlay.overlay(shown, shown_mask, alpha=alpha, mode=mode, thickness=width)
    if drawn:
        picture = overlay.draw_calipers(picture, **calipers, scale=shown.width / mask.shape[1], width=width)
    result["overlay_shown"], result["calipers_drawn"] = picture, drawn  # what the page shows (tests read it)
    left.image(shown, caption=tr("original"), width="stretch")
    right.image(picture, caption=tr("overlay"), width="stretch")
    target = target_name(str(response.get("task") or "segmentation"), str(response.get("dataset_name") or ""))
    with numbers:
        st.markdown(f"**{tr('measurements')}**")
        if target:
            st.caption(tr("target_named", name=target))
        measurements = response.get("measurements") or {}
        if not mask.any():
            st.info(tr("empty_mask"))
        table = measurement_table(measurements, compact=True)  # narrow column: one value per row
        if not table.empty:
            st.table(table)
            clinical.spacing_caption(response)  # clinical hook
    legend(reference=False, target=target, calipers=drawn)
    stem = Path(str(request.get("original_name") or request.get("img_name") or "image")).stem  # the user's name
    downloads = st.columns(RESULT_ROW)  # under the legend: the numbers column stays as short as the images
    downloads[0].download_button(tr("download_mask"), overlay.png_bytes(overlay.mask_image(mask)), f"{stem}_mask.png",
                                 "image/png", key="dl_mask", icon=":material/download:")
    downloads[1].download_button(tr("download_overlay"), overlay.png_bytes(blended), f"{stem}_overlay.png",
                                 "image/png", key="dl_overlay", icon=":material/download:")
    reference = _reference_mask(image, request, result["edits"], edited.size)
    if reference is not None:
        show_ground_truth(result, image, shown, shown_mask, _shrink_mask(reference, shown.size), _dice(mask, reference))
    return reference is not None


def show_ground_truth(result: dict, image: dict, shown: Image.Image, shown_mask: np.ndarray,
                      shown_reference: np.ndarray, dice: float) -> None:
    """Demo mode: the reference mask, both contours and the Dice in one row, the reference measurement under it."""
    st.markdown(f"**{tr('ground_truth')}**")
    width = overlay.readable_thickness(shown.size)
    a, b, c = st.columns(RESULT_ROW)
    a.image(overlay.overlay(shown, shown_reference, alpha=0.45, color=overlay.REFERENCE_COLOR, thickness=width),
            caption=tr("gt_mask"), width="stretch")
    b.image(overlay.compare_overlay(shown, shown_mask, shown_reference, thickness=width),
            caption=tr("compare_contours"), width="stretch")
    with c:
        st.metric(tr("dice_label"), f"{dice:.3f}")
        legend(reference=True, target=target_name(str(result["response"].get("task") or "segmentation"),
                                                  str(result["response"].get("dataset_name") or "")))
    clinical.show_reference(result, image)  # clinical hook: the reference measurement, under them


def caliper_choice(response: dict, mask: np.ndarray, container=None) -> tuple[list[str], dict]:
    """One switch per measurement drawn on the overlay (max diameter + perpendicular; HC ellipse + BPD for a fetal
    head); returns the names switched on and :func:`core.overlay.draw_calipers`' arguments."""
    ellipse = (response.get("measurements") or {}).get("ellipse")
    ellipse = ellipse if isinstance(ellipse, dict) and {"cx", "cy", "a", "b", "angle_deg"} <= set(ellipse) else None
    if not mask.any():
        return [], {}
    where = container if container is not None else st.container()
    drawn, calipers = [], {}
    if where.toggle(tr("cal_diameters"), value=True, key="cal_diameters"):
        calipers["lines"] = overlay.diameter_lines(mask)
        drawn.append("diameters")
    if ellipse is not None and where.toggle(tr("cal_hc"), value=True, key="cal_hc"):
        calipers["ellipse"] = ellipse
        drawn.append("hc")
    return drawn, calipers


def _shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``size`` (nearest neighbour: a display copy keeps hard edges)."""
    if mask.shape[::-1] == tuple(size):
        return mask
    return overlay.as_bool_mask(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST))


def _display_pair(result: dict, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The analysed image and its mask as display copies (longer side at most 1024 px), made once per result."""
    if result.get("display") is None:
        shown = editing.proxy_of(result["edited"])
        result["display"] = (shown, _shrink_mask(mask, shown.size))
    return result["display"]


def _full_overlay(result: dict, mask: np.ndarray, alpha: float, mode: str) -> Image.Image:
    """The full-resolution overlay (for the download), made once per result and display setting."""
    cache = result.setdefault("overlays", {})
    if (alpha, mode) not in cache:
        cache.clear()
        cache[(alpha, mode)] = overlay.overlay(result["edited"], mask, alpha=alpha, mode=mode,
                                               thickness=overlay.readable_thickness(mask.shape[::-1]))
    return cache[(alpha, mode)]


def _swatch(color: tuple[int, int, int], text: str) -> str:
    red, green, blue = color
    return (f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb({red},{green},{blue});'
            f'vertical-align:middle;margin:0 0.35em 0 0.8em;border-radius:2px"></span>{text}')


def legend(*, reference: bool, target: str | None = None, calipers: list[str] | None = None) -> None:
    """Which colour is which, naming the segmented target and the calipers drawn (fixed strings of the i18n table
    and the catalog only, so the HTML is ours)."""
    prediction = tr("legend_prediction") + (f" ({target})" if target else "")
    parts = [_swatch(overlay.PREDICTION_COLOR, prediction)]
    if reference:
        parts.append(_swatch(overlay.REFERENCE_COLOR, tr("legend_reference")))
    if "diameters" in (calipers or []):
        parts.append(_swatch(overlay.CALIPER_COLOR, tr("cal_diameters")))
    if "hc" in (calipers or []):
        parts.append(_swatch(overlay.ELLIPSE_COLOR, tr("cal_hc")))
    st.markdown(f'<div data-testid="uusic-legend">{tr("legend_title")}:{"".join(parts)}</div>',
                unsafe_allow_html=True)


def _mb(value) -> str:
    """Memory in a short form that fits a narrow metric ("812 MB", "1.5 GB")."""
    if value is None:
        return "—"
    megabytes = float(value)
    return f"{megabytes / 1024:.1f} GB" if megabytes >= 1000 else f"{megabytes:.0f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def show_resources(response: dict, seconds: float, run_id: int | None = None) -> None:
    st.markdown(f"**{tr('resources')}**")
    device = str(response.get("device") or "cpu")
    on_gpu = device.startswith("cuda")
    first, second = st.columns(3), st.columns(3)  # two short rows: no value is cut on a narrow window
    first[0].metric(tr("click_to_result"), _duration(seconds))
    first[1].metric(tr("inference_time"), _duration(float(response.get("inference_time_sec", 0.0))))
    first[2].metric(tr("rss"), _mb(response.get("memory_usage_mb")))
    if on_gpu:
        second[0].metric(tr("gpu_used"), _mb(response.get("gpu_memory_usage_mb")))
        second[1].metric(tr("gpu_reserved"), _mb(response.get("gpu_memory_reserved_mb")))
    else:
        second[0].metric(tr("gpu_used"), "CPU")
        second[1].metric(tr("gpu_reserved"), "CPU")
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
    # short values (the total goes in the label) so nothing is cut in a narrow column
    cols[1].metric(f"{tr('ram')} / {total / 1024:.0f} GB" if total else tr("ram"),
                   f"{used / 1024:.1f} GB" if used else "—")
    gpu = snap.get("gpu")
    if gpu:
        cols[2].metric(tr("gpu_util"), f"{gpu.get('util_percent', 0):.0f} %")
        cols[3].metric(f"{tr('gpu_mem')} / {gpu.get('mem_total_mb', 0) / 1024:.0f} GB",
                       f"{gpu.get('mem_used_mb', 0) / 1024:.1f} GB")
    else:
        cols[2].metric(tr("gpu_util"), "CPU")
        cols[3].metric(tr("gpu_mem"), "CPU")


# ---------------------------------------------------------------- provenance, stale results, scrolling
def forget_result_of_other_dataset(dataset: catalog.Dataset) -> None:
    """A result belongs to its task and dataset: choosing another one clears it."""
    result = st.session_state.get("result") or {}
    made_for = result.get("inputs") or {}
    if result and (made_for.get("task"), made_for.get("dataset")) != (dataset.task, dataset.name):
        st.session_state.pop("result", None)


def changed_inputs(made_for: dict, now: dict) -> list[str]:
    """What differs between the inputs a result was made for and the page's inputs now (in a fixed order)."""
    changes = []
    if (made_for.get("task"), made_for.get("dataset")) != (now["task"], now["dataset"]):
        changes.append("dataset")
    if made_for.get("image") != now["image"]:
        changes.append("image")
    if made_for.get("edits") != now["edits"]:
        changes.append("edits")
    if (made_for.get("model"), made_for.get("compare")) != (now["model"], now["compare"]):
        changes.append("model")
    if made_for.get("options") != now.get("options"):
        changes.append("options")
    return changes


def options_snapshot(dataset: catalog.Dataset, image: dict, edits: list[dict]) -> dict:
    """The request fields the analysis options add (spacing, TTA, ...): a change marks the result out of date."""
    try:
        fields = clinical.extend_request({}, dataset, image, edits)
    except Exception:  # noqa: BLE001 - options that cannot be read are not compared
        return {}
    follow_the_image = ("mask_path_relative", "head_circumference_mm", "frame_index")  # compared as image/edits
    return {k: v for k, v in fields.items() if k not in follow_the_image}


def describe_edits(edits: list[dict]) -> str:
    """The edit log in words ("rotated 90°, cropped to 300×200")."""
    words = []
    for edit in edits or []:
        op = edit.get("op")
        if op == "rotate90":
            words.append(tr("edit_rotate90", deg=90 * int(edit.get("k", 0))))
        elif op == "rotate":
            words.append(tr("edit_rotate", deg=f"{float(edit.get('angle', 0.0)):g}"))
        elif op == "flip":
            words.append(tr(f"edit_flip_{edit.get('axis', 'horizontal')}"))
        elif op == "crop":
            left, top, right, bottom = edit["box"]
            words.append(tr("edit_crop", w=right - left, h=bottom - top))
    return ", ".join(words) or tr("edits_none")


def show_provenance(result: dict, image: dict) -> None:
    """Which task, organ, dataset, model, image and edits produced this result."""
    request, response = result["request"], result["response"]
    found = catalog.find_dataset(request["task"], request["dataset_name"])
    st.caption(tr("provenance", task=i18n.task_name(found.task, L), organ=i18n.group_name(found.group, L),
                  dataset=md_literal(found.name), model=md_literal(response.get("model_name") or "—"),
                  image=md_literal(request.get("original_name") or image["name"]),
                  edits=describe_edits(result.get("edits") or [])))


def scroll_to_result(result: dict) -> None:
    """Bring a fresh result into view, once per run (a later rerun of the same result leaves the scroll alone)."""
    number = result.get("run_number")
    if number is None or st.session_state.get("_scrolled_to") == number:
        return
    st.session_state["_scrolled_to"] = number
    # our own fixed script (no user text): a same-origin iframe that scrolls the page to the result's heading
    st.iframe(
        "<script>(function go(tries){const target = window.parent.document.getElementById('uusic-result');"
        "if (target) {target.scrollIntoView({block: 'start'});} else if (tries < 50) "
        f"{{setTimeout(function(){{go(tries + 1);}}, 100);}}}})(0);</script><!-- run {int(number)} -->",
        height=1)


def technical_details(result: dict | None) -> None:
    """Issue 23 §10: the engineering panels in one folded section at the end of the page: the request and the raw
    response (JSON), the run's resources and the live CPU / memory strip."""
    with st.expander(tr("tech_details"), icon=":material/memory:"):
        if result and not result.get("error"):
            show_resources(result["response"], result["seconds"], result.get("run_id"))
            st.markdown(f"**{tr('request_json')}**")
            st.json(result["request"], expanded=False)
            st.markdown(f"**{tr('response_json')}**")
            st.code(json.dumps(result["response"], ensure_ascii=False, indent=2, default=str), language="json",
                    height=320)
        st.markdown(f"**{tr('tech_system_now')}**")
        system_strip()


def show_result(result: dict | None, image: dict, inputs: dict) -> None:
    """The result (stale or failed marked as such): provenance, overlay / classes with the key numbers, extras."""
    if not result:
        return
    changes = changed_inputs(result.get("inputs") or {}, inputs)
    if changes:
        separator = "、" if L == "zh" else ", "
        st.warning(tr("stale_result", changes=separator.join(tr(f"changed_{c}") for c in changes)), icon="⚠️")
    if result.get("error"):
        if result["no_model"]:
            st.info(tr("no_model", dataset=md_literal(result["dataset"])))
        else:
            st.error(tr("engine_error", message=scrub_literal(result["error"], current)))
            fold_detail(result.get("detail"), current)
        return
    organ_hint.result_warning(result["response"], L)  # issue 25: another organ, or out of distribution
    st.subheader(tr("result"), anchor="uusic-result")
    show_provenance(result, image)
    scroll_to_result(result)
    with_reference = False  # the reference measurement shown next to the ground-truth images
    if result["request"]["task"] == "classification":
        show_classification(result, image)
    else:
        with_reference = show_segmentation(result, image)
    if result.get("compare"):
        show_comparison(result)
    clinical.result_extras(result, image, reference=not with_reference)  # clinical hook
    pacs_source.store_button(service(current), current, L, image, result.get("run_id"))  # PACS hook


def _result_for(image: dict) -> dict | None:
    """The session's result when it was made for this image (another image's result is not this one's)."""
    result = st.session_state.get("result")
    return result if result and result.get("image_token") == image["token"] else None


# ---------------------------------------------------------------- page
# issue 23 §10: less empty space above and below the page's content (Streamlit's 6rem / 10rem)
PAGE_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 2rem; padding-bottom: 1.5rem; }
@media (max-width: 1000px) { [data-testid="stMainBlockContainer"] h1 { font-size: 1.75rem; } }
</style>"""
dataset = select_dataset()
try:
    served = service(current).serves(dataset.task, dataset.name)
except Exception as error:
    st.error(tr("weights_error", message=scrub_literal(error_message(error), current)))
    st.stop()
forget_result_of_other_dataset(dataset)
if not served:  # decided at selection: one message, what to do, and no upload / edit / calibration flow
    st.info(tr("no_model_here", dataset=md_literal(dataset.name)))
    st.page_link("pages/models.py", label=tr("nav_models"))
    technical_details(None)
    st.stop()

st.html(PAGE_CSS)
result_slot = st.container()  # issue 23 §10: a result comes first, above the image and options that made it
source_row = st.columns([2, 1], vertical_alignment="bottom")  # the source and "random sample" in one row
source = choice("radio", tr("source"), ["sample", "upload", *(["pacs"] if current.dicomweb_url else [])],
                format_func=lambda s: i18n.t(f"source_{s}", L) if s != "pacs" else "PACS", key="source",
                horizontal=True, container=source_row[0])
if source == "pacs":
    pacs_source.load_pacs(dataset, current, L, _decode, _set_image)
elif source == "upload":
    load_upload(dataset)
else:
    load_sample(dataset, source_row[1])
    if st.session_state.get("no_samples") == (dataset.task, dataset.name):
        st.info(tr("no_samples", dataset=md_literal(dataset.name)))  # never the server's folder

image = own_image(st.session_state.get("image"), dataset)
if not image:
    st.caption(tr("pick_image"))
    technical_details(None)
    st.stop()

image = clinical.cine_frame(image)  # clinical hook
# while a result is shown (or Run was just clicked) the edit controls and the still image's zoom view fold away;
# a cine keeps its image next to the frame slider
folded = bool(_result_for(image) or st.session_state.get("run")) and not clinical.is_cine(image)
organ_hint.suggest(image, dataset, service(current), served_keys(current), L,  # issue 25: "looks like …", accept
                   caption=tr("current_image", name=md_literal(image["name"]), w=image["picture"].width,
                              h=image["picture"].height))
holder = st.container()  # one block either way: the elements after it keep their place (an open panel stays open)
edit_box, view_box = holder.columns(2) if folded else (holder.container(), holder.container())  # folded: a row
with edit_box:
    edited, edits = edit_image(image, folded=folded)
with view_box, st.expander(tr("input_preview"), icon=":material/zoom_in:") if folded else st.container():
    zoomable(edited, key="zoom_view", size=editing.edited_size(image["picture"].size, edits))
clinical.cine_controls(image)  # clinical hook: the frame slider right under the image

clinical.options_panel(dataset, image, edits, served, compact=True)  # clinical hook: one row, one layout
chosen_model, compare_model = pick_models(dataset) if served else (None, None)
inputs = {"task": dataset.task, "dataset": dataset.name, "image": image["token"], "edits": edits,
          "model": chosen_model, "compare": compare_model, "options": options_snapshot(dataset, image, edits)}
run_box, technical_box = st.columns([1, 2])  # Run, and the folded technical details beside it
if run_box.button(tr("run"), type="primary", key="run", disabled=not served, icon=":material/play_arrow:"):
    run(dataset, image, edits, inputs, chosen_model, compare_model)

result = _result_for(image)
with result_slot:
    show_result(result, image, inputs)
with technical_box:
    technical_details(result)
