"""HTTP inference API over the one analysis service: ``python -m core serve [--host 127.0.0.1] [--port 8000]``.

Routes (OpenAPI docs at ``/docs``), one router per resource in :mod:`core.api.routers`:

- inference: ``POST /v1/predict`` (request JSON → response JSON), ``POST /v1/predict/batch``;
- inputs and files: ``POST /v1/upload``, ``GET /v1/random-sample``, ``GET /v1/masks/{path}``;
- history: ``GET /v1/history`` (+ ``.csv``), ``GET /v1/history/{id}`` (+ ``/image``, ``/mask``);
- service: ``GET /healthz``, ``GET /v1/models``, ``GET /v1/datasets``;
- compatibility with the team's earlier server: ``POST /segment/``, ``POST /upload``, ``GET /random_sample/``,
  ``GET /staticapi_out/{path}``, ``GET /staticapi_in/{path}``.

With ``UUSIC_API_KEY`` set every route but ``/healthz`` and the docs needs ``X-API-Key: <key>`` or
``Authorization: Bearer <key>``. Errors answer one body: ``{"detail", "error_type", "status_code", "field"}``.
"""

from core.api.app import create_app
from core.api.command import main

__all__ = ["create_app", "main"]
