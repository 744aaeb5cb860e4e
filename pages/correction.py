"""The correction panel of a re-opened run (History): fix a segmentation or confirm / override a class, saved as a
new version of the run (:mod:`core.corrections`; the model's result stays).

Segmentation: draw on the image with the lasso (brush: the stroke at the brush size; polygon: the area inside) or
the box of the chart's tool bar, zoom with the chart; or place a rectangle / ellipse by its numbers. Each edit adds or
erases on the original pixels; undo / redo / reset to the model's mask; the counts (px added / removed, Dice, area
in mm² with the run's calibration) are shown before saving. Classification: pick the class, give a reason, save.
Corrections are saved through the in-process service's history (in remote mode the API's
``PUT /v1/history/{id}/correction`` is the way).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image, ImageDraw

from core import catalog, overlay
from core.corrections import Corrections, compare, mask_png, measurements_of
from core.errors import UUSICError
from pages.common import error_message, lang, service, tr


def _who() -> str:
    """The signed-in user's name or e-mail (OIDC), else ``anonymous``."""
    try:
        if st.user.is_logged_in:
            return str(st.user.get("email") or st.user.get("name") or "signed-in user")
    except (AttributeError, KeyError):
        pass
    return "anonymous"


def _store(current) -> Corrections | None:
    analysis = service(current)
    store = getattr(analysis, "store", None)
    return Corrections(current, store) if store is not None else None


def shape_mask(size: tuple[int, int], kind: str, points: list[tuple[float, float]], brush: int) -> np.ndarray:
    """The pixels of one edit on a ``size`` = (width, height) image: ``polygon`` (inside the points), ``brush``
    (the stroke through them, ``brush`` px wide), ``rectangle`` / ``ellipse`` (the box of the first two points)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "polygon" and len(points) >= 3:
        draw.polygon(points, fill=255)
    elif kind == "brush" and points:
        draw.line(points, fill=255, width=max(1, brush), joint="curve")
        radius = brush / 2
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    elif kind in ("rectangle", "ellipse") and len(points) >= 2:
        (x0, y0), (x1, y1) = points[0], points[1]
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        (draw.rectangle if kind == "rectangle" else draw.ellipse)(box, fill=255)
    return np.asarray(canvas) > 0


def apply_edit(mask: np.ndarray, shape: np.ndarray, erase: bool) -> np.ndarray:
    return (mask & ~shape) if erase else (mask | shape)


class _Edits:
    """The working mask of one run in the session: a stack for undo, one for redo."""

    def __init__(self, run_id: int, model: np.ndarray):
        self.key = f"_corr_{run_id}"
        if self.key not in st.session_state or st.session_state[self.key]["done"][0].shape != model.shape:
            st.session_state[self.key] = {"done": [model.copy()], "undone": []}
        self.state = st.session_state[self.key]

    @property
    def mask(self) -> np.ndarray:
        return self.state["done"][-1]

    def push(self, mask: np.ndarray) -> None:
        self.state["done"].append(mask)
        self.state["undone"].clear()

    def undo(self) -> None:
        if len(self.state["done"]) > 1:
            self.state["undone"].append(self.state["done"].pop())

    def redo(self) -> None:
        if self.state["undone"]:
            self.state["done"].append(self.state["undone"].pop())

    def reset(self) -> None:
        self.push(self.state["done"][0].copy())


def _figure(picture: np.ndarray, mask: np.ndarray) -> go.Figure:
    shown = overlay.overlay(Image.fromarray(picture), mask, mode="fill")
    figure = go.Figure(go.Image(z=np.asarray(shown.convert("RGB"))))
    h, w = mask.shape
    ys, xs = np.mgrid[0:h:max(1, h // 40), 0:w:max(1, w // 40)]  # invisible points: lasso / box select on them
    figure.add_trace(go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", marker={"opacity": 0}, hoverinfo="skip"))
    figure.update_layout(dragmode="lasso", margin={"l": 0, "r": 0, "t": 0, "b": 0}, showlegend=False, height=480)
    return figure


def _selection_points(event) -> tuple[str, list[tuple[float, float]]] | None:
    """(``polygon`` | ``rectangle``, points) of the chart's last lasso or box selection, or None."""
    try:
        selection = dict(event or {}).get("selection") or {}
    except (TypeError, ValueError):
        return None
    for lasso in selection.get("lasso") or []:
        return "polygon", list(zip(lasso.get("x", []), lasso.get("y", []), strict=False))
    for box in selection.get("box") or []:
        xs, ys = box.get("x", []), box.get("y", [])
        if len(xs) >= 2 and len(ys) >= 2:
            return "rectangle", [(xs[0], ys[0]), (xs[1], ys[1])]
    return None


def _drawing_tools(run_id: int, picture: np.ndarray, edits: _Edits) -> None:
    h, w = edits.mask.shape
    tool, erase_col, size_col = st.columns(3)
    kind = tool.selectbox(tr("corr_tool"), ["brush", "polygon", "rectangle", "ellipse"], key=f"corr_tool_{run_id}")
    erase = erase_col.radio(tr("corr_mode"), ["add", "erase"], horizontal=True, key=f"corr_mode_{run_id}") == "erase"
    brush = size_col.slider(tr("corr_brush"), 1, max(2, min(w, h) // 2), 5,
                            key=f"corr_brush_{run_id}")
    event = st.plotly_chart(_figure(picture, edits.mask), key=f"corr_chart_{run_id}", on_select="rerun",
                            selection_mode=("lasso", "box"))
    found = _selection_points(event)
    seen_key = f"_corr_seen_{run_id}"
    if found is not None and st.session_state.get(seen_key) != repr(found):
        st.session_state[seen_key] = repr(found)
        drawn_kind = "brush" if kind == "brush" and found[0] == "polygon" else found[0]
        edits.push(apply_edit(edits.mask, shape_mask((w, h), drawn_kind, found[1], brush), erase))
        st.rerun()
    with st.expander(tr("corr_place")):
        x0, x1 = st.slider("x (px)", 0, w - 1, (w // 4, w // 2), key=f"corr_x_{run_id}")
        y0, y1 = st.slider("y (px)", 0, h - 1, (h // 4, h // 2), key=f"corr_y_{run_id}")
        if st.button(tr("corr_apply"), key=f"corr_apply_{run_id}"):
            shape = "ellipse" if kind == "ellipse" else "rectangle"
            edits.push(apply_edit(edits.mask, shape_mask((w, h), shape, [(x0, y0), (x1, y1)], brush), erase))
    undo, redo, reset = st.columns(3)
    undo.button(tr("corr_undo"), on_click=edits.undo, key=f"corr_undo_{run_id}")
    redo.button(tr("corr_redo"), on_click=edits.redo, key=f"corr_redo_{run_id}")
    reset.button(tr("corr_reset"), on_click=edits.reset, key=f"corr_reset_{run_id}")


def _mask_panel(row: dict, picture: np.ndarray, store: Corrections) -> None:
    run_id = int(row["id"])
    if not st.toggle(tr("corr_edit"), key=f"corr_edit_{run_id}"):  # the drawing chart only on demand
        return
    try:
        model = store.model_mask(row)
    except UUSICError as error:
        st.info(error_message(error))
        return
    edits = _Edits(run_id, model)
    _drawing_tools(run_id, picture, edits)
    counts = compare(model, edits.mask)
    area = measurements_of(row, edits.mask)
    st.caption(tr("corr_counts", a=counts["pixels_added"], r=counts["pixels_removed"], d=counts["dice"],
                  p=area["area_px"])
               + (f" = {area['area_mm2']:.2f} mm²" if area.get("area_mm2") is not None else ""))
    reason = st.text_input(tr("corr_reason"), max_chars=500, key=f"corr_reason_{run_id}")
    if st.button(tr("corr_save"), type="primary", key=f"corr_save_{run_id}"):
        _saved(lambda: store.correct_mask(run_id, mask_png(edits.mask), author=_who(), reason=reason))


def _class_panel(row: dict, store: Corrections) -> None:
    run_id = int(row["id"])
    count = len(row.get("probabilities") or [])
    try:
        names = catalog.find_dataset("classification", str(row.get("dataset_name"))).class_names(lang())
    except UUSICError:
        names = []
    names = names if len(names) == count else [f"class {i}" for i in range(count)]
    model_class = row.get("prediction") if isinstance(row.get("prediction"), int) else 0
    chosen = st.selectbox(tr("corr_class"), list(range(count)), index=min(model_class, max(count - 1, 0)),
                          format_func=lambda i: f"{names[i]} ({i})", key=f"corr_class_{run_id}")
    reason = st.text_input(tr("corr_reason"), max_chars=500, key=f"corr_creason_{run_id}")
    same = chosen == model_class
    label = tr("corr_confirm") if same else tr("corr_override")
    if st.button(label, type="primary", key=f"corr_csave_{run_id}"):
        _saved(lambda: store.correct_class(run_id, {"class_index": chosen, "reason": reason or None}, author=_who()))


def _saved(save) -> None:
    try:
        version = save()
    except UUSICError as error:
        st.warning(error_message(error))
        return
    st.success(tr("corr_saved", v=version["version"]))


def _model_version(row: dict) -> dict:
    """The model's own result as version 0 of the table (kind ``model``), so both versions are seen side by side."""
    measured = row.get("measurements") if isinstance(row.get("measurements"), dict) else {}
    prediction = row.get("prediction") if row.get("task") != "segmentation" else None
    return {"version": 0, "timestamp": row.get("timestamp"), "author": row.get("model_name"), "kind": "model",
            "class_index": prediction if isinstance(prediction, int) else None,
            "area_px": measured.get("area_px", row.get("mask_area_px")), "area_mm2": measured.get("area_mm2")}


def versions_table(versions: list[dict], row: dict | None = None) -> pd.DataFrame:
    """The correction versions, after the model's result (version 0) when ``row`` is given."""
    columns = ["version", "timestamp", "author", "kind", "class_index", "pixels_added", "pixels_removed", "dice",
               "area_px", "area_mm2", "reason"]
    records = ([_model_version(row)] if row is not None else []) + list(versions)
    return pd.DataFrame([{c: v.get(c) for c in columns} for v in records], columns=columns)


def correction_panel(row: dict, picture: np.ndarray, current) -> None:
    """The panel under a re-opened successful run."""
    with st.expander(tr("corr_title"), expanded=False):
        store = _store(current)
        if store is None:
            st.caption(tr("corr_remote"))
            return
        if row.get("task") == "segmentation":
            _mask_panel(row, picture, store)
        else:
            _class_panel(row, store)
        versions = store.versions(int(row["id"]))
        if versions:
            st.caption(tr("corr_versions"))
            st.dataframe(versions_table(versions, row), hide_index=True)
