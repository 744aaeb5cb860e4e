"""The analysis pipeline: parse → route (served or NoModelError) → decode → geometry → forward → inverse → mask →
measurements, once each, for one image or a batch; the typed result carries its public URLs and the organ
recogniser's view of the decoded image (``recognition``, :mod:`core.recognition`; ``UUSIC_REFUSE_OOD``: 422).

How a batch's groups run is a strategy (:class:`GroupRunner`): threads here (:class:`LocalGroups`), Ray Data in
:mod:`core.cluster.batch`. Recording is :mod:`core.recorder`'s job; this module only reports what happened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core import recognition, recognition_encoder
from core.editing import parse_edits
from core.errors import RequestError, UUSICError
from core.recognition import Found
from core.recorder import Recorder
from core.response import AnalysisFailure, AnalysisResponse, BatchItem, BatchResult
from core.routing import ModelPool
from core.schema import AnyRequest, PredictRequest, parse_request
from core.settings import Settings

if TYPE_CHECKING:
    from core.auto_route import Routed
    from core.engine import Engine, Prepared
    from core.imaging import LoadedImage
    from core.stages import RawOutput

OnResult = Callable[[int, "dict | None", "BaseException | None"], None]  # (entry index, response, error)
Runnable = list[tuple[int, PredictRequest]]  # (entry index, parsed request) of one model's group


class Recogniser:
    """The organ recogniser's stage of one batch: for a request the route step chose the dataset of, its answer and
    (while held) its decoded image (:meth:`take`); for the others, the answer for the image just decoded."""

    def __init__(self, recognised: Callable[[Prepared], Found], routed: dict[int, Routed] | None = None):
        self.recognised = recognised
        self.routed = routed or {}  # by id() of the routed request, which the batch holds while it runs

    def take(self, request: Any) -> Routed | None:
        return self.routed.pop(id(request), None)

    def __call__(self, prepared: Prepared) -> Found:
        return self.recognised(prepared)


class GroupRunner(Protocol):
    """Runs one model's group of a batch, calling ``on_result`` once per entry (exactly one of response / error).
    ``recognise``: the organ recogniser's stage, run on each decoded image by a runner that decodes here."""

    def run(self, engine: Engine, runnable: Runnable, on_result: OnResult, *, output_dir: Path,
            input_dir: Path | None, batch_size: int, workers: int, recognise: Recogniser | None = None) -> None: ...


class LocalGroups:
    """Threads decode ahead of batched forward passes in this process (:func:`core.batching.run_batch`)."""

    def run(self, engine: Engine, runnable: Runnable, on_result: OnResult, *, output_dir: Path,
            input_dir: Path | None, batch_size: int, workers: int, recognise: Recogniser | None = None) -> None:
        from core.batching import run_batch
        from core.routing import max_batch

        def by_entry(position: int, response: dict | None, exc: BaseException | None) -> None:
            on_result(runnable[position][0], response, exc)

        stages = RecognisingStages(engine, recognise) if recognise is not None else engine
        run_batch(stages, [parsed for _, parsed in runnable], output_dir=output_dir, on_result=by_entry,
                  batch_size=max_batch(engine, batch_size), input_dir=input_dir, workers=workers)


class RecognisingStages:
    """An engine's three batch stages (:class:`core.batching.Engine`) with the recogniser after ``prepare`` (or,
    for an engine that recognises from its forward pass, before ``finish``) and its answer added by ``finish``: a
    batch's images are decoded once for both."""

    def __init__(self, engine: Engine, recognise: Recogniser):
        self.engine, self.recognise = engine, recognise
        self.found: dict[int, Found] = {}

    def prepare(self, request: Any, *, input_dir: Path | None = None) -> Prepared:
        routed = self.recognise.take(request)
        if routed is not None and routed.found is not None:  # the route step's image and answer: no second decode
            prepared = self.engine.prepare(request, input_dir=input_dir, image=routed.image)
            self.found[id(prepared)] = routed.found
            return prepared
        prepared = self.engine.prepare(request, input_dir=input_dir)
        if self.engine.recognition_head is None:
            self.found[id(prepared)] = self.recognise(prepared)
        return prepared

    def forward(self, batch: list[Prepared]) -> tuple[list[Any], float, Any]:
        return self.engine.forward(batch)

    def finish(self, prepared: Prepared, raw: Any, *, output_dir: Path, forward_sec: float, gpu: Any) -> dict:
        held = self.found.pop(id(prepared)) if id(prepared) in self.found else None
        found, seconds = held or recognise_output(self.engine, prepared, raw)
        response = self.engine.finish(prepared, raw, output_dir=output_dir, forward_sec=forward_sec, gpu=gpu)
        add_recognition(response, found, seconds, prepared.request)
        return response


class Analyzer:
    """Analyses cases with the models of ``pool`` and records each through ``recorder``."""

    def __init__(self, settings: Settings, pool: ModelPool, recorder: Recorder, runner: GroupRunner | None = None):
        self.settings, self.pool, self.recorder = settings, pool, recorder
        self.runner: GroupRunner = runner or LocalGroups()

    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                output_dir: Path | None = None, input_dir: Path | None = None, batch_id: str | None = None,
                model: str | None = None) -> AnalysisResponse:
        """Analyse one image with the model that serves it (or ``model``) and record the run; raises the typed
        error (after recording it) for a bad case."""
        checked: list[dict] | None = None
        try:
            checked = parse_edits(edits) or None
            opened = parse_request(request)
            with self.held([request]):  # workspace gc spares its files while it runs
                routed = self.route(opened, input_dir=input_dir, model=model)
                parsed = routed.request
                response = self.run_one(parsed, output_dir=output_dir, input_dir=input_dir, model=model,
                                        found=routed.found, image=routed.image)
        except Exception as exc:
            self.recorder.refused(request, exc, source=source, edits=checked, batch_id=batch_id, input_dir=input_dir)
            raise
        self.recorder.success(parsed, response, source=source, edits=checked, batch_id=batch_id)
        return response

    def run_one(self, request: PredictRequest, *, output_dir: Path | None = None, input_dir: Path | None = None,
                model: str | None = None, found: Found | None = None,
                image: LoadedImage | None = None) -> AnalysisResponse:
        """One parsed request through the pipeline (micro-batched when the pool batches), not recorded; ``found``
        and ``image``: the recogniser's answer and the decoded image when the route step already has them."""
        engine = self.pool.serving(request.task, request.dataset_name, model)
        start = time.perf_counter()
        prepared = engine.prepare(request, input_dir=input_dir, image=image)
        found = found or (self.recognised(prepared) if engine.recognition_head is None else None)
        batcher = self.pool.batcher(engine)
        if batcher is not None:
            raw, forward_sec, gpu = batcher.forward_one(prepared)
        else:
            outputs, forward_sec, gpu = engine.forward([prepared])
            raw = outputs[0]
        recognised, seconds = found or recognise_output(engine, prepared, raw)  # refused: before any file is written
        response = engine.finish(prepared, raw, output_dir=Path(output_dir or self.mask_folder(engine)),
                                 forward_sec=forward_sec, gpu=gpu)
        response["inference_time_sec"] = time.perf_counter() - start
        add_recognition(response, recognised, seconds, request)
        return self.typed(response)

    def route(self, request: AnyRequest, *, input_dir: Path | None = None,
              model: str | None = None) -> Routed:
        """A request that names its dataset as it is (nothing decoded yet); one that does not, routed by the organ
        recogniser (:func:`core.auto_route.route`: its image decoded, a dataset chosen, the answer and image kept)."""
        from core.auto_route import Routed, route

        if isinstance(request, PredictRequest):
            return Routed(request, None)
        return route(self.settings, self.pool, request, input_dir=input_dir, model=model)

    def recognised(self, prepared: Prepared) -> Found:
        """:func:`recognise_image` of the decoded image."""
        return recognise_image(self.settings, prepared.image.rgb)

    def mask_folder(self, engine: Engine) -> Path:
        """``api_out/`` for the default model; ``api_out/models/<name>/`` for the others, so that two models'
        masks of one image never overwrite each other."""
        api_out = Path(self.settings.api_out)
        try:
            default = self.pool.default_name()
        except UUSICError:
            default = None
        if engine.spec.name == default:
            return api_out
        from core.samples import safe_stem

        return api_out / "models" / safe_stem(engine.spec.name, limit=60)

    def typed(self, response: dict) -> AnalysisResponse:
        """The engine's response as the one response type, with ``/v1/masks/...`` URLs for its workspace files."""
        api_out = Path(self.settings.api_out).resolve()
        response["mask_url"] = _public_url(response.get("mask_path"), api_out) or response.get("mask_url")
        block = response.get("uncertainty")
        if isinstance(block, dict) and (url := _public_url(block.get("agreement_path"), api_out)):
            block["agreement_url"] = url
        if response["mask_url"] is None:
            response.pop("mask_url")
        return AnalysisResponse.model_validate(response)

    def analyze_batch(self, requests: Iterable[Any], *, source: str, output_dir: Path | None = None,
                      input_dir: Path | None = None, batch_size: int = 8, progress: Any = None,
                      workers: int = 2, record: bool = True, model: str | None = None) -> BatchResult:
        """Analyse many images (decode ahead, batched forward passes); every item is recorded (``record``).

        Invalid entries and datasets without a model become failures (``RequestError`` / ``NoModelError``)
        without reaching the model. ``output_dir`` defaults to ``api_out/batch_<id>``.
        """
        from core.batching import report_progress

        start, entries, batch_id = time.perf_counter(), list(requests), uuid.uuid4().hex[:12]
        out_dir = Path(output_dir) if output_dir is not None else Path(self.settings.api_out) / f"batch_{batch_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        items: list[BatchItem | None] = [None] * len(entries)
        held: dict[int, Routed] = {}
        groups = self._screen(entries, items, model, input_dir, held)
        done = len(entries) - sum(len(group) for group in groups.values())

        def on_result(index: int, response: dict | None, exc: BaseException | None) -> None:
            nonlocal done
            if response is not None:
                response.setdefault("recognition", None)  # a runner that prepares elsewhere (Ray) has none
            items[index] = (AnalysisFailure.from_exception(entries[index], exc) if exc is not None
                            else self.typed(response or {}))
            done += 1
            report_progress(progress, done, len(entries))

        with self.held(entries):
            for name, runnable in groups.items():
                self.runner.run(self.pool.engine(name), runnable, on_result, output_dir=out_dir,
                                input_dir=input_dir, batch_size=batch_size, workers=workers,
                                recognise=Recogniser(self.recognised, held))
        final = [item for item in items if item is not None]
        if record:  # a screened entry is recorded as parsed (never validated twice)
            parsed = {index: request for runnable in groups.values() for index, request in runnable}
            recorded = [parsed.get(index, entry) if isinstance(item, AnalysisResponse) else entry
                        for index, (entry, item) in enumerate(zip(entries, final, strict=True))]
            self.recorder.items(recorded, final,
                                source=source, edits=None, batch_id=batch_id, input_dir=input_dir)
        return BatchResult(final, batch_id=batch_id, output_dir=str(out_dir), seconds=time.perf_counter() - start)

    def held(self, requests: list) -> AbstractContextManager[Any]:
        """The workspace files ``requests`` name (input, kept original), held against ``workspace gc`` while they
        are analysed (:func:`core.workspace.in_use`)."""
        from core.workspace import in_use

        fields = [r.to_dict() if isinstance(r, PredictRequest) else r for r in requests]
        paths = [value for r in fields if isinstance(r, dict)
                 for value in (r.get("img_path_relative"), r.get("source_path_relative")) if isinstance(value, str)]
        return in_use(self.settings, paths)

    def _screen(self, entries: list, items: list, model: str | None, input_dir: Path | None,
                held: dict[int, Routed]) -> dict[str, Runnable]:
        """Parse every entry and route it (one without a dataset by the organ recogniser); failures go straight
        into ``items``; the rest grouped by model. ``held`` gets what the route step made of each routed entry:
        its decoded image is kept for the engine while the batch's held images fit ``UUSIC_MAX_DECODED_MB``
        (past that, let go and decoded again), so a routed entry is decoded once."""
        groups: dict[str, Runnable] = {}
        budget = self.settings.max_decoded_mb * 1024 * 1024
        for index, entry in enumerate(entries):
            try:
                routed = self.route(parse_request(entry), input_dir=input_dir, model=model)
                engine = self.pool.serving(routed.request.task, routed.request.dataset_name, model)
            except UUSICError as exc:
                items[index] = AnalysisFailure.from_exception(entry, exc)
                continue
            if routed.found is not None:
                size = routed.image.rgb.nbytes if routed.image is not None else 0
                budget -= size
                held[id(routed.request)] = routed if budget >= 0 else routed.without_image()
            groups.setdefault(engine.spec.name, []).append((index, routed.request))
        return groups


def recognise_image(settings: Settings, rgb: Any) -> Found:
    """The organ recogniser's view of a decoded image (None: unavailable) and the seconds it took;
    :class:`RequestError` (422) for an out-of-distribution image when ``UUSIC_REFUSE_OOD`` is on. The one
    recognition stage of every runner (threads here, Ray Data tasks in :mod:`core.cluster.batch`)."""
    found, seconds = recognition.timed(rgb, settings.weights_dir)
    return refuse_if_ood(settings, found), seconds


def recognise_output(engine: Engine, prepared: Prepared, raw: RawOutput) -> Found:
    """The organ recogniser's view of an image after its forward pass: from the model's embedding when the engine
    has a head for it (:mod:`core.recognition_encoder`, no features of its own), else :func:`recognise_image`. An
    in-distribution answer less sure than :data:`~core.recognition_encoder.SURE` is the image recogniser's to give
    (its own features: a second opinion on the rare ambiguous image)."""
    head = engine.recognition_head
    if head is None or raw.embedding is None:
        return recognise_image(engine.settings, prepared.image.rgb)
    found, seconds = recognition_encoder.recognise(head, raw.embedding)
    if found is None or (found.in_distribution and found.confidence < recognition_encoder.SURE):
        second, more = recognition.timed(prepared.image.rgb, engine.settings.weights_dir)
        found, seconds = second or found, seconds + more
    return refuse_if_ood(engine.settings, found), seconds


def refuse_if_ood(settings: Settings, found: recognition.Recognition | None) -> recognition.Recognition | None:
    """``found``, or :class:`RequestError` (422) for an out-of-distribution image when ``UUSIC_REFUSE_OOD`` is on."""
    if found is not None and not found.in_distribution and settings.refuse_ood:
        raise RequestError(recognition.OOD_REFUSAL, field="img_path_relative")
    return found


def add_recognition(response: dict, found: recognition.Recognition | None, seconds: float,
                    request: PredictRequest) -> None:
    """The ``recognition`` block (``routed: true`` when the route step chose the dataset), its notes, and its time
    in ``timings``."""
    recognition.annotate(response, found, request.organ)
    if request.routed and isinstance(response.get("recognition"), dict):
        response["recognition"]["routed"] = True
    if isinstance(response.get("timings"), dict):
        response["timings"]["recognition_sec"] = seconds


def _public_url(path: Any, api_out: Path) -> str | None:
    """``/v1/masks/<relative>`` for a file under ``api_out/``, else None."""
    if not path:
        return None
    target = Path(str(path)).resolve()
    return f"/v1/masks/{target.relative_to(api_out).as_posix()}" if target.is_relative_to(api_out) else None
