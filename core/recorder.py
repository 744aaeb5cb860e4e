"""The one recorder: every analysis (success, failure, refusal, batch item, cine frame) becomes one history row.

A history failure is logged and never hides the result or the real error; the response then says in its ``notes``
why it has no ``run_id`` (no server path or database URL in the words).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UUSICError
from core.response import AnalysisFailure, AnalysisResponse, BatchItem
from core.schema import PredictRequest
from core.settings import Settings

if TYPE_CHECKING:
    from core.history import HistoryStore

log = logging.getLogger("uusic.service")


class Recorder:
    """Writes history rows for one settings' store (``UUSIC_HISTORY_URL`` or the workspace's SQLite file)."""

    def __init__(self, settings: Settings, store: HistoryStore | None = None):
        self.settings = settings
        self.given_store = store  # a store handed in (tests, the Ray driver); else one opened on first use
        self._store = store
        self._lock = threading.Lock()

    @property
    def store(self) -> HistoryStore:
        """The history store, opened on first use."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from core.history import HistoryStore

                    self._store = HistoryStore.from_settings(self.settings)
        return self._store

    def use_store(self, store: HistoryStore) -> None:
        """Write to ``store`` from now on (tests swap in a broken one)."""
        self._store = store

    def success(self, request: PredictRequest, response: AnalysisResponse, *, source: str,
                edits: list | None, batch_id: str | None) -> None:
        """Record a result; its ``run_id`` is set (None with a note when the row cannot be written)."""
        response.run_id = self._row(request, response.to_json(), note_to=response, source=source, edits=edits,
                                    input_sha256=response.input_sha256, batch_id=batch_id)

    def failure(self, request: Any, failure: AnalysisFailure, *, source: str, edits: list | None,
                batch_id: str | None, input_dir: Path | None) -> None:
        """Record a failed case (its ``run_id`` set); the sha256 of the file it names when that file is allowed."""
        raw = request.to_dict() if isinstance(request, PredictRequest) else request
        failure.run_id = self._row(raw if isinstance(raw, dict) else None, None, source=source, edits=edits,
                                   error=failure.error, error_type=failure.error_type, batch_id=batch_id,
                                   input_sha256=self._input_sha256(raw, input_dir))

    def items(self, entries: list, items: list[BatchItem], *, source: str, edits: list | None, batch_id: str | None,
              input_dir: Path | None) -> None:
        """One row per entry of a batch or a cine (its result or its failure)."""
        for entry, item in zip(entries, items, strict=True):
            if isinstance(item, AnalysisResponse):
                self.success(PredictRequest.parse(entry), item, source=source, edits=edits, batch_id=batch_id)
            else:
                self.failure(entry, item, source=source, edits=edits, batch_id=batch_id, input_dir=input_dir)

    def refused(self, request: Any, exc: BaseException, *, source: str, edits: list | None, batch_id: str | None,
                input_dir: Path | None, record: bool = True) -> None:
        """A refused call: recorded as one failed run (every door the same way), its error naming an upload as the
        user named it."""
        failure = AnalysisFailure.from_exception(request, exc)
        if record:
            self.failure(request, failure, source=source, edits=edits, batch_id=batch_id, input_dir=input_dir)
        if isinstance(exc, UUSICError):
            exc.message = failure.error

    def _row(self, request: Any, response: dict | None, *, note_to: AnalysisResponse | None = None,
             **fields: Any) -> int | None:
        from core.history import record_run

        try:
            return record_run(self.store, request, response, **fields)
        except Exception as exc:  # noqa: BLE001 - the record must not sink the analysis
            log.warning("history write failed: %s", getattr(exc, "message", None) or type(exc).__name__)
            if note_to is not None:
                note_to.notes = [*(note_to.notes or []), f"not recorded in the history: {history_failure(exc)}"]
            return None

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


def history_failure(exc: BaseException) -> str:
    """Why a history row was not written, in words fit for the client (no paths, URLs or tracebacks)."""
    from core.errors import HistoryError

    if isinstance(exc, HistoryError):
        return "the history database cannot be written (read-only, full or unreachable); the server log has details"
    if isinstance(exc, OSError):
        return f"the workspace cannot be written ({exc.strerror or type(exc).__name__})"
    return f"the history store failed ({type(exc).__name__}); the server log has details"
