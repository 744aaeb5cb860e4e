"""UUSIC Viewer — the clinician dashboard. Run with ``streamlit run Home.py`` (or ``make run``)."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="UUSIC Viewer", page_icon="🩻", layout="wide")

from core import i18n  # noqa: E402
from pages.common import (  # noqa: E402
    is_remote,
    mark_entrypoint,
    navigation,
    require_login,
    settings,
    tr,
    warm_model,
)

warm_model()  # issue 27: the model loads in the background while the first page is drawn (once per process)

# Narrow windows: a slimmer sidebar (Streamlit keeps ~300 px otherwise) and metric values that wrap, never "1,51…"
LAYOUT_CSS = """<style>
@media (max-width: 1000px) {
  section[data-testid="stSidebar"] { width: 220px !important; min-width: 220px !important; }
}
[data-testid="stMetricValue"] { font-size: 1.6rem; }
[data-testid="stMetricValue"] > div { white-space: normal; overflow-wrap: anywhere; }
[data-testid="stMetricLabel"] p { white-space: normal; }
</style>"""

if "lang" not in st.session_state:  # a new browser session: the link's language, else the configured one
    wanted = st.query_params.get("lang")
    st.session_state["lang"] = wanted if wanted in i18n.LANGUAGES else i18n.normalise_lang(settings().language)

st.html(LAYOUT_CSS)

with st.sidebar:
    st.radio(
        "语言 / Language",  # one label in both languages: a changing label would make it a new widget
        options=list(i18n.LANGUAGES),
        format_func=lambda code: {"zh": "中文", "en": "English"}[code],
        key="lang",
        horizontal=True,
    )
if st.query_params.get("lang") != st.session_state["lang"]:
    st.query_params["lang"] = st.session_state["lang"]  # reloads and shared links keep the language

require_login()

pages = [
    # material icons (drawn from Streamlit's own font): emoji were empty boxes where no emoji font is installed
    st.Page("pages/analyze.py", title=tr("nav_analyze"), icon=":material/biotech:", url_path="analyze", default=True),
    st.Page("pages/history.py", title=tr("nav_history"), icon=":material/history:", url_path="history"),
    st.Page("pages/batch.py", title=tr("nav_batch"), icon=":material/stacks:", url_path="batch"),
    st.Page("pages/models.py", title=tr("nav_models"), icon=":material/settings:", url_path="models"),
]
page = navigation(pages)

with st.sidebar:
    current = settings()
    st.caption(tr("backend_remote", url=current.api_url) if is_remote(current) else tr("backend_local"))

mark_entrypoint()
page.run()
