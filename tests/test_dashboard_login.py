"""The dashboard login (``core.auth`` and the gate in ``pages/common.py``): it fails closed on any login
configuration it cannot trust, stores the password as an argon2 hash, and backs off after wrong attempts."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading

import pytest

from core import auth, i18n
from core.settings import PROJECT_ROOT

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

HOME = str(PROJECT_ROOT / "Home.py")
SECRET = "correct horse battery staple"
HASH = auth.hash_password(SECRET)  # one argon2id hash for the module (hashing is deliberately slow)
LEGACY = hashlib.sha256(SECRET.encode()).hexdigest()
OIDC = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "cookie-s3cret",
        "client_id": "the-client", "client_secret": "client-s3cret",
        "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
PROVIDER = {k: OIDC[k] for k in ("client_id", "client_secret", "server_metadata_url")}
OIDC_BASE = {k: OIDC[k] for k in ("redirect_uri", "cookie_secret")}
SECRET_VALUES = (SECRET, HASH, LEGACY, "cookie-s3cret", "client-s3cret", "pl41n-passw0rd")


@pytest.fixture(autouse=True)
def fresh_backoff(monkeypatch):
    """A fake clock for every back-off, and a clean process-wide back-off before and after each test."""
    now = [1000.0]
    monkeypatch.setattr(auth, "_now", lambda: now[0])
    auth.PROCESS_BACKOFF.reset()
    yield now
    auth.PROCESS_BACKOFF.reset()


# ------------------------------------------------------------------------------------------ configurations
VALID = [
    ({}, "none"),
    ({"other_service": {"token": "x"}}, "none"),
    ({"dashboard": {"password_hash": HASH}}, "password"),
    ({"dashboard": {"password_hash": f"  {HASH}\n"}}, "password"),
    ({"dashboard": {"password_sha256": LEGACY}}, "password"),
    ({"dashboard": {"password_sha256": LEGACY.upper()}}, "password"),
    ({"auth": OIDC}, "oidc"),
    ({"auth": {**OIDC_BASE, "google": PROVIDER}}, "oidc"),
    ({"auth": {**OIDC_BASE, "google": PROVIDER, "microsoft": {**PROVIDER, "client_kwargs": {"prompt": "login"}}}},
     "oidc"),
    ({"auth": {**OIDC, "client_kwargs": {"prompt": "login"}}}, "oidc"),
]


@pytest.mark.parametrize(("secrets", "mode"), VALID)
def test_valid_configurations(secrets, mode):
    config = auth.login_config(secrets)
    assert config.mode == mode == auth.login_mode(secrets)
    assert bool(config.warnings) == bool(secrets.get("dashboard", {}).get("password_sha256"))


def test_oidc_providers_are_named():
    assert auth.login_config({"auth": OIDC}).providers == ("",)
    both = {"auth": {**OIDC_BASE, "google": PROVIDER, "okta": PROVIDER}}
    assert auth.login_config(both).providers == ("google", "okta")


MALFORMED = [
    # the secrets themselves
    ("not a table", "TOML table"),
    (["dashboard"], "TOML table"),
    # [dashboard]: wrong types, empty, unknown or half-known keys
    ({"dashboard": "pl41n-passw0rd"}, "[dashboard] must be a table"),
    ({"dashboard": 1}, "[dashboard] must be a table"),
    ({"dashboard": ["x"]}, "[dashboard] must be a table"),
    ({"dashboard": True}, "[dashboard] must be a table"),
    ({"dashboard": {}}, "no password_hash"),
    ({"dashboard": {"password": "pl41n-passw0rd"}}, "plain text"),
    ({"dashboard": {"password": "pl41n-passw0rd", "password_hash": HASH}}, "plain text"),
    ({"dashboard": {"pasword_hash": HASH}}, "unknown key"),
    ({"dashboard": {"password_hash": HASH, "max_attempts": 3}}, "unknown key"),
    ({"dashboard": {"password_hash": HASH, "password_sha256": LEGACY}}, "both"),
    # password_hash: types, empty, unknown schemes, broken argon2
    ({"dashboard": {"password_hash": ""}}, "empty"),
    ({"dashboard": {"password_hash": "   "}}, "empty"),
    ({"dashboard": {"password_hash": 12345}}, "must be a string"),
    ({"dashboard": {"password_hash": True}}, "must be a string"),
    ({"dashboard": {"password_hash": [HASH]}}, "must be a string"),
    ({"dashboard": {"password_hash": {"hash": HASH}}}, "must be a string"),
    ({"dashboard": {"password_hash": "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"}}, "unknown hash"),
    ({"dashboard": {"password_hash": "$6$saltsalt$abcdefghijklmnopqrstuv"}}, "unknown hash"),
    ({"dashboard": {"password_hash": "$pbkdf2-sha256$29000$c2FsdA$aGFzaA"}}, "unknown hash"),
    ({"dashboard": {"password_hash": "$argon2x$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"}}, "unknown hash"),
    ({"dashboard": {"password_hash": LEGACY}}, "unknown hash"),
    ({"dashboard": {"password_hash": "pl41n-passw0rd"}}, "unknown hash"),
    ({"dashboard": {"password_hash": "$argon2id$"}}, "not a valid argon2"),
    ({"dashboard": {"password_hash": "$argon2id$v=19$m=65536,t=3,p=4$"}}, "not a valid argon2"),
    ({"dashboard": {"password_hash": "$argon2id$garbage$garbage"}}, "not a valid argon2"),
    ({"dashboard": {"password_hash": HASH.replace("m=65536", "m=lots")}}, "not a valid argon2"),
    # the legacy sha256
    ({"dashboard": {"password_sha256": ""}}, "empty"),
    ({"dashboard": {"password_sha256": 42}}, "must be a string"),
    ({"dashboard": {"password_sha256": LEGACY[:-1]}}, "64 hexadecimal"),
    ({"dashboard": {"password_sha256": "z" * 64}}, "64 hexadecimal"),
    ({"dashboard": {"password_sha256": HASH}}, "64 hexadecimal"),
    # [auth]: types, half-configured providers
    ({"auth": "x"}, "[auth] must be a table"),
    ({"auth": {}}, "lacks redirect_uri"),
    ({"auth": {k: v for k, v in OIDC.items() if k != "cookie_secret"}}, "lacks cookie_secret"),
    ({"auth": {k: v for k, v in OIDC.items() if k != "redirect_uri"}}, "lacks redirect_uri"),
    ({"auth": {**OIDC, "cookie_secret": ""}}, "empty"),
    ({"auth": {**OIDC, "redirect_uri": 8501}}, "must be a string"),
    ({"auth": {**OIDC, "redirect_uri": "javascript:alert(1)"}}, "http(s) URL"),
    ({"auth": OIDC_BASE}, "no identity provider"),
    ({"auth": {**OIDC_BASE, "client_id": "the-client"}}, "half-configured"),
    ({"auth": {**OIDC_BASE, "client_id": "the-client", "client_secret": "client-s3cret"}}, "half-configured"),
    ({"auth": {**OIDC, "client_secret": ""}}, "empty"),
    ({"auth": {**OIDC, "client_id": 7}}, "must be a string"),
    ({"auth": {**OIDC, "server_metadata_url": "file:///etc/passwd"}}, "http(s) URL"),
    ({"auth": {**OIDC_BASE, "google": {"client_id": "the-client"}}}, "[auth.google] is half-configured"),
    ({"auth": {**OIDC_BASE, "google": PROVIDER, "okta": {**PROVIDER, "client_secret": None}}}, "must be a string"),
    # both doors at once
    ({"auth": OIDC, "dashboard": {"password_hash": HASH}}, "both [auth]"),
    ({"auth": {**OIDC_BASE, "client_id": "x"}, "dashboard": {"password_hash": HASH}}, "half-configured"),
    ({"auth": OIDC, "dashboard": {"password_hash": ""}}, "empty"),
    ({"auth": OIDC, "dashboard": {}}, "no password_hash"),
]


@pytest.mark.parametrize(("secrets", "reason"), MALFORMED)
def test_malformed_configurations_fail_closed_without_echoing_secrets(secrets, reason):
    with pytest.raises(auth.AuthConfigError) as caught:
        auth.login_config(secrets)
    message = str(caught.value)
    assert reason in message
    assert not any(value in message for value in SECRET_VALUES)
    with pytest.raises(auth.AuthConfigError):
        auth.login_mode(secrets)


# ------------------------------------------------------------------------------------------ passwords
def test_argon2_hashes_are_salted_and_verify():
    assert HASH.startswith("$argon2id$")
    other = auth.hash_password(SECRET)
    assert other != HASH  # a random salt each time
    config = auth.login_config({"dashboard": {"password_hash": other}})
    assert auth.password_matches(SECRET, config)
    with pytest.raises(ValueError):
        auth.hash_password("")
    with pytest.raises(ValueError):
        auth.hash_password("x" * (auth.MAX_PASSWORD_CHARS + 1))


WRONG = [SECRET + " ", " " + SECRET, SECRET.upper(), SECRET[:-1], "", None, 0, b"correct horse battery staple",
         [SECRET], "x" * (auth.MAX_PASSWORD_CHARS + 1), SECRET + "\x00", HASH, LEGACY]


@pytest.mark.parametrize("dashboard", [{"password_hash": HASH}, {"password_sha256": LEGACY}],
                         ids=["argon2", "legacy-sha256"])
def test_password_checks(dashboard):
    config = auth.login_config({"dashboard": dashboard})
    assert auth.password_matches(SECRET, config)
    assert auth.password_matches(SECRET, dashboard)  # a [dashboard] table works too
    for candidate in WRONG:
        assert not auth.password_matches(candidate, config), candidate


@pytest.mark.parametrize("dashboard", [{}, {"password": SECRET}, {"password_hash": "$argon2id$garbage"},
                                       {"password_hash": HASH, "password_sha256": LEGACY}, {"x": 1}])
def test_a_malformed_dashboard_table_never_matches(dashboard):
    assert not auth.password_matches(SECRET, dashboard)
    assert not auth.password_matches(SECRET, auth.LoginConfig("none"))


def test_hash_command_reads_stdin_and_prints_a_hash(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    assert auth.main(["hash"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("$argon2id$")
    assert auth.password_matches(SECRET, auth.login_config({"dashboard": {"password_hash": printed}}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert auth.main(["hash"]) == 1
    assert "at least" in capsys.readouterr().err


def test_hash_one_liner_as_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "core.auth", "hash"], input=SECRET + "\n", capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert auth.password_matches(SECRET, {"password_hash": done.stdout.strip()})


@pytest.mark.parametrize(("text", "code", "says"), [
    (f'[dashboard]\npassword_hash = "{HASH}"\n', 0, "login mode password"),
    (f'[dashboard]\npassword_sha256 = "{LEGACY}"\n', 0, "login mode password"),
    ("[other]\nx = 1\n", 0, "login mode none"),
    ("[dashboard\npassword_hash = 1\n", 1, "cannot be read"),
    ('[dashboard]\npassword_hash = ""\n', 1, "is empty"),
    ('[dashboard]\npassword = "pl41n-passw0rd"\n', 1, "plain text"),
])
def test_check_command(tmp_path, capsys, text, code, says):
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    assert auth.main(["check", str(path)]) == code
    out = capsys.readouterr()
    assert says in out.out + out.err
    assert "pl41n-passw0rd" not in out.out + out.err


# ------------------------------------------------------------------------------------------ back-off
def test_backoff_delays_double_up_to_the_cap():
    backoff = auth.Backoff()
    assert [backoff.delay(n) for n in range(1, 11)] == [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.delay(10_000) == 30


def test_backoff_waits_forgets_and_resets(fresh_backoff):
    now = fresh_backoff
    backoff = auth.Backoff()
    assert [backoff.failed() for _ in range(5)] == [0, 0, 1, 2, 4]
    assert backoff.wait() == 4
    now[0] += 1.5
    assert backoff.wait() == pytest.approx(2.5)
    now[0] += 2.5
    assert backoff.wait() == 0 and backoff.failures == 5  # waited out, not forgiven
    assert backoff.failed() == 8
    now[0] += backoff.forget_after + 10  # a quiet quarter of an hour forgets
    assert backoff.wait() == 0 and backoff.failures == 0
    for _ in range(4):
        backoff.failed()
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.wait() == 0


def test_backoff_counts_every_failure_of_concurrent_sessions():
    backoff = auth.Backoff(cap=1e9)
    threads = [threading.Thread(target=lambda: [backoff.failed() for _ in range(50)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backoff.failures == 400


# ------------------------------------------------------------------------------------------ the gate (AppTest)
def _app(secrets: dict | None = None, user: dict | None = None) -> AppTest:
    at = AppTest.from_file(HOME, default_timeout=120)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    if user is not None:
        at.user = user
    return at.run()


def _page_shown(at: AppTest) -> bool:
    return any(i18n.t("nav_analyze", "zh") in t.value for t in at.title)


def _sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input[0].input(password)
    return at.button[0].click().run()


@pytest.fixture()
def gated(dashboard_env):
    at = _app({"dashboard": {"password_hash": HASH}})
    assert not at.exception
    return at


def test_password_gate_blocks_until_signed_in(gated):
    at = gated
    assert at.title[0].value == i18n.t("login_title", "zh")
    assert not _page_shown(at)  # no page content behind the gate
    _sign_in(at, "wrong")
    assert any(i18n.t("login_wrong", "zh") in e.value for e in at.error)
    assert not _page_shown(at)
    _sign_in(at, SECRET)
    assert not at.exception
    assert _page_shown(at)


def test_wrong_attempts_back_off_with_a_message(gated, fresh_backoff):
    at, now = gated, fresh_backoff
    for _ in range(2):
        _sign_in(at, "wrong")
        assert not at.warning or all(i18n.t("login_wait", "zh", s=1) != w.value for w in at.warning)
    _sign_in(at, "wrong")  # the third failure: the next attempt waits 1 s
    assert i18n.t("login_wait", "zh", s=1) in [w.value for w in at.warning]
    _sign_in(at, SECRET)  # too early: not even checked
    assert i18n.t("login_wait", "zh", s=1) in [e.value for e in at.error] and not _page_shown(at)
    now[0] += 1.1
    _sign_in(at, "wrong")  # the fourth failure: 2 s
    assert i18n.t("login_wait", "zh", s=2) in [w.value for w in at.warning]
    now[0] += 2.1
    _sign_in(at, SECRET)
    assert _page_shown(at)


def test_the_process_backs_off_across_browser_sessions(dashboard_env, fresh_backoff):
    now = fresh_backoff
    for _ in range(3):  # three fresh sessions, one wrong attempt each: the process counts them together
        _sign_in(_app({"dashboard": {"password_hash": HASH}}), "wrong")
    newcomer = _sign_in(_app({"dashboard": {"password_hash": HASH}}), SECRET)
    assert i18n.t("login_wait", "zh", s=1) in [e.value for e in newcomer.error] and not _page_shown(newcomer)
    assert auth.PROCESS_BACKOFF.failures == 3
    now[0] += 1.1
    _sign_in(newcomer, SECRET)
    assert _page_shown(newcomer)
    assert auth.PROCESS_BACKOFF.failures == 3  # a success does not wipe an attacker's record; time does


def test_the_back_off_cap_is_named_in_seconds(gated, fresh_backoff):
    at, now = gated, fresh_backoff
    for _ in range(12):
        _sign_in(at, "wrong")
        now[0] += 31
    assert i18n.t("login_wait", "zh", s=30) in [w.value for w in at.warning]


def test_legacy_sha256_signs_in_with_a_loud_warning(dashboard_env):
    at = _app({"dashboard": {"password_sha256": LEGACY}})
    assert not _page_shown(at)
    _sign_in(at, SECRET)
    assert _page_shown(at)
    warnings = [w.value for w in at.sidebar.warning]
    assert len([w for w in warnings if "password_sha256" in w and "password_hash" in w]) == 1


def test_replacing_the_password_ends_signed_in_sessions(gated):
    at = _sign_in(gated, SECRET)
    assert _page_shown(at)
    at.secrets["dashboard"] = {"password_hash": auth.hash_password("a new password")}
    at.run()
    assert not _page_shown(at) and at.title[0].value == i18n.t("login_title", "zh")


REFUSED = [
    {"dashboard": {}},
    {"dashboard": {"password": "pl41n-passw0rd"}},
    {"dashboard": {"password_hash": ""}},
    {"dashboard": {"password_hash": 12345}},
    {"dashboard": {"password_hash": "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"}},
    {"dashboard": {"password_hash": "$argon2id$garbage$garbage"}},
    {"dashboard": {"pasword_hash": HASH}},
    {"dashboard": "pl41n-passw0rd"},
    {"auth": {**OIDC_BASE, "client_id": "the-client"}},
    {"auth": OIDC, "dashboard": {"password_hash": HASH}},
]


@pytest.mark.parametrize("secrets", REFUSED)
def test_a_malformed_login_configuration_serves_nothing(dashboard_env, secrets):
    at = _app(secrets)
    assert not at.exception
    assert len(at.error) == 1
    prefix = i18n.t("login_config_error", "zh", message="")
    assert at.error[0].value.startswith(prefix)
    assert not _page_shown(at) and not at.text_input and not at.button  # no form, no page
    assert not any(value in at.error[0].value for value in SECRET_VALUES)


@pytest.fixture()
def secrets_file(tmp_path, monkeypatch):
    """Point Streamlit's ``secrets.files`` at a file of the test's (through a fresh ``st.secrets``)."""
    import streamlit
    from streamlit import config
    from streamlit.runtime.secrets import Secrets

    path = tmp_path / ".streamlit" / "secrets.toml"
    path.parent.mkdir()
    original = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(path)])
    monkeypatch.setattr(streamlit, "secrets", Secrets())
    yield path
    config.set_option("secrets.files", original)


@pytest.mark.parametrize("text", [
    "[dashboard\npassword_hash = 'x'\n",
    "[dashboard]\npassword_hash = \n",
    "[dashboard]\npassword_hash = \"unterminated\n",
    "dashboard = {password_hash = \"a\",, }\n",
    "\x00\x01 binary",
    "[dashboard]\npassword_hash = 'a'\n[dashboard]\npassword_hash = 'b'\n",  # a table defined twice
])
def test_an_unreadable_secrets_file_serves_nothing(dashboard_env, secrets_file, text):
    secrets_file.write_text(text, encoding="utf-8")
    at = AppTest.from_file(HOME, default_timeout=120).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(i18n.t("login_config_error", "zh", message=""))
    assert ".streamlit/secrets.toml" in at.error[0].value and str(secrets_file.parent) not in at.error[0].value
    assert not _page_shown(at) and not at.text_input


def test_an_undecodable_secrets_file_serves_nothing(dashboard_env, secrets_file):
    secrets_file.write_bytes(b"[dashboard]\npassword_hash = '\xff\xfe'\n")
    at = AppTest.from_file(HOME, default_timeout=120).run()
    assert not at.exception and len(at.error) == 1 and not _page_shown(at)


def test_a_readable_secrets_file_gates_and_a_missing_one_opens(dashboard_env, secrets_file):
    secrets_file.write_text(f'[dashboard]\npassword_hash = "{HASH}"\n', encoding="utf-8")
    at = AppTest.from_file(HOME, default_timeout=120).run()
    assert not at.exception and not _page_shown(at) and at.text_input
    _sign_in(at, SECRET)
    assert _page_shown(at)
    secrets_file.unlink()
    import streamlit
    from streamlit.runtime.secrets import Secrets

    streamlit.secrets = Secrets()  # the monkeypatch of the fixture puts the original back
    opened = AppTest.from_file(HOME, default_timeout=120).run()
    assert not opened.exception and _page_shown(opened)


def test_oidc_shows_only_the_sign_in_button_until_signed_in(dashboard_env):
    at = _app({"auth": OIDC}, user={"is_logged_in": False})
    assert not at.exception
    assert at.title[0].value == i18n.t("login_title", "zh") and not _page_shown(at)
    assert [b.label for b in at.button] == [i18n.t("login_oidc", "zh")]
    signed = _app({"auth": OIDC}, user={"is_logged_in": True, "email": "doc@example.org"})
    assert not signed.exception and _page_shown(signed)
    assert i18n.t("logout", "zh") in [b.label for b in signed.sidebar.button]


def test_oidc_with_named_providers_offers_one_button_each(dashboard_env):
    at = _app({"auth": {**OIDC_BASE, "google": PROVIDER, "okta": PROVIDER}}, user={"is_logged_in": False})
    assert not at.exception and not _page_shown(at)
    labels = [b.label for b in at.button]
    assert len(labels) == 2 and labels[0].endswith("google") and labels[1].endswith("okta")
