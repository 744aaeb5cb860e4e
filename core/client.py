"""A small HTTP client for the inference API (``core/api.py``) with the engine's methods.

The dashboard uses it instead of the in-process engine when ``Settings.api_url`` is set.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from core.settings import Settings


class ApiError(RuntimeError):
    """The API answered with an error or could not be reached; ``message`` is for people."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail", body.get("message", body))
        if isinstance(detail, list):  # pydantic validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}" for item in detail
            )
        return str(detail)
    return str(body)


class ApiClient:
    """Calls ``POST /v1/predict``, ``POST /v1/upload``, ``GET /v1/models`` and ``GET /healthz``."""

    def __init__(self, settings: Settings, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        if not settings.api_url:
            raise ValueError("ApiClient needs Settings.api_url (UUSIC_API_URL)")
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        self.settings = settings
        self.base_url = settings.api_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._models: dict | None = None

    def _call(self, method: str, path: str, **kwargs) -> dict | list:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the inference API at {self.base_url}: {error}") from error
        if response.status_code >= 400:
            raise ApiError(_detail(response), response.status_code)
        try:
            return response.json()
        except ValueError as error:
            raise ApiError(f"the inference API answered {path} with something that is not JSON") from error

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    def predict(self, request: dict, *, output_dir: Path | None = None) -> dict:
        return self._call("POST", "/v1/predict", json=request)

    def upload(self, data: bytes, filename: str) -> dict:
        return self._call("POST", "/v1/upload", files={"file": (filename, data)})

    def mask_bytes(self, response: dict) -> bytes:
        """The PNG of a segmentation response's mask, fetched from the API (``mask_url``: ``GET /v1/masks/...``)."""
        url = response.get("mask_url") or f"/v1/masks/{response['mask_path_relative']}"
        try:
            answer = self._http.get(url)
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the inference API at {self.base_url}: {error}") from error
        if answer.status_code >= 400:
            raise ApiError(_detail(answer), answer.status_code)
        return answer.content

    def mask(self, mask_path_relative: str) -> bytes:
        """The PNG bytes of a mask the server wrote under its ``api_out/`` (``GET /v1/masks/<path>``)."""
        try:
            response = self._http.get(f"/v1/masks/{mask_path_relative.lstrip('/')}")
        except httpx.HTTPError as error:
            raise ApiError(f"cannot reach the inference API at {self.base_url}: {error}") from error
        if response.status_code >= 400:
            raise ApiError(_detail(response), response.status_code)
        return response.content

    def models(self) -> dict | list:
        if self._models is None:
            self._models = self._call("GET", "/v1/models")
        return self._models

    def model_info(self) -> dict:
        """The served model's description (the first entry, or the one marked ``loaded`` / ``active``)."""
        body = self.models()
        entries = body.get("models", body) if isinstance(body, dict) else body
        if isinstance(entries, list) and entries:
            active = [m for m in entries if isinstance(m, dict) and (m.get("loaded") or m.get("active"))]
            return (active or entries)[0]
        return body if isinstance(body, dict) else {}

    def serves(self, task: str, dataset_name: str) -> bool:
        info = self.model_info()
        datasets = info.get("datasets")
        if datasets is None:
            return True
        pairs = {tuple(d) if isinstance(d, (list, tuple)) else (d.get("task"), d.get("dataset_name")) for d in datasets}
        return (task, dataset_name) in pairs

    def close(self) -> None:
        self._http.close()
