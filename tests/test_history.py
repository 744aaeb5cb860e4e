"""core.history: the run store on SQLite (WAL) and PostgreSQL; filters, CSV, Alembic migrations (fresh, legacy and
concurrent opens), concurrent writers in threads and processes, fork safety, and errors that name the store.

Tests taking ``history_target`` run once per backend (see tests/conftest.py; PostgreSQL ones skip without a server
unless CI is set)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from core.errors import HistoryError
from core.history import COLUMN_NAMES, SOURCES, HistoryStore, decode_row, head_revision, record_run
from core.runs_table import history_csv

CLS_REQUEST = {"img_name": "a b.png", "img_path_relative": "api_in/a b.png", "task": "classification",
               "dataset_name": "BUSI", "organ": "Breast"}
CLS_RESPONSE = {"task": "classification", "dataset_name": "BUSI", "organ": "Breast",
                "img_path_relative": "api_in/a b.png",
                "api_in/a b.png": {"probability": [0.25, 0.75], "prediction": 1},
                "probability": [0.25, 0.75], "prediction": 1, "label_name": "malignant", "model_name": "demo",
                "model_sha256": "ab" * 32, "inference_time_sec": 0.05, "memory_usage_mb": 300.5,
                "gpu_memory_usage_mb": None, "gpu_memory_reserved_mb": None, "device": "cpu"}
SEG_REQUEST = {"img_path_relative": "segmentation/DDTI/imgs/x_1.png", "task": "segmentation", "dataset_name": "DDTI"}
SEG_RESPONSE = {"task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid",
                "img_path_relative": "segmentation/DDTI/imgs/x_1.png", "mask_name": "x_1.png",
                "mask_path": "/ws/api_out/segmentation/DDTI/masks/x_1.png",
                "mask_path_relative": "segmentation/DDTI/masks/x_1.png", "mask_area_px": 321,
                "measurements": {"area_px": 321, "longest_diameter_px": 30.5}, "inference_time_sec": 0.1,
                "memory_usage_mb": 310.0, "gpu_memory_usage_mb": 12.5, "gpu_memory_reserved_mb": 20.0,
                "device": "cuda:0", "model_name": "demo", "model_sha256": "cd" * 32}



# The store's schema before Alembic, verbatim (core/history.py's _SCHEMA and _INDEXES at release 1).
LEGACY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, "
    "source TEXT NOT NULL, img_name TEXT, img_path_relative TEXT, input_sha256 TEXT, edits TEXT, task TEXT, "
    "dataset_name TEXT, organ TEXT, model_name TEXT, model_sha256 TEXT, prediction INTEGER, label_name TEXT, "
    "probabilities TEXT, mask_path TEXT, mask_path_relative TEXT, mask_area_px INTEGER, measurements TEXT, "
    "inference_time_sec REAL, memory_usage_mb REAL, gpu_memory_usage_mb REAL, gpu_memory_reserved_mb REAL, "
    "device TEXT, error TEXT, request TEXT, response TEXT)"
)
LEGACY_INDEXES = (
    "CREATE INDEX IF NOT EXISTS runs_timestamp ON runs(timestamp)",
    "CREATE INDEX IF NOT EXISTS runs_task_dataset ON runs(task, dataset_name)",
)
NEW_COLUMNS = ("error_type", "batch_id", "purged_at")  # revisions 0002, 0003


def _engine(target: Path | str) -> sa.Engine:
    """A plain engine on the store's database, to look at it from outside the store."""
    url = target if isinstance(target, str) else f"sqlite:///{target}"
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _schema(target: Path | str) -> tuple[list[str], set[str], list[str]]:
    """(column names of ``runs``, its index names, the alembic_version rows)."""
    engine = _engine(target)
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        columns = [c["name"] for c in inspector.get_columns("runs")]
        indexes = {i["name"] for i in inspector.get_indexes("runs")}
        versions = list(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
    engine.dispose()
    return columns, indexes, versions


def test_rows_round_trip(history_target):
    store = HistoryStore(history_target)
    edits = [{"op": "rotate", "angle": 90.0}]
    cls_id = record_run(store, CLS_REQUEST, CLS_RESPONSE, source="dashboard", edits=edits, input_sha256="ff" * 32)
    seg_id = record_run(store, SEG_REQUEST, SEG_RESPONSE, source="api")
    assert seg_id == cls_id + 1
    row = decode_row(store.get(cls_id))
    assert list(row) == list(COLUMN_NAMES)
    assert row["timestamp"].endswith("+00:00") and row["source"] == "dashboard"
    assert row["img_name"] == "a b.png" and row["input_sha256"] == "ff" * 32 and row["edits"] == edits
    assert row["probabilities"] == [0.25, 0.75] and row["prediction"] == 1 and row["label_name"] == "malignant"
    assert row["model_sha256"] == "ab" * 32 and row["memory_usage_mb"] == 300.5 and row["gpu_memory_usage_mb"] is None
    assert row["inference_time_sec"] == 0.05  # a double on PostgreSQL too, not a 4-byte REAL
    assert row["request"]["dataset_name"] == "BUSI" and row["response"]["prediction"] == 1
    assert row["error_type"] is None and row["batch_id"] is None
    seg = decode_row(store.get(seg_id))
    assert seg["img_name"] == "x_1.png" and seg["organ"] == "Thyroid" and seg["mask_area_px"] == 321
    assert seg["measurements"]["longest_diameter_px"] == 30.5 and seg["gpu_memory_reserved_mb"] == 20.0
    assert seg["mask_path"].endswith("x_1.png") and seg["device"] == "cuda:0"
    assert isinstance(store.get(seg_id)["measurements"], str)  # JSON columns come back as text
    assert store.get(999) is None and store.get("nope") is None
    assert [r["id"] for r in store.list()] == [seg_id, cls_id]  # newest first
    assert store.count() == 2
    store.close()


def test_sqlite_file_is_wal_with_the_release_1_table(tmp_path: Path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(path)
    store.add({"img_name": "x.png"})
    assert store.path == path and store.url == f"sqlite:///{path}" and store.display_url == store.url
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    assert "AUTOINCREMENT" in sql and "inference_time_sec REAL" in sql and "timestamp TEXT NOT NULL" in sql
    with store._engine_here().connect() as connection:  # the store's own connections
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_failed_run_is_recorded_with_its_error(history_target):
    store = HistoryStore(history_target)
    run_id = record_run(store, {"img_path_relative": "../x.png", "task": "segmentation"}, None, source="api",
                        error="image path '../x.png' contains '..'", error_type="PathError")
    row = store.get(run_id)
    assert row["error"].startswith("image path") and row["prediction"] is None and row["error_type"] == "PathError"
    with pytest.raises(ValueError, match="source"):
        record_run(store, {}, {}, source="somewhere")
    store.close()


def test_batch_runs_carry_their_batch_id(history_target):
    assert SOURCES == ("dashboard", "batch", "api", "cli")
    store = HistoryStore(history_target)
    ids = [record_run(store, SEG_REQUEST, SEG_RESPONSE, source="batch", batch_id="b-1") for _ in range(3)]
    record_run(store, SEG_REQUEST, SEG_RESPONSE, source="batch", batch_id="b-2")
    rows = [store.get(i) for i in ids]
    assert {r["batch_id"] for r in rows} == {"b-1"} and {r["source"] for r in rows} == {"batch"}
    assert len(store.list({"source": "BATCH"})) == 4
    store.close()


def test_filters_and_csv(history_target):
    store = HistoryStore(history_target)
    record_run(store, CLS_REQUEST, CLS_RESPONSE, source="dashboard")
    record_run(store, SEG_REQUEST, SEG_RESPONSE, source="api")
    store.add({"timestamp": "2020-01-02T10:00:00.000+00:00", "source": "cli", "img_name": "old_100%.png",
               "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"})
    assert len(store.list()) == 3
    assert [r["img_name"] for r in store.list({"task": "classification"})] == ["a b.png"]
    assert len(store.list({"dataset": "ddti"})) == 2 and len(store.list({"dataset_name": "DDTI"})) == 2
    assert len(store.list({"organ": "Thyroid"})) == 2 and store.list({"source": "cli"})[0]["img_name"] == "old_100%.png"
    assert len(store.list({"organ": "thyROID", "task": "", "source": None})) == 2  # empty filters are ignored
    assert [r["img_name"] for r in store.list({"text": "X_1"})] == ["x_1.png"]
    assert [r["img_name"] for r in store.list({"name": "A B"})] == ["a b.png"]
    assert [r["img_name"] for r in store.list({"text": "100%"})] == ["old_100%.png"]  # % is literal
    assert store.list({"text": "_"}) and not store.list({"text": "a_b"})  # _ is literal, not a wildcard
    assert not store.list({"text": "\\"})  # so is the escape character
    assert [r["img_name"] for r in store.list({"until": "2020-01-02"})] == ["old_100%.png"]  # whole day
    assert len(store.list({"since": "2021-01-01"})) == 2
    assert len(store.list({"since": "2020-01-02", "until": "2020-01-02T09:59"})) == 0
    assert len(store.list({"since": "2020-01-02T10:00:00.000+00:00", "until": "2020-01-02T10:00"})) == 0
    assert len(store.list({"since": "2020-01-02T10:00", "until": "2020-01-02T10:00:00.000+00:00"})) == 1
    assert len(store.list(limit=1)) == 1
    rows = store.list({"organ": "Thyroid"})
    parsed = list(csv.DictReader(io.StringIO(history_csv(rows))))
    assert len(parsed) == 2 and list(parsed[0])[: len(COLUMN_NAMES)] == list(COLUMN_NAMES)
    assert {p["img_name"] for p in parsed} == {"x_1.png", "old_100%.png"}
    seg_row = next(p for p in parsed if p["img_name"] == "x_1.png")
    assert json.loads(seg_row["measurements"])["area_px"] == 321 and seg_row["mask_area_px"] == "321"
    assert seg_row["area_px"] == "321"  # and the measurement's own flat column
    assert history_csv([]).strip() == ",".join(COLUMN_NAMES)
    store.close()


def test_csv_has_the_new_columns(history_target):
    store = HistoryStore(history_target)
    record_run(store, SEG_REQUEST, None, source="batch", error="cannot decode", error_type="ImageError",
               batch_id="batch-7")
    header, row = list(csv.reader(io.StringIO(history_csv(store.list()))))
    assert header[-len(NEW_COLUMNS):] == list(NEW_COLUMNS) and header == list(COLUMN_NAMES)
    assert dict(zip(header, row, strict=True))["error_type"] == "ImageError"
    assert dict(zip(header, row, strict=True))["batch_id"] == "batch-7"
    store.close()


@pytest.mark.parametrize("run_id", [0, -1, 2**31, 2**63, 10**30, -(10**30), "10" * 20, "abc", None, "", [1]])
def test_get_never_raises_for_impossible_ids(history_target, run_id):
    store = HistoryStore(history_target)
    store.add({"img_name": "x.png"})
    assert store.get(run_id) is None
    assert store.get("1")["img_name"] == "x.png"  # the API passes ints, the CLI may pass text
    store.close()


def _writer(target: str, worker: int, count: int) -> None:
    store = HistoryStore(target if "://" in target else Path(target))
    for i in range(count):
        record_run(store, {"img_name": f"w{worker}_{i}.png", "img_path_relative": f"api_in/w{worker}_{i}.png",
                           "task": "segmentation", "dataset_name": "DDTI"}, SEG_RESPONSE, source="cli")
    store.close()


@pytest.mark.slow
def test_concurrent_processes_and_threads_lose_no_rows(history_target):
    target = str(history_target)
    HistoryStore(history_target).close()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(target, w, 50)) for w in range(4)]
    for p in processes:
        p.start()
    store = HistoryStore(history_target)  # threads of this process write at the same time
    threads = [threading.Thread(target=_writer, args=(target, 10 + t, 50)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = store.list(limit=None)
    assert len(rows) == 400 == store.count()
    assert len({r["img_name"] for r in rows}) == 400
    assert len({r["id"] for r in rows}) == 400
    store.close()


# ------------------------------------------------------------------------------------ migrations
def test_legacy_sqlite_file_is_upgraded_in_place(tmp_path: Path):
    path = tmp_path / "history.sqlite3"
    with sqlite3.connect(path) as conn:  # a file exactly as release 1 wrote it
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(LEGACY_SCHEMA)
        for statement in LEGACY_INDEXES:
            conn.execute(statement)
        for i in range(5):
            conn.execute("INSERT INTO runs (timestamp, source, img_name, task, dataset_name, prediction, "
                         "probabilities, inference_time_sec, error) VALUES (?, 'cli', ?, 'classification', "
                         "'BUSI', ?, '[0.5, 0.5]', 0.25, ?)",
                         (f"2025-01-0{i + 1}T00:00:00.000+00:00", f"old_{i}.png", i % 2, "boom" if i == 4 else None))
        conn.execute("DELETE FROM runs WHERE id = 5")  # AUTOINCREMENT: id 5 is never handed out again
    conn.close()

    store = HistoryStore(path)
    rows = store.list(limit=None)
    assert [r["img_name"] for r in rows] == [f"old_{i}.png" for i in (3, 2, 1, 0)]
    assert all(r[name] is None for r in rows for name in NEW_COLUMNS)
    assert rows[0]["probabilities"] == "[0.5, 0.5]" and rows[0]["inference_time_sec"] == 0.25
    assert store.list({"until": "2025-01-02"})[0]["img_name"] == "old_1.png"
    new_id = record_run(store, SEG_REQUEST, SEG_RESPONSE, source="batch", batch_id="b", error_type=None)
    assert new_id == 6 and store.get(new_id)["batch_id"] == "b" and store.count() == 5
    store.close()
    columns, indexes, versions = _schema(path)
    assert columns == list(COLUMN_NAMES)
    assert {"runs_timestamp", "runs_task_dataset", "runs_batch_id"} <= indexes
    assert versions == [head_revision()] == ["0004"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert HistoryStore(path).count() == 5  # opening it again changes nothing


def test_migrations_are_idempotent(history_target):
    first = HistoryStore(history_target)
    run_id = first.add({"img_name": "kept.png", "batch_id": "b"})
    first.close()
    second = HistoryStore(history_target)
    assert second.get(run_id)["img_name"] == "kept.png" and second.count() == 1
    second.close()
    columns, indexes, versions = _schema(history_target)
    assert columns == list(COLUMN_NAMES)
    assert {"runs_timestamp", "runs_task_dataset", "runs_batch_id"} <= indexes
    assert versions == [head_revision()]


def _open_and_add(target: str, barrier, worker: int) -> None:
    barrier.wait(timeout=60)
    store = HistoryStore(target if "://" in target else Path(target))
    store.add({"img_name": f"first-{worker}.png", "source": "cli"})
    store.close()


@pytest.mark.slow
def test_concurrent_first_open_migrates_once(history_target):
    target, workers = str(history_target), 6
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [context.Process(target=_open_and_add, args=(target, barrier, w)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * workers
    store = HistoryStore(history_target)
    assert sorted(r["img_name"] for r in store.list()) == [f"first-{w}.png" for w in range(workers)]
    store.close()
    assert _schema(history_target)[2] == [head_revision()]


def test_threads_opening_different_stores_at_once(tmp_path: Path, history_target):
    """Alembic migrates through module-level state: stores opened by several threads at once must not mix up."""
    targets = [history_target, *(tmp_path / f"other_{i}.sqlite3" for i in range(8))] * 2  # each one twice
    failures: list[BaseException] = []

    def open_and_add(target: Path | str) -> None:
        try:
            with HistoryStore(target) as store:
                store.add({"img_name": "t.png"})
        except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
            failures.append(exc)

    threads = [threading.Thread(target=open_and_add, args=(target,)) for target in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    assert [HistoryStore(target).count() for target in targets[:9]] == [2] * 9


def test_schema_types_on_postgresql(postgres_url):
    HistoryStore(postgres_url).close()
    engine = _engine(postgres_url)
    with engine.connect() as connection:
        columns = {c["name"]: c for c in sa.inspect(connection).get_columns("runs")}
    engine.dispose()
    assert columns["id"].get("identity") and not columns["id"]["nullable"]
    assert isinstance(columns["inference_time_sec"]["type"], sa.Double)  # not the 4-byte REAL
    assert columns["timestamp"]["type"].collation == "C"  # ISO text compares byte by byte
    assert all(columns[name]["nullable"] for name in NEW_COLUMNS)


# ------------------------------------------------------------------------------------ fork, settings, errors
def _use_in_child(store: HistoryStore, queue) -> None:
    queue.put((store.add({"img_name": "child.png"}), store.count()))


def test_forked_child_opens_its_own_connections(history_target):
    store = HistoryStore(history_target)
    store.add({"img_name": "parent.png"})  # the parent now holds a pooled connection
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_use_in_child, args=(store, queue))
    child.start()
    child_id, child_count = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and child_count == 2
    assert store.get(child_id)["img_name"] == "child.png"  # the parent's connection still works
    assert store.add({"img_name": "parent-again.png"}) == child_id + 1
    store.close()


def test_from_settings_prefers_history_url(tmp_path: Path, history_target):
    sqlite_file = tmp_path / "ws" / "history.sqlite3"
    store = HistoryStore.from_settings(SimpleNamespace(history_db=sqlite_file))  # settings without the field
    assert store.path == sqlite_file and sqlite_file.is_file()
    store.close()
    url = history_target if isinstance(history_target, str) else f"sqlite:///{history_target}"
    store = HistoryStore.from_settings(SimpleNamespace(history_url=url, history_db=sqlite_file))
    store.add({"img_name": "via-url.png"})
    assert HistoryStore(history_target).list()[0]["img_name"] == "via-url.png"
    store.close()


def test_display_url_hides_the_password(postgres_url):
    with_password = sa.make_url(postgres_url).set(password="hunter2-secret")  # trust auth ignores it
    store = HistoryStore(with_password.render_as_string(hide_password=False))
    assert "hunter2-secret" in store.url and "hunter2-secret" not in store.display_url
    assert "***" in store.display_url and "hunter2-secret" not in repr(store)
    store.close()


def test_unreachable_postgres_is_a_history_error_without_the_password():
    url = "postgresql+psycopg://uusic:s3cret-pw@127.0.0.1:1/history"
    with pytest.raises(HistoryError) as caught:
        HistoryStore(url, timeout=5)
    message = str(caught.value)
    assert "s3cret-pw" not in message and "127.0.0.1:1" in message and "uusic" in message
    assert caught.value.status_code == 503


@pytest.mark.parametrize("target", ["nosuchdialect://u:s3cret-pw@host/db", "postgresql+psycopg://u:s3cret-pw@h:port/d",
                                    "mysql+nosuchdriver://u:s3cret-pw@127.0.0.1/db"])
def test_bad_url_is_a_history_error_without_the_password(target):
    with pytest.raises(HistoryError) as caught:
        HistoryStore(target)
    assert "s3cret-pw" not in str(caught.value)


def test_unwritable_sqlite_file_is_a_history_error(tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(HistoryError, match="not-a-folder"):
        HistoryStore(blocker / "history.sqlite3")
    read_only = tmp_path / "ro.sqlite3"
    HistoryStore(read_only).close()
    if os.geteuid() != 0:  # root writes anyway
        read_only.chmod(0o444)
        with pytest.raises(HistoryError):
            HistoryStore(read_only).add({"img_name": "x"})


def test_the_head_revision_is_read_without_alembic_and_agrees_with_it():
    """The store compares its stamp with the newest migration without importing Alembic (lean start, issue 27);
    that reading is the one Alembic itself makes."""
    from alembic.script import ScriptDirectory

    from core.history import _alembic_config, head_revision

    assert head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()
