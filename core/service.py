"""The analysis service: the one way to analyse a case and keep its record, behind every door.

A case goes: validate (:mod:`core.schema`) → check the model serves it (:func:`core.catalog.serves`) → resolve its
path (:mod:`core.paths`) → decode (:mod:`core.imaging`) → geometry (:mod:`core.geometry`) → forward, direct or
micro-batched (:mod:`core.batching`) → inverse geometry → mask file → measurements (the engine's stages) → one
history row (:mod:`core.history`), for successes and failures alike, with the sha256 of the bytes analysed.

The API routes, the dashboard pages and the CLI call only :class:`AnalysisService` (in-process) or
:class:`core.client.ApiClient` (the same interface over HTTP); :func:`open_service` picks one from the settings.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core import catalog
from core.editing import parse_edits
from core.errors import (
    ImageError,
    NoModelError,
    NotFoundError,
    PathError,
    RequestError,
    UUSICError,
    as_uusic_error,
)
from core.response import AnalysisFailure, AnalysisResponse, BatchItem, BatchResult, classification_json
from core.routing import ModelPool
from core.schema import PredictRequest
from core.settings import Settings

if TYPE_CHECKING:
    from core.cine import CineResult
    from core.engine import Engine
    from core.history import HistoryStore

log = logging.getLogger("uusic.service")
NO_MODEL_MESSAGE = "no model for this dataset"


class AnalysisBackend(Protocol):
    """What every door may call: :class:`AnalysisService` in-process, :class:`core.client.ApiClient` over HTTP."""

    settings: Settings

    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                model: str | None = None) -> AnalysisResponse: ...
    def analyze_batch(self, requests: Iterable[Any], *, source: str, progress: Any = None,
                      batch_size: int = 8, model: str | None = None) -> BatchResult: ...
    def save_upload(self, data: bytes, filename: str) -> dict: ...
    def random_sample(self, task: str, dataset_name: str) -> dict: ...
    def serves(self, task: str, dataset_name: str, model: str | None = None) -> bool: ...
    def model_info(self, model: str | None = None) -> dict: ...
    def models(self) -> dict: ...
    def datasets(self) -> list[dict]: ...
    def health(self) -> dict: ...
    def runs(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]: ...
    def run(self, run_id: int) -> dict: ...
    def runs_csv(self, filters: dict | None = None, limit: int = 10000) -> str: ...
    def mask_png(self, response: AnalysisResponse | dict) -> bytes: ...
    def run_image(self, run_id: int) -> np.ndarray: ...
    def run_mask(self, run_id: int) -> np.ndarray: ...
    def probe(self, img_path_relative: str) -> dict: ...
    def load_frame(self, img_path_relative: str, frame_index: int) -> np.ndarray: ...
    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None) -> CineResult: ...
    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray: ...
    def report_pdf(self, run_id: int, lang: str = "en") -> bytes: ...
    def dicom_seg(self, run_id: int) -> bytes: ...


class AnalysisService:
    """Owns a case from request to history row; one per process and settings (:func:`open_service`)."""

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None,
                 store: HistoryStore | None = None, model: str | None = None, micro_batch: bool | None = None):
        self.settings = settings or Settings.from_env()
        self.settings.ensure_workspace()
        self.pool = ModelPool(self.settings, engine=engine, model=model, micro_batch=micro_batch)
        self._store = store
        self._lock = threading.Lock()
        from core.workspace import StartupCheck

        self.workspace_check = StartupCheck(self)  # temp files, orphans, rows whose files are gone (background)

    # ------------------------------------------------------------------------------------------ the models
    @property
    def loaded_engine(self) -> Engine | None:
        """The default model's engine if it is loaded (never loads it)."""
        try:
            return self.pool.loaded.get(self.pool.default_name())
        except UUSICError:
            return None

    def engine(self, model: str | None = None) -> Engine:
        """The engine of ``model`` (default: the default model), loaded on first use (503 when it cannot load)."""
        return self.pool.engine(model)

    @property
    def batcher(self) -> Any:
        """The default model's micro-batcher when concurrent requests share forward passes, else None."""
        return self.pool.batcher(self.engine())

    def serves(self, task: str, dataset_name: str, model: str | None = None) -> bool:
        """Whether a model of this deployment (or the named one) has weights for ``(task, dataset_name)``."""
        return self.pool.route(task, dataset_name, model).serves(task, dataset_name)

    def model_info(self, model: str | None = None) -> dict:
        return self.engine(model).model_info()

    def models(self) -> dict:
        """Every model (which serves what, loaded or not); a broken manifest is reported, not raised."""
        entries, error = self.pool.describe()
        return {"models": entries, "error": error}

    def datasets(self) -> list[dict]:
        """The catalog with zh/en names, classes and which models answer for each dataset."""
        try:
            self.engine()
            ready = True
        except UUSICError:
            ready = False
        rows = []
        for d in catalog.DATASETS:
            group = catalog.ORGAN_GROUPS[d.group]
            served_by = self.pool.served_by(d.task, d.name) if ready else []
            rows.append({"task": d.task, "dataset_name": d.name, "organ": d.organ, "group": d.group,
                         "group_name_zh": group.zh, "group_name_en": group.en,
                         "class_names": d.class_names("en"), "class_names_zh": d.class_names("zh"),
                         "head": d.head, "seg_target": d.seg_target, "demo_default": d.demo_default,
                         "served": bool(served_by) if ready else None, "served_by": served_by})
        return rows

    def health(self) -> dict:
        engine = self.loaded_engine
        errors = self.pool.errors
        return {"status": "ok", "model_loaded": engine is not None,
                "model": engine.spec.name if engine is not None else None,
                "device": str(engine.device) if engine is not None else None,
                "device_name": engine.device_name if engine is not None else None,
                "models_loaded": sorted(self.pool.loaded), "error": next(iter(errors.values()), None),
                "backends": self._backends(),
                "errors": errors, "auth_required": bool(self.settings.api_key),
                "micro_batching": bool(self.pool.batchers), "history": self._history_label(),
                "workspace": self.workspace_check.summary()}

    def _backends(self) -> dict:
        """What runs each loaded model: ``{name: {backend, precision, fallback, ...}}`` (core.models.backends)."""
        return {name: engine.backend.as_dict() for name, engine in sorted(self.pool.loaded.items())
                if getattr(engine, "backend", None) is not None}

    def _history_label(self) -> str:
        return "postgresql" if (self.settings.history_url or "").startswith("postgres") else "sqlite"

    # ------------------------------------------------------------------------------------------ inputs
    def save_upload(self, data: bytes, filename: str) -> dict:
        """Store an upload in ``api_in/`` and return the request skeleton: a still image re-encoded (pixels only), a
        cine (multi-frame DICOM, video) kept as uploaded, any DICOM's original kept (``source_path_relative``)."""
        from core.samples import save_upload

        return save_upload(self.settings, data, filename)

    def random_sample(self, task: str, dataset_name: str) -> dict:
        """The request skeleton of a random image of ``dataset_name`` under the data root."""
        from core.samples import random_sample

        try:
            dataset = catalog.find_dataset(task, dataset_name)
        except catalog.UnknownDataset as exc:
            raise RequestError(exc.message, field="dataset_name") from None
        sample = random_sample(self.settings.data_root, dataset.task, dataset.name)
        if sample is None:
            raise NotFoundError(f"no images of {dataset.task}/{dataset.name} under the data root",
                                field="dataset_name")
        return with_spacing_source(sample)

    # ------------------------------------------------------------------------------------------ analysis
    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                output_dir: Path | None = None, input_dir: Path | None = None, batch_id: str | None = None,
                model: str | None = None) -> AnalysisResponse:
        """Analyse one image with the model that serves it (or ``model``) and record the run; raises the typed
        error (after recording it) for a bad case."""
        checked: list[dict] | None = None
        try:
            checked = parse_edits(edits) or None
            parsed = PredictRequest.parse(request)
            with self._held([request]):  # workspace gc spares its files while it runs
                response = self._analyze_parsed(parsed, output_dir=output_dir, input_dir=input_dir, model=model)
        except Exception as exc:
            self._refused(request, exc, source=source, edits=checked, batch_id=batch_id, input_dir=input_dir)
            raise
        self._record_success(parsed, response, source=source, edits=checked, batch_id=batch_id)
        return response

    def _analyze_parsed(self, request: PredictRequest, *, output_dir: Path | None, input_dir: Path | None,
                        model: str | None = None) -> AnalysisResponse:
        engine = self.pool.route(request.task, request.dataset_name, model)
        self._check_served(engine, request)
        start = time.perf_counter()
        prepared = engine.prepare(request, input_dir=input_dir)
        batcher = self.pool.batcher(engine)
        if batcher is not None:
            raw, forward_sec, gpu = batcher.forward_one(prepared)
        else:
            outputs, forward_sec, gpu = engine.forward([prepared])
            raw = outputs[0]
        response = engine.finish(prepared, raw, output_dir=Path(output_dir or self._mask_folder(engine)),
                                 forward_sec=forward_sec, gpu=gpu)
        response["inference_time_sec"] = time.perf_counter() - start
        return self._typed(response)

    def _mask_folder(self, engine: Engine) -> Path:
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

    @staticmethod
    def _check_served(engine: Engine, request: PredictRequest) -> None:
        if not engine.serves(request.task, request.dataset_name):
            raise NoModelError(f"{NO_MODEL_MESSAGE}: model {engine.spec.name!r} has no weights for "
                               f"{request.task} on {request.dataset_name}", field="dataset_name")

    def _typed(self, response: dict) -> AnalysisResponse:
        mask_path = response.get("mask_path")
        if mask_path:
            api_out = Path(self.settings.api_out).resolve()
            target = Path(mask_path).resolve()
            if target.is_relative_to(api_out):
                response["mask_url"] = f"/v1/masks/{target.relative_to(api_out).as_posix()}"
        self._agreement_url(response)
        return AnalysisResponse.model_validate(response)

    def analyze_batch(self, requests: Iterable[Any], *, source: str, output_dir: Path | None = None,
                      input_dir: Path | None = None, batch_size: int = 8, progress: Any = None,
                      workers: int = 2, record: bool = True, model: str | None = None) -> BatchResult:
        """Analyse many images (decode ahead, batched forward passes); every item is recorded (``record``).

        Invalid entries and datasets without a model become failures (``RequestError`` / ``NoModelError``)
        without reaching the model. ``output_dir`` defaults to ``api_out/batch_<id>``.
        """
        start = time.perf_counter()
        entries = list(requests)
        batch_id = uuid.uuid4().hex[:12]
        out_dir = Path(output_dir) if output_dir is not None else Path(self.settings.api_out) / f"batch_{batch_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        items: list[BatchItem | None] = [None] * len(entries)
        groups = self._screen(entries, items, model)
        done = len(entries) - sum(len(group) for group in groups.values())
        total = len(entries)

        def keep(index: int, item: BatchItem) -> None:
            nonlocal done
            items[index] = item
            done += 1
            from core.batching import report_progress

            report_progress(progress, done, total)

        with self._held(entries):
            for name, runnable in groups.items():
                self._run_group(self.pool.engine(name), entries, runnable, keep, out_dir, input_dir, batch_size,
                                workers)
        final = [item for item in items if item is not None]
        if record:
            self._record_batch(entries, final, source=source, batch_id=batch_id, input_dir=input_dir)
        return BatchResult(final, batch_id=batch_id, output_dir=str(out_dir), seconds=time.perf_counter() - start)

    def _held(self, requests: list) -> AbstractContextManager[Any]:
        """The workspace files ``requests`` name (input, kept original), held against ``workspace gc`` while they
        are analysed (:func:`core.workspace.in_use`)."""
        from core.workspace import in_use

        fields = [r.to_dict() if isinstance(r, PredictRequest) else r for r in requests]
        paths = [value for r in fields if isinstance(r, dict)
                 for value in (r.get("img_path_relative"), r.get("source_path_relative")) if isinstance(value, str)]
        return in_use(self.settings, paths)

    def _screen(self, entries: list, items: list, model: str | None) -> dict[str, list[tuple[int, PredictRequest]]]:
        """Parse every entry and route it; failures go straight into ``items``; the rest grouped by model."""
        groups: dict[str, list[tuple[int, PredictRequest]]] = {}
        for index, entry in enumerate(entries):
            try:
                parsed = PredictRequest.parse(entry)
                engine = self.pool.route(parsed.task, parsed.dataset_name, model)
                self._check_served(engine, parsed)
            except UUSICError as exc:
                items[index] = AnalysisFailure.from_exception(entry, exc)
                continue
            groups.setdefault(engine.spec.name, []).append((index, parsed))
        return groups

    def _run_group(self, engine: Engine, entries: list, runnable: list[tuple[int, PredictRequest]],
                   keep: Callable[[int, BatchItem], None], out_dir: Path, input_dir: Path | None,
                   batch_size: int, workers: int) -> None:
        from core.batching import run_batch
        from core.routing import max_batch

        def on_result(position: int, response: dict | None, exc: BaseException | None) -> None:
            index = runnable[position][0]
            if exc is not None:
                keep(index, AnalysisFailure.from_exception(entries[index], exc))
            else:
                keep(index, self._typed(response or {}))

        run_batch(engine, [parsed for _, parsed in runnable], output_dir=out_dir, on_result=on_result,
                  batch_size=max_batch(engine, batch_size), input_dir=input_dir, workers=workers)

    # ------------------------------------------------------------------------------------------ history
    @property
    def store(self) -> HistoryStore:
        """The history store (``UUSIC_HISTORY_URL`` or the workspace's SQLite file), opened on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from core.history import HistoryStore

                    self._store = HistoryStore.from_settings(self.settings)
        return self._store

    def _record(self, request: Any, response: dict | None, *, note_to: AnalysisResponse | None = None,
                **fields: Any) -> int | None:
        """One history row; a history failure is logged and never hides the result or the real error. When the row
        cannot be written, ``note_to`` (the response the caller gets) says so in its ``notes`` — run_id None is
        then explained instead of silent. The note names no server path or database URL (the log has the details)."""
        from core.history import record_run

        try:
            return record_run(self.store, request, response, **fields)
        except Exception as exc:  # noqa: BLE001 - the record must not sink the analysis
            log.warning("history write failed: %s", getattr(exc, "message", None) or type(exc).__name__)
            if note_to is not None:
                note_to.notes = [*(note_to.notes or []), f"not recorded in the history: {_history_failure(exc)}"]
            return None

    def _record_success(self, request: PredictRequest, response: AnalysisResponse, *, source: str,
                        edits: list | None, batch_id: str | None) -> None:
        response.run_id = self._record(request, response.to_json(), note_to=response, source=source, edits=edits,
                                       input_sha256=response.input_sha256, batch_id=batch_id)

    def _record_failure(self, request: Any, failure: AnalysisFailure, *, source: str, edits: list | None,
                        batch_id: str | None, input_dir: Path | None) -> None:
        raw = request.to_dict() if isinstance(request, PredictRequest) else request
        failure.run_id = self._record(raw if isinstance(raw, dict) else None, None, source=source, edits=edits,
                                      error=failure.error, error_type=failure.error_type, batch_id=batch_id,
                                      input_sha256=self._input_sha256(raw, input_dir))

    def _record_batch(self, entries: list, items: list[BatchItem], *, source: str, batch_id: str,
                      input_dir: Path | None) -> None:
        for entry, item in zip(entries, items, strict=True):
            if isinstance(item, AnalysisResponse):
                self._record_success(PredictRequest.parse(entry), item, source=source, edits=None, batch_id=batch_id)
            else:
                self._record_failure(entry, item, source=source, edits=None, batch_id=batch_id, input_dir=input_dir)

    def _input_sha256(self, request: Any, input_dir: Path | None) -> str | None:
        """sha256 of the file a failed request names, when it is an allowed, existing file (else None)."""
        from core.paths import resolve_input

        rel = request.get("img_path_relative") if isinstance(request, dict) else None
        if not isinstance(rel, str) or not rel:
            return None
        try:
            path = resolve_input(self.settings, rel, input_dir=input_dir)
            if path.stat().st_size > self.settings.max_upload_mb * 1024 * 1024 * 4:
                return None
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except (UUSICError, OSError, ValueError):
            return None

    def runs(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]:
        """Recorded runs, newest first (filters as :meth:`core.history.HistoryStore.list`)."""
        return self.store.list(filters, limit=limit)

    def run(self, run_id: int) -> dict:
        """One recorded run (JSON columns decoded); :class:`NotFoundError` when there is none."""
        from core.history import decode_row

        row = self.store.get(run_id)
        if row is None:
            raise NotFoundError(f"no run {run_id} in the history", field="run_id")
        return decode_row(row)

    def runs_csv(self, filters: dict | None = None, limit: int = 10000) -> str:
        return self.store.to_csv(self.runs(filters, limit=limit))

    def mask_png(self, response: AnalysisResponse | dict) -> bytes:
        """The PNG bytes of a segmentation response's mask (it must lie under ``api_out/``)."""
        path = response.get("mask_path") if isinstance(response, dict) else response.mask_path
        return self._workspace_file(path, Path(self.settings.api_out), "mask").read_bytes()

    def run_image(self, run_id: int) -> np.ndarray:
        """The analysed image of a run (RGB, through the project's image loader)."""
        from core.imaging import load_image
        from core.paths import resolve_input

        row = self.run(run_id)
        rel = row.get("img_path_relative")
        frame = (row.get("request") or {}).get("frame_index") if isinstance(row.get("request"), dict) else None
        if not rel:
            raise NotFoundError(f"run {run_id} names no image", field="run_id")
        try:
            path = resolve_input(self.settings, str(rel))
        except PathError as exc:
            raise NotFoundError(f"the image of run {run_id} is no longer available ({exc.message})",
                                field="run_id") from None
        return load_image(path, settings=self.settings, frame_index=frame).rgb  # cine: the run's frame

    def run_mask(self, run_id: int) -> np.ndarray:
        """The predicted mask of a segmentation run, as a boolean array at the image's size."""
        from core.imaging import load_image

        path = self._workspace_file(self.run(run_id).get("mask_path"), Path(self.settings.api_out), "mask")
        return load_image(path, settings=self.settings).rgb[..., 0] > 127

    # ---- cine
    def probe(self, img_path_relative: str) -> dict:
        """``{frame_count, fps, width, height, format}`` of an input (a still image: 1 frame, fps None)."""
        from core.imaging import probe_frames
        from core.paths import resolve_input

        path = resolve_input(self.settings, img_path_relative)
        return probe_frames(path, settings=self.settings).as_dict()

    def load_frame(self, img_path_relative: str, frame_index: int) -> np.ndarray:
        """One frame of an input as RGB uint8 (only that frame is decoded; a video: up to it)."""
        from core.imaging import load_image
        from core.paths import resolve_input

        if isinstance(frame_index, bool) or not isinstance(frame_index, int) or frame_index < 0:
            raise RequestError(f"frame_index must be a whole number >= 0, got {frame_index!r}", field="frame_index")
        path = resolve_input(self.settings, img_path_relative)
        return load_image(path, settings=self.settings, frame_index=frame_index).rgb

    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None,
                       output_dir: Path | None = None, input_dir: Path | None = None,
                       record: bool = True) -> CineResult:
        """Analyse frames of a cine (None = all) as one batch: each frame decoded once, ``edits`` applied to each,
        one history row per frame (``frame_index``) under one ``batch_id``; the result has the loop's summary.
        A refused call (bad request, edits, frames, budget) is recorded as one failed run, as :meth:`analyze` does."""
        checked: list[dict] | None = None
        try:
            checked = parse_edits(edits) or None
            with self._held([request]):
                return self._analyze_frames(request, frames=frames, edits=checked, source=source,
                                            progress=progress, model=model, output_dir=output_dir,
                                            input_dir=input_dir, record=record)
        except Exception as exc:
            self._refused(request, exc, source=source, edits=checked, batch_id=None, input_dir=input_dir,
                          record=record)
            raise

    def _refused(self, request: Any, exc: BaseException, *, source: str, edits: list | None, batch_id: str | None,
                 input_dir: Path | None, record: bool = True) -> None:
        """A refused call: recorded as one failed run (every door the same way), and its error naming an upload as
        the user named it."""
        failure = AnalysisFailure.from_exception(request, exc)
        if record:
            self._record_failure(request, failure, source=source, edits=edits, batch_id=batch_id,
                                 input_dir=input_dir)
        if isinstance(exc, UUSICError):
            exc.message = failure.error

    def _analyze_frames(self, request: Any, *, frames: list[int] | str | None, edits: list[dict] | None,
                        source: str, progress: Any, model: str | None, output_dir: Path | None,
                        input_dir: Path | None, record: bool) -> CineResult:
        from core.cine import CineResult, check_budget, parse_frames, summarize
        from core.imaging import held_frames, probe_frames
        from core.paths import resolve_input

        start = time.perf_counter()
        parsed = PredictRequest.parse(request)
        raw = dict(request) if isinstance(request, dict) else parsed.to_dict()
        path = resolve_input(self.settings, parsed.img_path_relative, input_dir=input_dir)
        info = probe_frames(path, settings=self.settings)
        chosen = parse_frames(frames, info.frame_count, max_frames=self.settings.max_frames)  # before any list
        # the header's size by arithmetic first; decoding then counts every frame at its real size (DecodeBudget)
        check_budget(len(chosen), info.width, info.height, self.settings.max_frames, self.settings.max_decoded_mb)
        if edits:
            entries, missing = self._edited_frames(raw, path, chosen, edits)
            result = self.analyze_batch(entries, source=source, progress=progress, model=model, record=False,
                                        output_dir=output_dir, input_dir=input_dir)
            entries, items = _with_missing_frames(raw, chosen, entries, result.items, missing)
        else:
            entries = [{**raw, "frame_index": index} for index in chosen]
            with held_frames(path, chosen, settings=self.settings):  # frames a video ends before fail alone
                result = self.analyze_batch(entries, source=source, progress=progress, model=model, record=False,
                                            output_dir=output_dir, input_dir=input_dir)
            items = result.items
        for index, item in zip(chosen, items, strict=True):
            item.frame_index, item.frame_count = index, info.frame_count  # type: ignore[union-attr]
        if record:
            self._record_frames(entries, items, source=source, edits=edits, batch_id=result.batch_id,
                                input_dir=input_dir)
        summary = summarize(items, chosen, frame_count=info.frame_count, fps=info.fps, dataset=parsed.dataset)
        return CineResult(items, summary, batch_id=result.batch_id, seconds=time.perf_counter() - start)

    def _edited_frames(self, raw: dict, path: Path, chosen: list[int],
                       edits: list) -> tuple[list[dict], ImageError | None]:
        """Each frame decoded, edited (core.editing, as the dashboard does) and stored in ``api_in/``; the requests
        name the stored frames and say where they came from (``source_path_relative``, ``source_frame_index``).
        A video that ends before frames its header promises: the frames before the end, and the end's error."""
        from PIL import Image

        from core.editing import apply_edits, check_edit_budget
        from core.imaging import decode_frames
        from core.samples import safe_stem, save_upload

        entries: list[dict] = []
        stem = safe_stem(str(raw.get("img_name") or path.name))
        base = {k: v for k, v in raw.items() if k not in ("frame_index", "img_name", "img_dimensions",
                                                           "img_size_bytes", "img_format")}
        missing: ImageError | None = None
        try:
            for frame in decode_frames(path, chosen, settings=self.settings):
                height, width = frame.rgb.shape[:2]  # the decoded frame's own size, whatever the header said
                check_edit_budget((width, height), edits, max_pixels=self.settings.max_image_pixels,
                                  max_side=self.settings.max_image_side)
                edited = apply_edits(Image.fromarray(frame.rgb), edits).convert("RGB")
                buffer = io.BytesIO()
                edited.save(buffer, format="PNG")
                skeleton = save_upload(self.settings, buffer.getvalue(), f"{stem}_f{frame.frame_index:04d}.png")
                entry = {**base, **{k: skeleton[k] for k in ("img_name", "img_path_relative", "img_size_bytes",
                                                             "img_dimensions", "img_format")},
                         "source_path_relative": raw.get("img_path_relative"),
                         "source_frame_index": frame.frame_index}
                if not entry.get("pixel_spacing_mm") and frame.pixel_spacing_mm:  # edits keep the pixel size
                    entry["pixel_spacing_mm"] = frame.pixel_spacing_mm
                    entry["pixel_spacing_source"] = getattr(frame, "pixel_spacing_source", None)
                entries.append(entry)
        except ImageError as exc:
            if exc.field != "frame_index" or not entries:
                raise
            missing = exc
        order = {index: position for position, index in enumerate(chosen)}
        return sorted(entries, key=lambda entry: order[entry["source_frame_index"]]), missing

    def _record_frames(self, entries: list, items: list[BatchItem], *, source: str, edits: list | None,
                       batch_id: str, input_dir: Path | None) -> None:
        for entry, item in zip(entries, items, strict=True):
            if isinstance(item, AnalysisResponse):
                self._record_success(PredictRequest.parse(entry), item, source=source, edits=edits,
                                     batch_id=batch_id)
            else:
                self._record_failure(entry, item, source=source, edits=edits, batch_id=batch_id, input_dir=input_dir)

    # ---- calibration / uncertainty / reference
    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray:
        """The TTA agreement map of a segmentation response: float32 ``H x W`` in 0..1 (fraction of the views
        voting foreground); :class:`NotFoundError` when the response has none (analysed without TTA)."""
        from core.imaging import load_image

        data = response if isinstance(response, dict) else response.to_json()
        path = (data.get("uncertainty") or {}).get("agreement_path")
        if not path:
            raise NotFoundError("this result has no agreement map (it was analysed without test-time augmentation)")
        target = self._workspace_file(path, Path(self.settings.api_out), "agreement map")
        return load_image(target, settings=self.settings).rgb[..., 0].astype(np.float32) / 255.0

    def _agreement_url(self, response: dict) -> None:
        """``uncertainty.agreement_url`` (``/v1/masks/...``) for an agreement PNG under ``api_out/``."""
        block = response.get("uncertainty")
        path = block.get("agreement_path") if isinstance(block, dict) else None
        if isinstance(block, dict) and path:
            api_out = Path(self.settings.api_out).resolve()
            target = Path(path).resolve()
            if target.is_relative_to(api_out):
                block["agreement_url"] = f"/v1/masks/{target.relative_to(api_out).as_posix()}"

    # ---- reports
    def report_pdf(self, run_id: int, lang: str = "en") -> bytes:
        """The case report of a successful run as PDF bytes (``lang`` "zh" or "en"; see :mod:`core.report`)."""
        from core.report import build_report

        return build_report(self, int(run_id), lang)

    def dicom_seg(self, run_id: int) -> bytes:
        """A DICOM SEG of a segmentation run's mask, referencing its source DICOM (see :mod:`core.dicom_seg`)."""
        from core.dicom_seg import run_dicom_seg

        return run_dicom_seg(self, int(run_id))

    @staticmethod
    def _workspace_file(path: Any, root: Path, what: str) -> Path:
        if not path:
            raise NotFoundError(f"this run has no {what} file")
        target = Path(str(path)).resolve()
        if not target.is_relative_to(root.resolve()):
            raise PathError(f"the {what} file of this run is outside the workspace")
        if not target.is_file():
            raise NotFoundError(f"the {what} file of this run is no longer available")
        return target


def with_spacing_source(skeleton: dict) -> dict:
    """A data-root sample's skeleton whose ``pixel_spacing_mm`` (from ``ground_truth.json``) says where it came
    from (uploads get theirs from the DICOM loader in :func:`core.samples.save_upload`)."""
    if skeleton.get("pixel_spacing_mm") and not skeleton.get("pixel_spacing_source"):
        skeleton["pixel_spacing_source"] = "ground_truth"
    return skeleton


def _history_failure(exc: BaseException) -> str:
    """Why a history row was not written, in words fit for the client (no paths, URLs or tracebacks)."""
    from core.errors import HistoryError

    if isinstance(exc, HistoryError):
        return "the history database cannot be written (read-only, full or unreachable); the server log has details"
    if isinstance(exc, OSError):
        return f"the workspace cannot be written ({exc.strerror or type(exc).__name__})"
    return f"the history store failed ({type(exc).__name__}); the server log has details"


def _with_missing_frames(raw: dict, chosen: list[int], entries: list[dict], items: list[BatchItem],
                         missing: ImageError | None) -> tuple[list[dict], list[BatchItem]]:
    """Entries and items in ``chosen`` order, a failure (``missing``) for each frame a video ended before."""
    if missing is None:
        return entries, items
    done = {entry["source_frame_index"]: (entry, item) for entry, item in zip(entries, items, strict=True)}
    pairs = [done.get(index) or ({**raw, "frame_index": index},
                                 AnalysisFailure.from_exception({**raw, "frame_index": index}, missing))
             for index in chosen]
    return [entry for entry, _ in pairs], [item for _, item in pairs]


def write_classification_json(output_dir: Path, items: list[BatchItem]) -> Path:
    """The one writer of the challenge's ``classification.json`` (``{img_path_relative: {probability,
    prediction}}``) for a batch's items."""
    import json

    from core.files import atomic_write_text

    return atomic_write_text(Path(output_dir) / "classification.json",
                             json.dumps(classification_json(items), indent=4))


def failure_message(exc: BaseException) -> str:
    """A one-line message for people (never a traceback)."""
    return as_uusic_error(exc).message
