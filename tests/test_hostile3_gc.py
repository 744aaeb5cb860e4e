"""Hostile table, issue 22 class 10: retention never takes what is in use.

``python -m core workspace gc`` spares a file written or used less than ``UUSIC_RETENTION_GRACE_S`` seconds ago
(an upload not yet analysed) and every file a run in flight holds (:func:`core.workspace.in_use`), under both the
age and the size policy; an old orphan still goes. Before: a gc one second after an upload removed it (size policy,
or a fractional ``--days``) and the predict that followed answered 404.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import workspace
from core.api import create_app
from core.history import HistoryStore
from core.settings import Settings

DAY = 86400.0
EVERYTHING_OVER_BUDGET = 1e-12  # GB: any file is over it
ONE_SECOND = 1 / DAY  # --days: a file a second old is "expired"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 90, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _old_file(path: Path, days: float = 50.0, size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    then = time.time() - days * DAY
    os.utime(path, (then, then))
    return path


def _gc(settings: Settings, **kwargs) -> dict:
    with HistoryStore.from_settings(settings) as store:
        return workspace.collect_garbage(settings, store, **kwargs)


@pytest.mark.parametrize("policy", [{"days": ONE_SECOND}, {"max_gb": EVERYTHING_OVER_BUDGET},
                                    {"days": ONE_SECOND, "max_gb": EVERYTHING_OVER_BUDGET}],
                         ids=["age", "size", "both"])
def test_upload_seconds_old_survives_gc_and_is_analysed(tiny_settings: Settings, policy: dict):
    orphan = _old_file(tiny_settings.api_in / "old_orphan.png")
    with TestClient(create_app(tiny_settings)) as client:
        upload = client.post("/v1/upload", files={"file": ("scan.png", _png(), "image/png")})
        assert upload.status_code == 200, upload.text
        skeleton = upload.json()
        time.sleep(1.1)  # older than the policy's second; younger than the grace period
        report = _gc(tiny_settings, **policy)
        assert (tiny_settings.workspace / skeleton["img_path_relative"]).is_file(), report
        assert not orphan.exists(), report  # an old orphan still goes
        assert report["policy"]["grace_s"] == tiny_settings.retention_grace_s == 3600.0
        result = client.post("/v1/predict", json={**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
        assert result.status_code == 200, result.text  # was 404: the gc had removed the upload


def test_without_a_grace_period_the_same_gc_takes_the_upload(tiny_settings: Settings):
    """The test above detects the bug: with the grace period off, the fresh upload goes."""
    with TestClient(create_app(tiny_settings)) as client:
        skeleton = client.post("/v1/upload", files={"file": ("scan.png", _png(), "image/png")}).json()
        report = _gc(tiny_settings, max_gb=EVERYTHING_OVER_BUDGET, grace=0)
        assert report["by_reason"]["size"] == 1
        assert not (tiny_settings.workspace / skeleton["img_path_relative"]).exists()


def test_grace_comes_from_the_setting_and_the_cli(tiny_settings: Settings, monkeypatch, capsys):
    from core.cli import main

    fresh = tiny_settings.api_in / "fresh.png"
    fresh.write_bytes(b"x" * 100)
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    for name in ("UUSIC_HISTORY_URL", "UUSIC_RETENTION_DAYS", "UUSIC_RETENTION_GB", "UUSIC_RETENTION_GRACE_S"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env({"UUSIC_RETENTION_GRACE_S": "0"}).retention_grace_s == 0.0
    assert Settings.from_env({"UUSIC_RETENTION_GRACE_S": "120"}).retention_grace_s == 120.0
    assert main(["workspace", "gc", "--max-gb", "1e-12"]) == 0 and fresh.exists()  # default grace: 3600 s
    monkeypatch.setenv("UUSIC_RETENTION_GRACE_S", "1e9")
    assert main(["workspace", "gc", "--max-gb", "1e-12"]) == 0 and fresh.exists()
    assert main(["workspace", "status"]) == 0 and "grace_s=1e+09" in capsys.readouterr().out
    assert main(["workspace", "gc", "--max-gb", "1e-12", "--grace-s", "-1"]) == 2 and fresh.exists()
    assert main(["workspace", "gc", "--max-gb", "1e-12", "--grace-s", "0", "--dry-run"]) == 0 and fresh.exists()
    assert main(["workspace", "gc", "--max-gb", "1e-12", "--grace-s", "0"]) == 0 and not fresh.exists()


def test_files_of_a_run_in_flight_survive(tiny_settings: Settings):
    """An old input analysed again, and the mask a run is writing: held by the run until it ends."""
    old_input = _old_file(tiny_settings.api_in / "old.png", days=40)
    old_mask = _old_file(tiny_settings.api_out / "masks" / "old.png", days=40)
    other = _old_file(tiny_settings.api_in / "other.png", days=40)
    paths = ["api_in/old.png", str(old_mask), "segmentation/DDTI/imgs/x.png", "/etc/passwd", None]
    with workspace.in_use(tiny_settings, paths) as held:
        assert held == [("api_in", "old.png"), ("api_out", "masks/old.png")]  # the workspace's files only
        leases = list((tiny_settings.workspace / workspace.LEASES).glob("*.json"))
        assert len(leases) == 1 and json.loads(leases[0].read_text())["files"] == [list(k) for k in held]
        report = _gc(tiny_settings, days=30, max_gb=EVERYTHING_OVER_BUDGET)
        assert old_input.exists() and old_mask.exists(), report
        assert not other.exists()  # not held: goes
        with HistoryStore.from_settings(tiny_settings) as store:
            assert workspace.status(tiny_settings, store)["held_by_runs_in_flight"] == 2
    assert not list((tiny_settings.workspace / workspace.LEASES).glob("*.json"))  # the lease ends with the run
    _gc(tiny_settings, days=30)
    assert not old_input.exists() and not old_mask.exists()  # once the run is over, retention applies again


def test_a_lease_left_by_a_killed_run_expires(tiny_settings: Settings):
    old_input = _old_file(tiny_settings.api_in / "old.png", days=40)
    folder = tiny_settings.workspace / workspace.LEASES
    folder.mkdir(parents=True)
    stale = folder / "4242-dead.json"
    stale.write_text(json.dumps({"pid": 4242, "files": [["api_in", "old.png"]]}))
    damaged = folder / "4243-damaged.json"
    damaged.write_text("{not json")
    fresh = folder / "4244-alive.json"
    fresh.write_text(json.dumps({"pid": 4244, "files": [["api_in", "old.png"], ["elsewhere", "x"]]}))
    assert workspace.held_files(tiny_settings) == {("api_in", "old.png")}
    _gc(tiny_settings, days=30, dry_run=True)
    assert old_input.exists() and damaged.exists()  # a dry run removes nothing, leases included
    then = time.time() - workspace.LEASE_MAX_S - 60
    os.utime(stale, (then, then))
    os.utime(fresh, (then, then))
    report = _gc(tiny_settings, days=30)
    assert not old_input.exists(), report  # the leases of dead runs hold nothing ...
    assert not stale.exists() and not fresh.exists() and not damaged.exists()  # ... and are removed


def test_a_lease_that_cannot_be_written_holds_nothing_and_does_not_fail(tiny_settings: Settings):
    (tiny_settings.workspace / workspace.LEASES).write_text("a file where the folder should be")
    with workspace.in_use(tiny_settings, ["api_in/a.png"]) as held:
        assert held == [("api_in", "a.png")]
    assert workspace.held_files(tiny_settings) == set()
