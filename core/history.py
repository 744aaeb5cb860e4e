"""The run history: one SQLite file in the workspace, shared by the dashboard, the API and the CLI.

WAL mode and a busy timeout let several processes write at once without losing rows; inside a process one
connection is shared under a lock (SQLite serialises writers anyway, and one connection keeps memory bounded
however many worker threads a server runs). JSON-valued columns (edits, probabilities, measurements, request, response) are stored
as JSON text and returned as text by :meth:`HistoryStore.list` (tables and CSV want flat values);
:func:`decode_row` turns them back into Python objects.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

SOURCES = ("dashboard", "api", "cli")
JSON_COLUMNS = ("edits", "probabilities", "measurements", "request", "response")
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("timestamp", "TEXT NOT NULL"),  # UTC ISO 8601
    ("source", "TEXT NOT NULL"),
    ("img_name", "TEXT"),
    ("img_path_relative", "TEXT"),
    ("input_sha256", "TEXT"),
    ("edits", "TEXT"),
    ("task", "TEXT"),
    ("dataset_name", "TEXT"),
    ("organ", "TEXT"),
    ("model_name", "TEXT"),
    ("model_sha256", "TEXT"),
    ("prediction", "INTEGER"),
    ("label_name", "TEXT"),
    ("probabilities", "TEXT"),
    ("mask_path", "TEXT"),
    ("mask_path_relative", "TEXT"),
    ("mask_area_px", "INTEGER"),
    ("measurements", "TEXT"),
    ("inference_time_sec", "REAL"),
    ("memory_usage_mb", "REAL"),
    ("gpu_memory_usage_mb", "REAL"),
    ("gpu_memory_reserved_mb", "REAL"),
    ("device", "TEXT"),
    ("error", "TEXT"),
    ("request", "TEXT"),
    ("response", "TEXT"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
_SCHEMA = f"CREATE TABLE IF NOT EXISTS runs ({', '.join(f'{n} {t}' for n, t in COLUMNS)})"
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS runs_timestamp ON runs(timestamp)",
    "CREATE INDEX IF NOT EXISTS runs_task_dataset ON runs(task, dataset_name)",
)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def decode_row(row: dict) -> dict:
    """``row`` with its JSON columns parsed back into lists / dicts."""
    out = dict(row)
    for name in JSON_COLUMNS:
        if isinstance(out.get(name), str):
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass
    return out


def _date_bound(value: Any, *, end: bool) -> str:
    """An ISO bound for string comparison; a bare date ``2026-01-31`` as an upper bound covers that whole day."""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value).strip()
    if end and len(text) == 10:
        return text + "T23:59:59.999~"
    return text


class HistoryStore:
    """Runs recorded in a SQLite file (WAL). Thread-safe: one connection per process, used under a lock."""

    def __init__(self, path: Path | str, *, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._retry(self._create)

    # -------------------------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never reuse a connection across fork
            conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _retry(self, action, attempts: int = 20):
        """Run ``action`` under the lock; retry while another process holds a lock the busy timeout did not cover."""
        for attempt in range(attempts):
            try:
                with self._lock:
                    return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _create(self) -> None:
        conn = self._connect()
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(_SCHEMA)
        for statement in _INDEXES:
            conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -------------------------------------------------------------------------------- writing
    def add(self, record: dict) -> int:
        """Insert one run (unknown keys are ignored); returns its id."""
        row = {k: v for k, v in record.items() if k in COLUMN_NAMES and k != "id"}
        row.setdefault("timestamp", utc_now())
        row.setdefault("source", "api")
        for name in JSON_COLUMNS:
            if name in row:
                row[name] = _json(row[name])
        names = list(row)
        sql = f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        values = [row[n] for n in names]

        def insert() -> int:
            return int(self._connect().execute(sql, values).lastrowid)

        return self._retry(insert)

    # -------------------------------------------------------------------------------- reading
    def list(self, filters: dict | None = None, limit: int | None = 1000) -> list[dict]:
        """Newest first. Filters: ``task``, ``dataset`` / ``dataset_name``, ``organ``, ``source``,
        ``text`` / ``name`` (substring of the image name, case-insensitive), ``since`` / ``until`` (ISO date or time,
        UTC; inclusive)."""
        where, args = [], []
        f = {k: v for k, v in (filters or {}).items() if v not in (None, "")}
        for key, column in (("task", "task"), ("dataset", "dataset_name"), ("dataset_name", "dataset_name"),
                            ("organ", "organ"), ("source", "source")):
            if key in f:
                where.append(f"{column} = ? COLLATE NOCASE")
                args.append(str(f[key]))
        text = f.get("text", f.get("name"))
        if text:
            escaped = str(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("img_name LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
        if "since" in f:
            where.append("timestamp >= ?")
            args.append(_date_bound(f["since"], end=False))
        if "until" in f:
            where.append("timestamp <= ?")
            args.append(_date_bound(f["until"], end=True))
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        rows = self._retry(lambda: self._connect().execute(sql, args).fetchall())
        return [dict(r) for r in rows]

    def get(self, run_id: int) -> dict | None:
        try:
            run_id = int(run_id)
        except (TypeError, ValueError):
            return None
        row = self._retry(lambda: self._connect().execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
        return dict(row) if row is not None else None

    def count(self) -> int:
        return int(self._retry(lambda: self._connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0]))

    @staticmethod
    def to_csv(rows: list[dict]) -> str:
        """CSV text of ``rows`` (the store's columns first, then any others); lists and dicts as JSON."""
        extra = sorted({k for r in rows for k in r} - set(COLUMN_NAMES))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*COLUMN_NAMES, *extra], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (_json(v) if isinstance(v, (list, dict, tuple)) else v) for k, v in row.items()})
        return buffer.getvalue()



def record_run(store: HistoryStore, request: Any, response: dict | None, *, source: str, edits: list | None = None,
               input_sha256: str | None = None, error: str | None = None) -> int:
    """Store one analysis (or, with ``error``, one failed attempt) and return its run id."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if request is not None and hasattr(request, "to_dict"):
        request = request.to_dict()
    request = request if isinstance(request, dict) else {}
    response = response or {}
    rel = response.get("img_path_relative") or request.get("img_path_relative")
    name = request.get("img_name") or response.get("img_name")
    if not name and isinstance(rel, str):
        name = PurePosixPath(rel.replace("\\", "/")).name
    probability = response.get("probability")
    stored_response = {k: v for k, v in response.items() if not (isinstance(v, dict) and "probability" in v
                                                                  and k == rel)}
    return store.add({
        "source": source,
        "img_name": name,
        "img_path_relative": rel,
        "input_sha256": input_sha256,
        "edits": edits if edits else None,
        "task": response.get("task") or request.get("task"),
        "dataset_name": response.get("dataset_name") or request.get("dataset_name"),
        "organ": response.get("organ") or request.get("organ"),
        "model_name": response.get("model_name"),
        "model_sha256": response.get("model_sha256"),
        "prediction": response.get("prediction"),
        "label_name": response.get("label_name"),
        "probabilities": probability,
        "mask_path": response.get("mask_path"),
        "mask_path_relative": response.get("mask_path_relative"),
        "mask_area_px": response.get("mask_area_px"),
        "measurements": response.get("measurements"),
        "inference_time_sec": response.get("inference_time_sec"),
        "memory_usage_mb": response.get("memory_usage_mb"),
        "gpu_memory_usage_mb": response.get("gpu_memory_usage_mb"),
        "gpu_memory_reserved_mb": response.get("gpu_memory_reserved_mb"),
        "device": response.get("device"),
        "error": error,
        "request": request or None,
        "response": stored_response or None,
    })
