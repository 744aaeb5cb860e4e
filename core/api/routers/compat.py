"""The team's earlier server (``webServerWSP.py``): ``POST /segment/``, ``POST /upload``, ``GET /random_sample/``,
``GET /staticapi_out/{path}``, ``GET /staticapi_in/{path}`` — same service, its body shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Query, Request, UploadFile

from core import catalog
from core.api.deps import ServiceDep, in_worker, read_json, serve_file
from core.api.routers.files import store_upload
from core.api.routers.inference import REQUEST_SCHEMA
from core.errors import NotFoundError, RequestError
from core.response import RESOURCE_FIELDS
from core.service import AnalysisService

router = APIRouter(tags=["compatibility"])
COMPAT_PATHS = {"/segment/", "/segment", "/upload", "/random_sample/", "/random_sample"}


def compat_request(raw: Any) -> dict:
    """The earlier server's body → this schema: tolerate its quirks, keep everything else strict."""
    if not isinstance(raw, dict):
        raise RequestError(f"request must be a JSON object, got {type(raw).__name__}")
    body = dict(raw)
    rel = body.get("img_path_relative")
    if isinstance(rel, str) and rel.replace("\\", "/").startswith("data/"):
        body["img_path_relative"] = rel.replace("\\", "/")[5:]  # its data root was ./data
    if not isinstance(body.get("seg_target_info"), (str, type(None))):
        body.pop("seg_target_info")  # it was typed dict there
    for name in ("mask_name", "mask_path_relative"):
        if body.get(name) == "":
            body[name] = None
    task, dataset_name = body.get("task"), body.get("dataset_name")
    if isinstance(task, str) and isinstance(dataset_name, str):
        try:
            dataset = catalog.find_dataset(task.strip().lower(), dataset_name)
        except catalog.UnknownDataset:
            dataset = None
        if dataset is not None and str(body.get("organ") or "").lower() != dataset.organ.lower():
            body["organ"] = None  # its random_sample/ put the dataset name in "organ"
    return body


def segment_answer(raw: dict, response: dict) -> dict:
    """The earlier server's answer: the request echoed, the results added."""
    result = dict(raw)
    if response["task"] == "classification":
        result.update(probability=response["probability"], prediction=response["prediction"],
                      label_name=response.get("label_name"))
    else:
        result.update(mask_name=response["mask_name"], mask_path_relative=f"api_out/{response['mask_path_relative']}",
                      mask_path_absolute=response["mask_path"], mask_area_px=response.get("mask_area_px"),
                      measurements=response.get("measurements"))
    for name in RESOURCE_FIELDS:
        result[name] = response.get(name)
    result.update(device=response.get("device"), model_name=response.get("model_name"),
                  run_id=response.get("run_id"))
    if (response.get("recognition") or {}).get("routed"):  # no dataset given: the organ recogniser chose it
        result.update(dataset_name=response["dataset_name"], organ=response.get("organ"),
                      recognition=response["recognition"])
    return result


def segment_one(service: AnalysisService, raw: Any) -> dict:
    request = compat_request(raw)
    return segment_answer(raw, service.analyze(request, source="api").to_json())


@router.post("/segment/", summary="earlier server: analyse one image (both tasks)",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": REQUEST_SCHEMA}}}})
async def segment(request: Request, service: ServiceDep) -> dict:
    raw = await read_json(request)
    return await in_worker(request, segment_one, service, raw)


@router.post("/upload", summary="earlier server: store an image in api_in/")
async def upload(request: Request, service: ServiceDep, file: UploadFile = File(...)) -> dict:
    return await store_upload(request, service, file)


@router.get("/random_sample/", summary="earlier server: a random image of a dataset")
def random_sample(service: ServiceDep, task: str = Query(...), dataset_name: str = Query(...)) -> dict:
    task = task.strip().lower()
    for name in (dataset_name, f"private_{dataset_name}"):  # one of its versions prefixed private_
        try:
            return service.random_sample(task, name)
        except (RequestError, NotFoundError):
            continue
    return service.random_sample(task, dataset_name)


@router.get("/staticapi_out/{path:path}", summary="earlier server: files under api_out/")
def static_out(path: str, service: ServiceDep) -> Any:
    return serve_file(service.settings.api_out, path, (".png",))


@router.get("/staticapi_in/{path:path}", summary="earlier server: files under api_in/")
def static_in(path: str, service: ServiceDep) -> Any:
    return serve_file(service.settings.api_in, path, (".png", ".jpg", ".jpeg"))
