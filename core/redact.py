"""No secret in any message, log line or answer: the one way a database URL is shown.

:func:`redact_url` is the only function that turns a URL (``UUSIC_HISTORY_URL``, a store's URL) into text for a
person: SQLAlchemy's own rendering with the password hidden (``render_as_string(hide_password=True)``), every query
parameter whose name holds ``pass``, ``pwd``, ``secret``, ``token``, ``key``, ``auth`` or ``credential`` masked, an
unencoded ``@`` in the password read as part of the password (``u:p@ss@host``), and a URL it cannot read shown as
its scheme only (``postgresql+psycopg://***``). :func:`redact_text` applies it to every URL inside a text (an
exception's words, a driver's message) and takes out known secrets; with ``keep_location=False`` (HTTP answers) a
database URL keeps only its scheme: no user, host, database or file path.

This module imports nothing of the project, so settings, history, CLI, API and dashboard can all use it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

MASK = "***"
SECRET_KEY_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "credential")
WEB_SCHEMES = frozenset({"http", "https", "ws", "wss"})  # not databases: shown with their host (password hidden)
MIN_SECRET_CHARS = 3  # shorter "secrets" are not replaced inside texts (every text holds such letters)
MAX_URL_CHARS = 4096  # a longer "URL" is shown as its scheme only (and never fed to the backtracking pattern)

_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*)://")
# user[:password]@host[:port][/...]: the password runs to the first "@" that a host name follows, so an unencoded
# "@" inside it (u:p@ss@host) stays in the password; a user never holds "/" (sqlite:////a@b/x.db has no user).
_AUTHORITY = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@?#\s]*)(?::(?P<password>.*?))?@"
                        r"(?P<host>\[[^\]/?#\s]*\]|[^@/?#:\[\]\s]*)(?::\d*)?(?:[/?#].*)?\Z", re.S)
_HOST = re.compile(r"[A-Za-z0-9._~%:-]*")  # a host name, an IPv4 or an IPv6 address (zone included)
# A URL inside a text: scheme://, then (optionally) user:password@ where the password may hold spaces, quotes and
# "@" (up to the first "@" a host name follows), then everything up to a space or quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*://"
                          r"(?:[^\s/@'\"<>`:]*:[^\n]{0,256}?@(?=(?:\[[^\]\s]*\]|[A-Za-z0-9._~%-]+)(?::\d*)?"
                          r"(?:[/?#\s'\"),;]|$)))?"
                          r"[^\s'\"<>`]*")
_TRAILING = ".,;:!)]}"
_QUOTED_ABSOLUTE = re.compile(r"""(['"])(?:/|[A-Za-z]:[\\/])[^'"\n]*[\\/]([^'"\\/\n]*)\1""")
_BARE_ABSOLUTE = re.compile(r"""(?<![\w.~/:-])(?:/[^\s/'"]+)+/([^\s/'"]*)""")
_WINDOWS_ABSOLUTE = re.compile(r"""(?<![\w])[A-Za-z]:\\(?:[^\s\\'"]+\\)+([^\s\\'"]*)""")


def _scheme(text: str) -> str | None:
    match = _SCHEME.match(text)
    return match["scheme"] if match else None


def is_secret_key(name: str) -> bool:
    """Whether a query parameter named ``name`` may hold a secret (masked when shown)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def _encode_at_in_password(raw: str) -> str:
    """``raw`` with each ``@`` of its password percent-encoded (SQLAlchemy's parser ends a password at the first)."""
    match = _AUTHORITY.match(raw) if len(raw) <= MAX_URL_CHARS else None
    if match is None or not match["password"] or "@" not in match["password"]:
        return raw
    start, end = match.span("password")
    return raw[:start] + match["password"].replace("@", "%40") + raw[end:]


def parse_url(raw: str | URL) -> URL:
    """The SQLAlchemy URL of ``raw``, an unencoded ``@`` in the password read as part of it. Raises SQLAlchemy's
    ``ArgumentError`` or ``ValueError`` (a port that is not a number) for text that is no URL."""
    from sqlalchemy.engine import make_url

    return make_url(raw if not isinstance(raw, str) else _encode_at_in_password(raw.strip()))


def _mask_query(url: URL) -> URL:
    masked = {key: MASK for key in url.query if is_secret_key(key)}
    return url.update_query_dict(masked) if masked else url


def plausible(url: URL) -> bool:
    """Whether the parse can be trusted to have put every secret into the password or the query: a host that is a
    host name, and (servers) a database name without ``@``."""
    if url.host is not None and not _HOST.fullmatch(url.host):
        return False
    return url.get_backend_name() == "sqlite" or url.host is None or "@" not in (url.database or "")


def redact_url(url: str | URL | None) -> str:
    """``url`` as text for a message, a log line, a page or a CLI line: never its password nor a secret of its
    query; ``***`` for text that is not a URL, ``<scheme>://***`` for a URL that cannot be read safely."""
    if url is None:
        return ""
    raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    scheme = _scheme(raw.strip())
    if scheme is None:
        return MASK
    if len(raw) > MAX_URL_CHARS:
        return f"{scheme}://{MASK}"
    try:
        parsed = parse_url(url)
        if not plausible(parsed):
            return f"{scheme}://{MASK}"
        shown = _mask_query(parsed).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError (port), anything else: show the scheme only
        return f"{scheme}://{MASK}"
    return shown.replace(quote(MASK, safe=""), MASK)


def url_secrets(url: str | URL | None) -> list[str]:
    """The secrets of ``url`` (its password, its secret query values), as given and percent-encoded, longest first:
    what a driver's message must not repeat."""
    if not url:
        return []
    try:
        parsed = parse_url(url)
    except Exception:  # noqa: BLE001 - nothing readable: nothing known to take out
        return []
    found: list[str] = [str(parsed.password)] if parsed.password else []
    for key, value in parsed.query.items():
        if is_secret_key(key):
            found += [value] if isinstance(value, str) else list(value)
    forms = {form for secret in found for form in (secret, quote(secret, safe=""), quote(secret))}
    return sorted((form for form in forms if len(form) >= MIN_SECRET_CHARS), key=len, reverse=True)


def _holds_no_secret(raw: str) -> bool:
    """Whether ``raw`` is a URL read safely that has neither a password nor a secret query parameter."""
    try:
        parsed = parse_url(raw) if len(raw) <= MAX_URL_CHARS else None
    except Exception:  # noqa: BLE001 - unreadable: it may hold anything
        return False
    return (parsed is not None and plausible(parsed) and parsed.password is None
            and not any(is_secret_key(key) for key in parsed.query))


def _redact_match(match: re.Match[str], keep_location: bool) -> str:
    token = match.group(0)
    body = token.rstrip(_TRAILING)
    tail = token[len(body):]
    scheme = _scheme(body) or ""
    if scheme.lower() in WEB_SCHEMES and _holds_no_secret(body):
        return token  # a web address without secrets stays as written (no re-encoding of its path or fragment)
    if not keep_location and scheme.lower() not in WEB_SCHEMES:
        return f"{scheme}://{MASK}{tail}"
    return redact_url(body) + tail


def redact_text(text: Any, *, keep_location: bool = True, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it shown by :func:`redact_url` and each of ``secrets`` (e.g.
    :func:`url_secrets` of the URL a failure is about) replaced by ``***``. ``keep_location=False``: a URL that
    is not a web address keeps only its scheme (for HTTP answers: no database host, user or file path)."""
    out = str(text)
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda match: _redact_match(match, keep_location), out)


def scrub_paths(text: Any, folders: Iterable[str | Path]) -> str:
    """``text`` without server paths, the one path scrubber of every message: each of ``folders`` (as given,
    expanded and resolved) is cut from the paths it starts (a path inside it keeps its part inside), and any other
    absolute path keeps only its last part (quoted, bare and Windows forms)."""
    out = str(text)
    forms: set[str] = set()
    for folder in folders:
        for path in (Path(folder), Path(folder).expanduser()):
            forms.add(str(path))
            with contextlib.suppress(OSError, RuntimeError):
                forms.add(str(path.resolve()))
    absolute = (form for form in forms if Path(form).is_absolute() and len(Path(form).parts) > 1)  # never "/"
    for form in sorted(absolute, key=len, reverse=True):
        out = out.replace(form + os.sep, "").replace(form + "/", "").replace(form, "…")
    out = _QUOTED_ABSOLUTE.sub(r"\1\2\1", out)
    out = _BARE_ABSOLUTE.sub(r"\1", out)
    return _WINDOWS_ABSOLUTE.sub(r"\1", out)
