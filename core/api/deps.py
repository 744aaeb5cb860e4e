"""What the routers share: the app's service, the bounded inference thread pool, JSON bodies, file serving."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Request
from fastapi.responses import FileResponse

from core.errors import NotFoundError, PathError, RequestError
from core.schema import loads_json
from core.service import AnalysisService

# worker threads for decoding, the forward pass (serialised by the engine) and writing masks: enough to overlap
# I/O with compute, few enough to keep memory flat (every thread that touches torch / PIL grows its own arenas)
INFERENCE_THREADS = max(2, min(8, 2 * (os.cpu_count() or 1)))
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".json": "application/json"}
T = TypeVar("T")


def get_service(request: Request) -> AnalysisService:
    """The app's one :class:`AnalysisService`."""
    return request.app.state.service


ServiceDep = Annotated[AnalysisService, Depends(get_service)]


async def in_worker(request: Request, function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in the app's inference thread pool (bounded), off the event loop."""
    state = request.app.state
    if getattr(state, "limiter", None) is None:  # created inside the running event loop
        state.limiter = anyio.CapacityLimiter(INFERENCE_THREADS)
    return await anyio.to_thread.run_sync(function, *args, limiter=state.limiter)


async def read_json(request: Request) -> Any:
    """The request body as JSON, with a clear 4xx for an empty, oversized or malformed body."""
    limit = request.app.state.service.settings.max_json_bytes
    body = await request.body()
    if len(body) > limit:
        raise RequestError(f"request body is {len(body):,} bytes; the limit is {limit:,}", status_code=413)
    if not body:
        raise RequestError("request body is empty; send the request JSON object")
    return loads_json(body, what="request body")  # 400 when not JSON or nested deeper than MAX_JSON_DEPTH


def serve_file(root: Path, rel: str, suffixes: tuple[str, ...]) -> FileResponse:
    """A file under ``root`` named by a relative path; anything leading outside, or of another kind, is refused."""
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not parts or ".." in parts or PurePosixPath(rel).is_absolute() or "\x00" in rel:
        raise PathError(f"path {rel!r} is not allowed", field="path")
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if not target.is_relative_to(base):
        raise PathError(f"path {rel!r} leads outside its folder", field="path")
    if target.suffix.lower() not in suffixes:
        raise PathError(f"only {', '.join(suffixes)} files are served here", field="path")
    if not target.is_file():
        raise NotFoundError(f"no file at {rel!r}", field="path")
    return FileResponse(target, media_type=MEDIA_TYPES.get(target.suffix.lower(), "application/octet-stream"))
