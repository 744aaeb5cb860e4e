"""Request limits that hold whatever the client does: pure ASGI middleware, below every route.

* :class:`BodyLimit` answers 413 before reading a byte when ``Content-Length`` says the body is over the route's
  limit (uploads: ``max_upload_mb`` + 64 KiB of multipart framing; everything else: ``max_json_bytes``), and counts
  the bytes of a chunked body as they stream in, answering 413 as soon as the limit is passed: the body is never
  read to its end. A client that stops sending in the middle of a body for ``body_timeout_s`` gets 408 and the
  connection is closed. Before a 413 at most :data:`DRAIN_BYTES` more (for at most :data:`DRAIN_SECONDS`) are read
  and dropped, so that a small overshoot still lets the client read the answer instead of a reset connection; the
  connection is then closed and the rest of the body never read.
* :class:`TrustedHosts` is Starlette's ``TrustedHostMiddleware`` (``Settings.allowed_hosts``) answering a wrong
  ``Host`` with the project's error body (400) — the DNS-rebinding guard.
* :func:`content_type_refusal`: ``POST /v1/*`` takes ``application/json`` (predict, predict/batch) or
  ``multipart/form-data`` (upload) only, so a browser's cross-site "simple request" (``text/plain``, a form) is
  refused with 415; the earlier server's ``/segment/`` and ``/upload`` keep what its client sent (JSON, multipart).

Every refusal is :func:`core.errors.error_body` through the app's ``error_response``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import RequestError, UUSICError
from core.settings import Settings

UPLOAD_PATHS = frozenset({"/v1/upload", "/upload", "/v1/recognise"})  # multipart image bodies
MULTIPART_OVERHEAD = 64 * 1024  # bytes of multipart framing allowed on top of max_upload_mb
JSON_ROUTES = frozenset({"/v1/predict", "/v1/predict/batch", "/segment/", "/segment"})
DRAIN_BYTES = 256 * 1024  # after a 413: body bytes read and dropped before answering (a short lingering close)
DRAIN_SECONDS = 1.0
ErrorResponder = Callable[[BaseException, str], Response]


def body_limit(settings: Settings, path: str) -> int:
    """The most body bytes a request to ``path`` may send."""
    if path in UPLOAD_PATHS or (path.startswith("/v1/history/") and path.endswith("/correction")):  # a mask PNG
        return settings.max_upload_mb * 1024 * 1024 + MULTIPART_OVERHEAD
    return settings.max_json_bytes


def content_type_refusal(method: str, path: str, content_type: str | None) -> UUSICError | None:
    """415 for a body of the wrong kind on a POST route (cross-site simple requests included), else None."""
    if method.upper() != "POST":  # the API's only body method; others are 405 from the router
        return None
    if path in UPLOAD_PATHS:
        accepted: tuple[str, ...] = ("multipart/form-data",)
    elif path in JSON_ROUTES:
        accepted = ("application/json",)
    elif path.startswith("/v1/"):
        accepted = ("application/json", "multipart/form-data")
    else:
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in accepted:
        return None
    wanted = " or ".join(accepted)
    got = f"{media[:60]!r}" if media else "a body without Content-Type"
    return RequestError(f"POST {path[:80]} takes Content-Type: {wanted}, not {got}", status_code=415,
                        field="content-type")


class _BodyRefused(Exception):
    """Raised from ``receive`` into the app once the body is refused (the app's own answer is then dropped)."""


class BodyLimit:
    """Counts request body bytes as they arrive; 413 past the limit, 408 when the body stalls (see the module)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, respond: ErrorResponder):
        self.app, self.settings, self.respond = app, settings, respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = body_limit(self.settings, path)
        timeout = float(self.settings.body_timeout_s)
        state: dict[str, Any] = {"received": 0, "done": False, "refusal": None, "started": False}
        declared = _declared_length(scope)
        if declared is not None and declared > limit:  # refused by arithmetic, before reading the body
            state["refusal"] = RequestError(f"request body is {declared:,} bytes (Content-Length), over the "
                                            f"{limit:,} bytes limit for {path[:80]}", status_code=413)
            await self._answer(scope, receive, send, state, path)
            return

        async def guarded_receive() -> Message:
            if state["refusal"] is not None:
                raise _BodyRefused()
            if state["done"]:
                return await receive()  # after the body: only http.disconnect, no deadline
            try:
                with anyio.fail_after(timeout):
                    message = await receive()
            except TimeoutError:
                state["refusal"] = RequestError(
                    f"the request body stalled: nothing arrived for {timeout:g} s (UUSIC_BODY_TIMEOUT_S)",
                    status_code=408)
                raise _BodyRefused() from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
                if state["received"] > limit:
                    state["refusal"] = RequestError(
                        f"request body is over {limit:,} bytes, the limit for {path[:80]}", status_code=413)
                    raise _BodyRefused()
            elif message["type"] == "http.disconnect":
                state["done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if state["refusal"] is not None:
                return  # the app's answer to a refused body is replaced by ours
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if state["refusal"] is None:
                raise
        if state["refusal"] is not None and not state["started"]:
            await self._answer(scope, receive, send, state, path)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any], path: str) -> None:
        """Send the refusal: a 413 after a bounded drain (closing unless the body ended), anything else closing."""
        refusal = state["refusal"]
        close = True
        if refusal.status_code == 413 and not state["done"]:
            close = not await self._drain(receive, state)
        elif refusal.status_code == 413:
            close = False
        response = self.respond(refusal, path)
        if close:
            response.headers["connection"] = "close"
        await response(scope, _disconnected, send)

    @staticmethod
    async def _drain(receive: Receive, state: dict[str, Any]) -> bool:
        """Read and drop what is left of a refused body, within bounds; True when the body ended."""
        dropped, deadline = 0, time.monotonic() + DRAIN_SECONDS
        while dropped <= DRAIN_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with anyio.move_on_after(left):
                message = await receive()
                if message["type"] != "http.request":
                    return False
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
                continue
            return False
        return False


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (None when absent or not a number: the body is counted as it comes)."""
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 20 else None
    return None


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's host check (``Settings.allowed_hosts``; ``*`` = any), refusing with the project's error body."""

    _PASSED = "uusic.host_ok"

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str], respond: ErrorResponder):
        hosts = list(allowed_hosts)
        # Starlette keeps the brackets of an IPv6 Host ("[::1]:8000" → "[::1]"); accept the bare spelling too
        hosts += [f"[{h}]" for h in allowed_hosts if ":" in h and not h.startswith("[")]

        async def passed(scope: Scope, receive: Receive, send: Send) -> None:
            scope[self._PASSED] = True
            await app(scope, receive, send)

        super().__init__(passed, allowed_hosts=hosts, www_redirect=False)
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = False

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if scope.get(self._PASSED):
                await send(message)
            elif not refused and scope["type"] == "http":
                refused = True  # Starlette's plain-text 400 → the project's error body
                host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")[:100]
                error = RequestError(f"Host {host!r} is not served here; the API answers only the host names of "
                                     "UUSIC_ALLOWED_HOSTS", status_code=400, field="host")
                await self.respond(error, scope.get("path", ""))(scope, receive, send)
            elif not refused:
                await send(message)

        await super().__call__(scope, receive, guarded_send)
