"""Batch: run many images (uploads or a challenge JSON) with a progress bar; download a zip; see metrics."""

from __future__ import annotations

import io
import json
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import streamlit as st

from core import catalog, i18n
from pages.common import page_header, choice, backend, error_message, is_no_model, lang, save_input, settings, tr

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
    if not files:
        st.warning(tr("batch_no_files"))
        return None
    requests = []
    for uploaded in files:
        try:
            skeleton = save_input(uploaded.getvalue(), uploaded.name, current)
        except Exception as error:
            st.error(tr("image_error", message=f"{uploaded.name}: {error_message(error)}"))
            continue
        requests.append({**skeleton, "task": task, "dataset_name": dataset.name, "organ": dataset.organ})
    return requests


def _requests_from_json() -> tuple[list[dict], Path] | None:
    json_path = st.text_input(tr("batch_json_path"), key="b_json",
                              value=str(current.data_root / "ground_truth.json"))
    input_dir = st.text_input(tr("batch_input_dir"), key="b_dir", value=str(current.data_root))
    limit = st.number_input("max", min_value=1, max_value=100_000, value=50, step=10, key="b_limit")
    if not st.button(tr("batch_run"), type="primary", key="b_run_json"):
        return None
    try:
        entries = json.loads(Path(json_path).read_text(encoding="utf-8"))
        if isinstance(entries, dict):
            entries = entries.get("data") or entries.get("requests") or list(entries.values())
        if not isinstance(entries, list):
            raise ValueError("expected a list of request objects")
    except (OSError, ValueError) as error:
        st.error(tr("batch_json_error", message=error_message(error)))
        return None
    return [e for e in entries if isinstance(e, dict)][: int(limit)], Path(input_dir)


def _run(requests: list[dict], data_root: Path) -> None:
    engine = backend(current)
    input_dir = None if data_root.resolve() == current.data_root else data_root.resolve()
    servable, skipped = [], []
    for request in requests:
        try:
            ok = engine.serves(request.get("task", ""), request.get("dataset_name", ""))
        except Exception:
            ok = True  # let the engine give the precise error
        (servable if ok else skipped).append(request)
    if skipped:
        st.info(tr("batch_skipped", n=len(skipped), names=", ".join(sorted({r.get("dataset_name", "?") for r in skipped}))))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    output_dir = current.api_out / f"batch_{stamp}"
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = st.progress(0.0, text=f"0 / {len(servable)}")

    def progress(done, total=None, *_):
        total = total or len(servable) or 1
        bar.progress(min(float(done) / total, 1.0), text=f"{done} / {total}")

    started = time.perf_counter()
    try:
        if hasattr(engine, "predict_batch"):
            responses = engine.predict_batch(servable, output_dir=output_dir, progress=progress, input_dir=input_dir)
        else:  # remote API: one call per image
            responses = []
            for i, request in enumerate(servable, 1):
                try:
                    responses.append(engine.predict(request))
                except Exception as error:
                    responses.append({"error": error_message(error), "img_path_relative": request.get("img_path_relative")})
                progress(i, len(servable))
    except Exception as error:
        if is_no_model(error):
            st.info(error_message(error))
        else:
            st.error(tr("engine_error", message=error_message(error)))
        return
    bar.progress(1.0, text=f"{len(servable)} / {len(servable)}")
    st.session_state["batch"] = {
        "requests": servable, "responses": responses, "output_dir": str(output_dir),
        "seconds": time.perf_counter() - started, "data_root": str(data_root),
    }


def _classification_json(responses: list[dict]) -> dict:
    out = {}
    for response in responses:
        if response.get("task") == "classification" and "probability" in response:
            out[response["img_path_relative"]] = {"probability": response["probability"],
                                                  "prediction": response["prediction"]}
    return out


def _zip(batch: dict) -> bytes:
    buffer = io.BytesIO()
    output_dir = Path(batch["output_dir"])
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("classification.json", json.dumps(_classification_json(batch["responses"]), indent=2))
        for response in batch["responses"]:
            mask = response.get("mask_path")
            if mask and Path(mask).is_file():
                name = response.get("mask_path_relative") or Path(mask).name
                archive.write(mask, arcname=str(Path("masks_out") / name) if Path(name).is_absolute() else name)
    return buffer.getvalue()


def _metrics(batch: dict) -> pd.DataFrame | None:
    """Per-dataset metrics (core.evaluate) for the requests that carry ground truth (labels / reference masks)."""
    from core.evaluate import evaluate

    with_truth = [r for r in batch["requests"]
                  if r.get("class_label_index") is not None or r.get("mask_path_relative")]
    if not with_truth:
        return None
    output_dir = Path(batch["output_dir"])
    (output_dir / "classification.json").write_text(json.dumps(_classification_json(batch["responses"])))
    report = evaluate(with_truth, batch["data_root"], output_dir)
    rows = []
    for task in ("classification", "segmentation"):
        for name, values in report[task].items():
            row = {"dataset": f"{task}/{name}"}
            row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in values.items()})
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


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

batch = st.session_state.get("batch")
if batch:
    st.success(tr("batch_done", n=len(batch["responses"]), sec=batch["seconds"]))
    summary = pd.DataFrame(
        [
            {
                "image": r.get("img_path_relative"),
                "task": r.get("task"),
                "dataset": r.get("dataset_name"),
                "prediction": r.get("label_name_zh" if L == "zh" else "label_name", r.get("prediction")),
                "mask_area_px": r.get("mask_area_px"),
                "error": r.get("error"),
            }
            for r in batch["responses"]
        ]
    )
    st.dataframe(summary, width="stretch", hide_index=True)
    st.download_button(tr("batch_zip"), _zip(batch), "uusic_batch.zip", "application/zip", key="b_zip")
    metrics = _metrics(batch)
    if metrics is not None:
        st.subheader(tr("batch_metrics"))
        st.dataframe(metrics, width="stretch", hide_index=True)
