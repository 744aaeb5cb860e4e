"""The batch CLI's overlap (issue 27): decoding ahead of and writing behind the forward pass changes nothing in the
outputs, a bad image is reported while the rest go on, the images held decoded stay within a known bound, and a
``python -m core predict`` process with a cached conversion never imports torch.

Timings are in ``bench/bench_batch_overlap.py``, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import small_demo_weights
from PIL import Image

from core.batching import in_flight_bound, run_batch
from core.cli import main
from core.settings import BUNDLED_SAMPLES, PROJECT_ROOT, Settings
from tests.tolerances import assert_masks_agree, assert_probabilities_close


def _predict(settings: Settings, out: Path, *extra: str) -> int:
    return main(["predict", "--input-json", str(settings.data_root / "ground_truth.json"), "--input-dir",
                 str(settings.data_root), "--output-dir", str(out), "--device", "cpu", "--batch-size", "2",
                 "--no-progress", "--no-record", *extra])


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("model", ["tiny", "tiny_letterbox"])
def test_overlap_and_serial_write_the_same_outputs(tiny_settings: Settings, tmp_path: Path, monkeypatch, model: str):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    new, old = tmp_path / "overlap", tmp_path / "serial"
    assert _predict(tiny_settings, new, "--model", model, "--workers", "2") == 0
    assert _predict(tiny_settings, old, "--model", model, "--no-overlap") == 0
    assert _files(new) == _files(old)
    got = json.loads((new / "classification.json").read_text())
    want = json.loads((old / "classification.json").read_text())
    assert list(got) == list(want)  # same keys, same order
    for key, value in want.items():
        assert list(got[key]) == list(value) == ["probability", "prediction"]
        assert_probabilities_close(got[key]["probability"], value["probability"])
        assert got[key]["prediction"] == value["prediction"]
    masks = [name for name in _files(old) if name.endswith(".png")]
    assert len(masks) == 3
    for name in masks:
        assert_masks_agree(np.asarray(Image.open(new / name)), np.asarray(Image.open(old / name)), name)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_bad_image_in_the_middle_is_reported_and_the_rest_go_on(tiny_settings: Settings, tmp_path: Path,
                                                                   monkeypatch, capsys, overlap: bool):
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tiny_settings.weights_dir))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tiny_settings.workspace))
    gt_path = tiny_settings.data_root / "ground_truth.json"
    entries = json.loads(gt_path.read_text())
    bad = {**entries[1], "img_path_relative": "classification/BUSI/imgs/broken.png", "img_name": "broken.png"}
    (tiny_settings.data_root / bad["img_path_relative"]).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    gt_path.write_text(json.dumps([*entries[:2], bad, *entries[2:]]))
    out = tmp_path / "out"
    assert _predict(tiny_settings, out, "--model", "tiny", *([] if overlap else ["--no-overlap"])) == 1
    captured = capsys.readouterr()
    assert "warning: failed classification/BUSI/imgs/broken.png" in captured.err
    assert "done: 6 predicted" in captured.out and "1 failed" in captured.out
    classification = json.loads((out / "classification.json").read_text())
    assert list(classification) == [e["img_path_relative"] for e in entries if e["task"] == "classification"]
    assert len(list(out.rglob("*.png"))) == 3


class CountingEngine:
    """A fake engine (the three stages of :class:`core.batching.Engine`) that counts the images held prepared:
    from ``prepare`` until their ``finish`` returns. ``fail``: item values whose prepare raises."""

    def __init__(self, fail: set[int] = frozenset()):  # type: ignore[assignment]
        self.fail, self.lock = fail, threading.Lock()
        self.live = self.peak = self.forwards = 0

    def prepare(self, item: int, *, input_dir: Path | None = None) -> int:
        if item in self.fail:
            raise ValueError(f"cannot decode {item}")
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        return item

    def forward(self, batch: list[int]) -> tuple[list[Any], float, Any]:
        self.forwards += 1
        return [b * 10 for b in batch], 0.01 * len(batch), None

    def finish(self, prepared: int, raw: Any, *, output_dir: Path, forward_sec: float, gpu: Any) -> dict:
        with self.lock:
            self.live -= 1
        return {"item": prepared, "raw": raw}


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_images_held_stay_within_the_bound_and_errors_stay_per_image(tmp_path: Path, workers: int):
    engine = CountingEngine(fail={7, 20})
    results: dict[int, tuple[dict | None, BaseException | None]] = {}

    def on_result(index: int, response: dict | None, error: BaseException | None) -> None:
        assert index not in results, "one answer per image"
        results[index] = (response, error)

    run_batch(engine, range(60), output_dir=tmp_path, on_result=on_result, batch_size=4, workers=workers)
    assert sorted(results) == list(range(60))
    for index, (response, error) in results.items():
        if index in (7, 20):
            assert response is None and "cannot decode" in str(error)
        else:
            assert error is None and response == {"item": index, "raw": index * 10}
    assert engine.live == 0
    assert engine.peak <= in_flight_bound(4, workers)
    assert in_flight_bound(4, workers) == (4 if workers == 0 else 16)


def test_a_failed_forward_is_reported_for_each_image_of_its_batch(tmp_path: Path):
    engine = CountingEngine()

    def broken(batch: list[int]) -> tuple[list[Any], float, Any]:
        if 5 in batch:
            raise RuntimeError("forward failed")
        return CountingEngine.forward(engine, batch)

    engine.forward = broken  # type: ignore[method-assign]
    for workers in (0, 2):
        results: dict[int, BaseException | None] = {}

        def on_result(index: int, response: dict | None, error: BaseException | None,
                      into: dict[int, BaseException | None] = results) -> None:
            into[index] = error

        run_batch(engine, range(12), output_dir=tmp_path, batch_size=4, workers=workers, on_result=on_result)
        assert sorted(results) == list(range(12))
        assert sorted(i for i, e in results.items() if e is not None) == [4, 5, 6, 7]
    assert engine.live == 4 * 2  # the failed batch's images were never finished


@pytest.fixture()
def converted_small_model(tmp_path: Path) -> Settings:
    """A small demo-architecture network in its own weights folder, converted to OpenVINO in its workspace's cache
    (this process imports torch to convert; the process under test must not)."""
    backends = pytest.importorskip("core.models.backends")
    if backends.installed("openvino") is not None:
        pytest.skip("openvino is not installed (requirements-fast.txt)")

    from core.engine import Engine

    weights = small_demo_weights(tmp_path / "weights")
    backends.clear_cache()  # an artefact of the same weights converted by another test lives in another workspace
    settings = Settings(workspace=tmp_path / "ws", weights_dir=weights, device="cpu", data_root=BUNDLED_SAMPLES,
                        backend="auto")
    Engine(settings)
    backends.clear_cache()
    return settings


def test_predict_process_with_a_cached_conversion_imports_no_torch(converted_small_model: Settings, tmp_path: Path):
    settings = converted_small_model
    entries = json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
    picked = [next(e for e in entries if e["task"] == task) for task in ("classification", "segmentation")]
    (tmp_path / "in.json").write_text(json.dumps(picked))
    env = {**os.environ, "UUSIC_WORKSPACE": str(settings.workspace), "UUSIC_WEIGHTS_DIR": str(settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_BACKEND": "auto", "UUSIC_DEBUG_STARTUP": "1",
           "PYTHONPATH": str(PROJECT_ROOT)}
    for name in ("UUSIC_MODEL", "UUSIC_CACHE_DIR", "UUSIC_HISTORY_URL", "UUSIC_RECORD_CLI"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-W", "ignore", "-m", "core", "predict", "--input-json",
                           str(tmp_path / "in.json"), "--input-dir", str(BUNDLED_SAMPLES), "--output-dir",
                           str(tmp_path / "out"), "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stderr.splitlines() if x.startswith("startup: "))
    probe = json.loads(line.removeprefix("startup: "))
    assert probe["images"] == 2 and probe["first_result_unix"] is not None
    # and, recording nothing, no history store and no start-up check of it (SQLAlchemy, Alembic)
    imported = [name for name in ("torch", "ray", "highdicom", "fpdf", "av", "scipy", "tqdm", "sqlalchemy", "alembic")
                if probe["imported"][name]]
    assert imported == [], f"imported by `python -m core predict`: {imported}"
    assert list(json.loads((tmp_path / "out" / "classification.json").read_text())) == [
        picked[0]["img_path_relative"]]
