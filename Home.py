"""UUSIC Viewer — the clinician dashboard. Run with ``streamlit run Home.py`` (or ``make run``)."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="UUSIC Viewer", page_icon="🩻", layout="wide")

from core import i18n  # noqa: E402
from pages.common import is_remote, mark_entrypoint, navigation, require_login, settings, tr  # noqa: E402

if "lang" not in st.session_state:
    st.session_state["lang"] = i18n.normalise_lang(settings().language)

with st.sidebar:
    st.radio(
        "语言 / Language",  # one label in both languages: a changing label would make it a new widget
        options=list(i18n.LANGUAGES),
        format_func=lambda code: {"zh": "中文", "en": "English"}[code],
        key="lang",
        horizontal=True,
    )

require_login()

pages = [
    st.Page("pages/analyze.py", title=tr("nav_analyze"), icon="🔬", url_path="analyze", default=True),
    st.Page("pages/history.py", title=tr("nav_history"), icon="🗂️", url_path="history"),
    st.Page("pages/batch.py", title=tr("nav_batch"), icon="📦", url_path="batch"),
    st.Page("pages/models.py", title=tr("nav_models"), icon="⚙️", url_path="models"),
]
page = navigation(pages)

with st.sidebar:
    current = settings()
    st.caption(tr("backend_remote", url=current.api_url) if is_remote(current) else tr("backend_local"))

mark_entrypoint()
page.run()
