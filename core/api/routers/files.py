"""Inputs and outputs: ``POST /v1/upload``, ``GET /v1/random-sample``, ``GET /v1/masks/{path}``, and a cine's
frames: ``GET /v1/frames?path=&index=`` (one frame as PNG), ``GET /v1/frames/info?path=`` (frame count, fps, size)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile

from core.api.deps import ServiceDep, in_worker, serve_file
from core.api.routers.history import png_response
from core.samples import check_upload_size, upload_limit
from core.service import AnalysisService

router = APIRouter()
UPLOAD_DOC = "PNG, JPEG, BMP, TIFF, GIF, DICOM (multi-frame kept) or a cine video (MP4, AVI, MOV, WebM, MKV)"


async def store_upload(request: Request, service: AnalysisService, file: UploadFile) -> dict:
    """Read at most the upload limit (plus one byte to tell) and store the image through the service."""
    name = file.filename or "upload"
    data = await file.read(upload_limit(service.settings) + 1)
    check_upload_size(service.settings, len(data), name)  # the one check (core.samples), before anything is kept
    return await in_worker(request, service.save_upload, data, name)


@router.post("/v1/upload", tags=["inputs"], summary="store an image in api_in/ and get its request skeleton")
async def upload(request: Request, service: ServiceDep, file: UploadFile = File(..., description=UPLOAD_DOC)) -> dict:
    return await store_upload(request, service, file)


@router.get("/v1/random-sample", tags=["inputs"], summary="request skeleton of a random image of a dataset")
def random_sample(service: ServiceDep, task: str = Query(..., examples=["segmentation"]),
                  dataset_name: str = Query(..., examples=["DDTI"])) -> dict:
    return service.random_sample(task, dataset_name)


@router.get("/v1/masks/{path:path}", tags=["outputs"], summary="a mask PNG written under api_out/")
def mask(path: str, service: ServiceDep) -> Any:
    return serve_file(service.settings.api_out, path, (".png",))


@router.get("/v1/frames/info", tags=["inputs"], summary="frame count, fps, width, height and format of an input")
async def frame_info(request: Request, service: ServiceDep,
                     path: str = Query(..., examples=["api_in/loop-ab12cd.dcm"])) -> dict:
    return await in_worker(request, service.probe, path)


@router.get("/v1/frames", tags=["inputs"], summary="one frame of an input (multi-frame DICOM, video) as PNG")
async def frame(request: Request, service: ServiceDep, path: str = Query(..., examples=["api_in/loop-ab12cd.mp4"]),
                index: int = Query(0, description="frame number, from 0")) -> Any:
    return png_response(await in_worker(request, service.load_frame, path, index))
