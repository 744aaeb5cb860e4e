"""The run history, shared by the dashboard, the API and the CLI: a SQLite file in the workspace by default, or any
database SQLAlchemy reaches by URL (PostgreSQL is tested).

The schema is managed by Alembic (``core/migrations``); a store brings its database up to the newest revision when
it opens it, under a migration lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock), so several
processes may open a fresh database at once. A file written before Alembic (table ``runs``, no version table) is
adopted as revision 0001 and upgraded in place.

SQLite runs in WAL mode with a busy timeout and ``synchronous=NORMAL``, so several processes write at once without
losing rows and a killed writer loses nothing it committed. Inside a process, threads share a connection pool; a
forked child never reuses its parent's connections.

JSON-valued columns (edits, probabilities, measurements, request, response) are stored as JSON text and returned as
text by :meth:`HistoryStore.list` (tables and CSV want flat values); :func:`decode_row` turns them back into
Python objects.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from core.correction_summary import attach, correction_record
from core.errors import HistoryError, capped
from core.history_format import json_dict, json_text
from core.redact import parse_url, plausible, redact_text, redact_url, url_secrets

SOURCES = ("dashboard", "batch", "api", "cli")  # "batch": the dashboard's Batch page
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
    ("error_type", "TEXT"),  # revision 0002
    ("batch_id", "TEXT"),  # revision 0002
    ("purged_at", "TEXT"),  # revision 0003: when retention removed the run's files (or found them gone)
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_KEY = 0x5553_4943  # "USIC": PostgreSQL advisory lock id held while migrating
_MAX_ID = {"sqlite": 2**63 - 1, "postgresql": 2**31 - 1}  # the id column's range per backend
_BUSY_WORDS = ("locked", "busy")
# Alembic runs a migration through module-level proxies (alembic.context, alembic.op): one migration per process at
# a time. Taken before the database's own migration lock, never after, so the two cannot deadlock.
_ALEMBIC_IN_PROCESS = threading.Lock()
_T = TypeVar("_T")
Rows = list[dict]  # (the store's own method named ``list`` hides the builtin inside the class)


def _column_type(sql_type: str) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type of one declared column type (as in :data:`COLUMNS`)."""
    if sql_type.startswith("INTEGER"):
        return sa.Integer()
    if sql_type.startswith("REAL"):  # PostgreSQL's REAL has 4 bytes, SQLite's 8
        return sa.REAL().with_variant(postgresql.DOUBLE_PRECISION(), "postgresql")
    return sa.Text()


def _build_table() -> tuple[sa.MetaData, sa.Table]:
    """The ``runs`` table as the newest migration leaves it (used to build queries, never to create tables)."""
    meta = sa.MetaData()
    columns = [sa.Column("id", sa.Integer, sa.Identity(), primary_key=True, autoincrement=True)]
    for name, sql_type in COLUMNS[1:]:
        column_type = _column_type(sql_type)
        if name == "timestamp":  # compared as text: byte order on PostgreSQL too
            column_type = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
        columns.append(sa.Column(name, column_type, nullable="NOT NULL" not in sql_type))
    table = sa.Table("runs", meta, *columns, sqlite_autoincrement=True)
    sa.Index("runs_timestamp", table.c.timestamp)
    sa.Index("runs_task_dataset", table.c.task, table.c.dataset_name)
    sa.Index("runs_batch_id", table.c.batch_id)
    return meta, table


metadata, runs = _build_table()


def _build_corrections_table(meta: sa.MetaData) -> sa.Table:
    """``corrections`` as revision 0004 creates it: the saved versions of a run's result (:mod:`core.corrections`)."""
    iso = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    table = sa.Table(
        "corrections", meta,
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False), sa.Column("version", sa.Integer, nullable=False),
        sa.Column("timestamp", iso, nullable=False), sa.Column("author", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False), sa.Column("mask_path", sa.Text),
        sa.Column("class_index", sa.Integer), sa.Column("model_class", sa.Integer), sa.Column("reason", sa.Text),
        sa.Column("pixels_added", sa.Integer), sa.Column("pixels_removed", sa.Integer),
        sa.Column("dice", _column_type("REAL")), sa.Column("area_px", sa.Integer),
        sa.Column("area_mm2", _column_type("REAL")), sa.Column("measurements", sa.Text),
        sa.UniqueConstraint("run_id", "version", name="corrections_run_version"), sqlite_autoincrement=True)
    sa.Index("corrections_timestamp", table.c.timestamp)
    return table


corrections = _build_corrections_table(metadata)


def utc_now() -> str:
    """Now, UTC, ISO 8601 with milliseconds (the ``timestamp`` column's format)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def decode_row(row: dict) -> dict:
    """``row`` with its JSON columns parsed back into lists / dicts."""
    out = dict(row)
    for name in JSON_COLUMNS:
        if isinstance(out.get(name), str):
            with suppress(ValueError):
                out[name] = json.loads(out[name])
    return out


def stored_row(record: dict) -> dict:
    """The stored form of a run: known columns only (no ``id``), defaults filled, JSON columns as text."""
    row = {k: v for k, v in record.items() if k in COLUMN_NAMES and k != "id"}
    row.setdefault("timestamp", utc_now())
    row.setdefault("source", "api")
    for name in JSON_COLUMNS:
        if name in row:
            row[name] = json_text(row[name])
    return row


def _date_bound(value: Any, *, end: bool) -> str:
    """An ISO bound for string comparison; a bare date ``2026-01-31`` as an upper bound covers that whole day."""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value).strip()
    if end and len(text) == 10:
        return text + "T23:59:59.999~"
    return text


# ------------------------------------------------------------------------------------ URLs and engines
def _target_url(target: Path | str) -> URL:
    """The SQLAlchemy URL of a store target: a URL string (with ``://``; an unencoded ``@`` in its password is read
    as part of the password) or a filesystem path (a SQLite file)."""
    if isinstance(target, str) and "://" in target:
        return parse_url(target)
    return URL.create("sqlite", database=str(Path(target).expanduser().absolute()))


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for other backends and in-memory databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _sqlite_engine(url: URL, timeout: float) -> Engine:
    """A SQLite engine whose transactions SQLAlchemy begins itself (``BEGIN IMMEDIATE`` for writers)."""
    in_memory = _sqlite_file(url) is None
    engine = sa.create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False},
                              poolclass=StaticPool if in_memory else None)

    @sa.event.listens_for(engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own; "begin" below does
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("uusic_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _create_engine(url: URL, timeout: float) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, timeout)
    connect_args = {"connect_timeout": max(1, int(timeout))} if url.get_backend_name() == "postgresql" else {}
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _enable_wal(engine: Engine) -> None:
    """Switch a SQLite file to WAL (a persistent setting of the file); must run outside a transaction."""
    dbapi_connection = engine.raw_connection()
    try:
        cursor = dbapi_connection.cursor()
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
    finally:
        dbapi_connection.close()


# ------------------------------------------------------------------------------------ migrations
def _alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config for ``core/migrations`` that runs on ``connection`` (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


_REVISION = re.compile(r'^revision\s*=\s*"([^"]+)"', re.M)
_DOWN_REVISION = re.compile(r'^down_revision[^=\n]*=\s*"([^"]+)"', re.M)


@functools.cache
def head_revision() -> str:
    """The newest migration's revision id, read from ``core/migrations/versions`` (the one no other revision names
    as its ``down_revision``): Alembic itself is imported only when a store needs upgrading."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("[0-9]*.py")):
        text = path.read_text(encoding="utf-8")
        revisions.update(_REVISION.findall(text))
        parents.update(_DOWN_REVISION.findall(text))
    heads = revisions - parents
    assert len(heads) == 1, f"core/migrations must have one head, found {sorted(heads)}"
    return heads.pop()


def _current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database (``alembic_version``), None for a store Alembic has never touched."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: Connection) -> None:
    """Bring the database on ``connection`` to the head revision (the caller holds the migration lock and commits).

    A pre-Alembic store (table ``runs``, no version) is stamped 0001, which is exactly its schema, first."""
    if _current_revision(connection) == head_revision():
        return
    from alembic import command

    config = _alembic_config(connection)
    if _current_revision(connection) is None and sa.inspect(connection).has_table("runs"):
        command.stamp(config, "0001")
    command.upgrade(config, "head")


# ------------------------------------------------------------------------------------ the store
class HistoryStore:
    """Runs recorded in a SQLite file (a path) or a database URL. Thread-safe; safe across processes and fork."""

    def __init__(self, target: Path | str, *, timeout: float = 30.0):
        self.timeout = timeout
        self._lock = threading.RLock()
        self._engine: Engine | None = None
        self._pid = os.getpid()
        try:
            self._url = _target_url(target)
            if not plausible(self._url):  # e.g. u:p@ss/word@host: the password's end cannot be told
                raise ValueError("ambiguous URL")
        except (ArgumentError, ValueError) as exc:  # the parser's words may quote the URL: not shown
            raise HistoryError(f"history store URL {redact_url(str(target))} is not valid: it cannot be read as "
                               "a SQLAlchemy URL such as postgresql+psycopg://user:password@host:5432/db "
                               "(percent-encode '@', '/' and ':' in the user name or password)") from exc
        self.url = self._url.render_as_string(hide_password=False)
        self.display_url = redact_url(self._url)  # the one rendering for people (core.redact)
        self.path = _sqlite_file(self._url)
        self.backend = self._url.get_backend_name()
        self._retry(self._open, "open")

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> HistoryStore:
        """The store that ``settings`` name: ``history_url`` when set, else the SQLite file ``history_db``."""
        return cls(getattr(settings, "history_url", None) or settings.history_db, **kwargs)

    def __repr__(self) -> str:
        return f"HistoryStore({self.display_url!r})"

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- connections
    def _engine_here(self) -> Engine:
        """This process's engine: a forked child drops (without closing) the pool it inherited."""
        with self._lock:
            if self._engine is None:
                self._engine = _create_engine(self._url, self.timeout)
            elif self._pid != os.getpid():
                self._engine.dispose(close=False)
            self._pid = os.getpid()
            return self._engine

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction, committed on success; on SQLite a writer takes the write lock up front."""
        with self._engine_here().connect() as connection:
            if write:
                connection.execution_options(uusic_write=True)
            with connection.begin():
                yield connection

    def _retry(self, action: Callable[[], _T], doing: str, attempts: int = 20) -> _T:
        """Run ``action``; retry while another process holds a SQLite lock the busy timeout did not cover.
        Database errors come out as :class:`HistoryError` naming the store (never its password)."""
        for attempt in range(attempts):
            try:
                return action()
            except (SQLAlchemyError, sqlite3.Error) as exc:
                driver_message = str(getattr(exc, "orig", None) or exc).lower()  # not the SQL nor its values
                busy = any(word in driver_message for word in _BUSY_WORDS)
                if self.backend == "sqlite" and busy and attempt < attempts - 1:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                raise self._error(doing, exc) from exc
            except (OSError, ImportError, NoSuchModuleError) as exc:
                raise self._error(doing, exc) from exc
        raise AssertionError("unreachable")

    def _error(self, doing: str, exc: BaseException) -> HistoryError:
        """A :class:`HistoryError` for ``exc``: what failed, on which store (:func:`core.redact.redact_url`), and
        the driver's first line without the URL's secrets, its host or a file path (an OS error: its reason)."""
        reason = getattr(exc, "orig", None) or exc
        if isinstance(reason, OSError) and reason.strerror:
            first_line = reason.strerror
        else:
            first_line = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
        hidden = url_secrets(self._url)
        if self._url.host and len(self._url.host) >= 3:  # the store's line above names it; answers must not
            hidden.append(self._url.host)
        first_line = redact_text(first_line, secrets=hidden) or type(reason).__name__
        return HistoryError(f"history store {self.display_url} could not {doing}: {first_line}")

    def _open(self) -> None:
        """Create the file's folder, switch SQLite to WAL, and migrate the schema to the head revision."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _enable_wal(self._engine_here())
        with self._engine_here().connect() as connection:
            if _current_revision(connection) == head_revision():  # the usual case: no lock needed
                return
        # On SQLite BEGIN IMMEDIATE is the migration lock; PostgreSQL takes an advisory lock till the commit.
        with _ALEMBIC_IN_PROCESS, self._transaction(write=True) as connection:
            if self.backend == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            _upgrade(connection)

    def close(self) -> None:
        """Close this process's connections (the store reconnects if used again)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose(close=self._pid == os.getpid())
                self._engine = None

    # -------------------------------------------------------------------------------- writing
    def add(self, record: dict) -> int:
        """Insert one run (unknown keys are ignored); returns its id."""
        return self.add_many([record])[0]

    def add_many(self, records: Iterable[dict]) -> list[int]:
        """Insert several runs in one transaction (all or none; ``id`` is ignored); returns their new ids in order."""
        rows = [stored_row(record) for record in records]

        def insert() -> list[int]:
            ids = []
            with self._transaction(write=True) as connection:
                for row in rows:
                    key = connection.execute(sa.insert(runs).values(row)).inserted_primary_key
                    assert key is not None, "an INSERT returns its primary key"
                    ids.append(int(key[0]))
            return ids

        return self._retry(insert, "record runs") if rows else []

    def mark_purged(self, ids: Iterable[Any] = (), *, paths: Iterable[str] = (), when: str | None = None) -> int:
        """Set ``purged_at`` (default now) on the runs with these ids, and on those whose ``img_path_relative`` or
        ``mask_path`` is one of ``paths``; runs already marked keep their first mark. Returns how many changed."""
        id_list = sorted({int(i) for i in ids})
        path_list = sorted({str(p) for p in paths})
        stamp = when or utc_now()

        selections: list[sa.ColumnElement[bool]] = []
        for start in range(0, len(id_list), 500):  # bounded IN lists
            selections.append(runs.c.id.in_(id_list[start:start + 500]))
        for start in range(0, len(path_list), 500):
            chunk = path_list[start:start + 500]
            selections.append(sa.or_(runs.c.img_path_relative.in_(chunk), runs.c.mask_path.in_(chunk)))

        def update() -> int:
            changed = 0
            with self._transaction(write=True) as connection:
                for which in selections:
                    statement = sa.update(runs).where(which, runs.c.purged_at.is_(None)).values(purged_at=stamp)
                    changed += connection.execute(statement).rowcount or 0
            return changed

        return self._retry(update, "mark runs purged") if id_list or path_list else 0

    def set_response_key(self, run_id: int, key: str, value: Any) -> bool:
        """Set ``key`` of run ``run_id``'s stored response JSON (e.g. ``pacs_stored``: what went back to a PACS);
        False when there is no such run or it has no response (a failed run)."""
        def update() -> bool:
            with self._transaction(write=True) as connection:
                row = connection.execute(sa.select(runs.c.response).where(runs.c.id == int(run_id))).first()
                if row is None or not row[0]:
                    return False
                response = {**json_dict(row[0]), key: value}
                connection.execute(sa.update(runs).where(runs.c.id == int(run_id)).values(response=json_text(response)))
                return True

        return self._retry(update, "update a run")

    # -------------------------------------------------------------------------------- reading
    def iter_rows(self, columns: Iterable[str] | None = None, filters: dict | None = None,
                  chunk: int = 1000) -> Iterator[dict]:
        """Every run (or those :meth:`list`'s ``filters`` select), oldest id first, read ``chunk`` rows per query so
        a large history never sits in memory at once; ``columns``: only these (``id`` is always included)."""
        names = ["id", *(c for c in (columns or COLUMN_NAMES) if c != "id")]
        unknown = [c for c in names if c not in COLUMN_NAMES]
        if unknown:
            raise ValueError(f"unknown history columns: {unknown}")
        selected = [runs.c[name] for name in names]
        conditions = _conditions(filters or {})
        last = 0
        while True:
            query = (sa.select(*selected).where(runs.c.id > last, *conditions).order_by(runs.c.id)
                     .limit(max(1, int(chunk))))
            rows = self._rows(query)
            yield from rows
            if len(rows) < chunk:
                return
            last = int(rows[-1]["id"])

    def _with_corrections(self, query: sa.Select[Any], *, nested: bool = False) -> Rows:
        """The runs ``query`` selects, each with its newest correction (:func:`core.correction_summary.attach`),
        both read in one transaction."""
        def fetch(connection: Connection) -> Rows:
            rows = [dict(row) for row in connection.execute(query).mappings()]
            latest = latest_corrections(connection, [int(row["id"]) for row in rows])
            return [attach(row, latest.get(int(row["id"])), nested=nested) for row in rows]

        return self.read(fetch, "read the runs")

    def _rows(self, query: sa.Select[Any]) -> Rows:
        return self.read(lambda connection: [dict(row) for row in connection.execute(query).mappings()],
                         "read the runs")

    def list(self, filters: dict | None = None, limit: int | None = 1000) -> Rows:
        """Newest first. Filters: ``task``, ``dataset`` / ``dataset_name``, ``organ``, ``source`` (equal, any case),
        ``text`` / ``name`` (substring of the image name, any case), ``since`` / ``until`` (ISO date or time,
        UTC; inclusive), ``corrected`` (true / false: runs with / without a correction). A corrected run carries
        the :data:`core.correction_summary.CORRECTION_SUMMARY` keys and ``corrected: True``."""
        query = sa.select(runs).where(*_conditions(filters or {})).order_by(runs.c.id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        return self._with_corrections(query)

    def get(self, run_id: Any) -> dict | None:
        """The run with id ``run_id``; None when there is none (or ``run_id`` is not a possible id)."""
        try:
            run_id = int(run_id)
        except (TypeError, ValueError, OverflowError):
            return None
        if not 0 < run_id <= _MAX_ID.get(self.backend, 2**31 - 1):
            return None
        rows = self._with_corrections(sa.select(runs).where(runs.c.id == run_id), nested=True)
        return rows[0] if rows else None

    def read(self, action: Callable[[Connection], _T], doing: str) -> _T:
        """``action(connection)`` in a read transaction (retried while SQLite is busy; errors as HistoryError)."""
        def run() -> _T:
            with self._transaction() as connection:
                return action(connection)

        return self._retry(run, doing)

    def write(self, action: Callable[[Connection], _T], doing: str) -> _T:
        """``action(connection)`` in one write transaction, committed when it returns (SQLite: under the write
        lock from the start). ``action`` may run again after a busy database: it must be repeatable."""
        def run() -> _T:
            with self._transaction(write=True) as connection:
                return action(connection)

        return self._retry(run, doing)

    def count(self) -> int:
        """How many runs are stored."""
        return self.read(lambda connection: int(connection.execute(sa.select(sa.func.count()).select_from(runs))
                                                .scalar_one()), "count the runs")


def _conditions(filters: dict) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of :meth:`HistoryStore.list`'s filters (empty values are ignored)."""
    given = {k: v for k, v in filters.items() if v not in (None, "")}
    conditions: list[sa.ColumnElement[bool]] = []
    for key, column in (("task", "task"), ("dataset", "dataset_name"), ("dataset_name", "dataset_name"),
                        ("organ", "organ"), ("source", "source")):
        if key in given:
            conditions.append(sa.func.lower(runs.c[column]) == sa.func.lower(str(given[key])))
    text = given.get("text", given.get("name"))
    if text:
        escaped = str(text).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(runs.c.img_name.ilike(f"%{escaped}%", escape="\\"))
    if "corrected" in given:
        corrected = runs.c.id.in_(sa.select(corrections.c.run_id))
        yes = str(given["corrected"]).strip().lower() in ("1", "true", "yes", "on")
        conditions.append(corrected if yes else sa.not_(corrected))
    if "since" in given:
        conditions.append(runs.c.timestamp >= _date_bound(given["since"], end=False))
    if "until" in given:
        conditions.append(runs.c.timestamp <= _date_bound(given["until"], end=True))
    return conditions


def _newest_corrections() -> sa.Select[Any]:
    """The newest correction of each run whose id is in the expanding parameter ``run_ids``."""
    other = corrections.alias("other_version")
    newest = sa.select(sa.func.max(other.c.version)).where(other.c.run_id == corrections.c.run_id).scalar_subquery()
    return sa.select(corrections).where(corrections.c.run_id.in_(sa.bindparam("run_ids", expanding=True)),
                                        corrections.c.version == newest)


_NEWEST_CORRECTIONS = _newest_corrections()  # built once: building the statement costs more than running it


def latest_corrections(connection: Connection, run_ids: Iterable[int]) -> dict[int, dict]:
    """The newest correction of each of ``run_ids`` that has one, by run id (read on ``connection``, so inside the
    caller's transaction)."""
    id_list = sorted({int(i) for i in run_ids})
    found: dict[int, dict] = {}
    for start in range(0, len(id_list), 500):  # bounded IN lists
        for row in connection.execute(_NEWEST_CORRECTIONS, {"run_ids": id_list[start:start + 500]}).mappings():
            found[int(row["run_id"])] = correction_record(row)
    return found


RESPONSE_COLUMNS = ("model_name", "model_sha256", "prediction", "label_name", "mask_path", "mask_path_relative",
                    "mask_area_px", "measurements", "inference_time_sec", "memory_usage_mb", "gpu_memory_usage_mb",
                    "gpu_memory_reserved_mb", "device")  # copied from the response as they are


def record_run(store: HistoryStore, request: Any, response: dict | None, *, source: str, edits: list | None = None,
               input_sha256: str | None = None, error: str | None = None, error_type: str | None = None,
               batch_id: str | None = None) -> int:
    """Store one analysis (or, with ``error``, one failed attempt) and return its run id.

    ``error_type`` is the failure's class name (``ImageError``...); ``batch_id`` groups the runs of one batch.
    A row has a bounded size: fields outside the schema (echoed in the response) are stored once, in ``request``,
    and only up to ``MAX_EXTRAS_BYTES`` of JSON; a schema field longer than ``MAX_TEXT`` is cut (a refused request
    is recorded as sent, within these bounds)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if request is not None and hasattr(request, "to_dict"):
        request = request.to_dict()
    request, extras = _bounded_request(request if isinstance(request, dict) else {})
    response = response or {}
    rel = response.get("img_path_relative") or request.get("img_path_relative")
    name = request.get("img_name") or response.get("img_name")
    if not name and isinstance(rel, str):
        name = PurePosixPath(rel.replace("\\", "/")).name
    stored_response = {k: v for k, v in response.items()
                       if not (isinstance(v, dict) and "probability" in v and k == rel)
                       and not (k in extras and v == extras[k])}  # echoed extras: stored once, in request
    return store.add({
        "source": source, "img_name": name, "img_path_relative": rel, "input_sha256": input_sha256,
        "edits": edits if edits else None,
        **{key: response.get(key) or request.get(key) for key in ("task", "dataset_name", "organ")},
        **{key: response.get(key) for key in RESPONSE_COLUMNS},
        "probabilities": response.get("probability"),
        "error": capped(error) if error else error, "error_type": error_type, "batch_id": batch_id,
        "request": request or None, "response": stored_response or None,
    })


def _bounded_request(request: dict) -> tuple[dict, dict]:
    """(the request as stored, its fields outside the schema): schema fields cut to ``MAX_TEXT``, the extras kept
    only up to ``MAX_EXTRAS_BYTES`` of JSON (else a note says what was left out)."""
    from core.schema import MAX_EXTRAS_BYTES, MAX_TEXT, PredictRequest, extras_size

    extras = {k: v for k, v in request.items() if k not in PredictRequest.model_fields}

    def bounded(value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_TEXT:
            return value[:MAX_TEXT] + "…"
        if isinstance(value, (dict, list)) and extras_size({"v": value}) > MAX_TEXT:
            return f"<{extras_size({'v': value}):,} bytes of JSON, not stored>"
        return value

    stored = {k: bounded(v) for k, v in request.items() if k not in extras}
    size = extras_size(extras)
    if size > MAX_EXTRAS_BYTES:
        stored["extras_omitted"] = (f"{len(extras)} field(s) outside the schema, {size:,} bytes of JSON: "
                                    f"over the {MAX_EXTRAS_BYTES:,} stored")
    else:
        stored.update(extras)
    return stored, extras
