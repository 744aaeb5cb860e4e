"""Dashboard login settings and password checks (no streamlit here; the gate lives in ``pages/common.py``).

Two ways to protect the dashboard, both configured in ``.streamlit/secrets.toml`` (never committed):

* OIDC through Streamlit's ``st.login``: an ``[auth]`` section (``redirect_uri``, ``cookie_secret``,
  ``client_id``, ``client_secret``, ``server_metadata_url``) — see Streamlit's authentication docs.
* A shared password: ``[dashboard]`` with ``password_sha256 = "<hex sha256 of the password>"`` (preferred) or
  ``password = "..."``.

With neither, the dashboard is open (the default for a workstation on loopback).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def login_mode(secrets: Mapping) -> str:
    """``"oidc"``, ``"password"`` or ``"none"`` from a secrets mapping."""
    auth = secrets.get("auth") if hasattr(secrets, "get") else None
    if auth and (auth.get("client_id") or any(isinstance(v, Mapping) and v.get("client_id") for v in auth.values())):
        return "oidc"
    dashboard = secrets.get("dashboard") if hasattr(secrets, "get") else None
    if dashboard and (dashboard.get("password_sha256") or dashboard.get("password")):
        return "password"
    return "none"


def password_matches(candidate: str, dashboard: Mapping) -> bool:
    """Constant-time check of ``candidate`` against ``password_sha256`` (or a plain ``password``)."""
    if not candidate:
        return False
    expected_hash = str(dashboard.get("password_sha256") or "").strip().lower()
    if expected_hash:
        digest = hashlib.sha256(candidate.encode("utf-8")).hexdigest()
        return hmac.compare_digest(digest, expected_hash)
    expected = str(dashboard.get("password") or "")
    return bool(expected) and hmac.compare_digest(candidate.encode("utf-8"), expected.encode("utf-8"))
