"""The analysis service: the one interface every door calls, in-process (:class:`AnalysisService`) or over HTTP
(:class:`core.client.ApiClient`); :func:`core.client.open_service` picks one from the settings.

The service only composes the parts that do the work, each in its own module:

- :mod:`core.analysis`: the pipeline (parse → route → decode → geometry → forward → inverse → measure), one image
  or a batch, with a public strategy for how a batch runs (threads here, Ray Data in :mod:`core.cluster.batch`);
- :mod:`core.cine_analysis`: frames of a cine as one batch;
- :mod:`core.recorder`: one history row per case, successes and failures alike;
- :mod:`core.run_reader`: recorded runs and their files, the data reports and DICOM SEG are built from;
- :mod:`core.inputs`: uploads, data-root samples, frames; :mod:`core.data_root`: an input's file, the challenge
  JSON files, file name → dataset, a batch's metrics; :mod:`core.routing`: the models and "is this served?".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core import catalog, data_root, inputs
from core.analysis import Analyzer, GroupRunner
from core.cine_analysis import FrameAnalyzer
from core.errors import UUSICError, failure_message
from core.recorder import Recorder
from core.response import AnalysisResponse, BatchResult, write_classification_json
from core.routing import ModelPool
from core.run_reader import RunReader
from core.settings import Settings

if TYPE_CHECKING:
    from core.cine import CineResult
    from core.engine import Engine
    from core.history import HistoryStore
    from core.recognition import Recognition

__all__ = ["AnalysisBackend", "AnalysisService", "failure_message", "write_classification_json"]


class AnalysisBackend(Protocol):
    """What every door may call: :class:`AnalysisService` in-process, :class:`core.client.ApiClient` over HTTP."""

    settings: Settings

    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                model: str | None = None) -> AnalysisResponse: ...
    def analyze_batch(self, requests: Iterable[Any], *, source: str, progress: Any = None,
                      batch_size: int = 8, model: str | None = None) -> BatchResult: ...
    def save_upload(self, data: bytes, filename: str) -> dict: ...
    def random_sample(self, task: str, dataset_name: str) -> dict: ...
    def recognise(self, data: bytes, filename: str = "image") -> Recognition | None: ...
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
    def input_file(self, img_path_relative: str) -> bytes: ...
    def json_files(self) -> list[str]: ...
    def json_entries(self, relative: str) -> list[dict]: ...
    def known_names(self, task: str) -> dict[str, str]: ...
    def batch_metrics(self, requests: list[dict], result: BatchResult) -> dict | None: ...
    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None) -> CineResult: ...
    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray: ...
    def report_pdf(self, run_id: int, lang: str = "en") -> bytes: ...
    def dicom_seg(self, run_id: int) -> bytes: ...


class AnalysisService:
    """Owns a case from request to history row; one per process and settings (:func:`core.client.open_service`).
    ``runner`` is how a batch's groups run (:class:`core.analysis.GroupRunner`; default: threads here);
    ``workspace_check=False``: no start-up check of the workspace (a process that records nothing)."""

    def __init__(self, settings: Settings | None = None, *, engine: Engine | None = None,
                 store: HistoryStore | None = None, model: str | None = None, micro_batch: bool | None = None,
                 runner: GroupRunner | None = None, workspace_check: bool = True):
        self.settings = settings or Settings.from_env()
        self.settings.ensure_workspace()
        self.pool = ModelPool(self.settings, engine=engine, model=model, micro_batch=micro_batch)
        self.recorder = Recorder(self.settings, store)
        self.analyzer = Analyzer(self.settings, self.pool, self.recorder, runner)
        self.frames = FrameAnalyzer(self.analyzer)
        self.reader = RunReader(self.settings, self.recorder)
        from core.workspace import SkippedCheck, StartupCheck

        # temp files, orphans, rows whose files are gone (background); a store handed in is checked, else its own
        self.workspace_check: StartupCheck | SkippedCheck = (
            StartupCheck(self.settings, self.recorder.given_store) if workspace_check else SkippedCheck())

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
        history = "postgresql" if (self.settings.history_url or "").startswith("postgres") else "sqlite"
        backends = {name: loaded.backend.as_dict() for name, loaded in sorted(self.pool.loaded.items())
                    if getattr(loaded, "backend", None) is not None}  # what runs each model (core.models.backends)
        return {"status": "ok", "model_loaded": engine is not None,
                "model": engine.spec.name if engine is not None else None,
                "device": str(engine.device) if engine is not None else None,
                "device_name": engine.device_name if engine is not None else None,
                "models_loaded": sorted(self.pool.loaded), "error": next(iter(errors.values()), None),
                "backends": backends, "errors": errors, "auth_required": bool(self.settings.api_key),
                "micro_batching": bool(self.pool.batchers), "history": history,
                "workspace": self.workspace_check.summary()}

    # ------------------------------------------------------------------------------------------ inputs
    def save_upload(self, data: bytes, filename: str) -> dict:
        """Store an upload in ``api_in/`` and return its request skeleton (:func:`core.inputs.save_upload`)."""
        return inputs.save_upload(self.settings, data, filename)

    def random_sample(self, task: str, dataset_name: str) -> dict:
        """The request skeleton of a random image of ``dataset_name`` under the data root."""
        return inputs.random_sample(self.settings, task, dataset_name)

    def recognise(self, data: bytes, filename: str = "image") -> Recognition | None:
        """The organ recogniser's view of an image's bytes (None: unavailable), under the upload's budgets."""
        return inputs.recognise(self.settings, data, filename)

    def probe(self, img_path_relative: str) -> dict:
        """``{frame_count, fps, width, height, format}`` of an input (a still image: 1 frame, fps None)."""
        return inputs.probe(self.settings, img_path_relative)

    def load_frame(self, img_path_relative: str, frame_index: int) -> np.ndarray:
        """One frame of an input as RGB uint8 (only that frame is decoded)."""
        return inputs.load_frame(self.settings, img_path_relative, frame_index)

    def input_file(self, img_path_relative: str) -> bytes:
        """An input's bytes (data root or ``api_in/``; a DICOM de-identified): :func:`core.data_root.input_file`."""
        return data_root.input_file(self.settings, img_path_relative)

    def json_files(self) -> list[str]:
        """The challenge JSON files under the data root (relative POSIX paths)."""
        return data_root.json_files(self.settings)

    def json_entries(self, relative: str) -> list[dict]:
        """The request objects of one of :meth:`json_files`."""
        return data_root.json_entries(self.settings, relative)

    def known_names(self, task: str) -> dict[str, str]:
        """File name (lower case) → dataset of the data root's entries of ``task``."""
        return data_root.known_names(self.settings, task)

    def batch_metrics(self, requests: list[dict], result: BatchResult) -> dict | None:
        """A batch's metrics against the data root's ground truth (:func:`core.data_root.batch_metrics`)."""
        return data_root.batch_metrics(self.settings, requests, result)

    # ------------------------------------------------------------------------------------------ analysis
    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                output_dir: Path | None = None, input_dir: Path | None = None, batch_id: str | None = None,
                model: str | None = None) -> AnalysisResponse:
        """Analyse one image and record the run (:meth:`core.analysis.Analyzer.analyze`)."""
        return self.analyzer.analyze(request, source=source, edits=edits, output_dir=output_dir,
                                     input_dir=input_dir, batch_id=batch_id, model=model)

    def analyze_batch(self, requests: Iterable[Any], *, source: str, output_dir: Path | None = None,
                      input_dir: Path | None = None, batch_size: int = 8, progress: Any = None,
                      workers: int = 2, record: bool = True, model: str | None = None) -> BatchResult:
        """Analyse many images, each recorded (:meth:`core.analysis.Analyzer.analyze_batch`)."""
        return self.analyzer.analyze_batch(requests, source=source, output_dir=output_dir, input_dir=input_dir,
                                           batch_size=batch_size, progress=progress, workers=workers,
                                           record=record, model=model)

    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None,
                       output_dir: Path | None = None, input_dir: Path | None = None,
                       record: bool = True) -> CineResult:
        """Analyse frames of a cine as one batch (:meth:`core.cine_analysis.FrameAnalyzer.analyze_frames`)."""
        return self.frames.analyze_frames(request, frames=frames, edits=edits, source=source, progress=progress,
                                          model=model, output_dir=output_dir, input_dir=input_dir, record=record)

    # ------------------------------------------------------------------------------------------ history
    @property
    def store(self) -> HistoryStore:
        """The history store (``UUSIC_HISTORY_URL`` or the workspace's SQLite file), opened on first use."""
        return self.recorder.store

    def runs(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]:
        return self.reader.runs(filters, limit=limit)

    def run(self, run_id: int) -> dict:
        return self.reader.run(run_id)

    def runs_csv(self, filters: dict | None = None, limit: int = 10000) -> str:
        return self.reader.runs_csv(filters, limit=limit)

    def mask_png(self, response: AnalysisResponse | dict) -> bytes:
        return self.reader.mask_png(response)

    def run_image(self, run_id: int) -> np.ndarray:
        return self.reader.run_image(run_id)

    def run_mask(self, run_id: int) -> np.ndarray:
        return self.reader.run_mask(run_id)

    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray:
        return self.reader.agreement_map(response)

    # ------------------------------------------------------------------------------------------ reports
    def report_pdf(self, run_id: int, lang: str = "en") -> bytes:
        """The case report of a successful run as PDF bytes (``lang`` "zh" or "en"; see :mod:`core.report`)."""
        from core.report import build_report

        return build_report(self.reader, int(run_id), lang)

    def dicom_seg(self, run_id: int) -> bytes:
        """A DICOM SEG of a segmentation run's mask, referencing its source DICOM (see :mod:`core.dicom_seg`)."""
        from core.dicom_seg import run_dicom_seg

        return run_dicom_seg(self.reader, int(run_id))
