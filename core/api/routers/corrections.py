"""Corrections of a recorded run (:mod:`core.corrections`): ``PUT /v1/history/{id}/correction`` saves a new version
(a 0/255 PNG mask of the original size as the raw body or the multipart field ``mask``, or the JSON
``{"class_index": k, "reason": ...}``), ``GET /v1/history/{id}/corrections`` lists the versions, ``GET
/v1/history/{id}/corrections/{version}/mask`` returns a version's mask, ``GET /v1/corrections/agreement`` the
per-dataset agreement between the model and its correctors."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from core.api.deps import ServiceDep, in_worker, read_json
from core.corrections import Corrections, agreement, mask_png
from core.errors import NotFoundError, RequestError
from core.service import AnalysisService

router = APIRouter(tags=["corrections"])
RUN_ID = Path(..., ge=1, le=2**62, description="run id")
PNG_TYPES = ("image/png", "application/octet-stream")


def corrections_of(service: AnalysisService) -> Corrections:
    """The corrections of the service's history store and workspace."""
    return Corrections(service.settings, service.store)


async def _mask_bytes(request: Request, media: str) -> bytes:
    """The mask PNG of a raw body or of the multipart field ``mask`` (bounded by the body limit middleware)."""
    if media in PNG_TYPES:
        return await request.body()
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("mask")
        if not isinstance(upload, UploadFile):
            raise RequestError("the multipart body has no file field 'mask'", field="mask")
        return await upload.read()
    finally:
        await form.close()


@router.put("/v1/history/{run_id}/correction", summary="save a corrected mask or class as the run's next version")
async def put_correction(request: Request, service: ServiceDep, run_id: int = RUN_ID,
                         user: str | None = Query(None, max_length=80, description="who corrects (default: "
                                                  "anonymous)"),
                         reason: str | None = Query(None, max_length=500)) -> dict:
    media = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    store = corrections_of(service)
    if media == "application/json":
        body = await read_json(request)
        author = user if user is not None else (body.get("user") if isinstance(body, dict) else None)
        return await in_worker(request, lambda: store.correct_class(run_id, body, author=author))
    if media in (*PNG_TYPES, "multipart/form-data"):
        data = await _mask_bytes(request, media)
        return await in_worker(request, lambda: store.correct_mask(run_id, data, author=user, reason=reason))
    shown = f"{media[:60]!r}" if media else "a body without Content-Type"
    raise RequestError(f"PUT a correction as image/png, multipart/form-data (field 'mask') or application/json, "
                       f"not {shown}", status_code=415, field="content-type")


@router.get("/v1/history/{run_id}/corrections", summary="the correction versions of a run, oldest first")
async def get_corrections(request: Request, service: ServiceDep, run_id: int = RUN_ID) -> dict:
    versions = await in_worker(request, corrections_of(service).versions, run_id)
    return {"run_id": run_id, "count": len(versions), "versions": versions}


@router.get("/v1/history/{run_id}/corrections/{version}/mask", summary="a mask version of a run, as PNG (0/255)")
async def get_correction_mask(request: Request, service: ServiceDep, run_id: int = RUN_ID,
                              version: int = Path(..., ge=1, le=2**31 - 1)) -> Response:
    store = corrections_of(service)

    def read() -> bytes:
        found = [v for v in store.versions(run_id) if v["version"] == version]
        if not found:
            raise NotFoundError(f"run {run_id} has no correction version {version}", field="version")
        return mask_png(store.mask_of(found[0]))

    return Response(await in_worker(request, read), media_type="image/png")


@router.get("/v1/corrections/agreement", summary="per dataset: corrected runs, mean Dice, class agreement")
async def get_agreement(request: Request, service: ServiceDep,
                        since: str | None = Query(None, max_length=40, description="UTC ISO date/time")) -> dict:
    rows = await in_worker(request, lambda: agreement(service.store, since=since))
    return {"count": len(rows), "datasets": rows}
