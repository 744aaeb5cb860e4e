"""Inputs and outputs: ``POST /v1/upload``, ``GET /v1/random-sample``, ``GET /v1/masks/{path}``, a cine's
frames: ``GET /v1/frames?path=&index=`` (one frame as PNG), ``GET /v1/frames/info?path=`` (frame count, fps, size),
and what the dashboard reads from the data root (:mod:`core.data_root`): ``GET /v1/inputs/file?path=`` (an input's
bytes), ``GET /v1/inputs/json-files``, ``GET /v1/inputs/json?path=``, ``GET /v1/inputs/names?task=``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from pydantic import BaseModel

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


class JsonFiles(BaseModel):
    files: list[str]


class JsonEntries(BaseModel):
    entries: list[dict[str, Any]]


class KnownNames(BaseModel):
    names: dict[str, str]


@router.get("/v1/inputs/file", tags=["inputs"], summary="an input's bytes (data root or api_in/; DICOM de-identified)")
async def input_file(request: Request, service: ServiceDep,
                     path: str = Query(..., examples=["segmentation/DDTI/imgs/1.png"])) -> Response:
    data = await in_worker(request, service.input_file, path)
    return Response(data, media_type="application/octet-stream")


@router.get("/v1/inputs/json-files", tags=["inputs"], summary="the challenge JSON files under the data root")
async def json_files(request: Request, service: ServiceDep) -> JsonFiles:
    return JsonFiles(files=await in_worker(request, service.json_files))


@router.get("/v1/inputs/json", tags=["inputs"], summary="the request objects of one listed challenge JSON file")
async def json_entries(request: Request, service: ServiceDep,
                       path: str = Query(..., examples=["ground_truth.json"])) -> JsonEntries:
    return JsonEntries(entries=await in_worker(request, service.json_entries, path))


@router.get("/v1/inputs/names", tags=["inputs"], summary="file name (lower case) → dataset of the data root's entries")
async def known_names(request: Request, service: ServiceDep,
                      task: str = Query(..., examples=["segmentation"])) -> KnownNames:
    return KnownNames(names=await in_worker(request, service.known_names, task))
