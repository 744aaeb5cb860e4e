"""Issue 11 on the Analyze page: cine loops, pixel-spacing calibration, uncertainty (TTA), the reference
measurement and the case report.

``pages/analyze.py`` calls these functions from a few lines marked ``# clinical hook``. Every widget talks only to
the analysis service (in-process or :class:`core.client.ApiClient`); where the service lacks a method the widget
hides itself with a short note, so the page never breaks.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image, ImageDraw
from streamlit_image_coordinates import streamlit_image_coordinates

from core import catalog, editing, i18n, overlay
from core.calibration import check_spacing, spacing_from_line
from core.calibration import spacing_problem as core_spacing_problem
from core.imaging import VIDEO_SUFFIXES, probe_frames
from pages.common import (
    choice,
    english_detail,
    error_message,
    fold_detail,
    lang,
    md_literal,
    measure_rows,
    scrub_literal,
    service,
    tr,
)

VIDEO_TYPES = [suffix.lstrip(".") for suffix in VIDEO_SUFFIXES]
FRAME_MARK = "#frame="
PLAY_SECONDS = 0.4  # one player step; the frame step follows the loop's fps
THUMB_SIDE = 480  # the player's frames (display copies only)
LINE_VIEW_SIDE = 640  # the calibration image (clicks are scaled back to image pixels)
MODES = ["auto", "user", "line", "none"]
PLOT_CONFIG = {"displaylogo": False}


# ---------------------------------------------------------------------------------------------- shared
def _problem(error: BaseException) -> str:
    return scrub_literal(error_message(error))


def base_token(image: dict) -> str:
    """The image's token without the cine frame part (one calibration / upload record per file)."""
    return str(image.get("token") or "").split(FRAME_MARK)[0]


def _short(token: str) -> str:
    import hashlib

    return hashlib.sha1(token.encode()).hexdigest()[:10]


def _upload_record(image: dict) -> dict | None:
    record = st.session_state.get("clinical_upload")
    return record if record and record.get("token") == base_token(image) else None


def _cine(image: dict) -> dict | None:
    """The kept container of a multi-frame upload (``frame_count`` > 1)."""
    record = _upload_record(image)
    if not record or int((record.get("skeleton") or {}).get("frame_count") or 1) < 2:
        return None
    return record


def is_cine(image: dict) -> bool:
    """Whether ``image`` is (a frame of) a multi-frame upload."""
    return _cine(image) is not None


def spacing_text(spacing: float | None, source: str | None) -> str:
    """``0.0812 mm/px (ground truth)`` or the note that values are in pixels only."""
    if not spacing:
        return tr("cl_spacing_none")
    return tr("cl_spacing_value", spacing=f"{float(spacing):.4g}", source=tr(f"cl_source_{source or 'unknown'}"))


# ---------------------------------------------------------------------------------------------- upload
def remember_upload(data: bytes, name: str, token: str) -> None:
    """A multi-frame DICOM or video upload is also kept as uploaded, so its frames can be shown and analysed."""
    st.session_state.pop("clinical_upload", None)
    suffix = Path(name).suffix.lower().lstrip(".")
    if not (data[128:132] == b"DICM" or suffix in ("dcm", "dicom", *VIDEO_TYPES)):
        return
    try:
        if probe_frames(data, name=name).frame_count < 2:
            _remember_spacing_source(data, name, token)
            return
        skeleton = service().save_upload(data, name)
    except Exception as error:  # noqa: BLE001 - the first frame may still open; say why the loop does not
        st.warning(tr("cl_container_error", message=_problem(error)))
        return
    st.session_state["clinical_upload"] = {"token": token, "skeleton": skeleton}


def _remember_spacing_source(data: bytes, name: str, token: str) -> None:
    """A still DICOM: which header gave its spacing (``dicom`` / ``dicom_region``), shown with every mm value."""
    try:
        from core.imaging import load_image

        source = getattr(load_image(data, name=name), "pixel_spacing_source", None)
    except Exception:  # noqa: BLE001 - the page reports an unreadable file itself
        return
    if source:
        st.session_state["clinical_upload"] = {"token": token, "spacing_source": source}


# ---------------------------------------------------------------------------------------------- cine
def _thumbnail(picture: Image.Image, side: int = THUMB_SIDE) -> Image.Image:
    shown = picture.convert("RGB")
    if max(shown.size) > side:
        shown.thumbnail((side, side))
    return shown


def load_frame(path: str, index: int) -> Image.Image:
    """Frame ``index`` of the kept container through the service (the last few cached per session)."""
    cache: dict = st.session_state.setdefault("cine_frames", {})
    key = (path, int(index))
    if key not in cache:
        cache[key] = Image.fromarray(np.ascontiguousarray(service().load_frame(path, int(index))))
        while len(cache) > 4:
            cache.pop(next(iter(cache)))
    return cache[key]


def _thumb_bytes(path: str, index: int) -> bytes:
    cache: dict = st.session_state.setdefault("cine_thumbs", {})
    key = (path, int(index))
    if key not in cache:
        buffer = io.BytesIO()
        _thumbnail(load_frame(path, index)).save(buffer, format="JPEG", quality=80)
        cache[key] = buffer.getvalue()
        while len(cache) > 400:
            cache.pop(next(iter(cache)))
    return cache[key]


def _toggle_play(play_key: str, slider_key: str, position_key: str) -> None:
    """Play starts at the slider's frame; stop leaves the slider on the frame that was shown (the slider counts
    frames from 1, the position is the 0-based frame index)."""
    if st.session_state.get(play_key):
        st.session_state[position_key] = int(st.session_state.get(slider_key, 1)) - 1
    else:
        st.session_state[slider_key] = int(st.session_state.get(position_key, 0)) + 1


@st.fragment(run_every=PLAY_SECONDS)
def _player(path: str, count: int, fps: float | None, position_key: str) -> None:
    """While play is on: the next frame every :data:`PLAY_SECONDS` (only this fragment reruns)."""
    step = max(1, round((fps or 0) * PLAY_SECONDS)) if fps else 1
    position = (int(st.session_state.get(position_key, 0)) + step) % count
    st.session_state[position_key] = position
    try:
        st.image(_thumb_bytes(path, position), caption=tr("cl_frame_of", k=position + 1, n=count))
    except Exception as error:  # noqa: BLE001 - a frame that cannot be read stops nothing else
        st.error(tr("cl_frame_error", message=_problem(error)))


def _cine_keys(cine: dict) -> tuple[str, str, str]:
    key = _short(cine["token"])
    return f"cine_frame_{key}", f"cine_play_{key}", f"cine_pos_{key}"


def cine_frame(image: dict) -> dict:
    """For a cine: the chosen frame (the slider's value, 1-based; :func:`cine_controls` draws the slider under the
    image); returns the image of that frame with its 0-based ``frame_index``."""
    cine = _cine(image)
    if cine is None:
        return image
    skeleton = cine["skeleton"]
    count, fps = int(skeleton["frame_count"]), skeleton.get("fps")
    slider_key = _cine_keys(cine)[0]
    st.subheader(tr("cl_cine_title"))
    st.caption(tr("cl_cine_info", n=count, fps=f"{float(fps):.1f}" if fps else "—"))
    shown = int(st.session_state.get(slider_key, 1))
    if not 1 <= shown <= count:  # a value from another loop
        shown = st.session_state[slider_key] = 1
    index = shown - 1
    try:
        picture = load_frame(skeleton["img_path_relative"], index)
    except Exception as error:  # noqa: BLE001 - shown; the first frame stays on screen
        st.error(tr("cl_frame_error", message=_problem(error)))
        return image
    return {**image, "picture": picture, "token": f"{cine['token']}{FRAME_MARK}{index}", "frame_index": index}


def cine_controls(image: dict) -> None:
    """Right under the image: the frame slider (frames numbered from 1, as DICOM does) and play."""
    cine = _cine(image)
    if cine is None or image.get("frame_index") is None:
        return
    skeleton = cine["skeleton"]
    count, fps = int(skeleton["frame_count"]), skeleton.get("fps")
    slider_key, play_key, position_key = _cine_keys(cine)
    cols = st.columns([6, 1], vertical_alignment="bottom")
    shown = cols[0].slider(tr("cl_frame"), 1, count, key=slider_key)
    playing = cols[1].toggle(tr("cl_play"), key=play_key, on_change=_toggle_play,
                             args=(play_key, slider_key, position_key))
    if playing:
        _player(skeleton["img_path_relative"], count, fps, position_key)
    st.caption(tr("cl_this_frame", k=shown, n=count))


# ---------------------------------------------------------------------------------------------- calibration
def auto_spacing(image: dict) -> tuple[float | None, str | None]:
    """The spacing the image brings itself: the data root's ground truth, else the DICOM header."""
    spacing = image.get("spacing")
    if not spacing:
        return None, None
    sample = image.get("sample") or {}
    if sample.get("pixel_spacing_mm"):
        return float(spacing), "ground_truth"
    record = _upload_record(image) or {}
    return float(spacing), (record.get("skeleton") or {}).get("pixel_spacing_source") or record.get(
        "spacing_source") or "dicom"


def chosen_spacing(image: dict) -> tuple[float | None, str | None]:
    """(spacing, source) the user chose in the panel for this image (automatic until they choose)."""
    chosen = st.session_state.get("calibration", {}).get(base_token(image))
    return tuple(chosen) if chosen else auto_spacing(image)  # type: ignore[return-value]


def _set_spacing(image: dict, spacing: float | None, source: str | None) -> None:
    st.session_state.setdefault("calibration", {})[base_token(image)] = (spacing, source)


def spacing_problem(spacing: float) -> str | None:
    """The core's refusal of an implausible spacing (its message, with the band), or None."""
    try:
        check_spacing(spacing)
    except Exception as error:  # noqa: BLE001 - RequestError: shown as the core words it
        return error_message(error)
    return None


def calibration_panel(image: dict) -> None:
    """Spacing for a segmentation: automatic (DICOM / ground truth), typed in, a drawn line, or none."""
    auto_value, auto_source = auto_spacing(image)
    key = _short(base_token(image))
    with st.expander(tr("cl_calibration"), expanded=False):
        st.caption(tr("cl_auto_spacing", text=spacing_text(auto_value, auto_source)) if auto_value
                   else tr("cl_auto_none"))
        mode = choice("radio", tr("cl_spacing_mode"), MODES, key=f"calib_mode_{key}", horizontal=True,
                      format_func=lambda m: tr(f"cl_mode_{m}"))
        if mode == "auto":
            _set_spacing(image, auto_value, auto_source)
        elif mode == "none":
            _set_spacing(image, None, None)
        elif mode == "user":
            value = _typed_number(tr("cl_enter_spacing"), f"calib_user_{key}", tr("cl_enter_placeholder"),
                                  step=0.01, number_format="%.4f")
            if value is None:  # nothing typed: not calibrated (never a default recorded as typed by the user)
                st.caption(tr("cl_not_typed"))
                _set_spacing(image, None, None)
            else:
                _set_spacing(image, value, "user")  # sent as entered: the service refuses it the same way
                problem = spacing_problem(value)
                if problem:
                    st.error(tr("cl_spacing_error", message=md_literal(problem)))
                    fold_detail(core_spacing_problem(value) if lang() == "zh" else None)
                    return
        else:
            _line_tool(image, key)
    spacing, source = chosen_spacing(image)
    st.caption(tr("cl_spacing_used", text=spacing_text(spacing, source)))


def _typed_number(label: str, key: str, placeholder: str, *, step: float, number_format: str) -> float | None:
    """A number the user typed (None until they do); the value survives mode switches and reruns (kept beside the
    widget, whose own state Streamlit drops while it is not shown)."""
    kept = f"{key}_typed"

    def remember() -> None:
        st.session_state[kept] = st.session_state.get(key)

    value = st.number_input(label, min_value=0.0, value=st.session_state.get(kept), step=step, format=number_format,
                            key=key, placeholder=placeholder, on_change=remember)
    return None if value is None else float(value)


def _line_view(picture: Image.Image, points: list[tuple[float, float]]) -> Image.Image:
    """A downscaled copy of the image with the clicked points and the line between them drawn on it."""
    view = _thumbnail(picture, LINE_VIEW_SIDE)
    scale = view.width / picture.width
    draw = ImageDraw.Draw(view)
    shown = [(x * scale, y * scale) for x, y in points]
    if len(shown) == 2:
        draw.line(shown, fill=(255, 210, 0), width=2)
    for x, y in shown:
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=(255, 210, 0), width=2)
    return view


def _add_point(click_key: str, points_key: str, size: tuple[int, int]) -> None:
    """A click on the displayed copy → a point in image pixels (two make the line)."""
    click = st.session_state.get(click_key) or {}
    if not click.get("width"):
        return
    x = float(click["x"]) * size[0] / float(click["width"])
    y = float(click["y"]) * size[1] / float(click["height"])
    points = list(st.session_state.get(points_key) or [])
    st.session_state[points_key] = [*(points if len(points) < 2 else []), (x, y)]  # a third click starts again


def _line_tool(image: dict, key: str) -> None:
    """Click two points of known distance (e.g. on the depth ruler), type the distance: spacing_from_line."""
    picture: Image.Image = image["picture"]
    points_key, click_key = f"calib_points_{key}", f"calib_click_{key}"
    points = list(st.session_state.get(points_key) or [])
    st.caption(tr("cl_line_help"))
    streamlit_image_coordinates(_line_view(picture, points), key=click_key, cursor="crosshair",
                                on_click=lambda: _add_point(click_key, points_key, picture.size))
    cols = st.columns([2, 1])
    with cols[0]:
        length = _typed_number(tr("cl_line_length"), f"calib_mm_{key}", tr("cl_line_placeholder"), step=1.0,
                               number_format="%.2f")
    if cols[1].button(tr("cl_line_reset"), key=f"calib_reset_{key}"):
        st.session_state[points_key] = []
        points = []
    if len(points) < 2 or length is None:  # a line needs its two points and a typed distance
        st.caption(tr("cl_line_points", n=len(points)) if len(points) < 2 else tr("cl_not_typed"))
        _set_spacing(image, None, None)
        return
    pixels = math.dist(points[0], points[1])
    try:
        spacing = spacing_from_line(points[0], points[1], float(length))
    except Exception as error:  # noqa: BLE001 - RequestError: the core's reason
        st.error(tr("cl_spacing_error", message=_problem(error)))
        fold_detail(english_detail(error))
        _set_spacing(image, None, None)
        return
    st.caption(tr("cl_line_result", px=f"{pixels:.1f}", mm=f"{float(length):g}", spacing=f"{spacing:.4g}"))
    _set_spacing(image, spacing, "line")


# ---------------------------------------------------------------------------------------------- options + request
def _tta_default() -> bool:
    """The deployment's TTA default (``UUSIC_TTA``: on / off / auto, as :func:`core.tta.tta_enabled` decides)."""
    from pages.common import settings

    setting = str(getattr(settings(), "tta", "off") or "off").lower()
    try:
        from core.tta import tta_enabled

        return bool(tta_enabled(None, setting))
    except Exception:  # noqa: BLE001 - no TTA in this core: off unless asked for
        return setting == "on"


def options_panel(dataset: catalog.Dataset, image: dict, edits: list[dict], served: bool,
                  compact: bool = False) -> None:
    """Before Run: the spacing panel (segmentation), the TTA switch and, for a cine, "analyse all frames";
    ``compact`` (a result is shown above): the spacing panel and the TTA switch side by side."""
    left, right = st.columns(2, vertical_alignment="top") if compact else (st.container(), st.container())
    if dataset.task == "segmentation":
        with left:
            calibration_panel(image)
    right.toggle(tr("cl_tta"), value=_tta_default(), key="tta_on", help=tr("cl_tta_help"))
    if _cine(image) is not None:
        cine_analysis(dataset, image, edits, served)


def _sample_of(image: dict, dataset: catalog.Dataset) -> dict:
    sample = image.get("sample") or {}
    return sample if (image.get("task"), image.get("dataset")) == (dataset.task, dataset.name) else {}


def extend_request(request: dict, dataset: catalog.Dataset, image: dict, edits: list[dict]) -> dict:
    """The request with the chosen spacing and its source, the TTA switch, the ground truth it may be compared
    with (unedited samples; the dashboard compares edited ones itself) and, for an unedited cine, the frame shown."""
    request = dict(request)
    if dataset.task == "segmentation":
        spacing, source = chosen_spacing(image)
        request.pop("pixel_spacing_mm", None)
        request.pop("pixel_spacing_source", None)
        if spacing:
            request.update(pixel_spacing_mm=float(spacing), pixel_spacing_source=source)
    if "tta_on" in st.session_state:
        request["tta"] = bool(st.session_state["tta_on"])
    sample = _sample_of(image, dataset)
    if sample and not editing.changes_geometry(edits):
        if sample.get("mask_path_relative"):
            request["mask_path_relative"] = sample["mask_path_relative"]
        if sample.get("head_circumference_mm"):
            request["head_circumference_mm"] = float(sample["head_circumference_mm"])
    if image.get("frame_index") is not None and int(request.get("frame_count") or 1) > 1:
        request["frame_index"] = int(image["frame_index"])  # the cine itself (unedited): the frame shown
    return request


def _frames_request(cine: dict, dataset: catalog.Dataset, image: dict, edits: list[dict]) -> dict:
    request = {k: v for k, v in cine["skeleton"].items() if k not in ("frame_count", "fps", "frame_index")}
    request.update(task=dataset.task, dataset_name=dataset.name, organ=dataset.organ)
    if dataset.task == "segmentation":
        request["seg_target_info"] = dataset.seg_target
    return extend_request(request, dataset, image, edits)


# ---------------------------------------------------------------------------------------------- cine analysis
def _item_json(item) -> dict:
    return item.to_json() if hasattr(item, "to_json") else dict(item)


def _run_all_frames(dataset: catalog.Dataset, image: dict, edits: list[dict], cine: dict) -> None:
    """Every frame through ``analyze_frames`` (one batch, one history row per frame), with a progress bar."""
    count = int(cine["skeleton"]["frame_count"])
    bar = st.progress(0.0, text=tr("cl_frames_progress", done=0, n=count))

    def progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=tr("cl_frames_progress", done=done, n=total))

    stored: dict = {"token": cine["token"], "dataset": [dataset.task, dataset.name],
                    "edits": json.dumps(edits, sort_keys=True)}
    try:
        request = _frames_request(cine, dataset, image, edits)
        result = service().analyze_frames(request, frames=None, edits=edits, source="dashboard", progress=progress)
    except Exception as error:  # noqa: BLE001 - the service's typed error, one line
        stored["error"] = error_message(error)
    else:
        stored.update(summary=dict(result.summary), items=[_item_json(i) for i in result.items],
                      spacing=request.get("pixel_spacing_mm"), source=request.get("pixel_spacing_source"))
    bar.empty()
    st.session_state["cine_result"] = stored


def cine_analysis(dataset: catalog.Dataset, image: dict, edits: list[dict], served: bool) -> None:
    """"Analyse all frames" and, once done, the curve over the loop (kept until the loop or dataset changes)."""
    cine = _cine(image)
    if cine is None:
        return
    count = int(cine["skeleton"]["frame_count"])
    if st.button(tr("cl_analyze_all", n=count), key="cine_all", disabled=not served):
        _run_all_frames(dataset, image, edits, cine)
    stored = st.session_state.get("cine_result")
    if not stored or stored["token"] != cine["token"] or stored["dataset"] != [dataset.task, dataset.name]:
        return
    if stored.get("error"):
        st.error(tr("engine_error", message=scrub_literal(stored["error"])))
        return
    if stored["edits"] != json.dumps(edits, sort_keys=True):
        st.warning(tr("cl_frames_stale"))
    show_cine_result(stored, dataset)


def _marker(figure: go.Figure, frames: list, values: list, index, name: str, color: str, symbol: str,
            size: int = 15) -> None:
    """One marked frame (named in the legend and on hover; marks on the same frame stay visible by size)."""
    if index is None or index not in frames:
        return
    y = values[frames.index(index)]
    figure.add_trace(go.Scatter(x=[index + 1], y=[y], mode="markers", name=f"{name}: {index + 1}",
                                hovertemplate=f"{name}<br>%{{x}}: %{{y:,.1f}}<extra></extra>",
                                marker=dict(size=size, color=color, symbol=symbol, line=dict(width=1, color="white"))))


def _area_curve(summary: dict, stored: dict) -> None:
    frames = list(summary.get("frames") or [])
    in_mm = summary.get("area_mm2") is not None
    values = list(summary.get("area_mm2") if in_mm else summary.get("area_px") or [])
    if not frames or len(values) != len(frames):
        return
    unit = "mm²" if in_mm else "px²"
    figure = go.Figure(go.Scatter(x=[f + 1 for f in frames], y=values, mode="lines+markers",
                                  name=tr("cl_area", unit=unit),
                                  line=dict(color="#0072b2")))
    _marker(figure, frames, values, summary.get("largest_frame"), tr("cl_largest"), "#d55e00", "triangle-up")
    _marker(figure, frames, values, summary.get("smallest_frame"), tr("cl_smallest"), "#009e73", "triangle-down")
    _marker(figure, frames, values, summary.get("ed_frame"), "ED", "#cc79a7", "diamond", size=8)
    _marker(figure, frames, values, summary.get("es_frame"), "ES", "#e69f00", "diamond", size=8)
    figure.update_layout(xaxis_title=tr("cl_frame"), yaxis_title=tr("cl_area", unit=unit), height=340,
                         margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    st.plotly_chart(figure, config=PLOT_CONFIG, key="cine_curve", width="stretch")
    if in_mm:
        st.caption(tr("cl_mm_note", text=spacing_text(stored.get("spacing"), stored.get("source"))))


def _cine_metrics(summary: dict, dataset: catalog.Dataset) -> None:
    cards = [(tr("cl_largest"), summary.get("largest_frame")), (tr("cl_smallest"), summary.get("smallest_frame"))]
    if summary.get("ed_frame") is not None:
        cards += [(tr("cl_ed"), summary.get("ed_frame")), (tr("cl_es"), summary.get("es_frame"))]
    fac = summary.get("fractional_area_change")
    cols = st.columns(len(cards) + (1 if fac is not None else 0))
    for col, (name, frame) in zip(cols, cards, strict=False):
        col.metric(name, "—" if frame is None else tr("cl_frame_n", k=int(frame) + 1))
    if fac is not None:
        cols[-1].metric(tr("cl_fac_of", target=dataset.class_name(1, lang())), f"{float(fac) * 100:.1f} %",
                        help=tr("cl_fac"))  # the FAC of the whole segmented target, named so


def _probability_curve(summary: dict, dataset: catalog.Dataset) -> None:
    frames, rows = list(summary.get("frames") or []), summary.get("probability") or []
    if not rows or len(rows) != len(frames):
        return
    figure = go.Figure()
    for index in range(len(rows[0])):
        figure.add_trace(go.Scatter(x=[f + 1 for f in frames], y=[row[index] if row else None for row in rows],
                                    mode="lines+markers",
                                    name=i18n.class_name(dataset.task, dataset.name, index, lang())))
    figure.update_layout(xaxis_title=tr("cl_frame"), yaxis=dict(range=[0, 1], title=tr("probability")),
                         height=320, margin=dict(l=10, r=10, t=40, b=10),
                         legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    st.plotly_chart(figure, config=PLOT_CONFIG, key="cine_probability", width="stretch")


def show_cine_result(stored: dict, dataset: catalog.Dataset) -> None:
    summary = stored.get("summary") or {}
    st.subheader(tr("cl_frames_result", n=len(summary.get("frames") or [])))
    if dataset.task == "segmentation":
        _area_curve(summary, stored)
        _cine_metrics(summary, dataset)
    else:
        _probability_curve(summary, dataset)
    failed = [item for item in stored.get("items") or [] if item.get("error") or item.get("error_type")]
    if failed:
        st.warning(tr("cl_frames_failed", n=len(failed), message=scrub_literal(failed[0].get("error", ""))))


# ---------------------------------------------------------------------------------------------- results
def add_error_bars(figure: go.Figure, response: dict) -> None:
    """TTA: the probability bars are the mean over the views; error bars span their min-max range."""
    spread = response.get("uncertainty") or {}
    low, high = spread.get("probability_min"), spread.get("probability_max")
    mean = response.get("probability") or []
    if not low or not high or len(low) != len(mean) or not figure.data:
        return
    figure.data[0].update(error_y=dict(type="data", symmetric=False, color="#333333", thickness=1.5,
                                       array=[max(0.0, float(h) - float(p)) for h, p in zip(high, mean, strict=True)],
                                       arrayminus=[max(0.0, float(p) - float(lo)) for lo, p in
                                                   zip(low, mean, strict=True)]))


def spacing_caption(response: dict) -> None:
    """Beside the measurements: the spacing every mm value was computed with, and where it came from."""
    spacing = response.get("pixel_spacing_mm")
    st.caption(tr("cl_mm_note", text=spacing_text(spacing, response.get("pixel_spacing_source")))
               if spacing else tr("cl_spacing_none"))


def _probability_spread(response: dict, spread: dict) -> None:
    """Per class: the mean probability over the TTA views, its range and SD."""
    mean = response.get("probability") or []
    columns = [("probability_min", "min"), ("probability_max", "max"), ("probability_sd", "sd")]
    if not mean or any(len(spread.get(key) or []) != len(mean) for key, _ in columns):
        return
    rows = [{tr("class"): i18n.class_name(response["task"], response["dataset_name"], index, lang()),
             tr("cl_stat_mean"): f"{float(p):.1%}",
             **{tr(f"cl_stat_{name}"): f"{float(spread[key][index]):.1%}" for key, name in columns}}
            for index, p in enumerate(mean)]
    import pandas as pd  # not on the first page's path (issue 27)

    st.table(pd.DataFrame(rows))


def show_uncertainty(result: dict) -> None:
    """TTA spread: classification range per class; segmentation agreement map and the measurement spread."""
    response = result["response"]
    spread = response.get("uncertainty") or {}
    if not spread:
        return
    st.subheader(tr("cl_uncertainty", n=spread.get("views", "?")))
    if response.get("task") == "classification":
        st.caption(tr("cl_tta_bars"))
        _probability_spread(response, spread)
        return
    cols = st.columns([1, 2])
    if spread.get("agreement_mean") is not None:
        cols[0].metric(tr("cl_agreement"), f"{float(spread['agreement_mean']):.3f}")
    try:
        agreement = np.asarray(service().agreement_map(response), dtype=np.float32)
        cols[1].image(overlay.agreement_view(result["edited"], agreement), caption=tr("cl_agreement_map"),
                      width="stretch")
    except Exception as error:  # noqa: BLE001 - the map is extra; its failure is shown
        cols[1].warning(tr("cl_frame_error", message=_problem(error)))
    table_rows = spread.get("measurement_spread") or {}
    columns = {tr(f"cl_stat_{name}"): {k: v.get(name) for k, v in table_rows.items()}
               for name in ("mean", "min", "max", "sd")}
    table = measure_rows(list(table_rows), columns)
    if not table.empty:
        st.table(table)
        if any(k.endswith(("_mm", "_mm2")) for k in table_rows):
            spacing_caption(response)


# ---------------------------------------------------------------------------------------------- reference
def reference_file(image: dict, relative: str) -> bytes | None:
    """The bytes of the image's ground-truth mask through the service (read once per image; None when missing)."""
    if image.get("reference_file", (None,))[0] != relative:
        try:
            data = service().input_file(relative)
        except Exception:  # noqa: BLE001 - a missing reference mask only hides the comparison
            data = None
        image["reference_file"] = (relative, data)
    return image["reference_file"][1]


def _edited_reference(result: dict, image: dict) -> dict | None:
    """For an edited sample the dashboard measures the ground-truth mask after the same edits itself (the file
    through the service: :func:`core.reference.edited_mask`, :func:`core.reference.edited_reference`)."""
    from core.reference import edited_mask, edited_reference
    from pages.common import settings

    request, response = result["request"], result["response"]
    dataset = catalog.find_dataset(request["task"], request["dataset_name"])
    relative = _sample_of(image, dataset).get("mask_path_relative")
    if not relative or request.get("task") != "segmentation" or not result.get("edits"):
        return None
    data = reference_file(image, relative)
    mask = None if data is None else edited_mask(data, result["edits"], result["edited"].size, settings=settings())
    if mask is None:
        return None
    return edited_reference(mask, response.get("measurements") or {}, response.get("pixel_spacing_mm"),
                            fetal_head=dataset.group == "fetal_head")


def show_reference(result: dict, image: dict) -> None:
    """Demo mode: the reference measurement (ground truth) next to the predicted one, with the difference."""
    response = result["response"]
    reference = response.get("reference") or _edited_reference(result, image)
    if not reference or response.get("task") != "segmentation":
        return
    difference = reference.get("difference") or {}
    keys = [k for k in difference if k.endswith(("_mm", "_mm2"))] or list(difference)
    table = measure_rows(keys, {tr("cl_predicted"): response.get("measurements") or {},
                                 tr("cl_reference"): reference.get("measurements") or {},
                                 tr("cl_difference"): difference})
    if table.empty:
        return
    st.subheader(tr("cl_reference_title"))
    st.table(table)
    source = tr(f"cl_ref_{reference.get('source')}")
    if any(k.endswith(("_mm", "_mm2")) for k in keys):
        st.caption(f"{source} · " + tr("cl_mm_note", text=spacing_text(response.get("pixel_spacing_mm"),
                                                                       response.get("pixel_spacing_source"))))
    else:
        st.caption(source)


# ---------------------------------------------------------------------------------------------- report
def _dicom_input(result: dict) -> bool:
    request = result.get("request") or {}
    names = [request.get("source_path_relative"), request.get("img_path_relative")]
    return any(str(n or "").lower().endswith((".dcm", ".dicom")) for n in names)


def _seg_bytes(result: dict) -> bytes | str:
    """The run's DICOM SEG (made once per run), or the reason there is none."""
    cached = result.setdefault("_clinical", {})
    if "seg" not in cached:
        try:
            cached["seg"] = service().dicom_seg(int(result["run_id"]))
        except Exception as error:  # noqa: BLE001 - NotFoundError / RequestError: the reason is shown
            cached["seg"] = error_message(error)
    return cached["seg"]


def report_downloads(result: dict) -> None:
    """"Report (PDF)" for this run (made when clicked) and, for a DICOM input, its mask as a DICOM SEG."""
    run_id = result.get("run_id")
    if run_id is None:
        return
    stem = Path(str((result.get("request") or {}).get("img_name") or "case")).stem
    cols = st.columns(2)
    analysis, language = service(), lang()
    cols[0].download_button(tr("cl_report_pdf"), lambda: analysis.report_pdf(int(run_id), language),
                            f"{stem}_run{run_id}_report.pdf", "application/pdf", key="dl_report",
                            on_click="ignore", icon=":material/picture_as_pdf:")
    if result["response"].get("task") != "segmentation" or not _dicom_input(result):
        return
    seg = _seg_bytes(result)
    if isinstance(seg, bytes):
        cols[1].download_button(tr("cl_dicom_seg"), seg, f"{stem}_run{run_id}_seg.dcm", "application/dicom",
                                key="dl_seg", on_click="ignore")
    else:
        cols[1].caption(tr("cl_seg_unavailable", message=scrub_literal(seg)))


def result_extras(result: dict, image: dict, reference: bool = True) -> None:
    """After a result: its uncertainty, the reference (demo mode; ``reference=False``: the page showed it next to
    the ground-truth images) and the report downloads."""
    parts = (show_uncertainty, *([lambda r: show_reference(r, image)] if reference else []), report_downloads)
    for part in parts:
        try:
            part(result)
        except Exception as error:  # noqa: BLE001 - one extra failing never hides the result above it
            st.warning(tr("cl_frame_error", message=_problem(error)))
