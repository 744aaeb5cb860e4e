"""What every dashboard page shares: language, settings and the one analysis service (in-process or HTTP)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import TYPE_CHECKING

import streamlit as st

from core import catalog, i18n
from core.errors import ModelUnavailableError, NoModelError
from core.redact import redact_text
from core.redact import scrub_paths as core_scrub_paths
from core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd  # imported where a table is made: not on the first page's path (issue 27)

log = logging.getLogger("uusic.dashboard")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_BACKTICKS = re.compile(r"`+")


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
    from core.client import open_service

    return open_service(_current)


def service(current: Settings | None = None):
    """The analysis service: :class:`core.service.AnalysisService` in-process, or :class:`core.client.ApiClient`
    when ``UUSIC_API_URL`` is set (same methods, same typed errors)."""
    current = current or settings()
    return _service(settings_key(current), current)


_WARMED: set[str] = set()  # settings keys whose model load has been started (:func:`warm_model`)
_WARM_LOCK = threading.Lock()


def warm_model(current: Settings | None = None) -> None:
    """Start loading the default model in a background thread, through the service's own
    :meth:`~core.service.AnalysisService.engine` (the one model cache, :data:`core.routing.LOADED`), so that the first
    page and the first result do not wait for the service and the engine build (issue 27). Once per process and
    settings; in-process only; not under AppTest, whose tests may stand in their own service."""
    current = current or settings()
    if is_remote(current) or _in_apptest():
        return
    key = settings_key(current)
    with _WARM_LOCK:
        if key in _WARMED:
            return
        _WARMED.add(key)
    threading.Thread(target=_warm, args=(current,), name="uusic-warm", daemon=True).start()


def _warm(current: Settings) -> None:
    from core.client import open_service
    from core.service import AnalysisService

    try:
        analysis = open_service(current)
        if isinstance(analysis, AnalysisService):  # in-process (a remote API loads its own)
            analysis.engine()
    except Exception as error:  # noqa: BLE001 - the page says so where it needs the model (weights_error)
        log.info("model not loaded ahead of use: %s", type(error).__name__)


def is_remote(current: Settings | None = None) -> bool:
    return bool((current or settings()).api_url)


def is_no_model(error: BaseException) -> bool:
    """True when no model serves the dataset (a model that cannot load at all is an error, not this)."""
    return isinstance(error, NoModelError) and not isinstance(error, ModelUnavailableError)


def error_message(error: BaseException) -> str:
    """A one-line message for the user (never a traceback), in the UI's language: in Chinese the error's type (and
    field) translated by :func:`core.i18n.error_text`, the English detail folded (:func:`fold_detail`); in English
    the typed error's message."""
    from core.errors import as_uusic_error

    typed = as_uusic_error(error)
    if lang() != "zh":
        return typed.message
    from core.calibration import MAX_PIXEL_SPACING_MM, MIN_PIXEL_SPACING_MM

    band = f"{MIN_PIXEL_SPACING_MM:g}–{MAX_PIXEL_SPACING_MM:g} mm/像素"
    return i18n.error_text(type(typed).__name__, typed.field, "zh", band=band) or typed.message


def english_detail(error: BaseException) -> str | None:
    """The core's English message where the Chinese UI shows a translation instead, else None."""
    from core.errors import as_uusic_error

    english = as_uusic_error(error).message
    return english if lang() == "zh" and error_message(error) != english else None


def fold_detail(detail: str | None, current: Settings | None = None) -> None:
    """The English detail of an error, folded under "technical details" (shown inert, without server paths)."""
    if detail:
        with st.expander(tr("error_detail")):
            st.text(scrub_paths(detail, current))


def scrub_paths(text: str, current: Settings | None = None) -> str:
    """``text`` without the server's folders and secrets: a database URL keeps only its scheme and a web URL loses
    its password (:func:`core.redact.redact_text`); paths under the workspace, data root or weights folder keep
    their part inside it, any other absolute path only its last part."""
    current = current or settings()
    return core_scrub_paths(redact_text(text, keep_location=False), current.server_folders())


def md_literal(value: object, limit: int = 500) -> str:
    """``value`` as a Markdown inline code span, for text the user or a stored row controls inside a Markdown
    element (``st.error``, ``st.info``, ``st.caption``, ``st.subheader`` ...): shown literally, never as a link,
    image, HTML, emphasis, emoji, LaTeX or colour directive. Line breaks and control characters become one space
    (a blank line would end the span); text longer than ``limit`` is cut with "…". Outside Markdown use
    ``st.text`` / ``st.code`` / a dataframe instead."""
    text = _CONTROL.sub(" ", str(value))
    if len(text) > limit:
        text = text[:limit] + "…"
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    return f"{fence} {text} {fence}"  # one space each side: CommonMark strips exactly these two


def scrub_literal(value: object, current: Settings | None = None, limit: int = 500) -> str:
    """:func:`md_literal` of ``value`` without the server's folders (for error messages)."""
    return md_literal(scrub_paths(str(value), current), limit)


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


def _secret_files() -> list[str]:
    """The secrets files Streamlit reads (``secrets.files``) that exist, as short names (no server folders)."""
    import os

    from streamlit import config

    try:
        paths = [str(p) for p in (config.get_option("secrets.files") or [])]
    except Exception:  # noqa: BLE001 - no such option: the default place
        paths = [os.path.join(".streamlit", "secrets.toml")]
    return [os.path.join(os.path.basename(os.path.dirname(p)), os.path.basename(p)) for p in paths
            if os.path.exists(p)]


def _secrets() -> dict:
    """The secrets as a dict; ``{}`` when there is no secrets file (the dashboard is open). A secrets file that
    exists but cannot be read is a :class:`core.auth.AuthConfigError` (the dashboard must not open)."""
    from core import auth

    try:
        secrets = st.secrets.to_dict()
    except Exception as error:  # noqa: BLE001 - Streamlit raises one error for missing and unreadable files
        present = _secret_files()
        if not present:
            return {}
        cause = error.__cause__
        reason = str(cause) if cause is not None and type(cause).__name__ == "TOMLDecodeError" else ""
        raise auth.AuthConfigError(f"{', '.join(present)} cannot be read"
                                   + (f" ({reason})" if reason else "")) from None
    if not isinstance(secrets, dict):
        raise auth.AuthConfigError("the secrets are not a TOML table")
    return secrets


_REPORTED: set[str] = set()


def _refuse(error: Exception) -> None:
    """A login configuration that cannot be trusted: say so and serve nothing."""
    message = str(error)
    if message not in _REPORTED:  # once per process and message, not on every rerun
        _REPORTED.add(message)
        log.error("dashboard login configuration rejected, serving nothing: %s", message)
    st.error(tr("login_config_error", message=md_literal(message)))
    st.stop()


def _warn_once(config) -> None:
    for warning in config.warnings:
        if warning not in _REPORTED:
            _REPORTED.add(warning)
            log.warning("dashboard login: %s", warning)


def _oidc_gate(config) -> None:
    if st.user.is_logged_in:
        with st.sidebar:
            st.button(tr("logout"), on_click=st.logout)
        return
    st.title(tr("login_title"))
    for provider in config.providers:
        label = tr("login_oidc") if not provider else f"{tr('login_oidc')} · {provider}"
        st.button(label, on_click=st.login, args=(provider,) if provider else (), key=f"login_oidc_{provider}")
    st.stop()


def _session_backoff():
    from core import auth

    backoff = st.session_state.get("_login_backoff")
    if not isinstance(backoff, auth.Backoff):
        backoff = st.session_state["_login_backoff"] = auth.Backoff()
    return backoff


def _password_gate(config) -> None:
    """The password form; wrong attempts back off per browser session and per process (``core.auth.Backoff``)."""
    import math

    from core import auth

    st.title(tr("login_title"))
    with st.form("login"):
        candidate = st.text_input(tr("login_password"), type="password", max_chars=auth.MAX_PASSWORD_CHARS)
        submitted = st.form_submit_button(tr("login_button"))
    if not submitted:
        st.stop()
    session, process = _session_backoff(), auth.PROCESS_BACKOFF
    wait = max(session.wait(), process.wait())
    if wait > 0:  # not checked, not counted: the user is told how long to wait
        st.error(tr("login_wait", s=math.ceil(wait)))
        st.stop()
    if auth.password_matches(candidate, config):
        session.succeeded()  # the process back-off only fades with time: a success must not reset an attacker's
        st.session_state["_signed_in"] = config.fingerprint
        st.rerun()
    wait = max(session.failed(), process.failed())
    st.error(tr("login_wrong"))
    if wait > 0:
        st.warning(tr("login_wait", s=math.ceil(wait)))
    st.stop()


def require_login():
    """Stop the run until the user is signed in, when a login is configured (see ``core.auth``); stop it for good,
    with a message, when the login configuration exists but cannot be used (fail closed). Returns the checked
    :class:`core.auth.LoginConfig` when the run may go on."""
    from core import auth

    try:
        config = auth.login_config(_secrets())
    except auth.AuthConfigError as error:
        _refuse(error)
        raise  # not reached: st.stop() ends the run
    _warn_once(config)
    if config.mode == "oidc":
        _oidc_gate(config)
    elif config.mode == "password" and st.session_state.get("_signed_in") != config.fingerprint:
        st.session_state.pop("_signed_in", None)  # a replaced password ends the sessions signed in with the old one
        _password_gate(config)
    return config


def page_header(title_key: str) -> None:
    """Every page starts with its title and the demo-weights banner (and, signed in with a legacy password hash,
    a warning in the sidebar)."""
    _leave_pages_directory_mode()
    config = require_login()
    st.title(f"{tr('app_title')} · {tr(title_key)}")
    banner()
    for warning in config.warnings:
        st.sidebar.warning(tr("login_config_warning", message=md_literal(warning)))


def label(task: str, dataset_name: str, index: int) -> str:
    return i18n.class_name(task, dataset_name, index, lang())


# ---------------------------------------------------------------------------------------- served datasets
@st.cache_data(ttl=15, show_spinner=False)
def _served_keys(key: str, _current: Settings) -> frozenset:
    """The (task, dataset) keys some model of this deployment serves (empty when the models cannot be listed)."""

    try:
        entries = service(_current).models().get("models") or []
    except Exception:  # noqa: BLE001 - the page says so where it matters (weights_error)
        return frozenset()
    keys: set[tuple[str, str]] = set()
    for entry in entries:
        keys.update(catalog.served_datasets(catalog.served_keys(entry.get("datasets"))))
    return frozenset(keys)


def served_keys(current: Settings | None = None) -> frozenset:
    current = current or settings()
    return _served_keys(settings_key(current), current)


def served_first(datasets: list, served: frozenset) -> list:
    """``datasets`` (catalog entries) with the served ones first, each part in catalog order."""
    return sorted(datasets, key=lambda d: d.key not in served)


def default_task(served: frozenset) -> str:
    from core import catalog

    return next((t for t in catalog.TASKS if any(key[0] == t for key in served)), catalog.TASKS[0])


def group_served(task: str, group: str, served: frozenset) -> bool:
    from core import catalog

    return any(d.key in served for d in catalog.datasets_for(task, group))


def default_dataset_name(task: str, group: str, served: frozenset) -> str:
    """The catalog's demo pick when a model serves it, else the group's first served dataset, else the demo pick."""
    from core import catalog

    demo = catalog.default_dataset(task, group)
    if demo.key in served:
        return demo.name
    return next((d.name for d in catalog.datasets_for(task, group) if d.key in served), demo.name)


# ---------------------------------------------------------------------------------------- page state in the URL
def url_param(name: str) -> str | None:
    value = st.query_params.get(name)
    return str(value) if value else None


def set_url_params(**values: str | None) -> None:
    """Write the page state into the URL (only what changed, so the browser history is not flooded)."""
    for name, value in values.items():
        if value is None:
            continue
        if st.query_params.get(name) != value:
            st.query_params[name] = value


# ---------------------------------------------------------------------------------------- measurement tables
def measure_rows(keys: list[str], columns: dict[str, dict]) -> pd.DataFrame:
    """Measurement keys (``area_mm2``, ``head_circumference_mm`` …) as rows of a table, labelled in the page's
    language with their unit, one column per source dict (predicted, reference, another run …); "—" for nothing
    (:func:`core.measure_table.comparison_rows`)."""
    import pandas as pd

    from core.measure_table import comparison_rows

    titles = list(columns)
    return pd.DataFrame([{tr("measure_name"): label, **dict(zip(titles, cells, strict=True))}
                         for label, cells in comparison_rows(keys, columns, lang())])


def measurement_table(measurements: dict, *, compact: bool = False) -> pd.DataFrame:
    """One row per measurement of one result: its name, the pixel value and the millimetre value with units
    (:func:`core.measure_table.value_rows`); ``compact``: one value column, for a narrow place such as the Analyze
    result's numbers column: millimetres when calibrated, else pixels (both stay in History, the CSV and the
    report)."""
    import pandas as pd

    from core.measure_table import value_rows

    rows = value_rows(measurements, lang(), short=compact)
    if compact:
        return pd.DataFrame([{tr("measure_name"): name, tr("measure_value"): px if mm == "—" else mm}
                             for name, px, mm in rows])
    px_title, mm_title = f"{tr('measure_value')} (px)", f"{tr('measure_value')} (mm)"
    return pd.DataFrame([{tr("measure_name"): name, px_title: px, mm_title: mm} for name, px, mm in rows])


def target_name(task: str, dataset_name: str) -> str | None:
    """What a segmentation dataset's mask covers, in the page's language (the catalog's target: "thyroid nodule",
    "left ventricle + myocardium + left atrium" …); None for classification or an unknown dataset."""
    try:
        dataset = catalog.find_dataset(task, dataset_name)
    except catalog.UnknownDataset:
        return None
    return dataset.class_name(1, lang()) if dataset.task == "segmentation" else None
