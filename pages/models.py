"""Models & System: the manifest (bundled and fine-tuned versions), the loaded model, the agreement with clinicians'
corrections per dataset (issue 26), device, versions, where the files live and the model card.

Every label is translated; raw field names stay only inside the folded JSON views. No server folder is shown: the
paths table names each setting's environment variable and its place relative to the workspace or its own folder
name (a history database server through :func:`core.redact.redact_url`: never its password), and error messages
go through :func:`pages.common.scrub_literal`.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import streamlit as st

from core import i18n
from core.redact import parse_url, redact_url
from pages.common import error_message, is_remote, lang, page_header, scrub_literal, scrub_paths, service, settings, tr

current = settings()
page_header("nav_models")
L = lang()
MANIFEST_COLUMNS = ("name", "arch", "file", "sha256", "input_size", "preprocessing", "datasets", "loaded")


def _datasets(entry: dict) -> str:
    served = entry.get("datasets")
    if not served:
        return tr("m_all_datasets")
    return ", ".join("/".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d) for d in served)


def manifest_table(entries: list[dict]) -> pd.DataFrame:
    """One row per model of the service's manifest (the loaded one first); columns keep their field names (the
    page shows translated headers through ``column_config``)."""
    columns = MANIFEST_COLUMNS[:6]
    return pd.DataFrame([{**{c: m.get(c) for c in columns}, "datasets": _datasets(m), "loaded": bool(m.get("loaded"))}
                         for m in entries if isinstance(m, dict)])


def description(entry: dict) -> str:
    """The model's description in the page's language: a translation from the string table when there is one
    (``model_desc_<name>``), else the manifest's own text."""
    key = f"model_desc_{entry.get('name')}"
    if key in i18n.STRINGS:
        return tr(key)
    return str(entry.get("description") or "—")


def _yes_no(value) -> str:
    return tr("m_yes") if value else tr("m_no")


def _rows_table(rows: list[tuple[str, object]]) -> pd.DataFrame:
    return pd.DataFrame({tr("m_field"): [tr(k) for k, _ in rows],
                         tr("m_value"): ["—" if v in (None, "") else str(v) for _, v in rows]})


def info_table(info: dict) -> pd.DataFrame:
    """The loaded model in clinicians' words: its name, what it is for, where it runs, its description."""
    return _rows_table([("m_name", info.get("name")), ("m_datasets", _datasets(info)),
                        ("m_device", info.get("device_name") or info.get("device")),
                        ("m_description", description(info))])


def technical_table(info: dict) -> pd.DataFrame:
    """The loaded model's engineering fields (architecture, file, sha256, AMP, backend, input size ...)."""
    backend = info.get("backend")
    if isinstance(backend, dict):
        backend = backend.get("name") or backend.get("kind") or ", ".join(f"{k}={v}" for k, v in backend.items())
    return _rows_table([("m_arch", info.get("arch")), ("m_file", info.get("file")), ("m_sha256", info.get("sha256")),
                        ("m_amp", _yes_no(info.get("amp"))), ("m_backend", backend),
                        ("m_input_size", info.get("input_size")), ("m_preprocessing", info.get("preprocessing"))])


def _inside(path: Path, base: Path, prefix: str) -> str | None:
    try:
        return f"{prefix}/{Path(path).resolve().relative_to(Path(base).resolve()).as_posix()}".rstrip("/.")
    except (OSError, ValueError):
        return None


def place(path: Path) -> str:
    """Where a folder or file lives, without the server's folders: relative to the workspace when inside it, else
    ``…/<its name>``."""
    return _inside(path, current.workspace, "workspace") or f"…/{Path(path).name}"


def history_place(url: str | None) -> str:
    """Where the history lives: a SQLite file as :func:`place` shows it, a database server through
    :func:`core.redact.redact_url` (no password, no secret of its query; an unreadable URL: its scheme only)."""
    if not url:
        return place(current.history_db)
    if url.strip().lower().startswith("sqlite"):
        try:
            database = parse_url(url).database
        except Exception:  # noqa: BLE001 - an unreadable URL: its scheme only
            database = None
        return place(Path(database)) if database and database != ":memory:" else redact_url(url)
    return redact_url(url)


def technical(info: dict, manifest: dict) -> None:
    """The engineering detail: model fields and raw JSON, the manifest, device, versions and where files live."""
    if info:
        st.table(technical_table(info))
        st.json({k: scrub_paths(v, current) if isinstance(v, str) else v for k, v in info.items()}, expanded=False)
    st.subheader(tr("manifest"))
    entries = manifest.get("models") or []
    if entries:
        st.dataframe(manifest_table(entries), width="stretch", hide_index=True,
                     column_config={c: st.column_config.Column(tr(f"m_{c}")) for c in MANIFEST_COLUMNS})
        st.json(entries, expanded=False)
    elif not manifest.get("error"):
        st.info(tr("no_manifest", path="models.json"))
    _device_line(info)
    st.subheader(tr("versions"))
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("torch", "torchvision", "streamlit", "numpy", "pillow", "pydicom", "fastapi", "plotly"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "—"
    st.table(pd.DataFrame({tr("m_package"): list(versions), tr("m_version"): list(versions.values())}))
    st.subheader(tr("paths"))
    st.caption(tr("m_paths_note"))
    st.table(paths_table())


def _device_line(info: dict) -> None:
    st.subheader(tr("device"))
    try:
        import torch

        from core.resources import device_label

        device = str(info.get("device", current.device)) if isinstance(info, dict) else current.device
        st.write(f"{device_label(device)} (`{device}`) · {tr('m_cuda', value=_yes_no(torch.cuda.is_available()))}")
    except Exception as error:  # noqa: BLE001 - the device line only
        st.text(scrub_paths(error_message(error), current))


def agreement_rows(backend) -> list[dict]:
    """Per dataset agreement (:func:`core.corrections.agreement`): the API's in remote mode, else the in-process
    service's history store."""
    remote = getattr(backend, "correction_agreement", None)
    if callable(remote):
        return list(remote())
    store = getattr(backend, "store", None)
    if store is None:
        return []
    from core.corrections import agreement

    return agreement(store)


def agreement_table(rows: list[dict]) -> pd.DataFrame:
    """The datasets with at least one corrected run, the most corrected first."""
    shown = sorted((r for r in rows if int(r.get("corrected") or 0) > 0),
                   key=lambda r: (-int(r["corrected"]), str(r.get("task")), str(r.get("dataset_name"))))

    def rounded(value, digits: int = 3):
        return None if value is None else round(float(value), digits)

    return pd.DataFrame([{tr("agree_dataset"): f"{r.get('task')}/{r.get('dataset_name')}",
                          tr("agree_runs"): int(r["runs"]), tr("agree_corrected"): int(r["corrected"]),
                          tr("agree_share"): rounded(100.0 * int(r["corrected"]) / max(1, int(r["runs"])), 1),
                          tr("agree_mean_dice"): rounded(r.get("mean_dice")),
                          tr("agree_class_agreement"): rounded(r.get("class_agreement"))} for r in shown])


def agreement_monitor(backend) -> None:
    """The agreement monitor: where the model fails in practice, from the clinicians' corrections."""
    st.subheader(tr("agree_title"))
    try:
        table = agreement_table(agreement_rows(backend))
    except Exception as error:  # noqa: BLE001 - the monitor only; the page goes on
        st.warning(scrub_literal(error_message(error), current))
        return
    if table.empty:
        st.info(tr("agree_none"))
        return
    st.caption(tr("agree_caption"))
    st.dataframe(table, width="stretch", hide_index=True)


def paths_table() -> pd.DataFrame:
    rows = [("workspace", "UUSIC_WORKSPACE", f"…/{current.workspace.name}"),
            ("api_in", "UUSIC_WORKSPACE", place(current.api_in)),
            ("api_out", "UUSIC_WORKSPACE", place(current.api_out)),
            ("history", "UUSIC_HISTORY_URL", history_place(getattr(current, "history_url", None))),
            ("data_root", "UUSIC_DATA_ROOT", f"…/{current.data_root.name}"),
            ("weights_dir", "UUSIC_WEIGHTS_DIR", f"…/{current.weights_dir.name}"),
            ("api_url", "UUSIC_API_URL", current.api_url if is_remote(current) else tr("m_remote_none"))]
    return pd.DataFrame({tr("m_setting"): [r[0] for r in rows], tr("m_env"): [r[1] for r in rows],
                         tr("m_where"): [r[2] for r in rows]})


st.subheader(tr("model_info"))
info: dict = {}
try:
    info = service(current).model_info()
    st.table(info_table(info))
except Exception as error:
    st.error(tr("weights_error", message=scrub_literal(error_message(error), current)))
try:
    manifest = service(current).models()
except Exception as error:
    manifest = {"models": [], "error": error_message(error)}
if manifest.get("error"):
    st.error(tr("weights_error", message=scrub_literal(manifest["error"], current)))
card = current.weights_dir / "MODEL_CARD.md"
if card.is_file():
    with st.expander(tr("model_card"), expanded=False):
        if L == "zh":
            st.caption(tr("m_card_english"))
        st.markdown(card.read_text(encoding="utf-8"))

try:
    agreement_monitor(service(current))
except Exception as error:  # noqa: BLE001 - no service: the monitor is skipped, the rest of the page stays
    st.warning(scrub_literal(error_message(error), current))

with st.expander(tr("m_technical"), expanded=False):  # issue 23 item 6: engineering detail, folded
    technical(info, manifest)
