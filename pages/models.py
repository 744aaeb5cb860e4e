"""Models & System: the manifest, the loaded model, device, versions, paths and the model card.

The paths table is a deliberate admin view (behind the dashboard login when one is configured); error messages
never name the server's folders (:func:`pages.common.scrub_literal`).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import pandas as pd
import streamlit as st

from pages.common import error_message, is_remote, page_header, scrub_literal, scrub_paths, service, settings, tr

current = settings()
page_header("nav_models")


def _datasets(entry: dict) -> str:
    served = entry.get("datasets")
    if not served:
        return "all"
    return ", ".join("/".join(d) if isinstance(d, (list, tuple)) else str(d) for d in served)


def manifest_table(entries: list[dict]) -> pd.DataFrame:
    """One row per model of the service's manifest (the loaded one first)."""
    columns = ("name", "arch", "file", "sha256", "input_size", "preprocessing")
    return pd.DataFrame([{**{c: m.get(c) for c in columns}, "datasets": _datasets(m), "loaded": bool(m.get("loaded"))}
                         for m in entries if isinstance(m, dict)])


st.subheader(tr("model_info"))
info: dict = {}
try:
    info = service(current).model_info()
    st.json(info, expanded=1)  # top level open, dataset list folded
except Exception as error:
    st.error(tr("weights_error", message=scrub_literal(error_message(error), current)))

st.subheader(tr("manifest"))
try:
    manifest = service(current).models()
except Exception as error:
    manifest = {"models": [], "error": error_message(error)}
if manifest.get("error"):
    st.error(tr("weights_error", message=scrub_literal(manifest["error"], current)))
entries = manifest.get("models") or []
if entries:
    st.dataframe(manifest_table(entries), width="stretch", hide_index=True)
    with st.expander("models.json"):
        st.json(entries, expanded=False)
elif not manifest.get("error"):
    st.info(tr("no_manifest", path="models.json"))

card = current.weights_dir / "MODEL_CARD.md"
if card.is_file():
    with st.expander(tr("model_card"), expanded=False):
        st.markdown(card.read_text(encoding="utf-8"))

st.subheader(tr("device"))
try:
    import torch

    from core.resources import device_label

    device = str(info.get("device", current.device)) if isinstance(info, dict) else current.device
    st.write(f"{device_label(device)} (`{device}`) · CUDA available: {torch.cuda.is_available()}")
except Exception as error:  # noqa: BLE001 - the device line only
    st.text(scrub_paths(error_message(error), current))

st.subheader(tr("versions"))
versions = {"python": sys.version.split()[0], "platform": platform.platform()}
for package in ("torch", "torchvision", "streamlit", "numpy", "pillow", "pydicom", "fastapi", "plotly"):
    try:
        versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
        versions[package] = "—"
st.table(pd.DataFrame({"package": list(versions), "version": list(versions.values())}))

st.subheader(tr("paths"))
st.table(
    pd.DataFrame(
        {
            "setting": ["workspace", "api_in", "api_out", "history", "data_root", "weights_dir", "api_url"],
            "value": [str(current.workspace), str(current.api_in), str(current.api_out), str(current.history_db),
                      str(current.data_root), str(current.weights_dir),
                      current.api_url if is_remote(current) else "—"],
        }
    )
)
