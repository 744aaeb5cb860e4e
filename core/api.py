"""HTTP inference API over the one engine: ``python -m core serve [--host 127.0.0.1] [--port 8000]``.

Routes (OpenAPI docs at ``/docs``):

- ``POST /v1/predict`` request JSON → response JSON; ``POST /v1/upload`` (multipart ``file``) → request skeleton;
  ``GET /v1/random-sample``; ``GET /v1/models``; ``GET /v1/datasets``; ``GET /v1/history`` (+ ``.csv``);
  ``GET /v1/masks/{path}`` (a mask PNG under ``api_out/``); ``GET /healthz``.
- Compatibility with the team's earlier server: ``POST /segment/`` (both tasks; echoes the request and adds the
  results), ``POST /upload``, ``GET /random_sample/``, ``GET /staticapi_out/{path}``, ``GET /staticapi_in/{path}``.

Inference runs in a bounded thread pool (one shared engine, its forward pass is serialised; on CUDA concurrent
requests are micro-batched into one forward pass); every prediction is recorded
in the workspace history (the dashboard's store). With ``UUSIC_API_KEY`` set every route but ``/healthz`` and the
docs needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. Logs carry method, route, status and time only:
no image bytes, file names or request bodies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
import anyio
from starlette.concurrency import run_in_threadpool

from core import catalog
from core.errors import NoModelError, PathError, RequestError, UUSICError
from core.history import HistoryStore, decode_row, record_run
from core.samples import UploadError, random_sample, save_upload
from core.schema import PredictRequest
from core.settings import Settings

log = logging.getLogger("uusic.api")
OPEN_PATHS = {"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
COMPAT_PATHS = {"/segment/", "/segment", "/upload", "/random_sample/", "/random_sample"}
UPLOAD_PATHS = {"/v1/upload", "/upload"}
# worker threads for decoding, the forward pass (serialised by the engine) and writing masks: enough to overlap
# I/O with compute, few enough to keep memory flat (every thread that touches torch / PIL grows its own arenas)
INFERENCE_THREADS = max(2, min(8, 2 * (os.cpu_count() or 1)))
RESOURCE_FIELDS = ("inference_time_sec", "memory_usage_mb", "gpu_memory_usage_mb", "gpu_memory_reserved_mb")
_REQUEST_SCHEMA = PredictRequest.model_json_schema()


class EngineHolder:
    """The one engine of this app, built on first use (or given); remembers why loading failed."""

    def __init__(self, settings: Settings, engine=None):
        self.settings = settings
        self.engine = engine
        self.error: str | None = None
        self._lock = threading.Lock()

    def get(self):
        if self.engine is not None:
            return self.engine
        with self._lock:
            if self.engine is None:
                from core.engine import get_engine

                try:
                    self.engine = get_engine(self.settings)
                    self.error = None
                except Exception as exc:  # WeightsError, DeviceError, ...
                    # clients (and the open /healthz) see the file's name, not the server's folders
                    message = getattr(exc, "message", None) or str(exc)
                    self.error = message.replace(str(self.settings.weights_dir) + "/", "")
                    raise NoModelError(f"the model could not be loaded: {self.error}", status_code=503) from None
        return self.engine


class MicroBatcher:
    """Groups concurrent single-image predictions into one forward pass (worth it on a GPU).

    Callers (worker threads) decode and preprocess in parallel (``engine.prepare``), queue the prepared image,
    and a single batching thread runs ``engine.forward`` on up to ``max_batch`` queued images, waiting at most
    ``window_s`` for more after the first. Post-processing (mask writing, measurements) happens back in the caller's
    thread. Results equal unbatched ones; the GPU memory fields describe the shared forward pass.
    """

    def __init__(self, engine, *, max_batch: int = 8, window_s: float = 0.004):
        import queue

        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="uusic-micro-batcher", daemon=True)
        self._thread.start()
        self.batches = 0
        self.items = 0

    def predict(self, request) -> dict:
        from concurrent.futures import Future

        start = time.perf_counter()
        prepared = self.engine.prepare(request)
        future: Future = Future()
        self._queue.put((prepared, future))
        raw, forward_sec, gpu = future.result()
        response = self.engine.finish(prepared, raw, output_dir=Path(self.engine.settings.api_out),
                                      forward_sec=forward_sec, gpu=gpu)
        response["inference_time_sec"] = time.perf_counter() - start
        return response

    def _loop(self) -> None:
        import queue

        while True:
            batch = [self._queue.get()]
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    batch.append(self._queue.get(timeout=max(remaining, 0)) if remaining > 0
                                 else self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outputs, seconds, gpu = self.engine.forward([prepared for prepared, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), raw in zip(batch, outputs):
                future.set_result((raw, seconds, gpu))


def _error_body(message: str, *, status: int, path: str, field: str | None = None, kind: str | None = None) -> dict:
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    if kind:
        body["error_type"] = kind
    if path in COMPAT_PATHS:  # the earlier server answered {"error": "..."}
        body["error"] = message
    return body


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, first = [], None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        name = ".".join(loc) or None
        first = first or name
        msg = "required field is missing" if error.get("type") == "missing" else error.get("msg", "invalid")
        parts.append(f"{name}: {msg}" if name else msg)
    return "invalid request: " + "; ".join(parts), first


def create_app(settings: Settings | None = None, engine=None, *, preload: bool = False,
               micro_batch: bool | None = None) -> FastAPI:
    """The FastAPI app. ``engine``: an :class:`core.engine.Engine` to share (default: built on first use).

    ``micro_batch``: group concurrent requests into one forward pass; ``None`` = only when the model is on CUDA.
    """
    settings = settings or Settings.from_env()
    settings.ensure_workspace()
    holder = EngineHolder(settings, engine)
    batcher: dict = {}
    batcher_lock = threading.Lock()

    def predictor():
        """``engine.predict`` or, with micro-batching on, the batcher's."""
        engine_ = holder.get()
        if "batcher" not in batcher:
            with batcher_lock:
                if "batcher" not in batcher:
                    device = getattr(getattr(engine_, "device", None), "type", None)
                    wanted = micro_batch if micro_batch is not None else device == "cuda"
                    batcher["batcher"] = MicroBatcher(engine_) if wanted and hasattr(engine_, "forward") else None
        return batcher["batcher"] or engine_
    store = HistoryStore(settings.history_db)
    limiter: dict = {}

    async def in_worker(function, *args):
        """Run ``function`` in the inference thread pool (bounded), off the event loop."""
        if "limiter" not in limiter:  # created inside the running event loop
            limiter["limiter"] = anyio.CapacityLimiter(INFERENCE_THREADS)
        return await anyio.to_thread.run_sync(function, *args, limiter=limiter["limiter"])

    async def lifespan(app: FastAPI):
        if preload:
            try:
                await run_in_threadpool(predictor)  # loads the model, starts the batcher when wanted
            except UUSICError as exc:
                log.error("model not loaded: %s", exc.message)
        yield

    app = FastAPI(title="UUSIC Viewer inference API", version="1.0",
                  description="Universal ultrasound classification and segmentation (UUSIC25 request JSON).",
                  lifespan=lifespan)
    app.state.settings, app.state.holder, app.state.store, app.state.batcher = settings, holder, store, batcher

    # ------------------------------------------------------------------------------------------ middleware
    @app.middleware("http")
    async def guard(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        if settings.api_key and path not in OPEN_PATHS and request.method != "OPTIONS":
            given = request.headers.get("x-api-key") or ""
            auth = request.headers.get("authorization") or ""
            if not given and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not given or not secrets.compare_digest(given.encode(), settings.api_key.encode()):
                return JSONResponse(_error_body("missing or wrong API key (send X-API-Key or Authorization: "
                                                "Bearer)", status=401, path=path), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        limit = (settings.max_upload_mb * 1024 * 1024 + 64 * 1024) if path in UPLOAD_PATHS else settings.max_json_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return JSONResponse(_error_body("invalid Content-Length header", status=400, path=path),
                                    status_code=400)
            if too_big:
                return JSONResponse(_error_body(f"request body is {int(length):,} bytes; the limit is {limit:,}",
                                                status=413, path=path), status_code=413)
        response = await call_next(request)
        route = request.scope.get("route")
        log.info("%s %s %s %.1f ms", request.method, getattr(route, "path", "?"), response.status_code,
                 (time.perf_counter() - start) * 1000)
        return response

    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                       allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Authorization", "Content-Type"])

    @app.exception_handler(UUSICError)
    async def uusic_error(request: Request, exc: UUSICError):
        return JSONResponse(_error_body(exc.message, status=exc.status_code, path=request.url.path, field=exc.field,
                                        kind=type(exc).__name__), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, field = _validation_message(exc)
        return JSONResponse(_error_body(message, status=422, path=request.url.path, field=field,
                                        kind="RequestError"), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.method)
        return JSONResponse(_error_body(f"internal error: {type(exc).__name__}", status=500, path=request.url.path),
                            status_code=500)

    # ------------------------------------------------------------------------------------------ helpers
    async def read_json(request: Request) -> Any:
        body = await request.body()
        if len(body) > settings.max_json_bytes:
            raise RequestError(f"request body is {len(body):,} bytes; the limit is {settings.max_json_bytes:,}",
                               status_code=413)
        if not body:
            raise RequestError("request body is empty; send the request JSON object")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"request body is not valid JSON: {exc}", status_code=400) from None

    def run_prediction(request_obj: dict | PredictRequest, raw: Any) -> dict:
        """Predict (in a worker thread) and record the run; failures are recorded too, then re-raised."""
        try:
            response = predictor().predict(request_obj)
        except UUSICError as exc:
            try:
                record_run(store, raw if isinstance(raw, dict) else None, None, source="api", error=exc.message)
            except Exception as history_error:  # noqa: BLE001 - history never hides the real error
                log.warning("history write failed: %s", type(history_error).__name__)
            raise
        try:
            response["run_id"] = record_run(store, request_obj, response, source="api",
                                            input_sha256=response.get("input_sha256"))
        except Exception as history_error:  # noqa: BLE001 - a result is never lost for the history's sake
            log.warning("history write failed: %s", type(history_error).__name__)
            response["run_id"] = None
        if response.get("mask_path_relative"):
            response["mask_url"] = f"/v1/masks/{response['mask_path_relative']}"
        return response

    def serve_file(root: Path, rel: str, suffixes: tuple[str, ...]) -> FileResponse:
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
            raise PathError(f"no file at {rel!r}", field="path", status_code=404)
        media = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".json": "application/json"}
        return FileResponse(target, media_type=media.get(target.suffix.lower(), "application/octet-stream"))

    def sample_or_404(task: str, dataset_name: str) -> dict:
        try:
            dataset = catalog.find_dataset(task, dataset_name)
        except catalog.UnknownDataset as exc:
            raise RequestError(str(exc), field="dataset_name") from None
        sample = random_sample(settings.data_root, dataset.task, dataset.name)
        if sample is None:
            raise PathError(f"no images of {dataset.task}/{dataset.name} under the data root", status_code=404,
                            field="dataset_name")
        return sample

    async def upload_file(file: UploadFile) -> dict:
        limit = settings.max_upload_mb * 1024 * 1024
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise UploadError(f"upload is larger than the {settings.max_upload_mb} MB limit", status_code=413,
                              field="file")
        return await in_worker(save_upload, settings, data, file.filename or "upload")

    # ------------------------------------------------------------------------------------------ v1 routes
    @app.get("/healthz", tags=["service"], summary="liveness: model loaded, device")
    def healthz() -> dict:
        engine_ = holder.engine
        spec, device = getattr(engine_, "spec", None), getattr(engine_, "device", None)
        return {"status": "ok", "model_loaded": engine_ is not None,
                "model": getattr(spec, "name", None), "device": str(device) if device is not None else None,
                "device_name": getattr(engine_, "device_name", None),
                "error": holder.error, "auth_required": bool(settings.api_key),
                "micro_batching": batcher.get("batcher") is not None}

    @app.post("/v1/predict", tags=["inference"], summary="analyse one image (request JSON → response JSON)",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}})
    async def predict(request: Request) -> dict:
        raw = await read_json(request)
        parsed = PredictRequest.parse(raw)
        return await in_worker(run_prediction, parsed, raw)

    @app.post("/v1/upload", tags=["inputs"], summary="store an image in api_in/ and get its request skeleton")
    async def upload(file: UploadFile = File(..., description="PNG, JPEG, BMP, TIFF, GIF or DICOM")) -> dict:
        return await upload_file(file)

    @app.get("/v1/random-sample", tags=["inputs"], summary="request skeleton of a random image of a dataset")
    def random_sample_v1(task: str = Query(..., examples=["segmentation"]),
                         dataset_name: str = Query(..., examples=["DDTI"])) -> dict:
        return sample_or_404(task, dataset_name)

    @app.get("/v1/models", tags=["service"], summary="the served model and the manifest's models")
    def models() -> dict:
        from core.models import registry

        try:
            specs = registry.list_models(settings)
        except Exception as exc:  # noqa: BLE001 - a broken manifest is reported, not raised
            specs, manifest_error = [], str(exc)
        else:
            manifest_error = None
        engine_ = holder.engine
        loaded = engine_.model_info() if engine_ is not None else None
        entries = []
        if loaded:
            entries.append({**loaded, "loaded": True})
        for spec in specs:
            if loaded and spec.name == loaded["name"]:
                continue
            entries.append({"name": spec.name, "arch": spec.arch, "input_size": spec.input_size,
                            "preprocessing": spec.preprocessing, "description": spec.description,
                            "datasets": None if spec.datasets is None else [list(d) for d in spec.datasets],
                            "loaded": False})
        return {"models": entries, "error": manifest_error}

    @app.get("/v1/datasets", tags=["service"], summary="the catalog: names zh/en, classes, served or not")
    def datasets() -> dict:
        engine_ = holder.engine
        rows = []
        for d in catalog.DATASETS:
            group = catalog.ORGAN_GROUPS[d.group]
            rows.append({"task": d.task, "dataset_name": d.name, "organ": d.organ, "group": d.group,
                         "group_name_zh": group.zh, "group_name_en": group.en,
                         "class_names": d.class_names("en"), "class_names_zh": d.class_names("zh"),
                         "head": d.head, "seg_target": d.seg_target, "demo_default": d.demo_default,
                         "served": engine_.serves(d.task, d.name) if engine_ is not None else None})
        return {"datasets": rows, "model_loaded": engine_ is not None}

    def _filters(task, dataset_name, organ, q, since, until, source) -> dict:
        return {"task": task, "dataset_name": dataset_name, "organ": organ, "text": q, "since": since,
                "until": until, "source": source}

    @app.get("/v1/history", tags=["history"], summary="recorded runs, newest first, filtered")
    def history(task: str | None = None, dataset_name: str | None = None, organ: str | None = None,
                q: str | None = Query(None, description="text in the image name"),
                since: str | None = Query(None, description="UTC ISO date/time, inclusive"),
                until: str | None = Query(None, description="UTC ISO date/time, inclusive"),
                source: str | None = None, limit: int = Query(100, ge=1, le=10000)) -> dict:
        rows = store.list(_filters(task, dataset_name, organ, q, since, until, source), limit=limit)
        return {"count": len(rows), "runs": [decode_row(r) for r in rows]}

    @app.get("/v1/history/{run_id}", tags=["history"], summary="one recorded run")
    def history_run(run_id: int) -> dict:
        row = store.get(run_id)
        if row is None:
            raise PathError(f"no run {run_id} in the history", status_code=404, field="run_id")
        return decode_row(row)

    @app.get("/v1/history.csv", tags=["history"], summary="the filtered runs as CSV",
             response_class=PlainTextResponse)
    def history_csv(task: str | None = None, dataset_name: str | None = None, organ: str | None = None,
                    q: str | None = None, since: str | None = None, until: str | None = None,
                    source: str | None = None, limit: int = Query(10000, ge=1, le=100000)):
        rows = store.list(_filters(task, dataset_name, organ, q, since, until, source), limit=limit)
        return PlainTextResponse(store.to_csv(rows), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="uusic_history.csv"'})

    @app.get("/v1/masks/{path:path}", tags=["outputs"], summary="a mask PNG written under api_out/")
    def mask(path: str):
        return serve_file(settings.api_out, path, (".png",))

    # ------------------------------------------------------------------------------------------ compatibility
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

    @app.post("/segment/", tags=["compatibility"], summary="earlier server: analyse one image (both tasks)",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": _REQUEST_SCHEMA}}}})
    async def segment_compat(request: Request) -> dict:
        raw = await read_json(request)
        parsed = PredictRequest.parse(compat_request(raw))
        response = await in_worker(run_prediction, parsed, raw)
        result = dict(raw)
        if response["task"] == "classification":
            result.update(probability=response["probability"], prediction=response["prediction"],
                          label_name=response.get("label_name"))
        else:
            rel = f"api_out/{response['mask_path_relative']}"
            result.update(mask_name=response["mask_name"], mask_path_relative=rel,
                          mask_path_absolute=response["mask_path"], mask_area_px=response.get("mask_area_px"),
                          measurements=response.get("measurements"))
        for name in RESOURCE_FIELDS:
            result[name] = response.get(name)
        result.update(device=response.get("device"), model_name=response.get("model_name"),
                      run_id=response.get("run_id"))
        return result

    @app.post("/upload", tags=["compatibility"], summary="earlier server: store an image in api_in/")
    async def upload_compat(file: UploadFile = File(...)) -> dict:
        return await upload_file(file)

    @app.get("/random_sample/", tags=["compatibility"], summary="earlier server: a random image of a dataset")
    def random_sample_compat(task: str = Query(...), dataset_name: str = Query(...)) -> dict:
        task = task.strip().lower()
        for name in (dataset_name, f"private_{dataset_name}"):  # one of its versions prefixed private_
            try:
                catalog.find_dataset(task, name)
            except catalog.UnknownDataset:
                continue
            sample = random_sample(settings.data_root, task, name)
            if sample is not None:
                return sample
        return sample_or_404(task, dataset_name)

    @app.get("/staticapi_out/{path:path}", tags=["compatibility"], summary="earlier server: files under api_out/")
    def static_out(path: str):
        return serve_file(settings.api_out, path, (".png",))

    @app.get("/staticapi_in/{path:path}", tags=["compatibility"], summary="earlier server: files under api_in/")
    def static_in(path: str):
        return serve_file(settings.api_in, path, (".png", ".jpg", ".jpeg"))

    return app


def main(argv: list[str] | None = None) -> int:
    """``python -m core serve [--host 127.0.0.1] [--port 8000]``."""
    parser = argparse.ArgumentParser(prog="python -m core serve", description="start the HTTP inference API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--micro-batch", choices=["auto", "on", "off"], default="auto",
                        help="group concurrent requests into one forward pass (auto: on CUDA only)")
    args = parser.parse_args(argv)
    import uvicorn

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    app = create_app(settings, preload=True, micro_batch={"auto": None, "on": True, "off": False}[args.micro_batch])
    print(f"serving on http://{args.host}:{args.port} (docs at /docs); workspace {settings.workspace}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
