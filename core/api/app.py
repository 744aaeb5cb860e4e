"""The FastAPI app: middleware (Host allow-list, CORS, streamed body limits and timeout, API key, content types,
logs), error handlers, and the routers, over one service.

``create_app`` only assembles; every route is in :mod:`core.api.routers` and calls :class:`core.service.
AnalysisService`; the limits live in :mod:`core.api.limits` (see docs/SECURITY.md). Logs carry method, route,
status and time only: no image bytes, file names or request bodies.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.api.limits import DRAIN_BYTES, BodyLimit, TrustedHosts, body_limit, content_type_refusal
from core.api.routers import compat, corrections, files, history, inference, pacs, system
from core.errors import NotFoundError, RequestError, UUSICError, error_body
from core.service import AnalysisService
from core.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.engine import Engine

    Predictor = Callable[[Any], Awaitable[Any]]

log = logging.getLogger("uusic.api")
OPEN_PATHS = {"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
DESCRIPTION = "Universal ultrasound classification and segmentation (UUSIC25 request JSON)."


def error_response(exc: BaseException, path: str) -> JSONResponse:
    """The one error body (:func:`core.errors.error_body`); the earlier server's routes also get ``error``."""
    body = error_body(exc)
    if path in compat.COMPAT_PATHS:  # the earlier server answered {"error": "..."}
        body["error"] = body["detail"]
    headers = {"WWW-Authenticate": "Bearer"} if body["status_code"] == 401 else None
    return JSONResponse(body, status_code=body["status_code"], headers=headers)


def _validation_error(exc: RequestValidationError) -> RequestError:
    parts, first = [], None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        name = ".".join(loc) or None
        first = first or name
        msg = "required field is missing" if error.get("type") == "missing" else error.get("msg", "invalid")
        parts.append(f"{name}: {msg}" if name else msg)
    return RequestError("invalid request: " + "; ".join(parts), field=first)


def _refusal(request: Request, settings: Settings) -> UUSICError | None:
    """Why the guard refuses ``request`` before it reaches a route (API key, declared body size), or None."""
    path = request.url.path
    if settings.api_key and path not in OPEN_PATHS and request.method != "OPTIONS":
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            return UUSICError("missing or wrong API key (send X-API-Key or Authorization: Bearer)", status_code=401)
    refusal = content_type_refusal(request.method, path, request.headers.get("content-type"))
    if refusal is not None:
        return refusal
    limit = body_limit(settings, path)
    length = request.headers.get("content-length")
    if length is None:
        return None
    if not length.isdigit():
        return RequestError("invalid Content-Length header", status_code=400)
    if int(length) > limit:
        return RequestError(f"request body is {int(length):,} bytes; the limit is {limit:,}", status_code=413)
    return None


def _install_handlers(app: FastAPI, settings: Settings) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        refusal = _refusal(request, settings)
        if refusal is not None:
            response = error_response(refusal, request.url.path)
            length = request.headers.get("content-length") or "0"
            if not length.isdigit() or int(length) > body_limit(settings, request.url.path) + DRAIN_BYTES:
                response.headers["connection"] = "close"  # do not let the server drain a huge declared body
            return response
        response = await call_next(request)
        route = request.scope.get("route")
        log.info("%s %s %s %.1f ms", request.method, getattr(route, "path", "?"), response.status_code,
                 (time.perf_counter() - start) * 1000)
        return response

    @app.exception_handler(UUSICError)
    async def uusic_error(request: Request, exc: UUSICError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own refusals (unknown route 404, 405, a multipart body it cannot parse) in the one error body
        kind = NotFoundError if exc.status_code == 404 else RequestError if exc.status_code < 500 else UUSICError
        response = error_response(kind(str(exc.detail), status_code=exc.status_code), request.url.path)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc), request.url.path)

    @app.exception_handler(OSError)
    async def storage_error(request: Request, exc: OSError) -> JSONResponse:
        # a read-only / full / replaced workspace: 500 or 507 naming no server path (core.errors.workspace_error);
        # the log gets the reason, not the file name (names may be patients')
        route = getattr(request.scope.get("route"), "path", "?")
        log.error("file-system error on %s %s: %s (errno %s)", request.method, route,
                  exc.strerror or type(exc).__name__, exc.errno)
        return error_response(exc, request.url.path)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.method)
        return error_response(exc, request.url.path)


def _preload(service: AnalysisService) -> None:
    """Load the default model and start its micro-batcher if wanted; a failure is logged, the server keeps running
    (the requests then get the model's error)."""
    try:
        service.batcher  # noqa: B018 - the property loads the model
    except UUSICError as exc:
        log.error("model not loaded: %s", exc.message)
    except Exception:  # noqa: BLE001 - a background thread must not die silently
        log.exception("model not loaded")


def create_app(settings: Settings | None = None, engine: Engine | None = None, *,
               service: AnalysisService | None = None, preload: bool = False,
               micro_batch: bool | None = None, predictor: Predictor | None = None) -> FastAPI:
    """The FastAPI app over ``service`` (default: a new :class:`AnalysisService` for ``settings``).

    ``engine``: an already loaded engine to serve; ``micro_batch``: group concurrent requests into one forward pass
    (``None``: ``UUSIC_MICRO_BATCH``, whose ``auto`` means only when the model is on CUDA); ``predictor``: an async
    callable that answers ``POST /v1/predict`` bodies instead of the route's own call to the service (a Ray Serve
    replica's batched method, :mod:`core.cluster.serve`); None for the plain server.
    """
    if service is None:
        service = AnalysisService(settings or Settings.from_env(), engine=engine, micro_batch=micro_batch)
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preload:  # listen now; the model loads meanwhile (a request waits for it, /healthz says model_loaded)
            threading.Thread(target=_preload, args=(service,), daemon=True, name="uusic-preload").start()
        yield

    app = FastAPI(title="UUSIC Viewer inference API", version="2.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.service, app.state.settings, app.state.limiter = service, settings, None
    app.state.predictor = predictor
    _install_handlers(app, settings)
    # outermost last: Host allow-list → CORS → streamed body limit / stall timeout → guard (key, type, length)
    app.add_middleware(BodyLimit, settings=settings, respond=error_response)
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                       allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Authorization", "Content-Type"])
    app.add_middleware(TrustedHosts, allowed_hosts=list(settings.allowed_hosts), respond=error_response)
    for router in (system.router, inference.router, files.router, history.router, compat.router):
        app.include_router(router)
    app.include_router(corrections.router)  # PUT/GET /v1/history/{id}/correction(s) (core.corrections)
    app.include_router(pacs.router)  # /v1/pacs/… (core.pacs): studies in from a PACS, results back
    return app
