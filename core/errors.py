"""The project's error types: each carries a human ``message`` and the HTTP ``status_code`` it maps to.

Every bad input is reported with one of these; views (dashboard, API, CLI) show ``message`` and keep running.
"""

from __future__ import annotations


class UUSICError(Exception):
    """Base class: ``message`` (shown to the user as is) and ``status_code`` (for the HTTP API)."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        """JSON body for an error response."""
        body = {"error": type(self).__name__, "message": self.message, "status_code": self.status_code}
        if self.field:
            body["field"] = self.field
        return body


class RequestError(UUSICError, ValueError):
    """The request JSON is malformed: missing field, wrong type, unknown task or dataset."""

    status_code = 422


class ImageError(UUSICError, ValueError):
    """The image cannot be decoded, is empty, truncated, of an unsupported kind, or hostile (too large)."""

    status_code = 400


class PathError(UUSICError, PermissionError):
    """A path points outside the allowed roots (data root, workspace ``api_in/``) or does not exist."""

    status_code = 403


class NoModelError(UUSICError, LookupError):
    """No loaded model serves this (task, dataset): "no model for this dataset"."""

    status_code = 404


class DeviceError(UUSICError, RuntimeError):
    """The configured device is not usable here (e.g. ``cuda`` without a GPU)."""

    status_code = 500
