"""Models & System: the manifest, the loaded model, device, versions, paths and the model card."""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata

import pandas as pd
import streamlit as st

from pages.common import page_header, backend, error_message, is_remote, settings, tr

current = settings()
page_header("nav_models")

st.subheader(tr("model_info"))
info: dict = {}
try:
    info = backend(current).model_info()
    st.json(info, expanded=1)  # top level open, dataset list folded
except Exception as error:
    st.error(tr("weights_error", message=error_message(error)))

st.subheader(tr("manifest"))
manifest_path = current.manifest_path
if manifest_path.is_file():
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest.get("models", manifest) if isinstance(manifest, dict) else manifest
        table = pd.DataFrame(
            [
                {
                    "name": m.get("name"),
                    "arch": m.get("arch"),
                    "file": m.get("file"),
                    "sha256": m.get("sha256"),
                    "input_size": m.get("input_size"),
                    "preprocessing": m.get("preprocessing"),
                    "datasets": ", ".join("/".join(d) if isinstance(d, list) else str(d) for d in m.get("datasets") or [])
                    or "all",
                }
                for m in (entries if isinstance(entries, list) else [])
            ]
        )
        st.dataframe(table, width="stretch", hide_index=True)
        with st.expander("models.json"):
            st.json(manifest)
    except ValueError as error:
        st.error(error_message(error))
else:
    st.info(tr("no_manifest", path=str(manifest_path)))

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
except Exception as error:
    st.write(error_message(error))

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
