"""The PACS watch mode: analyse every ultrasound instance not analysed yet by the serving model, store the results
back, and remember it, so a rerun (or a restart) never analyses an instance twice for the same model sha256.

The record is ``<workspace>/pacs/watch.json``: ``{"<SOP Instance UID>|<model sha256>": {run_id, stored, error,
at}}``, rewritten atomically after every instance. A failed instance (not an image, unreadable, a refused store)
is recorded with its error too and not retried; delete its entry to try again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import catalog
from core.errors import RequestError, UUSICError
from core.files import atomic_write_text
from core.pacs import Pacs
from core.pacs_results import RECORD_NAME, analyze_instance, dataset_for

WATCH_FILTERS = {"Modality": "US"}


class WatchRecord:
    """What the watch mode has handled, keyed by SOP Instance UID + model sha256."""

    def __init__(self, workspace: Path):
        self.path = Path(workspace) / "pacs" / RECORD_NAME
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (OSError, ValueError):
            raise RequestError(f"the watch record {RECORD_NAME} cannot be read; move it aside to start over",
                               field="record") from None
        self.entries: dict[str, dict] = loaded if isinstance(loaded, dict) else {}

    @staticmethod
    def key(sop_uid: str, model_sha256: str) -> str:
        return f"{sop_uid}|{model_sha256}"

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def add(self, key: str, entry: dict) -> None:
        self.entries[key] = {**entry, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.entries, indent=1, sort_keys=True))


def serving_sha256(service: Any, dataset: catalog.Dataset) -> str:
    """The sha256 of the model that answers ``dataset``: the default model when it serves it, else the first."""
    entries = service.models().get("models") or []
    ordered = sorted(entries, key=lambda e: not e.get("default"))
    for entry in ordered:
        served = entry.get("datasets")
        if served is None or [dataset.task, dataset.name] in [list(d) for d in served]:
            return str(entry.get("sha256") or entry.get("name") or "")
    raise RequestError(f"no model serves {dataset.task}/{dataset.name}", field="dataset", status_code=404)


def _since_filter(since: str | None) -> dict[str, str]:
    if not since:
        return {}
    digits = since.replace("-", "")[:8]
    if len(digits) != 8 or not digits.isdigit():
        raise RequestError("--since: expected a date YYYY-MM-DD (or YYYYMMDD)", field="since")
    return {"StudyDate": f"{digits}-"}


def watch_once(service: Any, pacs: Pacs, *, dataset: str | None = None, since: str | None = None,
               store: bool = True, lang: str = "en") -> Iterator[dict]:
    """One pass: every ultrasound instance (studies from ``since`` on) not in the record is analysed (and stored
    back); yields one summary per instance handled, recorded as it goes."""
    record = WatchRecord(service.settings.workspace)
    for instance in pacs.instances(filters={**WATCH_FILTERS, **_since_filter(since)}):
        sop = str(instance.get("SOPInstanceUID", ""))
        try:
            chosen = dataset_for(instance, dataset, service.settings.workspace)
            key = WatchRecord.key(sop, serving_sha256(service, chosen))
        except UUSICError as exc:
            yield {"sop_instance_uid": sop, "error": exc.message, "error_type": type(exc).__name__}
            continue
        if key in record:
            continue
        ref = {"study_uid": instance.get("StudyInstanceUID"), "series_uid": instance.get("SeriesInstanceUID"),
               "sop_instance_uid": sop}
        try:
            line = analyze_instance(service, pacs, ref, dataset=chosen, store=store, lang=lang)
        except UUSICError as exc:
            line = {**ref, "error": exc.message, "error_type": type(exc).__name__}
        record.add(key, {k: line.get(k) for k in ("run_id", "stored", "error") if line.get(k) is not None})
        yield line


def watch(service: Any, pacs: Pacs, *, every_s: float, emit: Callable[[dict], None], **options: Any) -> None:
    """Poll forever (every ``every_s`` seconds), emitting one summary per instance handled."""
    while True:
        for line in watch_once(service, pacs, **options):
            emit(line)
        time.sleep(every_s)
