"""core.history: the SQLite run store (WAL), filters, CSV, concurrent writers in threads and processes."""

from __future__ import annotations

import csv
import io
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from core.history import COLUMN_NAMES, HistoryStore, decode_row, record_run

CLS_REQUEST = {"img_name": "a b.png", "img_path_relative": "api_in/a b.png", "task": "classification",
               "dataset_name": "BUSI", "organ": "Breast"}
CLS_RESPONSE = {"task": "classification", "dataset_name": "BUSI", "organ": "Breast", "img_path_relative": "api_in/a b.png",
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


def test_file_is_wal_and_rows_round_trip(tmp_path: Path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    edits = [{"op": "rotate", "degrees": 90}]
    cls_id = record_run(store, CLS_REQUEST, CLS_RESPONSE, source="dashboard", edits=edits, input_sha256="ff" * 32)
    seg_id = record_run(store, SEG_REQUEST, SEG_RESPONSE, source="api")
    assert seg_id == cls_id + 1
    with sqlite3.connect(tmp_path / "h.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = decode_row(store.get(cls_id))
    assert row["timestamp"].endswith("+00:00") and row["source"] == "dashboard"
    assert row["img_name"] == "a b.png" and row["input_sha256"] == "ff" * 32 and row["edits"] == edits
    assert row["probabilities"] == [0.25, 0.75] and row["prediction"] == 1 and row["label_name"] == "malignant"
    assert row["model_sha256"] == "ab" * 32 and row["memory_usage_mb"] == 300.5 and row["gpu_memory_usage_mb"] is None
    assert row["request"]["dataset_name"] == "BUSI" and row["response"]["prediction"] == 1
    seg = decode_row(store.get(seg_id))
    assert seg["img_name"] == "x_1.png" and seg["organ"] == "Thyroid" and seg["mask_area_px"] == 321
    assert seg["measurements"]["longest_diameter_px"] == 30.5 and seg["gpu_memory_reserved_mb"] == 20.0
    assert seg["mask_path"].endswith("x_1.png") and seg["device"] == "cuda:0"
    assert store.get(999) is None and store.get("nope") is None
    assert [r["id"] for r in store.list()] == [seg_id, cls_id]  # newest first


def test_failed_run_is_recorded_with_its_error(tmp_path: Path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    run_id = record_run(store, {"img_path_relative": "../x.png", "task": "segmentation"}, None, source="api",
                        error="image path '../x.png' contains '..'")
    row = store.get(run_id)
    assert row["error"].startswith("image path") and row["prediction"] is None
    with pytest.raises(ValueError, match="source"):
        record_run(store, {}, {}, source="somewhere")


def test_filters_and_csv(tmp_path: Path):
    store = HistoryStore(tmp_path / "h.sqlite3")
    record_run(store, CLS_REQUEST, CLS_RESPONSE, source="dashboard")
    record_run(store, SEG_REQUEST, SEG_RESPONSE, source="api")
    store.add({"timestamp": "2020-01-02T10:00:00.000+00:00", "source": "cli", "img_name": "old_100%.png",
               "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"})
    assert len(store.list()) == 3
    assert [r["img_name"] for r in store.list({"task": "classification"})] == ["a b.png"]
    assert len(store.list({"dataset": "ddti"})) == 2 and len(store.list({"dataset_name": "DDTI"})) == 2
    assert len(store.list({"organ": "Thyroid"})) == 2 and store.list({"source": "cli"})[0]["img_name"] == "old_100%.png"
    assert [r["img_name"] for r in store.list({"text": "X_1"})] == ["x_1.png"]
    assert [r["img_name"] for r in store.list({"text": "100%"})] == ["old_100%.png"]  # % is literal
    assert store.list({"text": "_"}) and not store.list({"text": "a_b"})  # _ is literal, not a wildcard
    assert [r["img_name"] for r in store.list({"until": "2020-01-02"})] == ["old_100%.png"]  # whole day
    assert len(store.list({"since": "2021-01-01"})) == 2
    assert len(store.list({"since": "2020-01-02", "until": "2020-01-02T09:59"})) == 0
    assert len(store.list(limit=1)) == 1
    rows = store.list({"organ": "Thyroid"})
    parsed = list(csv.DictReader(io.StringIO(store.to_csv(rows))))
    assert len(parsed) == 2 and list(parsed[0]) == list(COLUMN_NAMES)
    assert {p["img_name"] for p in parsed} == {"x_1.png", "old_100%.png"}
    import json

    seg_row = next(p for p in parsed if p["img_name"] == "x_1.png")
    assert json.loads(seg_row["measurements"])["area_px"] == 321 and seg_row["mask_area_px"] == "321"
    assert store.to_csv([]).strip() == ",".join(COLUMN_NAMES)


def _writer(path: str, worker: int, count: int) -> None:
    store = HistoryStore(Path(path))
    for i in range(count):
        record_run(store, {"img_name": f"w{worker}_{i}.png", "img_path_relative": f"api_in/w{worker}_{i}.png",
                           "task": "segmentation", "dataset_name": "DDTI"}, SEG_RESPONSE, source="cli")


def test_concurrent_processes_and_threads_lose_no_rows(tmp_path: Path):
    path = tmp_path / "h.sqlite3"
    HistoryStore(path)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(path), w, 50)) for w in range(4)]
    for p in processes:
        p.start()
    store = HistoryStore(path)  # threads of this process write at the same time
    threads = [threading.Thread(target=_writer, args=(str(path), 10 + t, 50)) for t in range(4)]
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
