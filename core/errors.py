"""All of the project's error types, and their one JSON form.

Each error carries a human ``message`` (shown to the user as is), the HTTP ``status_code`` it maps to and, where
one input field is at fault, that ``field``. Every door (API, dashboard, CLI) shows ``message`` and keeps running.
Over HTTP an error travels as :func:`error_body` and is rebuilt on the client side as the same type by
:func:`error_from_body` (from ``error_type``, never from the wording).
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_CHARS = 4096  # characters of an error message, wherever it goes (answer, history, log)
MAX_FIELD_CHARS = 200  # characters of the field an error names


def capped(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    tail = f" … (cut from {len(text):,} characters)"
    return text[:max(limit - len(tail), 0)] + tail


class UUSICError(Exception):
    """Base class: ``message`` (shown to the user as is, at most :data:`MAX_MESSAGE_CHARS`) and ``status_code``
    (for the HTTP API)."""

    status_code: int = 400

    def __init__(self, message: str, *, status_code: int | None = None, field: str | None = None):
        super().__init__(capped(str(message)))
        self.message = message
        self.field = field
        if status_code is not None:
            self.status_code = status_code

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = capped(str(value))

    @property
    def field(self) -> str | None:
        return self._field

    @field.setter
    def field(self, value: str | None) -> None:
        self._field = None if value is None else capped(str(value), MAX_FIELD_CHARS)

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The error's JSON form (see :func:`error_body`)."""
        return error_body(self)


class RequestError(UUSICError, ValueError):
    """The request JSON is malformed: missing field, wrong type, unknown task or dataset."""

    status_code = 422


class ImageError(UUSICError, ValueError):
    """The image cannot be decoded, is empty, truncated, of an unsupported kind, or hostile (too large)."""

    status_code = 400


class PathError(UUSICError, PermissionError):
    """A path points outside the allowed roots (data root, workspace ``api_in/``) or does not exist."""

    status_code = 403


class NotFoundError(UUSICError, LookupError):
    """A thing asked for by name or id does not exist (a history run, a mask file, samples of a dataset)."""

    status_code = 404


class NoModelError(UUSICError, LookupError):
    """No loaded model serves this (task, dataset): "no model for this dataset"."""

    status_code = 404


class ModelUnavailableError(NoModelError):
    """The configured model could not be loaded (bad weights, bad manifest, unusable device)."""

    status_code = 503


class DeviceError(UUSICError, RuntimeError):
    """The configured device is not usable here (e.g. ``cuda`` without a GPU)."""

    status_code = 500


class WeightsError(UUSICError, RuntimeError):
    """A weights file or manifest entry is missing, truncated, or does not match; names the file and the problem."""

    status_code = 503


class UploadError(UUSICError):
    """The upload cannot be stored: too large (413) or no space left on the disk (507)."""

    status_code = 400


class WorkspaceError(UUSICError, OSError):
    """The server cannot write its files: the workspace (or an output folder) is read-only, not a folder, or full
    (507). The message names no server path."""

    status_code = 500


class UnknownDataset(UUSICError, KeyError):
    """A dataset name the catalog does not know (for that task)."""

    status_code = 422

    def __init__(self, message: str = "unknown dataset", **kwargs: Any):
        super().__init__(message, **kwargs)


class ConfigError(UUSICError, ValueError):
    """A setting (environment variable) has a value that cannot be used; the message names the variable."""

    status_code = 500


class HistoryError(UUSICError, RuntimeError):
    """The history store cannot be reached or written (its URL, its file, its server)."""

    status_code = 503


class ServiceUnavailableError(UUSICError, ConnectionError):
    """The inference API cannot be reached, or answered something that is not the API's JSON."""

    status_code = 503


class ArchiveError(UUSICError):
    """A history archive that cannot be imported (not ours, damaged, from a newer schema)."""

    status_code = 422


class ExportError(UUSICError):
    """A network cannot be exported as a served model (``python -m core export``); the message says why."""


class SetupError(ExportError):
    """Bad options, factory or checkpoint for an export (exit status 2)."""


class ClusterError(UUSICError):
    """Ray is missing, the cluster cannot be reached, or the deployment would not share its state."""

    status_code = 503


class PacsError(UUSICError):
    """The PACS (DICOMweb) answered something unusable, or nothing (502); :class:`PacsTimeout` when too slow."""

    status_code = 502


class PacsTimeout(PacsError):
    """The PACS did not answer within ``UUSIC_DICOMWEB_TIMEOUT_S``."""

    status_code = 504


class AuthConfigError(UUSICError, ValueError):
    """The dashboard's login configuration is present but unusable: the dashboard must not serve.

    The message names sections and keys, never a configured value."""

    status_code = 500


class BackendUnavailable(UUSICError):
    """An inference backend cannot serve this model here (not installed, cannot convert, failed its check)."""

    status_code = 503


class InternalError(UUSICError, RuntimeError):
    """An unexpected failure: reported by type name, never with a traceback or server paths."""

    status_code = 500


ERROR_TYPES: dict[str, type[UUSICError]] = {
    cls.__name__: cls
    for cls in (UUSICError, RequestError, ImageError, PathError, NotFoundError, NoModelError, ModelUnavailableError,
                DeviceError, WeightsError, UploadError, WorkspaceError, UnknownDataset, ConfigError, HistoryError,
                ServiceUnavailableError, ArchiveError, ExportError, SetupError, ClusterError, AuthConfigError,
                BackendUnavailable, InternalError, PacsError, PacsTimeout)
}


def failure_message(exc: BaseException) -> str:
    """A one-line message for people (never a traceback)."""
    return as_uusic_error(exc).message


def as_uusic_error(exc: BaseException) -> UUSICError:
    """``exc`` itself when it is one of ours, a :class:`WorkspaceError` for a file-system failure (no path in it),
    else an :class:`InternalError` naming only its type."""
    if isinstance(exc, UUSICError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return workspace_error(exc)
    return InternalError(f"internal error: {type(exc).__name__}")


def workspace_error(exc: OSError) -> WorkspaceError:
    """A file-system failure in words for the client: why (``strerror``), never which server path; 507 when full."""
    import errno

    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return WorkspaceError(f"the server's disk is full: its files could not be written ({reason})",
                              status_code=507)
    return WorkspaceError(f"the server could not read or write its files ({reason}); its workspace or output "
                          "folder may be read-only, full or not a folder", status_code=500)


def error_body(exc: BaseException) -> dict[str, Any]:
    """The one JSON form of an error: ``detail`` (message), ``error_type``, ``status_code`` and ``field``.

    ``detail`` never holds a database URL: each is cut to its scheme (``postgresql+psycopg://***``), so no user,
    host, password or file path of it leaves the server (:func:`core.redact.redact_text`)."""
    from core.redact import redact_text

    error = as_uusic_error(exc)
    body: dict[str, Any] = {"detail": redact_text(error.message, keep_location=False),
                            "error_type": type(error).__name__,
                            "status_code": error.status_code}
    if error.field:
        body["field"] = error.field
    return body


def error_from_body(body: Any, status_code: int) -> UUSICError:
    """Rebuild the typed error of an HTTP error answer (``error_type`` picks the class; unknown → UUSICError)."""
    if not isinstance(body, dict):
        return ServiceUnavailableError(f"the inference API answered HTTP {status_code} without an error body",
                                       status_code=status_code if status_code >= 400 else 502)
    message = body.get("detail", body.get("message", ""))
    if isinstance(message, list):  # FastAPI's own validation list
        message = "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in message)
    cls = ERROR_TYPES.get(str(body.get("error_type") or ""), UUSICError)
    return cls(str(message) or f"HTTP {status_code}", status_code=status_code, field=body.get("field"))
