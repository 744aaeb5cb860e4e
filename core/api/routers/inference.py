"""``POST /v1/predict`` (one image), ``POST /v1/predict/batch`` (several) and ``POST /v1/predict/frames`` (the frames
of one cine), all through the service; ``POST /v1/recognise``: what the organ recogniser makes of an image (the
dashboard's suggestion). A request without ``dataset_name`` is routed by the recogniser (:mod:`core.auto_route`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Request, UploadFile
from pydantic import BaseModel

from core.api.deps import ServiceDep, in_worker, read_json
from core.errors import RequestError
from core.history import SOURCES
from core.recognition import Recognition
from core.response import AnalysisResponse
from core.samples import check_upload_size, upload_limit
from core.schema import parse_request_list, request_json_schema
from core.service import AnalysisService

router = APIRouter(tags=["inference"])
REQUEST_SCHEMA = request_json_schema()  # dataset_name optional: routed by the organ recogniser
ENVELOPE_DOC = ("The body is the request JSON itself, or an envelope {\"request\": {...}, \"source\": "
                "\"dashboard\", \"edits\": [...], \"model\": \"name\"} that says which door sent it, how the "
                "image was edited and (optionally) which model must answer; without one the request goes to the "
                "model that serves its dataset.")
MAX_BATCH_ITEMS = 256


def unwrap(body: Any) -> tuple[Any, str, Any, str | None]:
    """(request, source, edits, model) of a predict body: a bare request JSON, or the envelope with ``request``."""
    if isinstance(body, dict) and isinstance(body.get("request"), dict) and "img_path_relative" not in body:
        source = body.get("source") or "api"
        if source not in SOURCES:
            raise RequestError(f"source must be one of {', '.join(SOURCES)}, got {source!r}", field="source")
        edits = body.get("edits")  # checked (and a refusal recorded) by the service: core.editing.parse_edits
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError("model must be the name of a model (see /v1/models)", field="model")
        return body["request"], source, edits, model or None
    return body, "api", None, None


def predict_one(service: AnalysisService, body: Any) -> dict:
    """Analyse (in a worker thread) and answer the response JSON with its run id and mask URL."""
    request, source, edits, model = unwrap(body)
    return service.analyze(request, source=source, edits=edits, model=model).to_json()


@router.post("/v1/predict", summary="analyse one image (request JSON → response JSON)", description=ENVELOPE_DOC,
             response_model=AnalysisResponse, response_model_exclude_unset=True,
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"application/json": {"schema": REQUEST_SCHEMA}}}})
async def predict(request: Request, service: ServiceDep) -> Any:
    body = await read_json(request)
    predictor = getattr(request.app.state, "predictor", None)  # a Ray Serve replica batches calls (core.cluster)
    if predictor is not None:
        return await predictor(body)
    return await in_worker(request, predict_one, service, body)


def predict_many(service: AnalysisService, body: Any) -> dict:
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise RequestError('expected {"requests": [request JSON, ...], "source": "api"}', field="requests")
    requests = parse_request_list(body["requests"])
    if len(requests) > MAX_BATCH_ITEMS:
        raise RequestError(f"{len(requests)} requests in one call; the limit is {MAX_BATCH_ITEMS}", field="requests",
                           status_code=413)
    _, source, _, model = unwrap({"request": {}, "source": body.get("source"), "model": body.get("model")})
    result = service.analyze_batch(requests, source=source, batch_size=service.settings.max_batch_size, model=model)
    return result.to_json()


@router.post("/v1/predict/batch", summary="analyse several images; one result or failure per request, in order")
async def predict_batch(request: Request, service: ServiceDep) -> Any:
    body = await read_json(request)
    return await in_worker(request, predict_many, service, body)


def predict_frames(service: AnalysisService, body: Any) -> dict:
    """The frames of one cine analysed as one batch, with the loop's summary (``core.cine``); a request without
    ``dataset_name`` is routed once, on its first analysed frame (:mod:`core.cine_analysis`)."""
    if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
        raise RequestError('expected {"request": {...}, "frames": [0, 3, 5] or null (all), "edits": [...]}',
                           field="request")
    request, source, edits, model = unwrap(body)
    result = service.analyze_frames(request, frames=body.get("frames"), edits=edits, source=source, model=model)
    return result.to_json()


@router.post("/v1/predict/frames", summary="analyse frames of a multi-frame DICOM or video (null = all); "
             "per-frame results in frame order and the loop's summary (area curve, ED/ES candidates)")
async def predict_frames_route(request: Request, service: ServiceDep) -> Any:
    body = await read_json(request)
    return await in_worker(request, predict_frames, service, body)


class RecogniseAnswer(BaseModel):
    """``POST /v1/recognise``: the recogniser's answer, or null when this server has no recogniser."""

    recognition: Recognition | None


@router.post("/v1/recognise", summary="what the organ recogniser makes of an image (organ, dataset, confidence, "
             "in distribution); the upload's budgets; nothing is stored", response_model=RecogniseAnswer)
async def recognise(request: Request, service: ServiceDep, file: UploadFile = File(...)) -> RecogniseAnswer:
    name = file.filename or "upload"
    data = await file.read(upload_limit(service.settings) + 1)
    check_upload_size(service.settings, len(data), name)  # the one check (core.samples), before any decode
    found = await in_worker(request, service.recognise, data, name)
    return RecogniseAnswer(recognition=found)
