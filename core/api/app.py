"""The FastAPI app: middleware (Host allow-list, CORS, streamed body limits and timeout, API key, content types,
logs), error handlers, and the routers, over one service.

``create_app`` only assembles; every route is in :mod:`core.api.routers` and calls :class:`core.service.
AnalysisService`; the limits live in :mod:`core.api.limits` (see docs/SECURITY.md). Logs carry method, route,
status and time only: no image bytes, file names or request bodies.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.api.limits import DRAIN_BYTES, BodyLimit, TrustedHosts, body_limit, content_type_refusal
from core.api.routers import compat, files, history, inference, system
from core.errors import NotFoundError, RequestError, UUSICError, error_body
from core.service import AnalysisService
from core.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from core.engine import Engine

    Predictor = Callable[[Any], Awaitable[Any]]

log = logging.getLogger("uusic.api")
OPEN_PATHS = {"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
H11_MAX_HEADER_BYTES = 16 * 1024  # request line + headers; more is refused by uvicorn
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds
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
        if preload:
            try:
                await run_in_threadpool(lambda: service.batcher)  # loads the model, starts the batcher if wanted
            except UUSICError as exc:
                log.error("model not loaded: %s", exc.message)
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
    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m core serve [--host 127.0.0.1] [--port 8000]``."""
    parser = argparse.ArgumentParser(prog="python -m core serve", description="start the HTTP inference API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--micro-batch", choices=["auto", "on", "off"], default=None,
                        help="group concurrent requests into one forward pass (default: UUSIC_MICRO_BATCH, auto: "
                             "on CUDA only)")
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local: this process (uvicorn, default); ray: a Ray Serve deployment (needs "
                             "requirements-cluster.txt, see docs/DEPLOY.md)")
    ray_options = parser.add_argument_group("--backend ray")
    ray_options.add_argument("--address", default=None,
                             help="join the Ray cluster at ADDR (e.g. head-host:6379); default: start a local Ray")
    ray_options.add_argument("--replicas", default=None,
                             help="replicas, one loaded model each: N, or MIN-MAX to let Ray Serve add and remove "
                                  "replicas with the load (default 1)")
    ray_options.add_argument("--num-gpus-per-replica", type=float, default=None, help="GPUs per replica (default 0)")
    ray_options.add_argument("--num-cpus-per-replica", type=float, default=None, help="CPUs per replica (default 1)")
    args = parser.parse_args(argv)
    if args.backend == "ray":
        return _serve_on_ray(args)
    given = [flag for flag, value in (("--address", args.address), ("--replicas", args.replicas),
                                      ("--num-gpus-per-replica", args.num_gpus_per_replica),
                                      ("--num-cpus-per-replica", args.num_cpus_per_replica)) if value is not None]
    if given:
        parser.error(f"{', '.join(given)} only go with --backend ray")
    import uvicorn

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = _serve_settings(args)
    if settings is None:
        return 2
    try:
        app = create_app(settings, preload=True)
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # the workspace is a file, read-only, on a missing disk...
        print(f"error: the workspace {settings.workspace} cannot be used: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"serving on http://{args.host}:{args.port} (docs at /docs); workspace {settings.workspace}",
          file=sys.stderr, flush=True)
    # h11 (not httptools) so that the header size limit applies, with a deadline for each request head
    # (core.api.head_deadline); limit_concurrency answers 503 past UUSIC_MAX_CONNECTIONS connections + requests;
    # stalled bodies are cut by core.api.limits.BodyLimit
    from core.api.head_deadline import HeadDeadlineH11Protocol

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=HeadDeadlineH11Protocol.with_timeout(settings.head_timeout_s),
                timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES,
                limit_concurrency=settings.max_connections)
    return 0


def _serve_on_ray(args: argparse.Namespace) -> int:
    """``serve --backend ray``: the same app in the replicas of a Ray Serve deployment (:mod:`core.cluster.serve`)."""
    from core.cluster import import_ray, parse_replicas

    args.num_gpus_per_replica = args.num_gpus_per_replica or 0.0
    args.num_cpus_per_replica = args.num_cpus_per_replica or 1.0
    try:
        import_ray()
        args.replicas = parse_replicas(args.replicas)
        if args.num_gpus_per_replica < 0 or args.num_cpus_per_replica <= 0:
            raise RequestError("--num-gpus-per-replica must be >= 0 and --num-cpus-per-replica > 0")
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    from core.cluster.serve import serve_main

    settings = _serve_settings(args)
    return 2 if settings is None else serve_main(args, settings)


def _serve_settings(args: argparse.Namespace) -> Settings | None:
    """Logging set up and the settings of a ``serve`` command (None, with the error printed, when they are bad)."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        return settings.with_(micro_batch=args.micro_batch) if args.micro_batch else settings
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return None
