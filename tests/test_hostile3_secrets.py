"""Hostile table, issue 22 class 9: no secret of a database URL in any message, log line, answer or page.

Every shape of ``UUSIC_HISTORY_URL`` below carries a unique marker (``ZQnn``) inside each secret part (the password,
a secret query value), on both sides of an unencoded ``@``; none may show up in: the rendered URL
(:func:`core.redact.redact_url`), a text holding the URL (:func:`core.redact.redact_text`, the dashboard's
``scrub_paths``), the ``repr`` of the settings, the :class:`HistoryError` raised when the store cannot be opened,
the ``GET /v1/history`` 503 answer (which names no database host, user or port either) and the log lines written
meanwhile, and the output of ``python -m core workspace status``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from core.api import create_app
from core.errors import ConfigError, HistoryError, error_body
from core.history import HistoryStore
from core.redact import MASK, redact_text, redact_url, url_secrets
from core.settings import Settings

PORT = free_port()  # nothing listens there
HOST = f"127.0.0.1:{PORT}"
USER = "alice-user"


@dataclass(frozen=True)
class Shape:
    name: str
    url: str
    marker: str  # inside every secret part: must never be seen
    opens: bool = False  # a SQLite file: the store opens (no error to look at)


SHAPES = [
    Shape("at_in_password", f"postgresql+psycopg://{USER}:Pa-ZQ01@Sb-ZQ01@{HOST}/uusic", "ZQ01"),
    Shape("encoded_at", f"postgresql+psycopg://{USER}:Pa-ZQ02%40Sb-ZQ02@{HOST}/uusic", "ZQ02"),
    Shape("several_at", f"postgresql+psycopg://{USER}:a-ZQ03@b-ZQ03@c-ZQ03@{HOST}/uusic", "ZQ03"),
    Shape("query_password", f"postgresql+psycopg://{USER}@{HOST}/uusic?password=qs-ZQ04", "ZQ04"),
    Shape("query_token_sslpassword", f"postgresql+psycopg://{USER}:pw-ZQ05@{HOST}/uusic?sslpassword=ssl-ZQ05"
          "&auth_token=tok-ZQ05&application_name=uusic", "ZQ05"),
    Shape("ipv6_host", f"postgresql+psycopg://{USER}:v6-ZQ06@x-ZQ06@[::1]:{PORT}/uusic", "ZQ06"),
    Shape("no_password_api_key", f"postgresql+psycopg://{USER}@{HOST}/uusic?api_key=key-ZQ07", "ZQ07"),
    Shape("unparsable_port", f"postgresql+psycopg://{USER}:port-ZQ08@127.0.0.1:notaport/uusic", "ZQ08"),
    Shape("at_and_slash", f"postgresql+psycopg://{USER}:p-ZQ09@s-ZQ09/w-ZQ09@{HOST}/uusic", "ZQ09"),
    Shape("colons", f"postgresql+psycopg://{USER}:co:lon-ZQ10@{HOST}/uusic", "ZQ10"),
    Shape("space", f"postgresql+psycopg://{USER}:sp ace-ZQ11@{HOST}/uusic", "ZQ11"),
    Shape("all_encoded", f"postgresql+psycopg://{USER}:%5AQ12-%40-%2F-ZQ12@{HOST}/uusic", "ZQ12"),
    Shape("unknown_driver", f"mysql+nodriver://root:my-ZQ13@{HOST}/x", "ZQ13"),
    Shape("quote_and_hash", f"postgresql+psycopg://{USER}:qu'o#te-ZQ14@{HOST}/uusic", "ZQ14"),
    Shape("percent_sign", f"postgresql+psycopg://{USER}:100%-ZQ15@{HOST}/uusic", "ZQ15"),
    Shape("many_at", f"postgresql+psycopg://{USER}:{'@' * 40}ZQ16{'@' * 40}@{HOST}/uusic", "ZQ16"),
    Shape("password_key_case", f"postgresql+psycopg://{USER}@{HOST}/uusic?PassWord=up-ZQ17&Secret_X=s-ZQ17",
          "ZQ17"),
    Shape("sqlite_query_secret", "sqlite:///{tmp}/h.sqlite3?password=lite-ZQ18", "ZQ18", opens=True),
    Shape("no_user_no_password", f"postgresql+psycopg://{HOST}/uusic", "ZQ-none"),
]
IDS = [shape.name for shape in SHAPES]


def _url(shape: Shape, tmp_path) -> str:
    return shape.url.replace("{tmp}", str(tmp_path))


def _hidden(text: str, shape: Shape) -> None:
    assert shape.marker not in text, text
    # the percent-encoded marker of the all-encoded shape, too
    assert "%5AQ12" not in text, text


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_rendered_url_and_texts_hide_every_secret(shape: Shape, tmp_path):
    url = _url(shape, tmp_path)
    shown = redact_url(url)
    _hidden(shown, shape)
    assert shown.split("://")[0] == url.split("://")[0]  # the scheme is always there
    for text in (f"could not reach {url} now", f"'{url}'.", f"({url})"):
        _hidden(redact_text(text), shape)
        scheme_only = redact_text(text, keep_location=False)
        _hidden(scheme_only, shape)
        assert USER not in scheme_only and HOST not in scheme_only and "/h.sqlite3" not in scheme_only
    _hidden(repr(Settings(history_url=url)), shape)
    _hidden(error_body(HistoryError(f"store {url} failed"))["detail"], shape)
    for secret in url_secrets(url):
        assert secret not in shown


def test_the_rendering_is_sqlalchemys_and_keeps_what_is_not_secret():
    assert redact_url("postgresql+psycopg://u:pw-ZQ@db:5432/uusic") == "postgresql+psycopg://u:***@db:5432/uusic"
    assert redact_url("postgresql+psycopg://u:p@ss@db/uusic") == "postgresql+psycopg://u:***@db/uusic"
    assert redact_url("postgresql+psycopg://u@db/x?password=ZQ&sslmode=require") == (
        "postgresql+psycopg://u@db/x?password=***&sslmode=require")
    assert redact_url("postgresql+psycopg://u:pw@db:notaport/x") == "postgresql+psycopg://***"
    assert redact_url("postgresql+psycopg://u:pw@[::1]:5432/x") == "postgresql+psycopg://u:***@[::1]:5432/x"
    assert redact_url("user:ZQ@db/x") == MASK and redact_url(None) == ""
    assert redact_url(URL.create("postgresql", "u", "a@b/c-ZQ", "db")) == "postgresql://u:***@db"
    assert redact_url("sqlite:///" + "x" * 5000).startswith("sqlite://***")  # too long to read: scheme only
    # a web address without secrets stays as written; one with them loses them
    assert redact_text("see http://h:8000/a%20b?x=1#f.") == "see http://h:8000/a%20b?x=1#f."
    assert redact_text("at http://u:ZQ@h/x?token=ZQ", keep_location=False) == "at http://u:***@h/x?token=***"


def test_bad_history_url_setting_never_echoes_it():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"UUSIC_HISTORY_URL": "user:pw-ZQ30@db/uusic"})
    assert "ZQ30" not in str(info.value) and "UUSIC_HISTORY_URL" in str(info.value)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_history_error_hides_every_secret(shape: Shape, tmp_path):
    url = _url(shape, tmp_path)
    try:
        store = HistoryStore(url, timeout=2)
    except HistoryError as exc:
        assert not shape.opens
        _hidden(str(exc), shape)
        _hidden(repr(exc), shape)
        assert str(exc).startswith("history store ")
    else:
        assert shape.opens
        _hidden(repr(store), shape)
        _hidden(store.display_url, shape)
        store.close()


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_history_503_answer_names_no_url_and_logs_no_secret(shape: Shape, tiny_settings, tmp_path, caplog):
    url = _url(shape, tmp_path)
    caplog.set_level(logging.DEBUG)
    app = create_app(tiny_settings.with_(history_url=url))
    with TestClient(app) as client:
        response = client.get("/v1/history")
        service = app.state.service if hasattr(app.state, "service") else None
        check = getattr(service, "workspace_check", None)
        if check is not None:
            check.wait(timeout=30)
    body = response.text
    _hidden(body, shape)
    if not shape.opens:
        assert response.status_code == 503, body
        assert response.json()["error_type"] == "HistoryError"
        assert USER not in body and "root" not in body and HOST not in body and "[::1]" not in body
        assert str(tiny_settings.workspace) not in body and str(tmp_path) not in body
    _hidden(caplog.text, shape)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_workspace_status_cli_hides_every_secret(shape: Shape, tiny_settings, tmp_path, monkeypatch, capsys):
    from core.cli import main

    url = _url(shape, tmp_path)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    monkeypatch.setenv("UUSIC_HISTORY_URL", url)
    code = main(["workspace", "status"])
    captured = capsys.readouterr()
    _hidden(captured.out + captured.err, shape)
    assert code == (0 if shape.opens else 2)
    if shape.opens:
        assert main(["workspace", "status", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        _hidden(json.dumps(report), shape)
        assert report["history_store"].startswith("sqlite:///")
    else:
        assert captured.err.startswith("error: history store ")


def test_dashboard_scrubber_and_models_page_hide_the_password(dashboard_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.settings import PROJECT_ROOT
    from pages.common import scrub_paths

    url = f"postgresql+psycopg://{USER}:Pa-ZQ40@Sb-ZQ40@{HOST}/uusic?password=ZQ40"
    text = scrub_paths(f"history store {url} could not open", dashboard_env)
    assert "ZQ40" not in text and HOST not in text and "postgresql+psycopg://***" in text

    monkeypatch.setenv("UUSIC_HISTORY_URL", url)
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120).run()
    at.switch_page("pages/models.py").run()
    assert not at.exception, [e.value for e in at.exception]
    shown = " ".join(str(table.value.values) for table in at.table)
    assert "ZQ40" not in shown and f"postgresql+psycopg://{USER}:***@{HOST}/uusic?password=***" in shown
    everything = " ".join(str(getattr(e, "value", "")) for kind in ("markdown", "text", "error", "json", "caption")
                          for e in at.get(kind))
    assert "ZQ40" not in everything
