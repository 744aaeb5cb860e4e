"""Dashboard login settings, password hashes and the back-off on wrong attempts (no streamlit here; the gate lives
in ``pages/common.py``).

Two ways to protect the dashboard, configured in ``.streamlit/secrets.toml`` (never committed) — one of them:

* OIDC through Streamlit's ``st.login``: an ``[auth]`` section with ``redirect_uri`` and ``cookie_secret`` and one
  identity provider, either directly (``client_id``, ``client_secret``, ``server_metadata_url``) or as named
  sub-sections (``[auth.google]`` …), see Streamlit's authentication docs.
* A shared password: ``[dashboard]`` with ``password_hash = "$argon2id$..."``, made by
  ``python -m core.auth hash`` (reads the password from stdin or asks for it, prints the hash).

With neither section the dashboard is open (the default for a workstation on loopback). A section that is present
but unusable — wrong types, an empty or unknown hash, a half-configured provider, both sections, a plain
``password`` — is an :class:`AuthConfigError`: the dashboard refuses to serve rather than run without a login.

The unsalted ``password_sha256`` of release 1 is still read, with a warning in the log and on every page (an
unsalted sha256 of a password is cheap to brute-force when the file leaks): replace it with ``password_hash``.

Wrong passwords are slowed down twice, per browser session and per process (:class:`Backoff`): after 3 failures
each further attempt waits 1, 2, 4 … seconds, at most 30.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import AuthConfigError

log = logging.getLogger("uusic.auth")

ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
DASHBOARD_KEYS = ("password_hash", "password_sha256")
OIDC_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
OIDC_NOT_PROVIDERS = ("client_kwargs",)  # sub-tables of [auth] that are options, not providers
MAX_PASSWORD_CHARS = 1024  # longer input is refused before hashing (no multi-megabyte argon2 inputs)
MIN_NEW_PASSWORD_CHARS = 8
HASH_HELP = "make one with `python -m core.auth hash`"
LEGACY_SHA256_WARNING = (
    "the dashboard password is stored as an unsalted sha256 ([dashboard] password_sha256), which is cheap to "
    f"brute-force if the secrets file leaks: replace it with password_hash ({HASH_HELP})"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LoginConfig:
    """What the dashboard's gate needs: the mode and its checked settings."""

    mode: str  # "none", "password" or "oidc"
    password_hash: str | None = None  # argon2, PHC string
    password_sha256: str | None = None  # legacy, lower-case hex
    providers: tuple[str, ...] = ()  # OIDC: "" is the default provider ([auth] itself), else sub-section names
    warnings: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        """Differs whenever the credential changes: a signed-in session ends when the password is replaced."""
        material = "|".join([self.mode, self.password_hash or "", self.password_sha256 or "", *self.providers])
        return hashlib.sha256(material.encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- configuration
def login_config(secrets: Any) -> LoginConfig:
    """The checked login settings of a secrets mapping; :class:`AuthConfigError` when they are unusable."""
    if secrets is None:
        return LoginConfig("none")
    if not isinstance(secrets, Mapping):
        raise AuthConfigError("the secrets are not a TOML table")
    auth, dashboard = secrets.get("auth"), secrets.get("dashboard")
    providers = _oidc_providers(auth) if auth is not None else ()
    password = _password_settings(dashboard) if dashboard is not None else None
    if providers and password is not None:
        raise AuthConfigError("both [auth] (OIDC sign-in) and [dashboard] (password) are configured; keep one")
    if providers:
        return LoginConfig("oidc", providers=providers)
    if password is not None:
        return password
    return LoginConfig("none")


def login_mode(secrets: Any) -> str:
    """``"oidc"``, ``"password"`` or ``"none"`` (raises :class:`AuthConfigError` like :func:`login_config`)."""
    return login_config(secrets).mode


def _text(section: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise AuthConfigError(f"[{section}] {key} must be a string, not {_type_name(value)}")
    text = value.strip()
    if not text:
        raise AuthConfigError(f"[{section}] {key} is empty")
    return text


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _password_settings(dashboard: Any) -> LoginConfig:
    if not isinstance(dashboard, Mapping):
        raise AuthConfigError(f"[dashboard] must be a table, not {_type_name(dashboard)}")
    keys = [str(k) for k in dashboard]
    if "password" in keys:
        raise AuthConfigError(f"[dashboard] password (plain text) is not accepted: store password_hash ({HASH_HELP})")
    unknown = sorted(k for k in keys if k not in DASHBOARD_KEYS)
    if unknown:
        raise AuthConfigError(f"unknown key(s) in [dashboard]: {', '.join(unknown)}; expected password_hash")
    if "password_hash" in keys and "password_sha256" in keys:
        raise AuthConfigError("[dashboard] has both password_hash and password_sha256; keep password_hash only")
    if "password_hash" in keys:
        return LoginConfig("password", password_hash=_argon2_hash(dashboard["password_hash"]))
    if "password_sha256" in keys:
        digest = _text("dashboard", "password_sha256", dashboard["password_sha256"]).lower()
        if not _SHA256.fullmatch(digest):
            raise AuthConfigError("[dashboard] password_sha256 is not 64 hexadecimal digits")
        return LoginConfig("password", password_sha256=digest, warnings=(LEGACY_SHA256_WARNING,))
    raise AuthConfigError(f"[dashboard] has no password_hash ({HASH_HELP}); remove the section for an open dashboard")


def _argon2_hash(value: Any) -> str:
    from argon2 import extract_parameters
    from argon2.exceptions import InvalidHashError

    text = _text("dashboard", "password_hash", value)
    if not text.startswith(ARGON2_PREFIXES):
        scheme = text.split("$")[1] if text.startswith("$") and text.count("$") >= 2 else ""
        named = f" ({scheme!r})" if re.fullmatch(r"[A-Za-z0-9-]{1,16}", scheme) else ""
        raise AuthConfigError(f"[dashboard] password_hash uses an unknown hash scheme{named}: expected an argon2 "
                              f"hash ($argon2id$…); {HASH_HELP}")
    try:
        extract_parameters(text)
    except (InvalidHashError, ValueError):
        raise AuthConfigError(f"[dashboard] password_hash is not a valid argon2 hash; {HASH_HELP}") from None
    return text


def _oidc_providers(auth: Any) -> tuple[str, ...]:
    """The identity providers of an ``[auth]`` section ("" = the default one), each fully configured."""
    if not isinstance(auth, Mapping):
        raise AuthConfigError(f"[auth] must be a table, not {_type_name(auth)}")
    for key in ("redirect_uri", "cookie_secret"):
        if key not in auth:
            raise AuthConfigError(f"[auth] lacks {key} (OIDC sign-in needs redirect_uri, cookie_secret and a provider)")
        _text("auth", key, auth[key])
    if not re.match(r"https?://", str(auth["redirect_uri"]).strip()):
        raise AuthConfigError("[auth] redirect_uri must be an http(s) URL")
    providers: list[str] = []
    if any(key in auth for key in OIDC_PROVIDER_KEYS):
        _provider("auth", auth)
        providers.append("")
    for name, value in auth.items():
        if isinstance(value, Mapping) and str(name) not in OIDC_NOT_PROVIDERS:
            _provider(f"auth.{name}", value)
            providers.append(str(name))
    if not providers:
        raise AuthConfigError("[auth] configures no identity provider (client_id, client_secret, "
                              "server_metadata_url, directly or in [auth.<provider>])")
    return tuple(providers)


def _provider(section: str, table: Mapping) -> None:
    missing = [key for key in OIDC_PROVIDER_KEYS if key not in table]
    if missing:
        raise AuthConfigError(f"[{section}] is half-configured: it lacks {', '.join(missing)}")
    for key in OIDC_PROVIDER_KEYS:
        _text(section, key, table[key])
    if not re.match(r"https?://", str(table["server_metadata_url"]).strip()):
        raise AuthConfigError(f"[{section}] server_metadata_url must be an http(s) URL")


# ---------------------------------------------------------------------------------------------- passwords
def hash_password(password: str) -> str:
    """An argon2id hash (PHC string, random salt) for ``[dashboard] password_hash``."""
    from argon2 import PasswordHasher

    if not isinstance(password, str) or not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_CHARS} characters")
    return PasswordHasher().hash(password)


def password_matches(candidate: Any, config: LoginConfig | Mapping) -> bool:
    """Whether ``candidate`` is the dashboard password of ``config`` (a :class:`LoginConfig` or a ``[dashboard]``
    table). argon2 verification; the legacy sha256 in constant time; anything odd is simply ``False``."""
    if isinstance(config, Mapping):
        try:
            config = _password_settings(config)
        except AuthConfigError:
            return False
    if not isinstance(candidate, str) or not candidate or len(candidate) > MAX_PASSWORD_CHARS:
        return False
    if config.password_hash:
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return bool(PasswordHasher().verify(config.password_hash, candidate))
        except (VerificationError, InvalidHashError, ValueError):
            return False
    if config.password_sha256:
        digest = hashlib.sha256(candidate.encode("utf-8")).hexdigest()
        return hmac.compare_digest(digest, config.password_sha256)
    return False


# ---------------------------------------------------------------------------------------------- back-off
def _now() -> float:
    """The clock of every :class:`Backoff` (tests replace it)."""
    return time.monotonic()


class Backoff:
    """Exponential back-off after repeated failures.

    Fewer than ``free`` failures cost nothing; the ``free``-th and each further one make the next attempt wait
    ``base`` · 2^k seconds (1, 2, 4 …), at most ``cap``. ``forget_after`` seconds without a failure start over; so does
    :meth:`succeeded`. Thread-safe (one instance serves every session of a process).
    """

    def __init__(self, *, free: int = 3, base: float = 1.0, cap: float = 30.0, forget_after: float = 900.0):
        self.free, self.base, self.cap, self.forget_after = free, base, cap, forget_after
        self.failures = 0
        self._until = 0.0
        self._last = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Seconds until the next attempt may be checked (0: now)."""
        with self._lock:
            now = _now()
            self._forget(now)
            return max(0.0, self._until - now)

    def failed(self) -> float:
        """Count one failure; returns the wait it imposes on the next attempt."""
        with self._lock:
            now = _now()
            self._forget(now)
            self.failures += 1
            self._last = now
            delay = self.delay(self.failures)
            self._until = now + delay
            return delay

    def succeeded(self) -> None:
        with self._lock:
            self.reset_locked()

    def reset(self) -> None:
        with self._lock:
            self.reset_locked()

    def reset_locked(self) -> None:
        self.failures, self._until, self._last = 0, 0.0, 0.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures: 0 below ``free``, then 1, 2, 4 … s, at most ``cap``."""
        over = failures - self.free
        if over < 0:
            return 0.0
        return float(min(self.cap, self.base * 2 ** min(over, 32)))

    def _forget(self, now: float) -> None:
        if self.failures and now - self._last > max(self.forget_after, self._until - self._last):
            self.reset_locked()


PROCESS_BACKOFF = Backoff()  # every browser session of this process together


# ---------------------------------------------------------------------------------------------- command line
def _read_new_password() -> str:
    if not sys.stdin.isatty():
        text = sys.stdin.readline()
        return text[:-1] if text.endswith("\n") else text
    import getpass

    first = getpass.getpass("Dashboard password: ")
    if getpass.getpass("Repeat it: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _check_file(path: str) -> int:
    import tomllib
    from pathlib import Path

    try:
        secrets = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"{path}: not found; the dashboard is open (no login)")
        return 0
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"{path}: cannot be read ({exc}); the dashboard refuses to serve", file=sys.stderr)
        return 1
    try:
        config = login_config(secrets)
    except AuthConfigError as exc:
        print(f"{path}: {exc}; the dashboard refuses to serve", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: login mode {config.mode}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m core.auth hash`` prints an argon2 hash of a password read from stdin (or asked for);
    ``python -m core.auth check [.streamlit/secrets.toml]`` says which login a secrets file configures."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.auth", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash", help="print an argon2 hash for [dashboard] password_hash")
    check = commands.add_parser("check", help="check the login settings of a secrets file")
    check.add_argument("path", nargs="?", default=".streamlit/secrets.toml")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check_file(args.path)
    try:
        password = _read_new_password()
        if len(password) < MIN_NEW_PASSWORD_CHARS:
            raise ValueError(f"use at least {MIN_NEW_PASSWORD_CHARS} characters")
        print(hash_password(password))
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        print(f"no hash made: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
