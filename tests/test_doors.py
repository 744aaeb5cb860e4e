"""Every door analyses the same image through the one service and leaves exactly one history row per run, with the
sha256 of the file that was analysed and the model's sha256 — on SQLite and on PostgreSQL.

Doors: API ``/v1/predict``, the earlier server's ``/segment/``, the dashboard's Analyze and Batch pages (AppTest),
and the CLI with ``--record``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.api import create_app
from core.cli import main as cli_main
from core.history import HistoryStore
from core.settings import PROJECT_ROOT, Settings

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

IMAGE = "segmentation/DDTI/imgs/seg_1.png"
SEG = {"task": "segmentation", "dataset_name": "DDTI"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def doors_env(dashboard_env: Settings, history_target, monkeypatch) -> Settings:
    """The dashboard's environment with the history on this test's backend."""
    url = f"sqlite:///{history_target}" if isinstance(history_target, Path) else history_target
    monkeypatch.setenv("UUSIC_HISTORY_URL", url)
    monkeypatch.setenv("UUSIC_MODEL", "tiny")
    return dashboard_env.with_(history_url=url, default_model="tiny")


def _through_the_api(settings: Settings, data: bytes) -> list[str]:
    """Upload + /v1/predict, then /segment/ on the same saved file; the saved file's relative path, twice."""
    with TestClient(create_app(settings)) as client:
        skeleton = client.post("/v1/upload", files={"file": ("seg 1.png", data, "image/png")}).json()
        assert client.post("/v1/predict", json={**skeleton, **SEG}).status_code == 200
        compat = client.post("/segment/", json={**skeleton, **SEG, "mask_name": "", "mask_path_relative": ""})
        assert compat.status_code == 200, compat.text
    return [skeleton["img_path_relative"]] * 2


def _through_the_dashboard(data: bytes, settings: Settings) -> list[str]:
    """Analyze (upload, run) and Batch (one upload); the files each saved in api_in/."""
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.run()
    at.radio(key="task").set_value("segmentation").run()
    at.selectbox(key="organ_segmentation").set_value("thyroid").run()
    at.selectbox(key="dataset_segmentation_thyroid").set_value("DDTI").run()
    at.radio(key="source").set_value("upload").run()
    before = set(settings.api_in.iterdir())
    at.file_uploader(key="upload").upload("seg 1.png", data, "image/png").run()
    at.button(key="run").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    analyzed = sorted(set(settings.api_in.iterdir()) - before)
    at.switch_page("pages/batch.py").run()
    at.radio(key="b_task").set_value("segmentation").run()
    at.selectbox(key="b_dataset_segmentation").set_value("DDTI").run()
    at.file_uploader(key="b_files").set_value([("seg 1.png", data, "image/png")]).run()
    at.button(key="b_run").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    batched = sorted(set(settings.api_in.iterdir()) - before - set(analyzed))
    assert len(analyzed) == 1 and len(batched) == 1
    return [f"api_in/{analyzed[0].name}", f"api_in/{batched[0].name}"]


def _through_the_cli(settings: Settings, tmp_path: Path) -> list[str]:
    request = {"img_path_relative": IMAGE, **SEG}
    (tmp_path / "input.json").write_text(json.dumps([request]))
    code = cli_main(["predict", "--input-json", str(tmp_path / "input.json"), "--input-dir", str(settings.data_root),
                     "--output-dir", str(tmp_path / "out"), "--model", "tiny", "--no-progress", "--record"])
    assert code == 0 and (tmp_path / "out" / "segmentation/DDTI/masks/seg_1.png").is_file()
    return [IMAGE]


def test_every_door_records_one_row_per_run_with_the_analysed_files_sha256(doors_env: Settings, tmp_path: Path):
    settings = doors_env
    data = (settings.data_root / IMAGE).read_bytes()
    analysed = _through_the_api(settings, data) + _through_the_dashboard(data, settings) + \
        _through_the_cli(settings, tmp_path)
    rows = list(reversed(HistoryStore(settings.history_url).list()))  # oldest first, in door order
    assert [r["source"] for r in rows] == ["api", "api", "dashboard", "batch", "cli"]
    model_sha = _sha(settings.weights_dir / "tiny.ts")
    for row, relative in zip(rows, analysed, strict=True):
        root = settings.workspace if relative.startswith("api_in/") else settings.data_root
        assert row["error"] is None and row["img_path_relative"] == relative
        assert row["input_sha256"] == _sha(root / relative), row["source"]
        assert row["model_sha256"] == model_sha and row["model_name"] == "tiny"
        assert row["task"] == "segmentation" and row["dataset_name"] == "DDTI" and row["mask_area_px"] is not None
    # the pixels are the same image everywhere, so every door's mask has the same area
    assert len({r["mask_area_px"] for r in rows}) == 1
