"""``python -m core serve --backend ray``: the HTTP API as a Ray Serve deployment.

Every replica builds the plain server's app, :func:`core.api.create_app`, over its own
:class:`ReplicaService` (one loaded model per replica), so routes, JSON bodies, the API key, body limits and the one
error body are those of ``python -m core serve``. One thing differs: ``POST /v1/predict`` goes through Ray Serve's
``@serve.batch`` — concurrent calls reaching a replica within ``UUSIC_BATCH_WAIT_MS`` (up to
``UUSIC_MAX_BATCH_SIZE``) are analysed together with :meth:`AnalysisService.analyze_batch` (one forward pass per
model) and each caller gets its own answer or its own error, recorded in the history one row per call as the plain
server does. ``GET /healthz`` also names the replica (``pid``, ``ray: {replica, node}``) so operators and tests
can find its process. Ray restarts a replica whose process dies. A call without ``dataset_name`` is routed by the
batch's one route step (:mod:`core.auto_route`, through :meth:`AnalysisService.analyze_batch`), as the plain
server routes it.

Importing this module imports Ray; :mod:`core.api.command` imports it only for ``--backend ray``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from ray import serve

from core.cluster import (
    ClusterError,
    alive_nodes,
    check_shared_history,
    connect,
    import_ray,
    require_resources,
    runtime_env,
)
from core.editing import parse_edits
from core.errors import RequestError, UUSICError
from core.response import AnalysisFailure, AnalysisResponse, BatchItem
from core.schema import AnyRequest, PredictRequest, UnroutedRequest, parse_request
from core.service import AnalysisService
from core.settings import Settings

log = logging.getLogger("uusic.cluster")
APP_NAME = "uusic"
Call = tuple[Any, str, Any, "str | None"]  # (request JSON, source, edits as sent, model) of one /v1/predict


class ReplicaService(AnalysisService):
    """The analysis service of one Serve replica: the same service, plus grouped single predictions."""

    def health(self) -> dict:
        body = super().health()
        context = _replica_context()
        body.update(pid=os.getpid(), ray=context)
        return body

    def analyze_calls(self, calls: list[Call]) -> list[BatchItem]:
        """Several ``/v1/predict`` calls at once: one :meth:`analyze_batch` (shared forward passes) per source and
        model, each call recorded as :meth:`analyze` records it (its source, its edits, no batch id)."""
        items: list[BatchItem | None] = [None] * len(calls)
        checked: list[list[dict] | None] = [None] * len(calls)
        requests: list[Any] = [call[0] for call in calls]  # each parsed once, here (a refusal keeps its raw form)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, (request, source, edits, model) in enumerate(calls):
            try:
                checked[index] = parse_edits(edits) or None  # the one check of an edit log (core.editing)
                requests[index] = parse_request(request)  # no dataset: the batch's route step chooses it
            except RequestError as exc:
                items[index] = AnalysisFailure.from_exception(request, exc)
                continue
            groups.setdefault((source, self._model_for(requests[index], model)), []).append(index)
        for (source, model), indices in groups.items():
            try:
                folder = self.analyzer.mask_folder(self.engine(model)) if model else Path(self.settings.api_out)
                result = self.analyze_batch([requests[i] for i in indices], source=source, output_dir=folder,
                                            batch_size=len(indices), workers=min(2, len(indices)), record=False,
                                            model=model)
                done: list[BatchItem] = result.items
            except Exception as exc:  # noqa: BLE001 - every call of the group gets the error
                done = [AnalysisFailure.from_exception(calls[i][0], exc) for i in indices]
            for index, item in zip(indices, done, strict=True):
                items[index] = item
        final = [item for item in items if item is not None]
        for index, item in enumerate(final):  # each call recorded as analyze() records it
            request = _answered(requests[index], item) if isinstance(item, AnalysisResponse) else calls[index][0]
            self.recorder.items([request], [item], source=calls[index][1], edits=checked[index],
                                batch_id=None, input_dir=None)
        return final

    def _model_for(self, request: AnyRequest, model: str | None) -> str | None:
        """The model that will answer ``request`` (as :meth:`analyze` routes it); None when it cannot be told yet
        (an unloadable model, or no dataset yet: the batch's route step chooses it, or reports the error)."""
        if model:
            return model
        if isinstance(request, UnroutedRequest):
            return None
        try:
            return self.pool.route(request.task, request.dataset_name).spec.name
        except UUSICError:
            return None


def _answered(request: AnyRequest, item: AnalysisResponse) -> PredictRequest:
    """The request as answered: one the route step chose the dataset of, with that dataset (its history row)."""
    if isinstance(request, PredictRequest):
        return request
    from core.catalog import find_dataset

    return request.routed_to(find_dataset(request.task, str(item.dataset_name)))


def _replica_context() -> dict[str, Any]:
    try:
        context = serve.get_replica_context()
        replica = getattr(context.replica_id, "unique_id", None) or str(context.replica_id)
    except Exception:  # noqa: BLE001 - outside a replica (unit use)
        replica = None
    try:
        node = import_ray().get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        node = None
    return {"replica": replica, "node": node}


@serve.deployment(name="UUSICReplica")
@serve.ingress()
class UUSICReplica:
    """One replica: a loaded model behind the plain server's app; ``/v1/predict`` batched by Ray Serve."""

    def __init__(self, settings: Settings, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        logging.getLogger("uusic").setLevel(logging.INFO)
        self.service = ReplicaService(settings)
        batched: Any = self._analyze  # @serve.batch's wrapper: its limits come from the settings
        batched.set_max_batch_size(settings.max_batch_size)
        batched.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)

    def __serve_build_asgi_app__(self) -> Any:
        from core.api.app import create_app

        return create_app(service=self.service, preload=True, predictor=self.predict)

    async def predict(self, body: Any) -> dict:
        """``POST /v1/predict``: this call's answer from a shared batch, or its typed error (the one error body)."""
        from core.api.routers.inference import unwrap

        item = await self._analyze(unwrap(body))
        if isinstance(item, AnalysisFailure):
            raise item.to_exception()
        return item.to_json()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.004)  # set from the settings in __init__
    async def _analyze(self, calls: list[Call]) -> list[BatchItem]:
        return await anyio.to_thread.run_sync(self.service.analyze_calls, calls)


def deploy(settings: Settings, *, replicas: int | tuple[int, int] = 1, num_cpus: float = 1.0,
           num_gpus: float = 0.0, threads: int | None = None, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start (or update) the deployment on the connected cluster; returns the URL it answers on.

    ``replicas``: a count, or ``(min, max)``: Ray Serve's autoscaling keeps about ``UUSIC_MAX_BATCH_SIZE`` calls
    in flight per replica, between ``min`` and ``max`` replicas."""
    options: dict[str, Any] = {"num_cpus": num_cpus, "runtime_env": runtime_env()}
    if num_gpus:
        options["num_gpus"] = num_gpus
    threads = threads or max(1, int(num_cpus))
    # per replica: up to 2 batches in flight; past UUSIC_MAX_CONNECTIONS queued calls Serve answers 503 (the plain
    # server's uvicorn limit_concurrency); connection-level limits (header size, keep-alive) are Ray's proxy's own
    limits: dict[str, Any] = {"max_ongoing_requests": max(16, 2 * settings.max_batch_size)}
    low, high = replicas if isinstance(replicas, tuple) else (replicas, replicas)
    if low == high:
        limits["num_replicas"] = low
    else:
        limits["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                        "target_ongoing_requests": settings.max_batch_size}
    queued = getattr(settings, "max_connections", None)
    if queued:
        limits["max_queued_requests"] = int(queued)
    deployment: Any = UUSICReplica  # a serve.Deployment (the decorator's result, which type checkers do not see)
    app = deployment.options(ray_actor_options=options, **limits).bind(settings, threads)
    serve.start(http_options={"host": host, "port": port}, proxy_location="EveryNode")
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def shutdown(started: bool) -> None:
    """Remove the deployment; stop Ray too when this process started it (else only disconnect)."""
    ray = import_ray()
    try:
        if started:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        if started:
            ray.shutdown()


def require_replicas(args: argparse.Namespace, settings: Settings, *, can_grow: bool) -> None:
    """:func:`core.cluster.require_resources` for the least count of replicas (each ``--num-cpus-per-replica`` and
    ``--num-gpus-per-replica``): Ray Serve would otherwise wait for ever to place them."""
    low, cpus, gpus = args.replicas[0], float(args.num_cpus_per_replica), float(args.num_gpus_per_replica or 0.0)
    each = f"{cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
    require_resources({"CPU": low * cpus, "GPU": low * gpus},
                      f"serve --backend ray with {low} replica{'s' if low != 1 else ''} ({each} each)",
                      wait_s=settings.ray_wait_s, can_grow=can_grow)


def serve_main(args: argparse.Namespace, settings: Settings) -> int:
    """The blocking ``python -m core serve --backend ray`` (options parsed by :func:`core.api.command.main`)."""
    try:
        started = connect(args.address, dashboard=True)
    except ClusterError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        nodes = len(alive_nodes())
        check_shared_history(settings, nodes)
        require_replicas(args, settings, can_grow=not (started and not args.address))
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if started:
            import_ray().shutdown()
        return 2
    if nodes > 1:
        print(f"note: {nodes} nodes: UUSIC_WORKSPACE ({settings.workspace}), the weights and the data root must be "
              "paths every node mounts", file=sys.stderr)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = deploy(settings, replicas=args.replicas, num_cpus=args.num_cpus_per_replica,
                     num_gpus=args.num_gpus_per_replica, threads=args.threads, host=args.host, port=args.port)
        low, high = args.replicas
        count = f"{low}" if low == high else f"{low} to {high} (autoscaling)"
        print(f"serving on {url} (Ray Serve: {count} replica(s) on {nodes} node(s); docs at /docs); "
              f"workspace {settings.workspace}; Ctrl-C stops", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - a deployment that cannot start: say why, exit 1
        print(f"error: the Ray Serve deployment failed: {exc}", file=sys.stderr)
        _quietly(shutdown, started)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    _quietly(shutdown, started)
    return 0


def _quietly(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except Exception as exc:  # noqa: BLE001 - shutting down: report, do not mask the exit status
        print(f"warning: Ray shutdown: {exc}", file=sys.stderr)
