"""``python -m core predict --backend ray``: the batch CLI's analysis over Ray Data.

The driver runs the one service's :meth:`AnalysisService.analyze_batch` (validation, "no model for this dataset",
progress, one history row per image with ``--record``, :class:`BatchResult`); only the stages of the runnable images
go to Ray, as a pipeline over chunks of ``--batch-size`` images, in input order — the chunks the local backend
forwards together, so the outputs are the same:

1. decode + preprocess: parallel Ray tasks (:func:`prepare_chunk`, the engine's ``prepare`` stage and the organ
   recogniser's, no model);
2. forward + finish (probabilities, masks written to ``--output-dir``): ``map_batches`` over a pool of
   ``--concurrency`` engine actors (:class:`EngineWorker`, one loaded model each, ``--num-gpus-per-worker``).

The driver then writes ``classification.json`` with :func:`core.service.write_classification_json`, as the local
backend does. The output folder, the input folder and the weights must be paths every node mounts.
One difference from the local backend: an image that cannot be decoded leaves its chunk one image short, where the
local backend moves the next image up; the images after it then share forward passes with other neighbours, so
their probabilities may differ from the local run's in the last bits (a mask pixel only at an exact 0.5 tie).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import catalog, recognition_encoder
from core.analysis import OnResult, Recogniser, Runnable, add_recognition, recognise_image, recognise_output
from core.cluster import ClusterError, connect, import_ray, require_resources
from core.engine import Engine, Prepared
from core.errors import error_body, error_from_body
from core.models import registry
from core.models.base import ModelSpec
from core.recognition import Found
from core.routing import max_batch
from core.service import AnalysisService
from core.settings import Settings

ENGINE_MEMORY_BYTES = 1 << 30  # what Ray reserves per engine actor (torch + one model, CPU side)
Entry = tuple[int, Any, "Found | None"]  # (entry index, parsed request, the route step's answer when it was routed)


class RemoteEngine(Engine):
    """The engine as the driver and the decode tasks see it: the spec, the settings and the ``prepare`` stage,
    without the model (that is loaded in the :class:`EngineWorker` actors)."""

    def __init__(self, settings: Settings, spec: ModelSpec, *, sha256: str, mask_inverse: str = "exact",
                 label: str = "Ray"):
        self.settings, self.spec, self.sha256, self.mask_inverse = settings, spec, sha256, mask_inverse
        self.measurements = False
        self.device = torch.device("cpu")
        self.device_name = label
        self.amp = False
        self._served = catalog.served_keys(spec.datasets)
        self.recognition_head = recognition_encoder.head_for_model(settings.weights_dir, spec.arch, sha256)

    def serves(self, task: str, dataset_name: str) -> bool:
        return catalog.serves(self._served, task, dataset_name)

    def model_info(self) -> dict:
        return {"name": self.spec.name, "arch": self.spec.arch, "file": Path(self.spec.file).name,
                "sha256": self.sha256, "device": self.settings.device, "device_name": self.device_name,
                "input_size": self.spec.input_size, "preprocessing": self.spec.preprocessing,
                "mask_inverse": self.mask_inverse, "datasets": [list(k) for k in catalog.served_datasets(self._served)],
                "description": self.spec.description}

    def forward(self, batch: list[Prepared]) -> Any:
        raise NotImplementedError("the model runs in the Ray engine actors (core.cluster.batch.EngineWorker)")


def _slim(prepared: Prepared) -> Prepared:
    """``prepared`` without the decoded pixels (the forward pass needs only the model input, ``finish`` only the
    image's size and metadata): a zero-byte ``H x W x 0`` array keeps the width and height."""
    image = prepared.image
    empty = np.empty((image.height, image.width, 0), dtype=np.uint8)
    return dataclasses.replace(prepared, image=dataclasses.replace(image, rgb=empty))


def prepare_chunk(row: dict[str, Any], *, engine: RemoteEngine, input_dir: Path | None,
                  recognise: bool = False) -> dict[str, Any]:
    """Ray task: decode and preprocess one chunk; each image becomes ``(index, "prepared", (Prepared, Found))`` or
    ``(index, "error", error body)``. ``recognise``: the organ recogniser's stage on the decoded image
    (:func:`core.analysis.recognise_image`) unless the route step's answer came with the entry or the engine actors
    recognise from the forward pass (the engine's ``recognition_head``)."""
    torch.set_num_threads(1)
    out: list[tuple[int, str, Any]] = []
    for index, request, given in pickle.loads(row["payload"]):
        try:
            prepared = engine.prepare(request, input_dir=input_dir)
            early = recognise and engine.recognition_head is None
            found = (given or recognise_image(engine.settings, prepared.image.rgb)) if early else given
            out.append((index, "prepared", (_slim(prepared), found)))
        except Exception as exc:  # noqa: BLE001 - reported per image
            out.append((index, "error", error_body(exc)))
    return {"payload": pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)}


class EngineWorker:
    """Ray actor (``map_batches`` callable class): one loaded model; per chunk one forward pass over its prepared
    images, then the engine's ``finish`` stage (probabilities, mask PNG under ``output_dir``)."""

    def __init__(self, settings: Settings, spec: ModelSpec, *, mask_inverse: str, output_dir: str,
                 threads: int | None = None, recognise: bool = False):
        if threads:
            torch.set_num_threads(threads)
        self.engine = Engine(settings, spec=spec, mask_inverse=mask_inverse, measurements=False)
        self.output_dir = Path(output_dir)
        self.recognise = recognise  # an image the decode task did not recognise is recognised after its forward

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"payload": np.array([self._chunk(payload) for payload in batch["payload"]], dtype=object)}

    def _chunk(self, payload: bytes) -> bytes:
        items = pickle.loads(payload)
        out = [(index, "error", value) for index, kind, value in items if kind == "error"]
        ready = [(index, *value) for index, kind, value in items if kind == "prepared"]
        if ready:
            try:
                outputs, seconds, gpu = self.engine.forward([prepared for _, prepared, _ in ready])
            except Exception as exc:  # noqa: BLE001 - every image of the chunk gets the error
                out += [(index, "error", error_body(exc)) for index, _, _ in ready]
            else:
                share = seconds / len(ready)
                for (index, prepared, found), raw in zip(ready, outputs, strict=True):
                    try:
                        if found is None and self.recognise:  # from the embedding (the pixels stayed behind)
                            found = recognise_output(self.engine, prepared, raw)
                        response = self.engine.finish(prepared, raw, output_dir=self.output_dir, forward_sec=share,
                                                      gpu=gpu)
                        if found is not None:
                            add_recognition(response, found[0], found[1], prepared.request)
                    except Exception as exc:  # noqa: BLE001 - reported per image
                        out.append((index, "error", error_body(exc)))
                    else:
                        out.append((index, "ok", response))
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)


class RayGroups:
    """The batch strategy (:class:`core.analysis.GroupRunner`) that runs a group's stages on Ray Data: it joins
    ``address`` or starts a local Ray for each group and stops the Ray it started afterwards."""

    def __init__(self, settings: Settings, engine: RemoteEngine, *, address: str | None = None,
                 concurrency: int = 1, num_gpus: float = 0.0, threads: int | None = None):
        self.settings, self.remote = settings, engine
        self.address, self.concurrency, self.num_gpus, self.threads = address, max(1, concurrency), num_gpus, threads
        self._started = False

    def connect(self) -> None:
        """Join ``address`` or start a local Ray, unless this process is already connected (then it stays so)."""
        self._started = connect(self.address) or self._started

    def require_resources(self) -> None:
        """:func:`core.cluster.require_resources` for this run: per engine actor 1 CPU, its GPUs and
        :data:`ENGINE_MEMORY_BYTES`, and 1 CPU more for the decode tasks (without it they never start)."""
        actors = self.concurrency
        need = {"CPU": actors + 1.0, "GPU": self.num_gpus * actors, "memory": float(ENGINE_MEMORY_BYTES * actors)}
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        require_resources(need, f"--backend ray with {actors} engine actor{'s' if actors != 1 else ''} "
                                f"(1 CPU{gpus} and 1 GiB each, 1 CPU to decode)", wait_s=self.settings.ray_wait_s,
                          can_grow=not (self._started and self.address is None))

    def close(self) -> None:
        """Stop the Ray this runner started (a connection made by someone else is left open)."""
        if self._started:
            import_ray().shutdown()
            self._started = False

    def run(self, engine: Engine, runnable: Runnable, on_result: OnResult, *, output_dir: Path,
            input_dir: Path | None, batch_size: int, workers: int, recognise: Recogniser | None = None) -> None:
        """Chunks of ``batch_size`` decoded by Ray tasks, forwarded by the engine actors, in input order; with
        ``recognise`` the decode tasks also run the organ recogniser (a routed entry brings the route step's answer;
        its image is decoded again there, the driver does not ship pixels)."""
        size = max_batch(engine, batch_size)
        entries = [(index, request, _route_answer(recognise, request)) for index, request in runnable]
        chunks = [entries[i:i + size] for i in range(0, len(entries), size)]
        if not chunks:
            return
        self.connect()
        pending = {index for index, _ in runnable}
        try:
            self.require_resources()  # Ray would wait for ever where they are missing or held by other work
            for row in self._dataset(chunks, output_dir, input_dir, recognise is not None).iter_rows():
                for index, kind, value in pickle.loads(row["payload"]):
                    pending.discard(index)
                    failure = None if kind == "ok" else error_from_body(value, int(value.get("status_code", 500)))
                    on_result(index, value if failure is None else None, failure)
        except Exception as exc:  # noqa: BLE001 - the pipeline itself broke (an actor could not load the model...)
            reason = exc if isinstance(exc, ClusterError) else ClusterError(f"the Ray pipeline failed: {_gist(exc)}")
            for index in sorted(pending):
                on_result(index, None, reason)
        finally:
            self.close()

    def _dataset(self, chunks: list[list[Entry]], output_dir: Path, input_dir: Path | None, recognise: bool) -> Any:
        ray = import_ray()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        rows = [{"payload": pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)} for chunk in chunks]
        # an engine actor reserves memory for its model; with resources unlike the decode tasks' it also keeps Ray
        # Data from fusing those tasks into the actors (decoding would then be serialised with the forward passes)
        return (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map(prepare_chunk, fn_kwargs={"engine": self.remote, "input_dir": input_dir, "recognise": recognise},
                 num_cpus=1)
            .map_batches(EngineWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.concurrency),
                         num_cpus=1, num_gpus=self.num_gpus or None, memory=ENGINE_MEMORY_BYTES,
                         fn_constructor_kwargs={"settings": self.settings, "spec": self.remote.spec,
                                                "mask_inverse": self.remote.mask_inverse,
                                                "output_dir": str(output_dir), "threads": self.threads or 1,
                                                "recognise": recognise})
        )


def _route_answer(recognise: Recogniser | None, request: Any) -> Found | None:
    """The route step's answer for a routed entry (its held image let go here), else None."""
    routed = recognise.take(request) if recognise is not None else None
    return routed.found if routed is not None else None


def _gist(exc: BaseException) -> str:
    """The gist of a Ray error (its last non-empty line: the exception itself), without the remote traceback."""
    lines = [line.strip() for line in str(getattr(exc, "message", None) or exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def build_service(settings: Settings, model: str | None, spec: ModelSpec | None, *, mask_inverse: str,
                  address: str | None, concurrency: int, num_gpus: float, threads: int | None) -> AnalysisService:
    """The batch CLI's service for ``--backend ray``: the one service with the :class:`RayGroups` strategy, for the
    manifest's ``model`` (or the ad-hoc ``spec``), its weights checked here (sha256) before any Ray work starts."""
    spec = spec or registry.find_spec(settings, model)
    sha256 = registry.verify_weights(spec, settings.weights_dir)[1]
    label = f"Ray ({concurrency} engine actor{'s' if concurrency != 1 else ''}, device {settings.device})"
    engine = RemoteEngine(settings, spec, sha256=sha256, mask_inverse=mask_inverse, label=label)
    groups = RayGroups(settings, engine, address=address, concurrency=concurrency, num_gpus=num_gpus,
                       threads=threads)
    groups.connect()  # a cluster that cannot be reached, or lacks the resources, is an error before any work
    try:  # (exit status 2 at the CLI)
        groups.require_resources()
    except ClusterError:
        groups.close()
        raise
    return AnalysisService(settings, engine=engine, runner=groups)
