"""The analysis service over HTTP: :class:`ApiClient` has :class:`core.service.AnalysisService`'s interface.

The dashboard's remote mode (``UUSIC_API_URL``) is therefore the same code path as the in-process one. Error
answers are rebuilt as the same typed exceptions (:func:`core.errors.error_from_body`, from ``error_type``); a
server that cannot be reached is a :class:`core.errors.ServiceUnavailableError`.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from PIL import Image

from core import catalog
from core.errors import ServiceUnavailableError, UUSICError, error_from_body
from core.response import AnalysisResponse, BatchItem, BatchResult, item_from_json
from core.service import AnalysisBackend, AnalysisService

if TYPE_CHECKING:
    from core.cine import CineResult
    from core.recognition import Recognition
from core.settings import Settings

ApiError = UUSICError  # what the client raises: always one of the project's typed errors


class ApiClient:
    """Calls the inference API (``core/api``) with the service's methods."""

    def __init__(self, settings: Settings, *, timeout: float = 120.0, transport: httpx.BaseTransport | None = None):
        if not settings.api_url:
            raise ValueError("ApiClient needs Settings.api_url (UUSIC_API_URL)")
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        self.settings = settings
        self.base_url = settings.api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._model_info: dict | None = None

    # ------------------------------------------------------------------------------------------ transport
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServiceUnavailableError(f"cannot reach the inference API at {self.base_url}: "
                                          f"{type(error).__name__}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_from_body(body, response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ServiceUnavailableError(f"the inference API answered {path} with something that is not "
                                          "JSON") from None

    def _png(self, path: str) -> np.ndarray:
        data = self._send("GET", path).content
        return np.asarray(Image.open(io.BytesIO(data)))

    # ------------------------------------------------------------------------------------------ the model
    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def models(self) -> dict:
        return self._json("GET", "/v1/models")

    def model_info(self, model: str | None = None) -> dict:
        """A model's description (default: the server's default model)."""
        entries = self._entries()
        wanted = [m for m in entries if m.get("name") == model] if model else \
            [m for m in entries if m.get("default")] or [m for m in entries if m.get("loaded")]
        return (wanted or entries or [{}])[0]

    def _entries(self) -> list[dict]:
        if self._model_info is None:
            self.datasets()  # makes the server load its default model, so its full entry is known
            self._model_info = {"models": [m for m in self.models().get("models") or [] if isinstance(m, dict)]}
        return self._model_info["models"]

    def serves(self, task: str, dataset_name: str, model: str | None = None) -> bool:
        """:func:`core.catalog.serves` on the dataset lists of the server's models (or of the named one)."""
        entries = [m for m in self._entries() if not model or m.get("name") == model]
        return any(catalog.serves(catalog.served_keys(m.get("datasets")), task, dataset_name) for m in entries)

    def datasets(self) -> list[dict]:
        return self._json("GET", "/v1/datasets")["datasets"]

    # ------------------------------------------------------------------------------------------ inputs
    def save_upload(self, data: bytes, filename: str) -> dict:
        return self._json("POST", "/v1/upload", files={"file": (filename, data)})

    def random_sample(self, task: str, dataset_name: str) -> dict:
        return self._json("GET", "/v1/random-sample", params={"task": task, "dataset_name": dataset_name})

    def recognise(self, data: bytes, filename: str = "image") -> Recognition | None:
        """The organ recogniser's view of an image's bytes (``POST /v1/recognise``; None: unavailable there)."""
        from core.recognition import Recognition

        found = self._json("POST", "/v1/recognise", files={"file": (filename, data)}).get("recognition")
        return None if found is None else Recognition.model_validate(found)

    def input_file(self, img_path_relative: str) -> bytes:
        """An input's bytes (``GET /v1/inputs/file``; a DICOM de-identified by the server)."""
        return self._send("GET", "/v1/inputs/file", params={"path": img_path_relative}).content

    def json_files(self) -> list[str]:
        """The challenge JSON files under the server's data root (``GET /v1/inputs/json-files``)."""
        return self._json("GET", "/v1/inputs/json-files")["files"]

    def json_entries(self, relative: str) -> list[dict]:
        """The request objects of one of :meth:`json_files` (``GET /v1/inputs/json``)."""
        return self._json("GET", "/v1/inputs/json", params={"path": relative})["entries"]

    def known_names(self, task: str) -> dict[str, str]:
        """File name (lower case) → dataset of the server's data root (``GET /v1/inputs/names``)."""
        return self._json("GET", "/v1/inputs/names", params={"task": task})["names"]

    def batch_metrics(self, requests: list[dict], result: BatchResult) -> dict | None:
        """None: a remote batch's masks stay on the server, so its metrics are not computed here."""
        return None

    # ------------------------------------------------------------------------------------------ analysis
    def analyze(self, request: Any, *, source: str = "api", edits: list | None = None,
                model: str | None = None) -> AnalysisResponse:
        body = {"request": request, "source": source, **({"edits": edits} if edits else {}),
                **({"model": model} if model else {})}
        return AnalysisResponse.model_validate(self._json("POST", "/v1/predict", json=body))

    def analyze_batch(self, requests: Iterable[Any], *, source: str, progress: Any = None,
                      batch_size: int = 8, model: str | None = None) -> BatchResult:
        """The batch in chunks of ``batch_size`` (progress after each); one result or failure per request."""
        from core.batching import report_progress

        entries = list(requests)
        items: list[BatchItem] = []
        batch_ids, seconds = [], 0.0
        for start in range(0, len(entries), max(1, batch_size)):
            chunk = entries[start:start + max(1, batch_size)]
            body = {"requests": chunk, "source": source, **({"model": model} if model else {})}
            answer = self._json("POST", "/v1/predict/batch", json=body)
            items.extend(item_from_json(entry) for entry in answer["results"])
            batch_ids.append(str(answer.get("batch_id")))
            seconds += float(answer.get("seconds") or 0.0)
            for done in range(len(items) - len(chunk) + 1, len(items) + 1):
                report_progress(progress, done, len(entries))
        return BatchResult(items, batch_id=",".join(batch_ids), output_dir=None, seconds=seconds)

    # ---- cine
    def probe(self, img_path_relative: str) -> dict:
        """``{frame_count, fps, width, height, format}`` of an input (``GET /v1/frames/info``)."""
        return self._json("GET", "/v1/frames/info", params={"path": img_path_relative})

    def load_frame(self, img_path_relative: str, frame_index: int) -> np.ndarray:
        """One frame of an input as RGB uint8 (``GET /v1/frames``)."""
        data = self._send("GET", "/v1/frames", params={"path": img_path_relative, "index": int(frame_index)}).content
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def analyze_frames(self, request: Any, *, frames: list[int] | str | None = None, edits: list | None = None,
                       source: str = "api", progress: Any = None, model: str | None = None) -> CineResult:
        """The frames of a cine analysed on the server as one batch (``POST /v1/predict/frames``)."""
        from core.batching import report_progress
        from core.cine import CineResult

        body = {"request": request, "frames": frames, "source": source, **({"edits": edits} if edits else {}),
                **({"model": model} if model else {})}
        result = CineResult.from_json(self._json("POST", "/v1/predict/frames", json=body,
                                                 timeout=max(self._http.timeout.read or 0, 900.0)))
        for done in range(1, len(result.items) + 1):
            report_progress(progress, done, len(result.items))
        return result

    def mask_png(self, response: AnalysisResponse | dict) -> bytes:
        """The PNG of a segmentation response's mask (``GET /v1/masks/...``)."""
        data = response if isinstance(response, dict) else response.to_json()
        url = data.get("mask_url") or f"/v1/masks/{data['mask_path_relative']}"
        return self._send("GET", url).content

    # ------------------------------------------------------------------------------------------ history
    def runs(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]:
        params = _history_params(filters)
        params["limit"] = min(int(limit or 10000), 10000)
        return self._json("GET", "/v1/history", params=params)["runs"]

    def run(self, run_id: int) -> dict:
        return self._json("GET", f"/v1/history/{int(run_id)}")

    def runs_csv(self, filters: dict | None = None, limit: int = 10000) -> str:
        params = {**_history_params(filters), "limit": int(limit)}
        return self._send("GET", "/v1/history.csv", params=params).text

    def run_image(self, run_id: int) -> np.ndarray:
        return self._png(f"/v1/history/{int(run_id)}/image")

    def run_mask(self, run_id: int) -> np.ndarray:
        return self._png(f"/v1/history/{int(run_id)}/mask") > 127

    def report_pdf(self, run_id: int, lang: str = "en") -> bytes:
        """The case report of a run as PDF bytes (``GET /v1/history/{id}/report.pdf``)."""
        return self._send("GET", f"/v1/history/{int(run_id)}/report.pdf", params={"lang": lang}).content

    def dicom_seg(self, run_id: int) -> bytes:
        """The DICOM SEG of a segmentation run of a DICOM input (``GET /v1/history/{id}/seg.dcm``)."""
        return self._send("GET", f"/v1/history/{int(run_id)}/seg.dcm").content

    def agreement_map(self, response: AnalysisResponse | dict) -> np.ndarray:
        """The TTA agreement map (float32 ``H x W``, 0..1) of a segmentation response (``GET /v1/masks/...``)."""
        from core.errors import NotFoundError

        data = response if isinstance(response, dict) else response.to_json()
        url = (data.get("uncertainty") or {}).get("agreement_url")
        if not url:
            raise NotFoundError("this result has no agreement map (it was analysed without test-time augmentation)")
        return self._png(url).astype(np.float32) / 255.0

    def correction_agreement(self, since: str | None = None) -> list[dict]:
        """Per dataset: runs, corrected runs, mean Dice model vs corrected, class agreement
        (``GET /v1/corrections/agreement``; :func:`core.corrections.agreement` in-process)."""
        params = {"since": since} if since else {}
        return self._json("GET", "/v1/corrections/agreement", params=params)["datasets"]

    # ------------------------------------------------------------------------------------------ older names
    def predict(self, request: dict, **_: Any) -> dict:
        """``analyze`` as a plain dict (the client's earlier method)."""
        return self.analyze(request).to_json()

    def upload(self, data: bytes, filename: str) -> dict:
        return self.save_upload(data, filename)

    def mask_bytes(self, response: AnalysisResponse | dict) -> bytes:
        return self.mask_png(response)

    def close(self) -> None:
        self._http.close()


def _history_params(filters: dict | None) -> dict:
    names = {"task": "task", "dataset_name": "dataset_name", "dataset": "dataset_name", "organ": "organ",
             "text": "q", "name": "q", "since": "since", "until": "until", "source": "source"}
    return {names[k]: str(v) for k, v in (filters or {}).items() if k in names and v not in (None, "")}


_SERVICES: dict[tuple, AnalysisService] = {}
_SERVICES_LOCK = threading.Lock()


def open_service(settings: Settings | None = None) -> AnalysisBackend:
    """The service for ``settings``: an :class:`ApiClient` when ``api_url`` is set, else the
    process-wide :class:`AnalysisService` (models load once and are shared by every caller)."""
    settings = settings or Settings.from_env()
    if settings.api_url:
        return ApiClient(settings)
    key = (repr(settings), settings.api_key)
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = AnalysisService(settings)
        return _SERVICES[key]
