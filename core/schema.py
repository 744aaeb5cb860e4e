"""The request JSON (one image), validated with pydantic v2; bad requests raise :class:`RequestError`.

Fields follow the challenge's JSON (DEVELOPERS.md). ``task`` and ``dataset_name`` are checked against
:mod:`core.catalog`; ``organ`` is filled from the catalog when absent and must agree with it when given.
Extra keys are kept (``model_extra``) and echoed in the response, up to :data:`MAX_EXTRAS_BYTES` of JSON (more is
refused with 413); an extra named like a result field (:data:`RESERVED_EXTRAS`: ``probability``, ``measurements``,
``run_id``, the image's own path …) is refused with 422, so a request can never stand in for a result.
Text fields are at most :data:`MAX_TEXT` characters; ``pixel_spacing_mm`` must be plausible (inside
:mod:`core.calibration`'s band, the one band of every door: else 422 naming it) and ``pixel_spacing_source`` one
of :data:`core.calibration.SPACING_SOURCES`; ``tta`` asks for test-time augmentation (None: the setting ``tta``).
JSON text is read by :func:`loads_json`, which refuses nesting deeper than
:data:`MAX_JSON_DEPTH` before parsing (a deeply nested body must not exhaust the parser's recursion).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath
from typing import Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from core import calibration, catalog
from core.errors import RequestError
from core.response import RESULT_KEYS

TASKS = catalog.TASKS
MAX_EXTRAS_BYTES = 16 * 1024  # JSON bytes of the fields outside the schema (echoed and stored in the history)
MAX_TEXT = 4096  # characters of any text field of the schema
MAX_PROBLEMS = 10  # problems an invalid request's message lists (then "and N more")
MAX_JSON_DEPTH = 64  # nesting of arrays / objects in a request JSON (real requests use 3-5)
_JSON_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]], _DEPTH_STEP[[ord("]"), ord("}")]] = 1, -1


def json_depth_exceeds(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays / objects in ``text`` nest deeper than ``limit`` (string literals skipped): linear, vectorised,
    no recursion — run before ``json.loads``, whose recursion a deeply nested text would exhaust."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    steps = _DEPTH_STEP[np.frombuffer(_JSON_STRINGS.sub(b"", data), dtype=np.uint8)]
    depth = 0
    for start in range(0, len(steps), 1 << 20):
        running = np.cumsum(steps[start:start + (1 << 20)], dtype=np.int64) + depth
        if running.size and int(running.max()) > limit:
            return True
        depth = int(running[-1]) if running.size else depth
    return False


def loads_json(text: str | bytes | bytearray, *, what: str = "request") -> Any:
    """``json.loads`` for untrusted text: :class:`RequestError` (400) when it is not JSON or nests deeper than
    :data:`MAX_JSON_DEPTH`."""
    if isinstance(text, bytearray):
        text = bytes(text)
    if json_depth_exceeds(text):
        raise RequestError(f"{what} nests arrays / objects more than {MAX_JSON_DEPTH} levels deep", status_code=400)
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestError(f"{what} nests arrays / objects too deeply", status_code=400) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"{what} is not valid JSON: {exc}", status_code=400) from None


def extras_size(extras: dict[str, Any]) -> int:
    """JSON bytes of ``extras`` as they would be echoed and stored."""
    return len(json.dumps(extras, ensure_ascii=False, default=str).encode("utf-8")) if extras else 0


class RequestFields(BaseModel):
    """The fields of a request JSON and their checks, ``dataset_name`` optional: :class:`PredictRequest` (what the
    engine receives) requires it; :class:`UnroutedRequest` has none, until the route step fills it."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    img_path_relative: str = Field(min_length=1, max_length=MAX_TEXT)
    task: str = Field(max_length=MAX_TEXT)
    dataset_name: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    img_name: str | None = Field(default=None, max_length=MAX_TEXT)
    img_size_bytes: int | None = Field(default=None, ge=0)
    img_dimensions: tuple[int, int] | None = None
    img_format: str | None = Field(default=None, max_length=MAX_TEXT)
    organ: str | None = Field(default=None, max_length=MAX_TEXT)
    data_partition_group: str | None = Field(default=None, max_length=MAX_TEXT)
    mask_name: str | None = Field(default=None, max_length=MAX_TEXT)
    mask_path_relative: str | None = Field(default=None, max_length=MAX_TEXT)
    seg_target_info: str | None = Field(default=None, max_length=MAX_TEXT)
    class_label_index: int | None = Field(default=None, ge=0)
    class_label_name: str | None = Field(default=None, max_length=MAX_TEXT)
    frame_index: int | None = Field(default=None, ge=0)  # cine: which frame of a multi-frame file (None = 0)
    pixel_spacing_mm: float | None = None
    pixel_spacing_source: str | None = Field(default=None, max_length=MAX_TEXT)
    tta: bool | None = None

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        task = value.strip().lower()
        if task not in TASKS:
            raise ValueError(f"unknown task {value!r}; expected one of {', '.join(TASKS)}")
        return task

    @field_validator("img_dimensions")
    @classmethod
    def _positive_dimensions(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (value[0] <= 0 or value[1] <= 0):
            raise ValueError(f"expected [width, height] with positive numbers, got {list(value)}")
        return value

    @field_validator("pixel_spacing_mm", mode="before")
    @classmethod
    def _spacing_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of millimetres per pixel, not true/false")
        return value

    @field_validator("pixel_spacing_mm")
    @classmethod
    def _finite_spacing(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of millimetres per pixel")
        if value is not None and not calibration.is_plausible(value):
            raise ValueError(calibration.spacing_problem(value))
        return value

    @field_validator("pixel_spacing_source")
    @classmethod
    def _known_spacing_source(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.lower() not in calibration.SPACING_SOURCES:
            raise ValueError(f"{value!r:.60} is not one of {', '.join(calibration.SPACING_SOURCES)}")
        return value.lower()

    @property
    def extras(self) -> dict[str, Any]:
        """Keys the schema does not know, kept as sent."""
        return dict(self.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if data.get("img_dimensions") is not None:
            data["img_dimensions"] = list(data["img_dimensions"])
        return data

    @classmethod
    def _validated(cls, obj: Any) -> Any:
        """``obj`` (a dict or a JSON text of one) as ``cls``; :class:`RequestError` naming the field."""
        if isinstance(obj, (str, bytes, bytearray)):
            try:
                obj = loads_json(obj)
            except RequestError as exc:
                raise RequestError(exc.message, status_code=422) from None
        if not isinstance(obj, dict):
            raise RequestError(f"request must be a JSON object, got {type(obj).__name__}")
        try:
            parsed = cls.model_validate(obj)
        except ValidationError as exc:
            raise RequestError(_describe(exc), field=_first_field(exc)) from None
        except RecursionError:
            raise RequestError("request nests arrays / objects too deeply") from None
        refuse_result_fields(parsed)
        size = extras_size(parsed.extras)
        if size > MAX_EXTRAS_BYTES:
            largest = max(parsed.extras, key=lambda key: extras_size({key: parsed.extras[key]}))
            raise RequestError(f"fields outside the schema take {size:,} bytes of JSON; the limit is "
                               f"{MAX_EXTRAS_BYTES:,} bytes (16 KiB) — the largest is {str(largest)[:60]!r}",
                               status_code=413, field=str(largest)[:60])
        return parsed


def _apply_catalog(request: RequestFields, dataset: catalog.Dataset) -> None:
    """Fill ``organ`` / ``dataset_name`` / ``img_name`` from the catalog entry; ValueError ``field: problem``."""
    if request.organ is None or request.organ == "":
        request.organ = dataset.organ
    elif request.organ.lower() != dataset.organ.lower():
        raise ValueError(
            f"organ: {request.organ!r} contradicts the catalog: dataset {dataset.name!r} is organ {dataset.organ!r}"
        )
    else:
        request.organ = dataset.organ
    if (request.class_label_index is not None and request.task == "classification"
            and request.class_label_index >= dataset.num_classes):
        raise ValueError(
            f"class_label_index: {request.class_label_index} is out of range for {dataset.name} "
            f"({dataset.num_classes} classes)"
        )
    request.dataset_name = dataset.name
    if not request.img_name:
        request.img_name = PurePosixPath(request.img_path_relative.replace("\\", "/")).name


class PredictRequest(RequestFields):
    """One image to analyse, its dataset known: what the engine receives. Build with :meth:`parse` to get
    :class:`RequestError` with readable messages."""

    dataset_name: str = Field(min_length=1, max_length=MAX_TEXT)

    _dataset: catalog.Dataset | None = PrivateAttr(default=None)
    _routed: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _check_catalog(self) -> PredictRequest:
        try:
            dataset = catalog.find_dataset(self.task, self.dataset_name)
        except catalog.UnknownDataset as exc:
            raise ValueError(f"dataset_name: {exc}") from None
        _apply_catalog(self, dataset)
        self._dataset = dataset
        return self

    @property
    def dataset(self) -> catalog.Dataset:
        """The catalog entry of this request's (task, dataset)."""
        if self._dataset is None:  # model_construct() bypasses validation
            self._dataset = catalog.find_dataset(self.task, self.dataset_name)
        return self._dataset

    @property
    def routed(self) -> bool:
        """True when the request gave no dataset and the route step chose it (:meth:`UnroutedRequest.routed_to`)."""
        return self._routed

    @classmethod
    def parse(cls, obj: dict | str | bytes | PredictRequest) -> PredictRequest:
        """Validate a dict (or a JSON text of one object); raise :class:`RequestError` naming the field."""
        if isinstance(obj, PredictRequest):
            return obj
        return cast(PredictRequest, cls._validated(obj))


ORGANS = tuple(dict.fromkeys(group.organ for group in catalog.ORGAN_GROUPS.values()))  # Appendix, Breast, ...


class UnroutedRequest(RequestFields):
    """A request that names no dataset (``dataset_name`` missing or null): the route step (:mod:`core.analysis`)
    decodes the image, asks the organ recogniser and makes it a :class:`PredictRequest` with :meth:`routed_to`.
    ``organ``, when given, must be a catalog organ; the dataset chosen is then one of that organ."""

    dataset_name: None = None

    @field_validator("organ")
    @classmethod
    def _known_organ(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for organ in ORGANS:
            if organ.lower() == value.lower():
                return organ
        raise ValueError(f"unknown organ {value!r:.60}; expected one of {', '.join(ORGANS)}")

    def routed_to(self, dataset: catalog.Dataset) -> PredictRequest:
        """This request with ``dataset`` filled in (the catalog's checks applied): a fully typed request, marked
        :attr:`PredictRequest.routed`. :class:`RequestError` naming the field when the dataset contradicts it."""
        if dataset.task != self.task:
            raise RequestError(f"dataset_name: {dataset.name} has no {self.task} task", field="dataset_name")
        routed = PredictRequest.model_construct(**{**self.model_dump(), "dataset_name": dataset.name})
        try:
            _apply_catalog(routed, dataset)
        except ValueError as exc:
            raise RequestError(f"invalid request: {exc}", field=str(exc).split(":", 1)[0]) from None
        routed._dataset, routed._routed = dataset, True
        return routed

    @classmethod
    def parse(cls, obj: dict | str | bytes | UnroutedRequest) -> UnroutedRequest:
        """Validate a dict (or a JSON text of one object) that names no dataset."""
        if isinstance(obj, UnroutedRequest):
            return obj
        return cast(UnroutedRequest, cls._validated(obj))


AnyRequest = PredictRequest | UnroutedRequest


def parse_request(obj: Any) -> AnyRequest:
    """The door's one parse: a :class:`PredictRequest`, or an :class:`UnroutedRequest` when ``dataset_name`` is
    missing or null (the route step then chooses it). :class:`RequestError` naming the field otherwise."""
    if isinstance(obj, (PredictRequest, UnroutedRequest)):
        return obj
    if isinstance(obj, (str, bytes, bytearray)):
        try:
            obj = loads_json(obj)
        except RequestError as exc:
            raise RequestError(exc.message, status_code=422) from None
    if isinstance(obj, dict) and obj.get("dataset_name") is None:
        return UnroutedRequest.parse(obj)
    return PredictRequest.parse(obj)


def request_json_schema() -> dict[str, Any]:
    """The request JSON's schema for the API docs: ``dataset_name`` optional (routed by the organ recogniser)."""
    found = PredictRequest.model_json_schema()
    found["required"] = [name for name in found.get("required", []) if name != "dataset_name"]
    return found


# Result fields a request may carry beside the schema because our own doors put them there: the upload skeleton's
# frame count (the engine always answers its own).
_OWN_EXTRAS = frozenset({"frame_count"})
RESERVED_EXTRAS = RESULT_KEYS - frozenset(PredictRequest.model_fields) - _OWN_EXTRAS


def refuse_result_fields(request: RequestFields) -> None:
    """:class:`RequestError` (422) when a field outside the schema is named like a result field (or like the image's
    path, the key of the classification result): the answer is the engine's, never the request's."""
    clashes = sorted(key for key in request.extras if key in RESERVED_EXTRAS or key == request.img_path_relative)
    if clashes:
        shown = ", ".join(repr(key[:60]) for key in clashes[:5])
        raise RequestError(f"{shown}: a result field, set by the analysis; a request cannot set it (rename the field "
                           "to keep it with the run)", field=clashes[0][:60])


def _first_field(exc: ValidationError) -> str | None:
    for error in exc.errors():
        if error.get("loc"):
            return ".".join(str(p) for p in error["loc"])
        message = str(error.get("msg", ""))
        head = message.removeprefix("Value error, ").split(":", 1)[0]
        if head.isidentifier():
            return head
    return None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``field: what is wrong``."""
    lines = []
    errors = exc.errors()
    for error in errors[:MAX_PROBLEMS]:
        loc = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        kind = error.get("type", "")
        if kind == "missing":
            message = "required field is missing"
        elif "input" in error and kind not in ("value_error",) and not kind.startswith("too_"):
            message = f"{message} (got {error['input']!r:.80})"
        lines.append(f"{loc}: {message}" if loc else message)
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"and {len(errors) - MAX_PROBLEMS:,} more problems")
    return "invalid request: " + "; ".join(lines)


def parse_request_list(obj: Any) -> list[Any]:
    """The list of request objects in a challenge-style JSON: a list, ``{"data": [...]}`` or one object."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for key in ("data", "images", "items", "requests"):
            if isinstance(obj.get(key), list):
                return obj[key]
        return [obj]
    raise RequestError(f"expected a JSON list of requests, got {type(obj).__name__}")
