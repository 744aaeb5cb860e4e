"""Typed answers of the analysis service: one analysed image, one failed image, a batch.

The JSON of :class:`AnalysisResponse` is exactly the engine's response dict (the challenge's seed fields,
``{img_path_relative: {probability, prediction}}`` for classification, the resource fields and the extras): fields
are declared for reading and type checks, unknown keys are kept, and :meth:`AnalysisResponse.to_json` gives back
only the keys that were set, so nothing is added or renamed on the way through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.errors import UUSICError, error_body

RESOURCE_FIELDS = ("inference_time_sec", "memory_usage_mb", "gpu_memory_usage_mb", "gpu_memory_reserved_mb")


class _Open(BaseModel):
    """A model that keeps unknown keys and dumps only what was set."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def to_json(self) -> dict[str, Any]:
        """The JSON object as it travels (only the keys that were set, extras included)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read of one key, declared or extra, as JSON (only that key is dumped; unset → ``default``)."""
        if key not in self.model_fields_set and key not in (self.__pydantic_extra__ or {}):
            return default
        return self.model_dump(mode="json", include={key}).get(key, default)


class AnalysisResponse(_Open):
    """One analysed image (classification or segmentation) with its resources and, once recorded, its run id."""

    task: str
    dataset_name: str
    organ: str | None = None
    img_path_relative: str
    img_name: str | None = None
    # classification
    probability: list[float] | None = None
    prediction: int | None = None
    label_name: str | None = None
    label_name_zh: str | None = None
    class_names: list[str] | None = None
    class_names_zh: list[str] | None = None
    # segmentation
    mask_name: str | None = None
    mask_path: str | None = None
    mask_path_relative: str | None = None
    mask_url: str | None = None
    mask_area_px: int | None = None
    seg_target_info: str | None = None
    pixel_spacing_mm: float | None = None
    pixel_spacing_source: str | None = None  # core.calibration.SPACING_SOURCES; None when unknown
    coverage_fraction: float | None = None
    measurements: dict[str, Any] | None = None
    # test-time augmentation (core.tta) and the ground truth's measurements (core.reference)
    uncertainty: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    # resources and provenance
    inference_time_sec: float
    memory_usage_mb: float | None = None
    gpu_memory_usage_mb: float | None = None
    gpu_memory_reserved_mb: float | None = None
    timings: dict[str, float] | None = None
    device: str | None = None
    device_name: str | None = None
    model_name: str | None = None
    model_sha256: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    image_format: str | None = None
    input_sha256: str | None = None
    frame_index: int | None = None  # cine: the analysed frame (0 for a still image)
    frame_count: int | None = None  # frames in the input file (1 for a still image)
    recognition: dict[str, Any] | None = None  # core.recognition: organ, dataset, confidence, in_distribution
    notes: list[str] | None = None
    run_id: int | None = None

    @property
    def ok(self) -> bool:
        return True

    def challenge_entry(self) -> dict[str, Any] | None:
        """``{"probability": [...], "prediction": k}`` for ``classification.json``; None for segmentation."""
        if self.task != "classification" or self.probability is None:
            return None
        return {"probability": list(self.probability), "prediction": int(self.prediction or 0)}


class AnalysisFailure(_Open):
    """One image that could not be analysed: the error in its one JSON form, and its run id once recorded."""

    img_path_relative: str | None = None
    task: str | None = None
    dataset_name: str | None = None
    error: str
    error_type: str
    status_code: int
    field: str | None = None
    run_id: int | None = None

    @property
    def ok(self) -> bool:
        return False

    @classmethod
    def from_exception(cls, request: Any, exc: BaseException) -> AnalysisFailure:
        """The failure entry for ``request`` (a dict or a parsed request) that raised ``exc``."""
        body = error_body(exc)
        fields = {name: _request_value(request, name) for name in ("img_path_relative", "task", "dataset_name")}
        return cls(**{k: v for k, v in fields.items() if isinstance(v, str)},
                   error=named_for_user(str(body["detail"]), request),
                   error_type=body["error_type"], status_code=body["status_code"],
                   **({"field": body["field"]} if "field" in body else {}))

    def to_exception(self) -> UUSICError:
        """The typed error this failure stands for."""
        from core.errors import error_from_body

        return error_from_body({"detail": self.error, "error_type": self.error_type, "field": self.field},
                               self.status_code)


BatchItem = AnalysisResponse | AnalysisFailure


# Every key an analysis answers with (a response, a failure, a batch / cine envelope): a request cannot set these.
RESULT_KEYS = (frozenset(AnalysisResponse.model_fields) | frozenset(AnalysisFailure.model_fields)
               | frozenset(RESOURCE_FIELDS) | frozenset({"batch_id", "summary", "items", "failures", "detail"}))


def _request_value(request: Any, name: str) -> Any:
    if isinstance(request, dict):
        return request.get(name)
    return getattr(request, name, None)


def named_for_user(message: str, request: Any) -> str:
    """``message`` with an upload's stored file names (``x-1a2b3c.png``, its kept original) replaced by the name the
    user gave it (``original_name``), so an error names the file the user knows."""
    original = _request_value(request, "original_name")
    if not isinstance(original, str) or not original:
        return message
    for key in ("img_path_relative", "source_path_relative"):
        rel = _request_value(request, key)
        stored = rel.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(rel, str) else ""
        if stored and stored != original:
            message = message.replace(stored, original)
    return message


def item_from_json(body: dict[str, Any]) -> BatchItem:
    """A batch entry from its JSON (failures carry ``error_type``)."""
    if "error_type" in body and "error" in body:
        return AnalysisFailure.model_validate(body)
    return AnalysisResponse.model_validate(body)


def classification_json(items: list[BatchItem]) -> dict[str, dict[str, Any]]:
    """The challenge's ``classification.json`` object of a batch: ``{img_path_relative: {probability, prediction}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if isinstance(item, AnalysisResponse):
            entry = item.challenge_entry()
            if entry is not None:
                out[item.img_path_relative] = entry
    return out


@dataclass
class BatchResult:
    """The one result of many items: a batch's items in input order (responses and failures), or a cine's frames in
    frame order with the loop's ``summary`` (:func:`core.cine.summarize`); where its files went, how long it took."""

    items: list[BatchItem]
    summary: dict[str, Any] | None = None  # a cine's loop summary; None for a batch
    batch_id: str | None = None
    output_dir: str | None = None
    seconds: float = 0.0

    @property
    def responses(self) -> list[AnalysisResponse]:
        return [i for i in self.items if isinstance(i, AnalysisResponse)]

    @property
    def failures(self) -> list[AnalysisFailure]:
        return [i for i in self.items if isinstance(i, AnalysisFailure)]

    def count(self, error_type: str) -> int:
        """How many items failed with ``error_type`` (e.g. ``NoModelError``: skipped, no model)."""
        return sum(1 for f in self.failures if f.error_type == error_type)

    def classification_json(self) -> dict[str, dict[str, Any]]:
        return classification_json(self.items)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"batch_id": self.batch_id, "seconds": self.seconds}
        if self.summary is not None:
            body["summary"] = self.summary
        return {**body, "results": [item.to_json() for item in self.items]}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BatchResult:
        """A result as :meth:`to_json` wrote it (the HTTP client)."""
        summary = body.get("summary")
        return cls([item_from_json(entry) for entry in body.get("results") or []],
                   dict(summary) if isinstance(summary, dict) else None, batch_id=body.get("batch_id"),
                   seconds=float(body.get("seconds") or 0.0))


def write_classification_json(output_dir: Path, items: list[BatchItem]) -> Path:
    """The one writer of the challenge's ``classification.json`` (``{img_path_relative: {probability,
    prediction}}``) for a batch's items."""
    import json

    from core.files import atomic_write_text

    return atomic_write_text(Path(output_dir) / "classification.json",
                             json.dumps(classification_json(items), indent=4))
