"""The optional dashboard login: password gate from secrets (OIDC is Streamlit's own ``st.login``)."""

from __future__ import annotations

import hashlib

import pytest

from core import auth, i18n
from core.settings import PROJECT_ROOT

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

HOME = str(PROJECT_ROOT / "Home.py")
SECRET = "correct horse battery staple"


def test_login_mode_from_secrets():
    assert auth.login_mode({}) == "none"
    assert auth.login_mode({"dashboard": {"password": "x"}}) == "password"
    assert auth.login_mode({"dashboard": {"password_sha256": "ab"}}) == "password"
    assert auth.login_mode({"auth": {"client_id": "id", "client_secret": "s"}}) == "oidc"
    assert auth.login_mode({"auth": {"google": {"client_id": "id"}}}) == "oidc"


def test_password_checks():
    hashed = {"password_sha256": hashlib.sha256(SECRET.encode()).hexdigest()}
    assert auth.password_matches(SECRET, hashed)
    assert not auth.password_matches(SECRET + " ", hashed)
    assert not auth.password_matches("", hashed)
    assert auth.password_matches(SECRET, {"password": SECRET})
    assert not auth.password_matches("wrong", {"password": SECRET})
    assert not auth.password_matches("anything", {})


@pytest.fixture()
def gated(dashboard_env):
    at = AppTest.from_file(HOME, default_timeout=120)
    at.secrets["dashboard"] = {"password_sha256": hashlib.sha256(SECRET.encode()).hexdigest()}
    at.run()
    return at


def test_password_gate_blocks_until_signed_in(gated):
    at = gated
    assert not at.exception
    assert at.title[0].value == i18n.t("login_title", "zh")
    assert not any(i18n.t("nav_analyze", "zh") in t.value for t in at.title)  # no page content behind the gate
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert any(i18n.t("login_wrong", "zh") in e.value for e in at.error)
    at.text_input[0].input(SECRET)
    at.button[0].click().run()
    assert not at.exception
    assert any(i18n.t("nav_analyze", "zh") in t.value for t in at.title)
