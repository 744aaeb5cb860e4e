"""The run history: ``GET /v1/history`` (+ ``.csv``), ``/v1/history/{id}``, its image and mask, its case report
(``report.pdf``) and, for a segmentation of a DICOM input, its DICOM SEG (``seg.dcm``)."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from PIL import Image

from core.api.deps import ServiceDep, in_worker
from core.history import decode_row
from core.service import AnalysisService

router = APIRouter(tags=["history"])
RUN_ID = Path(..., ge=1, le=2**62, description="run id")
UTC_DOC = "UTC ISO date/time, inclusive"


def _filters(task: str | None, dataset_name: str | None, organ: str | None, q: str | None, since: str | None,
             until: str | None, source: str | None, corrected: bool | None = None) -> dict:
    return {"task": task, "dataset_name": dataset_name, "organ": organ, "text": q, "since": since,
            "until": until, "source": source, "corrected": corrected}


@router.get("/v1/history", summary="recorded runs, newest first, filtered")
def history(service: ServiceDep, task: str | None = None, dataset_name: str | None = None,
            organ: str | None = None, q: str | None = Query(None, description="text in the image name"),
            since: str | None = Query(None, description=UTC_DOC), until: str | None = Query(None, description=UTC_DOC),
            source: str | None = None, limit: int = Query(100, ge=1, le=10000), corrected: bool | None = None) -> dict:
    rows = service.runs(_filters(task, dataset_name, organ, q, since, until, source, corrected), limit=limit)
    return {"count": len(rows), "runs": [decode_row(r) for r in rows]}


@router.get("/v1/history.csv", summary="the filtered runs as CSV", response_class=PlainTextResponse)
def history_csv(service: ServiceDep, task: str | None = None, dataset_name: str | None = None,
                organ: str | None = None, q: str | None = None, since: str | None = None, until: str | None = None,
                source: str | None = None, limit: int = Query(10000, ge=1, le=100000),
                corrected: bool | None = None) -> PlainTextResponse:
    text = service.runs_csv(_filters(task, dataset_name, organ, q, since, until, source, corrected), limit=limit)
    return PlainTextResponse(text, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="uusic_history.csv"'})


@router.get("/v1/history/{run_id}", summary="one recorded run")
def history_run(service: ServiceDep, run_id: int = RUN_ID) -> dict:
    return service.run(run_id)


def png_response(pixels: np.ndarray) -> Response:
    """A PNG of an RGB image or a boolean mask (0/255)."""
    array = pixels.astype(np.uint8) * 255 if pixels.dtype == bool else pixels
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return Response(buffer.getvalue(), media_type="image/png")


@router.get("/v1/history/{run_id}/image", summary="the analysed image of a run, as PNG")
async def history_image(request: Request, service: ServiceDep, run_id: int = RUN_ID) -> Response:
    return png_response(await in_worker(request, service.run_image, run_id))


@router.get("/v1/history/{run_id}/mask", summary="the predicted mask of a segmentation run, as PNG (0/255)")
async def history_mask(request: Request, service: ServiceDep, run_id: int = RUN_ID) -> Response:
    return png_response(await in_worker(request, service.run_mask, run_id))


@router.get("/v1/history/{run_id}/report.pdf", summary="the case report of a run, as PDF (lang zh or en)",
            response_class=Response)
async def history_report(request: Request, service: ServiceDep, run_id: int = RUN_ID,
                         lang: str = Query("en", description="report language: zh or en")) -> Response:
    data = await in_worker(request, service.report_pdf, run_id, lang)
    return Response(data, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="uusic_run_{run_id}_{lang}.pdf"'})


@router.get("/v1/history/{run_id}/seg.dcm", summary="a DICOM SEG of a segmentation run's mask (DICOM inputs only)",
            response_class=Response)
async def history_seg(request: Request, service: ServiceDep, run_id: int = RUN_ID) -> Response:
    data = await in_worker(request, service.dicom_seg, run_id)
    return Response(data, media_type="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="uusic_run_{run_id}_seg.dcm"'})


__all__ = ["AnalysisService", "router"]
