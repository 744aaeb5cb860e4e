"""What every dashboard page shares: language, settings and the one analysis service (in-process or HTTP)."""

from __future__ import annotations

import hashlib
import threading

import streamlit as st

from core import i18n
from core.errors import ModelUnavailableError, NoModelError
from core.settings import Settings


def lang() -> str:
    return i18n.normalise_lang(st.session_state.get("lang"))


def tr(key: str, **values) -> str:
    return i18n.t(key, lang(), **values)


def settings() -> Settings:
    """Settings from the environment (cheap; read per run so tests can point at their own workspace)."""
    current = Settings.from_env()
    current.ensure_workspace()
    return current


def settings_key(current: Settings) -> str:
    """A string that differs whenever any setting differs (secrets only as hashes)."""
    cache_key = getattr(current, "cache_key", None)
    if callable(cache_key):
        return cache_key()
    secret = hashlib.sha256((current.api_key or "").encode()).hexdigest()[:16]
    return f"{current!r}|api_key={secret}"


@st.cache_resource(show_spinner=False)
def _service(key: str, _current: Settings):
    """One service per process and settings: models load once and are shared by all browser sessions."""
    from core.service import open_service

    return open_service(_current)


def service(current: Settings | None = None):
    """The analysis service: :class:`core.service.AnalysisService` in-process, or :class:`core.client.ApiClient`
    when ``UUSIC_API_URL`` is set (same methods, same typed errors)."""
    current = current or settings()
    return _service(settings_key(current), current)


def is_remote(current: Settings | None = None) -> bool:
    return bool((current or settings()).api_url)


def is_no_model(error: BaseException) -> bool:
    """True when no model serves the dataset (a model that cannot load at all is an error, not this)."""
    return isinstance(error, NoModelError) and not isinstance(error, ModelUnavailableError)


def error_message(error: BaseException) -> str:
    """A one-line message for the user (never a traceback): the typed error's message."""
    from core.service import failure_message

    return failure_message(error)


def scrub_paths(text: str, current: Settings | None = None) -> str:
    """``text`` without the server's folders (workspace, data root, weights)."""
    current = current or settings()
    for root in (current.workspace, current.data_root, current.weights_dir):
        for form in {str(root), str(root.resolve())}:
            text = text.replace(form + "/", "").replace(form, "…")
    return text


def _widget_key(key: str) -> str:
    """Widgets whose labels depend on the language get one key per language (the default keeps the plain key):
    Streamlit treats new option labels as a new widget, so the choice is carried over in ``_choice_<key>``."""
    return key if lang() == "zh" else f"{key}@{lang()}"


def choice(kind: str, label: str, options: list, *, key: str, format_func, container=None, default=None, **kwargs):
    """``st.radio`` / ``st.selectbox`` with translated labels whose selection survives a language switch."""
    target = container or st
    stored = st.session_state.get(f"_choice_{key}", default)
    index = options.index(stored) if stored in options else 0
    widget = target.radio if kind == "radio" else target.selectbox
    value = widget(label, options, index=index, format_func=format_func, key=_widget_key(key), **kwargs)
    st.session_state[f"_choice_{key}"] = value
    return value


def banner() -> None:
    st.warning(tr("demo_banner"), icon="⚠️")


_ENTRY = threading.local()


def _in_apptest() -> bool:
    """AppTest runs on a mock runtime and re-enables the pages-folder mode on every run; leave it be there."""
    from streamlit.runtime import Runtime

    return "Mock" in type(getattr(Runtime, "_instance", None)).__name__


def navigation(pages: list):
    """``st.navigation`` for ``Home.py``. On the first run of a fresh server Streamlit is still in its old
    pages-folder mode (the folder is called ``pages``) and runs ``Home.py`` nested as a page, so widget ids of that
    run differ from every later one; rerun once in navigation mode so the first click is not lost."""
    from streamlit.runtime.pages_manager import PagesManager

    was_pages_folder_mode = bool(PagesManager.uses_pages_directory)
    page = st.navigation(pages)
    if was_pages_folder_mode and not _in_apptest():
        st.rerun()
    return page


def mark_entrypoint() -> None:
    """Called by ``Home.py`` on every run, before it runs the selected page."""
    _ENTRY.ran = True


def _leave_pages_directory_mode() -> None:
    """A fresh server opened on ``/history`` runs ``pages/history.py`` alone (Streamlit's old pages-folder mode,
    chosen because the folder is called ``pages``) until ``Home.py`` has called ``st.navigation`` once. Then switch
    to the navigation of ``Home.py`` and rerun, so the sidebar, language and banner are always there."""
    from streamlit.runtime.pages_manager import PagesManager

    came_through_home = getattr(_ENTRY, "ran", False)
    _ENTRY.ran = False
    if not came_through_home and not _in_apptest():
        PagesManager.uses_pages_directory = False
        st.rerun()


def _secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except Exception:  # noqa: BLE001 - no secrets.toml: the dashboard is open
        return {}


def require_login() -> None:
    """Stop the run until the user is signed in, when a login is configured (see ``core.auth``)."""
    from core import auth

    secrets = _secrets()
    mode = auth.login_mode(secrets)
    if mode == "none" or st.session_state.get("_signed_in"):
        return
    if mode == "oidc":
        if st.user.is_logged_in:
            with st.sidebar:
                st.button(tr("logout"), on_click=st.logout)
            return
        st.title(tr("login_title"))
        st.button(tr("login_oidc"), on_click=st.login)
        st.stop()
    st.title(tr("login_title"))
    with st.form("login"):
        candidate = st.text_input(tr("login_password"), type="password")
        submitted = st.form_submit_button(tr("login_button"))
    if submitted and auth.password_matches(candidate, secrets.get("dashboard", {})):
        st.session_state["_signed_in"] = True
        st.rerun()
    if submitted:
        st.error(tr("login_wrong"))
    st.stop()


def page_header(title_key: str) -> None:
    """Every page starts with its title and the demo-weights banner."""
    _leave_pages_directory_mode()
    require_login()
    st.title(f"{tr('app_title')} · {tr(title_key)}")
    banner()


def label(task: str, dataset_name: str, index: int) -> str:
    return i18n.class_name(task, dataset_name, index, lang())
