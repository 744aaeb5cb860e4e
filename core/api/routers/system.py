"""The service itself: ``GET /healthz``, ``GET /v1/models``, ``GET /v1/datasets``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from core.api.deps import ServiceDep, in_worker

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="liveness: model loaded, device, load error, what runs each model")
def healthz(service: ServiceDep) -> dict:
    health = service.health()
    backends = health.get("backends")
    if isinstance(backends, dict):  # per loaded model: converting (eager serves meanwhile) | converted | eager
        health.setdefault("backend_state", {name: info.get("state", "eager") for name, info in backends.items()
                                            if isinstance(info, dict)})
    return health


@router.get("/v1/models", summary="the served model and the manifest's models")
def models(service: ServiceDep) -> dict:
    return service.models()


@router.get("/v1/datasets", summary="the catalog: names zh/en, classes, served or not")
async def datasets(request: Request, service: ServiceDep) -> dict:
    rows = await in_worker(request, service.datasets)  # loads the model on first use
    return {"datasets": rows, "model_loaded": service.loaded_engine is not None}
