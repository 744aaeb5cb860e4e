"""Data durability: a real server killed (SIGKILL) mid-write leaves no partial file under a final name and no row
pointing at a missing or partial file; the start-up check cleans temporaries and reports the rest; retention gc;
export / import of the history (with and without files) and the online SQLite backup, on both backends."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from conftest import free_port
from PIL import Image

from core import backup, workspace
from core.files import leftover_temporaries
from core.history import HistoryStore, decode_row, head_revision, record_run
from core.service import AnalysisService
from core.settings import PROJECT_ROOT, Settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DAY = 86400.0


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _png(seed: int, side: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    disc = ((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 4) ** 2
    gray = (rng.integers(0, 60, size=(side, side)) + disc * 160).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=2)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ a real server
class Server:
    """``python -m core serve`` on a free port over ``settings``' workspace (SQLite history there)."""

    def __init__(self, settings: Settings, log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "UUSIC_WORKSPACE": str(settings.workspace), "UUSIC_DATA_ROOT": str(settings.data_root),
               "UUSIC_WEIGHTS_DIR": str(settings.weights_dir), "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": "",
               "UUSIC_HISTORY_URL": "", "UUSIC_MODEL": "tiny", "OMP_NUM_THREADS": "1"}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port",
                                             str(self.port), "--threads", "1"], cwd=PROJECT_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise AssertionError(log_path.read_text(errors="replace"))
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError("server did not start: " + log_path.read_text(errors="replace"))
            time.sleep(0.1)

    def health(self) -> dict:
        return httpx.get(f"{self.base}/healthz", timeout=10).json()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


PAYLOADS = [_png(seed, side) for seed, side in enumerate([96, 192, 320, 480] * 4)]  # made once, not under load


def _client_loop(base: str, worker: int, stop: threading.Event, done: list[str]) -> None:
    """Upload an image and analyse it (segmentation and classification), analyse a data-root sample; until the
    server dies. Each finished request is appended to ``done``."""
    with httpx.Client(base_url=base, timeout=20) as client:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                data = PAYLOADS[(worker + i) % len(PAYLOADS)]
                skeleton = client.post("/v1/upload", files={"file": (f"w{worker}_{i}.png", data, "image/png")})
                if skeleton.status_code != 200:
                    continue
                done.append("upload")
                body = {**skeleton.json(), "task": "segmentation", "dataset_name": "DDTI"}
                if client.post("/v1/predict", json=body).status_code == 200:
                    done.append("predict")
                body = {**skeleton.json(), "task": "classification", "dataset_name": "BUSI"}
                if client.post("/v1/predict", json=body).status_code == 200:
                    done.append("predict")
                sample = {"img_path_relative": f"segmentation/DDTI/imgs/seg_{i % 3}.png", "task": "segmentation",
                          "dataset_name": "DDTI"}  # the same mask file, rewritten by every client
                if client.post("/v1/predict", json=sample).status_code == 200:
                    done.append("predict")
        except httpx.HTTPError:
            return  # the server was killed


def _workspace_files(settings: Settings) -> list[Path]:
    return sorted(p for folder in (settings.api_in, settings.api_out) for p in Path(folder).rglob("*")
                  if p.is_file() and not p.is_symlink())


def _assert_no_partial_files(settings: Settings) -> tuple[int, int]:
    """Every image under a final name decodes completely; returns (final files checked, temporaries)."""
    temporaries = set(leftover_temporaries(settings.api_in)) | set(leftover_temporaries(settings.api_out))
    checked = 0
    for path in _workspace_files(settings):
        if path in temporaries:
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                image.load()  # raises on a truncated file
            checked += 1
        elif path.suffix == ".json":
            json.loads(path.read_text())
            checked += 1
    return checked, len(temporaries)


def _assert_rows_point_at_whole_files(settings: Settings) -> int:
    """No history row points at a missing or partial input or mask; returns the rows checked."""
    with HistoryStore(settings.history_db) as store:
        rows = [decode_row(r) for r in store.list(limit=None)]
    for row in rows:
        rel = row["img_path_relative"] or ""
        if row["error"] is None and rel.startswith("api_in/"):
            path = settings.api_in / rel.split("/", 1)[1]
            assert path.is_file(), f"run {row['id']}: its input is missing"
            with Image.open(path) as image:
                image.load()
            assert _sha(path) == row["input_sha256"], f"run {row['id']}: the input is not what was analysed"
        if row["mask_path"]:
            image = settings.api_in / rel.split("/", 1)[1] if rel.startswith("api_in/") else settings.data_root / rel
            with Image.open(row["mask_path"]) as mask, Image.open(image) as analysed:
                mask.load()
                assert mask.size == analysed.size, f"run {row['id']}: its mask is not the image's size"
    return len(rows)


def _unreferenced(settings: Settings) -> int:
    """Files under api_in/ and api_out/ no run refers to (computed here, independently of core.workspace)."""
    with HistoryStore(settings.history_db) as store:
        rows = store.list(limit=None)
    used = set()
    for row in rows:
        rel = row["img_path_relative"] or ""
        if rel.startswith("api_in/"):
            used.add((settings.api_in / rel.split("/", 1)[1]).resolve())
        if row["mask_path"]:
            used.add(Path(row["mask_path"]).resolve())
    temporaries = set(leftover_temporaries(settings.api_in)) | set(leftover_temporaries(settings.api_out))
    return sum(1 for p in _workspace_files(settings) if p not in temporaries and p.resolve() not in used)


@pytest.mark.server
@pytest.mark.slow
def test_sigkill_during_uploads_and_predictions_leaves_no_partial_files(tiny_settings: Settings, tmp_path):
    settings = tiny_settings
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    log_path = tmp_path / "server.log"
    rounds, clients = 4, 16
    stats = []
    for round_number in range(rounds):
        started = time.monotonic()
        server = Server(settings, log_path)
        up = time.monotonic() - started
        stop, done = threading.Event(), []
        threads = [threading.Thread(target=_client_loop, args=(server.base, w + 100 * round_number, stop, done))
                   for w in range(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while "predict" not in done and time.monotonic() < deadline:  # the load is flowing: answers are back
            time.sleep(0.01)
        delay = rng.uniform(0.2, 1.5)
        time.sleep(delay)
        server.kill()  # SIGKILL: no clean-up of any kind
        stop.set()
        for t in threads:
            t.join(timeout=60)
        files, temporaries = _assert_no_partial_files(settings)
        rows = _assert_rows_point_at_whole_files(settings)
        stats.append({"round": round_number, "start_s": round(up, 1), "kill_after_s": round(delay, 2),
                      "uploads_done": done.count("upload"), "predictions_done": done.count("predict"),
                      "final_files": files, "temporaries": temporaries, "rows": rows,
                      "round_s": round(time.monotonic() - started, 1)})
    print(f"\nkill rounds (seed {seed}): " + json.dumps(stats))
    assert all(s["uploads_done"] > 0 and s["predictions_done"] > 0 for s in stats)  # killed under load

    # One leftover of a write that never finished for sure (a kill may or may not have hit one).
    planted = settings.api_out / "masks" / ".planted.png.0badf00d.tmp"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(_png(1, 64)[:100])
    temporaries = set(leftover_temporaries(settings.api_in)) | set(leftover_temporaries(settings.api_out))
    orphans = _unreferenced(settings)

    server = Server(settings, log_path)  # the restart: its start-up check cleans up and reports
    try:
        deadline = time.monotonic() + 60
        while (report := server.health()["workspace"])["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()
    print(f"start-up check after the kills: {json.dumps(report)}")
    assert report["state"] == "done"
    assert report["temporaries_removed"] == len(temporaries) >= 1
    assert leftover_temporaries(settings.api_in) == [] and leftover_temporaries(settings.api_out) == []
    assert report["orphan_files"] == orphans  # uploads never analysed before the kill: reported, not deleted
    assert report["rows_missing_files"] == 0 and report["rows_marked_purged"] == 0
    assert report["rows"] == stats[-1]["rows"]
    assert _unreferenced(settings) == orphans  # nothing but temporaries was deleted
    log = log_path.read_text(errors="replace")
    assert "workspace check:" in log and "w1_" not in log  # counts in the log, never file names


# ------------------------------------------------------------------------------------------ helpers for stores
def _with_history(settings: Settings, target: Path | str) -> Settings:
    return settings.with_(history_url=target if isinstance(target, str) else f"sqlite:///{target}")


@pytest.fixture()
def second_target(request, history_target, tmp_path):
    """Another empty store on the same backend as ``history_target``."""
    if not isinstance(history_target, str):
        return tmp_path / "second.sqlite3"
    import uuid

    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"uusic_test_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    request.addfinalizer(drop)
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _age(path: Path, days: float) -> None:
    stamp = time.time() - days * DAY
    os.utime(path, (stamp, stamp))


def _iso_days_ago(days: float) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")


def _file(path: Path, size: int = 1000, days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    _age(path, days)
    return path


# ------------------------------------------------------------------------------------------ the start-up check
def test_startup_check_cleans_temporaries_and_reports_orphans_and_missing_files(tiny_settings, history_target,
                                                                                 monkeypatch):
    monkeypatch.setattr(workspace, "TEMP_GRACE_S", 1.0)
    settings = _with_history(tiny_settings, history_target)
    with HistoryStore(history_target) as store:
        kept = _file(settings.api_in / "kept.png")
        record_run(store, {"img_path_relative": "api_in/kept.png", "task": "segmentation", "dataset_name": "DDTI"},
                   {"mask_path": str(_file(settings.api_out / "masks" / "kept.png"))}, source="api")
        gone_id = record_run(store, {"img_path_relative": "api_in/gone.png", "task": "segmentation",
                                     "dataset_name": "DDTI"}, {"mask_path": str(settings.api_out / "masks/gone.png")},
                             source="api")
        data_root_id = record_run(store, {"img_path_relative": "segmentation/DDTI/imgs/x.png"}, None, source="cli")
        batch_id = "b0b0"
        record_run(store, {"img_path_relative": "a.png"}, None, source="batch", batch_id=batch_id)
    _file(settings.api_out / f"batch_{batch_id}" / "classification.json")  # the batch's: not an orphan
    _file(settings.api_in / "never-analysed.png")  # orphan
    _file(settings.api_out / "masks" / "stray.png")  # orphan
    old_temp = _file(settings.api_in / ".up.png.12345678.tmp", days=1)
    young_temp = _file(settings.api_out / "masks" / ".m.png.87654321.tmp")
    outside = _file(settings.workspace / ".elsewhere.png.11111111.tmp", days=1)  # not api_in/ or api_out/

    service = AnalysisService(settings, model="tiny")
    assert service.workspace_check.wait(timeout=60)
    report = service.health()["workspace"]
    assert report["state"] == "done", report
    assert report["temporaries_removed"] == 2  # the young one too, once the grace period is over
    assert not old_temp.exists() and not young_temp.exists() and outside.exists() and kept.exists()
    assert report["orphan_files"] == 2 and report["rows"] == 4
    assert report["rows_missing_files"] == 1 and report["rows_marked_purged"] == 1
    assert service.run(gone_id)["purged_at"] and service.run(data_root_id)["purged_at"] is None
    assert set(report) >= {"files", "bytes", "truncated", "seconds", "checked_at"}
    assert not any(isinstance(v, str) and ("kept" in v or "/" in v) for v in report.values())  # counts, no names

    again = workspace.check(settings, service.store)  # marked rows are not reported twice
    assert again["rows_missing_files"] == 0 and again["temporaries_removed"] == 0
    bounded = workspace.check(settings, service.store, limit=2)
    assert bounded["truncated"] is True and bounded["files"] <= 2
    service.store.close()


def test_startup_check_without_a_history_still_removes_temporaries(tiny_settings):
    settings = tiny_settings.with_(history_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    temp = _file(settings.api_in / ".x.png.12345678.tmp", days=1)
    service = AnalysisService(settings, model="tiny")
    assert service.workspace_check.wait(timeout=60)
    report = service.health()["workspace"]
    assert report["state"] == "partial" and report["error_type"] == "HistoryError"
    assert report["temporaries_removed"] == 1 and not temp.exists()
    assert "nobody" not in json.dumps(report)


# ------------------------------------------------------------------------------------------ retention
def _seed_for_gc(settings: Settings, store: HistoryStore) -> dict[str, object]:
    """Files of known ages and the runs that use them."""
    def run(rel: str, mask: Path | None, days: float, batch: str | None = None) -> int:
        return store.add({"timestamp": _iso_days_ago(days), "source": "api", "img_path_relative": rel,
                          "img_name": Path(rel).name, "mask_path": str(mask) if mask else None, "batch_id": batch})

    old_in = _file(settings.api_in / "old.png", days=40)
    old_mask = _file(settings.api_out / "masks" / "old.png", days=40)
    reused_in = _file(settings.api_in / "reused.png", days=40)  # old file, analysed again yesterday
    new_in = _file(settings.api_in / "new.png", days=1)
    old_orphan = _file(settings.api_in / "orphan.png", days=50)
    batch_json = _file(settings.api_out / "batch_b1" / "classification.json", days=40)
    batch_mask = _file(settings.api_out / "batch_b1" / "masks" / "x.png", days=40)
    old_batch = [_file(settings.api_out / "batch_b0" / "classification.json", days=40),
                 _file(settings.api_out / "batch_b0" / "masks" / "y.png", days=40)]
    outside = _file(settings.workspace / "notes" / "keep.txt", days=400)
    target = _file(settings.workspace / "precious.png", days=400)
    link = settings.api_in / "link.png"
    link.symlink_to(target)
    ids = {"old": run("api_in/old.png", old_mask, 40), "reused_old": run("api_in/reused.png", None, 40),
           "reused_new": run("api_in/reused.png", None, 1), "new": run("api_in/new.png", None, 1),
           "batch": run("segmentation/DDTI/imgs/x.png", batch_mask, 2, batch="b1"),
           "old_batch": run("segmentation/DDTI/imgs/y.png", old_batch[1], 40, batch="b0")}
    return {"ids": ids, "old_in": old_in, "old_mask": old_mask, "reused_in": reused_in, "new_in": new_in,
            "old_orphan": old_orphan, "batch_json": batch_json, "batch_mask": batch_mask, "outside": outside,
            "target": target, "link": link, "old_batch": old_batch}


def test_gc_by_age_keeps_rows_marks_them_and_touches_nothing_else(tiny_settings, history_target):
    settings = _with_history(tiny_settings, history_target)
    with HistoryStore(history_target) as store:
        seeded = _seed_for_gc(settings, store)
        ids = seeded["ids"]
        before = {p: p.exists() for p in _workspace_files(settings)}
        dry = workspace.collect_garbage(settings, store, days=30, dry_run=True)
        assert dry["files_removed"] == 5 and dry["by_reason"]["age"] == 5  # old.png, its mask, the old orphan,
        assert {p: p.exists() for p in _workspace_files(settings)} == before  # and the old batch's two files
        assert dry["runs_marked_purged"] == 2
        assert store.get(ids["old"])["purged_at"] is None  # a dry run changes nothing

        report = workspace.collect_garbage(settings, store, days=30)
        assert report["files_removed"] == 5 and report["runs_marked_purged"] == 2 and report["bytes_freed"] == 5000
        assert not seeded["old_in"].exists() and not seeded["old_mask"].exists()
        assert not seeded["old_orphan"].exists() and not (settings.api_out / "batch_b0").exists()  # folder too
        assert (settings.api_out / "masks").is_dir()  # a folder writers expect stays, even empty
        for kept in ("reused_in", "new_in", "batch_json", "batch_mask", "outside", "target", "link"):
            assert seeded[kept].exists(), kept  # used recently, part of a recent batch, or not the workspace's
        assert seeded["link"].is_symlink() and seeded["target"].read_bytes()
        assert store.count() == 6  # every row stays
        assert store.get(ids["old"])["purged_at"] and store.get(ids["reused_old"])["purged_at"] is None
        assert workspace.collect_garbage(settings, store, days=30)["files_removed"] == 0

        status = workspace.status(settings, store)
        assert status["history"] == {"rows": 6, "purged": 2}
        assert status["folders"]["api_in"]["files"] == 2 and status["folders"]["api_out"]["files"] == 2
        assert status["leftovers"]["rows_missing_files"] == 0


def test_gc_by_size_removes_oldest_first(tiny_settings, history_target):
    settings = _with_history(tiny_settings, history_target)
    with HistoryStore(history_target) as store:
        files = [_file(settings.api_in / f"f{i}.png", size=1024, days=10 - i) for i in range(6)]  # f0 the oldest
        used = store.add({"timestamp": _iso_days_ago(0), "img_path_relative": "api_in/f0.png", "img_name": "f0.png"})
        budget = 3.5 * 1024 / workspace.GB
        report = workspace.collect_garbage(settings, store, max_gb=budget)
        assert report["by_reason"]["size"] == 3 and report["bytes_kept"] <= 3.5 * 1024
        assert [f.exists() for f in files] == [True, False, False, False, True, True]  # f0 was used today
        assert store.get(used)["purged_at"] is None


def test_nothing_is_removed_by_default_and_the_cli(tiny_settings, tmp_path, monkeypatch, capsys):
    from core.cli import main

    settings = tiny_settings
    monkeypatch.setenv("UUSIC_WORKSPACE", str(settings.workspace))
    for name in ("UUSIC_HISTORY_URL", "UUSIC_RETENTION_DAYS", "UUSIC_RETENTION_GB"):
        monkeypatch.delenv(name, raising=False)
    old = _file(settings.api_in / "ancient.png", days=3650)
    assert main(["workspace", "gc"]) == 0 and old.exists()
    assert "nothing is removed by default" in capsys.readouterr().err
    assert main(["workspace", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["folders"]["api_in"]["files"] == 1 and status["leftovers"]["orphan_files"] == 1
    assert main(["workspace", "gc", "--days", "30", "--dry-run"]) == 0 and old.exists()
    assert "would remove 1 files" in capsys.readouterr().out
    monkeypatch.setenv("UUSIC_RETENTION_DAYS", "30")
    assert main(["workspace", "gc"]) == 0 and not old.exists()
    assert main(["workspace", "status"]) == 0 and "retention: days=30" in capsys.readouterr().out
    assert main(["workspace", "gc", "--max-gb", "-1"]) == 2


# ------------------------------------------------------------------------------------------ export / import
def _make_runs(settings: Settings) -> AnalysisService:
    """A service over ``settings`` that analysed an upload (mask), a data-root sample, and failed once."""
    service = AnalysisService(settings, model="tiny")
    skeleton = service.save_upload(_png(7, 80), "patient scan.png")
    service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI"}, source="dashboard",
                    edits=[{"op": "rotate", "angle": 90.0}])
    service.analyze({"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification",
                     "dataset_name": "BUSI"}, source="api")
    service.analyze({"img_path_relative": "segmentation/DDTI/imgs/seg_1.png", "task": "segmentation",
                     "dataset_name": "DDTI"}, source="api")
    with pytest.raises(Exception):  # noqa: B017 - any typed error; it is recorded
        service.analyze({"img_path_relative": "api_in/none.png", "task": "segmentation", "dataset_name": "DDTI"})
    service.analyze_batch([{"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation",
                            "dataset_name": "DDTI"}], source="batch")
    return service


COMPARED = ("timestamp", "source", "img_name", "input_sha256", "edits", "task", "dataset_name", "organ",
            "model_name", "model_sha256", "prediction", "label_name", "probabilities", "mask_path_relative",
            "mask_area_px", "measurements", "inference_time_sec", "memory_usage_mb", "device", "error",
            "request", "response", "error_type", "batch_id", "purged_at")


@pytest.mark.parametrize("with_files", [True, False], ids=["with-files", "rows-only"])
def test_export_import_round_trip(tiny_settings, history_target, second_target, tmp_path, with_files):
    source = _with_history(tiny_settings, history_target)
    service = _make_runs(source)
    rows = sorted(service.runs(limit=None), key=lambda r: r["id"])
    assert len(rows) == 5
    archive = tmp_path / "out" / "history.tar.gz"
    manifest = backup.export_archive(source, service.store, archive, with_files=with_files)
    assert manifest["schema_revision"] == head_revision() and manifest["counts"]["runs"] == 5
    with tarfile.open(archive, "r:gz") as tar:
        names = set(tar.getnames())
        for name, digest in manifest["sha256"].items():
            data = tar.extractfile(name).read()
            assert hashlib.sha256(data).hexdigest() == digest
        lines = tar.extractfile("runs.jsonl").read().decode().splitlines()
    assert [json.loads(line) for line in lines] == rows  # every column, as stored
    file_names = {n for n in names if n.startswith("files/")}
    if with_files:  # the upload, its mask, the sample's mask and the batch's mask
        assert manifest["counts"]["files"] == 4 == len(file_names) and manifest["counts"]["files_missing"] == 0
        assert any(n.startswith("files/api_in/") for n in file_names)
    else:
        assert file_names == set() and manifest["counts"]["files"] == 0

    dest = _with_history(tiny_settings.with_(workspace=tmp_path / "elsewhere"), second_target)
    dest.ensure_workspace()
    with HistoryStore(second_target) as store:
        store.add({"img_name": "already-here.png", "source": "cli"})  # ids are remapped around it
        report = backup.import_archive(dest, store, archive, with_files=with_files)
        assert report["runs_imported"] == 5 and report["runs_already_there"] == 0
        assert sorted(report["ids"]) == [r["id"] for r in rows] and 1 not in report["ids"].values()
        assert report["files_written"] == (4 if with_files else 0)
        imported = {old: decode_row(store.get(new)) for old, new in report["ids"].items()}
        for row in rows:
            new = imported[row["id"]]
            original = decode_row(row)
            assert {k: new[k] for k in COMPARED if k != "response"} == \
                {k: original[k] for k in COMPARED if k != "response"}
            moved = ("mask_path", "mask_url")  # the response's own copy of the mask path follows the row's
            assert {k: v for k, v in (new["response"] or {}).items() if k not in moved} == \
                {k: v for k, v in (original["response"] or {}).items() if k not in moved}
            assert (new["response"] or {}).get("mask_path") == new["mask_path"]
            assert new["img_path_relative"] == row["img_path_relative"]
            if row["mask_path"]:
                assert Path(new["mask_path"]).is_relative_to(dest.api_out.resolve())  # rewritten to this workspace
                assert (Path(new["mask_path"]).is_file()) == with_files
                if with_files:
                    assert _sha(new["mask_path"]) == _sha(row["mask_path"])
        again = backup.import_archive(dest, store, archive, with_files=with_files)
        assert again["runs_imported"] == 0 and again["runs_already_there"] == 5 and store.count() == 6
        assert again["files_written"] == 0 and again["files_already_there"] == (4 if with_files else 0)
        uploaded = next(r for r in rows if r["source"] == "dashboard")
        dest_service = AnalysisService(dest, model="tiny", store=store)
        assert dest_service.workspace_check.wait(timeout=60)
        check = dest_service.health()["workspace"]
        if with_files:
            assert dest_service.run_image(report["ids"][uploaded["id"]]).shape[:2] == (80, 80)
            assert dest_service.run_mask(report["ids"][uploaded["id"]]).shape == (80, 80)
            assert check["rows_missing_files"] == 0 and check["orphan_files"] == 0
        else:
            assert check["rows_missing_files"] == 3  # the upload's run and the two with masks: reported, marked
    service.store.close()


def test_import_refuses_damaged_or_foreign_archives(tiny_settings, tmp_path):
    settings = tiny_settings
    with HistoryStore(settings.history_db) as store:
        store.add({"img_name": "x.png"})
        archive = tmp_path / "a.tar.gz"
        backup.export_archive(settings, store, archive)
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

        def repack(name: str, changes: dict[str, bytes]) -> Path:
            path = tmp_path / name
            with tarfile.open(path, "w:gz") as tar:
                for member, data in {**members, **changes}.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            return path

        damaged = repack("damaged.tar.gz", {"runs.jsonl": members["runs.jsonl"].replace(b"x.png", b"y.png")})
        with pytest.raises(backup.ArchiveError, match="damaged"):
            backup.import_archive(settings, store, damaged)
        manifest = json.loads(members["manifest.json"])
        newer = repack("newer.tar.gz", {"manifest.json": json.dumps({**manifest, "schema_revision": "9999"}).encode()})
        with pytest.raises(backup.ArchiveError, match="newer"):
            backup.import_archive(settings, store, newer)
        with pytest.raises(backup.ArchiveError, match="without --with-files"):
            backup.import_archive(settings, store, archive, with_files=True)
        (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
        with pytest.raises(backup.ArchiveError):
            backup.import_archive(settings, store, tmp_path / "junk.tar.gz")
        assert store.count() == 1


def test_import_never_overwrites_a_different_file(tiny_settings, tmp_path):
    source = tiny_settings
    service = _make_runs(source)
    archive = tmp_path / "a.tar.gz"
    backup.export_archive(source, service.store, archive, with_files=True)
    dest = tiny_settings.with_(workspace=tmp_path / "other")
    dest.ensure_workspace()
    sample_mask = dest.api_out / "segmentation" / "DDTI" / "masks" / "seg_1.png"
    _file(sample_mask, size=10)  # this workspace's own mask of the same sample, different bytes
    mine = sample_mask.read_bytes()
    with HistoryStore(dest.history_db) as store:
        report = backup.import_archive(dest, store, archive, with_files=True)
        assert report["files_renamed"] == 1 and sample_mask.read_bytes() == mine
        row = next(decode_row(r) for r in store.list(limit=None) if (r["mask_path"] or "").endswith("seg_1.png"))
        assert "/imported_" in row["mask_path"] and Path(row["mask_path"]).is_file()
    service.store.close()


def test_import_rewrites_every_path_of_a_run_to_its_renamed_files(tiny_settings, tmp_path):
    """A DICOM upload analysed with TTA: the kept original, the mask and the agreement map, in the row and inside
    its request / response JSON, all point at the imported files, also when a clash renamed them."""
    from conftest import dicom_bytes, ultrasound_dicom

    service = AnalysisService(tiny_settings, model="tiny")
    skeleton = service.save_upload(dicom_bytes(ultrasound_dicom()), "scan.dcm")
    made = service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI", "tta": True})
    source_row = decode_row(service.store.get(made.run_id))
    kept = source_row["request"]["source_path_relative"]
    agreement = Path(made.uncertainty["agreement_path"])
    archive = tmp_path / "a.tar.gz"
    backup.export_archive(tiny_settings, service.store, archive, with_files=True)
    service.store.close()
    dest = tiny_settings.with_(workspace=tmp_path / "other")
    dest.ensure_workspace()
    api_out = tiny_settings.api_out.resolve()
    clashes = [dest.workspace / kept, dest.api_out / Path(made.mask_path).relative_to(api_out),
               dest.api_out / agreement.relative_to(api_out)]
    for clash in clashes:  # this workspace's own, different files at the same places
        _file(clash, size=10)
    with HistoryStore(dest.history_db) as store:
        report = backup.import_archive(dest, store, archive, with_files=True)
        assert report["files_renamed"] == 3
        row = decode_row(store.get(report["ids"][made.run_id]))
    request, response = row["request"], row["response"]
    assert Path(row["mask_path"]).read_bytes() == Path(made.mask_path).read_bytes()
    assert response["mask_path"] == row["mask_path"] and "/imported_" in row["mask_path"]
    assert response["mask_url"] == "/v1/masks/" + Path(row["mask_path"]).relative_to(dest.api_out.resolve()).as_posix()
    imported_map = Path(response["uncertainty"]["agreement_path"])
    assert imported_map.read_bytes() == agreement.read_bytes() and imported_map.is_relative_to(dest.api_out.resolve())
    assert response["uncertainty"]["agreement_url"].endswith(imported_map.name)
    assert (dest.workspace / request["source_path_relative"]).read_bytes() == \
        (tiny_settings.workspace / kept).read_bytes()
    assert (dest.workspace / row["img_path_relative"]).is_file()
    assert all(clash.stat().st_size == 10 for clash in clashes)  # nothing of this workspace overwritten


def test_history_cli_export_import_and_backup(tiny_settings, tmp_path, monkeypatch, capsys):
    from core.cli import main

    service = _make_runs(tiny_settings)
    service.store.close()
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    monkeypatch.delenv("UUSIC_HISTORY_URL", raising=False)
    archive = tmp_path / "h.tar.gz"
    assert main(["history", "export", "--out", str(archive), "--with-files"]) == 0
    assert "exported 5 runs and 4 files" in capsys.readouterr().out
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "moved"))
    assert main(["history", "import", str(archive), "--with-files"]) == 0
    assert "runs imported: 5" in capsys.readouterr().out
    assert main(["history", "import", str(archive)]) == 0
    assert "runs imported: 0" in capsys.readouterr().out
    copy = tmp_path / "copy.sqlite3"
    assert main(["history", "backup", "--out", str(copy)]) == 0
    assert HistoryStore(copy).count() == 5
    monkeypatch.setenv("UUSIC_HISTORY_URL", "postgresql+psycopg://u:secret@127.0.0.1:1/x")
    assert main(["history", "backup", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err or "could not open" in err
    assert "secret" not in err


def test_online_sqlite_backup_while_writers_run(tmp_path):
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(path)
    for i in range(50):
        store.add({"img_name": f"before_{i}.png"})
    stop = threading.Event()

    def write() -> None:
        with HistoryStore(path) as writer:
            i = 0
            while not stop.is_set():
                writer.add({"img_name": f"during_{i}.png"})
                i += 1

    threads = [threading.Thread(target=write) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        copies = [backup.backup_sqlite(store, tmp_path / f"copy_{i}.sqlite3") for i in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    for copy in copies:
        assert copy["runs"] >= 50
        with sqlite3.connect(copy["out"]) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
            assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == copy["runs"]
        connection.close()
        assert HistoryStore(Path(copy["out"])).count() == copy["runs"]
    assert not list(tmp_path.glob(".backup-*"))
    store.close()


def test_postgresql_backup_points_at_pg_dump(postgres_url, tmp_path):
    with HistoryStore(postgres_url) as store, pytest.raises(Exception, match="pg_dump"):
        backup.backup_sqlite(store, tmp_path / "x.sqlite3")


# ------------------------------------------------------------------------------------------ mark_purged
def test_mark_purged_by_ids_and_paths(history_target):
    with HistoryStore(history_target) as store:
        a = store.add({"img_path_relative": "api_in/a.png"})
        b = store.add({"mask_path": "/w/api_out/masks/b.png"})
        c = store.add({"img_path_relative": "api_in/c.png"})
        assert store.mark_purged([a], when="2020-01-01T00:00:00.000+00:00") == 1
        assert store.mark_purged(paths=["/w/api_out/masks/b.png", "api_in/a.png"]) == 1  # a keeps its first mark
        assert store.get(a)["purged_at"] == "2020-01-01T00:00:00.000+00:00" and store.get(b)["purged_at"]
        assert store.get(c)["purged_at"] is None and store.mark_purged([]) == 0
        assert store.mark_purged(range(1, 2000)) == 1  # long id lists go in chunks
        assert [r["id"] for r in store.iter_rows(["purged_at"], chunk=2)] == [a, b, c]
