"""CPU inference backends (core/models/backends.py): outputs of every installed backend against eager torch on the
bundled samples with the demo model, the on-disk cache (reused on a second load, invalidated by new weights), the
fallback to eager torch when a backend is missing (logged and shown by ``/healthz``), and the settings / manifest
choice. Timings are in bench/bench_backends.py, never asserted here."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.errors import ConfigError
from core.models import backends, demo_unet
from core.models.base import ModelSpec
from core.service import AnalysisService
from core.settings import BUNDLED_SAMPLES, WEIGHTS_DIR, Settings

DEMO_PRESENT = (WEIGHTS_DIR / "models.json").is_file() and (WEIGHTS_DIR / "demo_unet.pt").is_file()
OPENVINO = backends.installed("openvino") is None
TORCH_COMPILE = backends.installed("torch-compile") is None
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_00004.jpg", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_00006.jpg", "task": "segmentation", "dataset_name": "DDTI"}
needs_openvino = pytest.mark.skipif(not OPENVINO, reason="openvino is not installed (requirements-fast.txt)")


# ------------------------------------------------------------------------------------------------ fidelity


def _outputs(engine: Engine, entries: list[dict], out: Path) -> dict:
    """{img: probability array | mask array} through the engine's prepare → forward → finish, batch 4."""
    results = engine.predict_batch(entries, output_dir=out, batch_size=4)
    observed = {}
    for entry, result in zip(entries, results, strict=True):
        assert "error" not in result, result
        if entry["task"] == "classification":
            observed[entry["img_path_relative"]] = ("cls", np.array(result["probability"]), result["prediction"])
        else:
            observed[entry["img_path_relative"]] = ("seg", np.asarray(Image.open(result["mask_path"])) > 0, None)
    return observed


def _fidelity(reference: dict, candidate: dict) -> tuple[float, bool, float]:
    """(max |Δp|, all predictions equal, fraction of equal mask pixels)."""
    dp, same, equal, total = 0.0, True, 0, 0
    for key, (kind, want, prediction) in reference.items():
        _, got, got_prediction = candidate[key]
        if kind == "cls":
            dp = max(dp, float(np.abs(want - got).max()))
            same = same and prediction == got_prediction
        else:
            assert want.shape == got.shape
            equal += int((want == got).sum())
            total += want.size
    return dp, same, equal / max(total, 1)


@pytest.fixture(scope="module")
def demo_reference(tmp_path_factory):
    if not DEMO_PRESENT:
        pytest.skip("demo weights not present")
    entries = json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text())
    work = tmp_path_factory.mktemp("fidelity")
    engine = Engine(Settings(workspace=work / "ws", device="cpu", backend="torch"))
    entries = [e for e in entries if engine.serves(e["task"], e["dataset_name"])]
    assert len(entries) >= 15
    return work, entries, _outputs(engine, entries, work / "torch")


FP32_BACKENDS = [pytest.param("openvino", marks=needs_openvino),
                 pytest.param("torch-compile", marks=[pytest.mark.slow, pytest.mark.skipif(
                     not TORCH_COMPILE, reason="no C++ compiler for torch-compile")])]


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_fp32_backend_matches_eager_on_the_samples(demo_reference, backend: str):
    """fp32 backends are equivalent to eager: |Δp| <= 1e-4, same predictions, >= 99.9 % equal mask pixels."""
    work, entries, reference = demo_reference
    engine = Engine(Settings(workspace=work / "ws", device="cpu", backend=backend))
    assert (engine.backend.backend, engine.backend.precision, engine.backend.fallback) == (backend, "fp32", None)
    dp, same, agreement = _fidelity(reference, _outputs(engine, entries, work / backend))
    assert dp <= backends.FIDELITY["max_abs_dp"], dp
    assert same
    assert agreement >= backends.FIDELITY["mask_agreement"], agreement


@needs_openvino
def test_auto_on_cpu_is_openvino_fp32(demo_reference):
    """The default (auto) on a CPU is the measured fastest fp32-equivalent backend: OpenVINO fp32."""
    work, _, _ = demo_reference
    engine = Engine(Settings(workspace=work / "ws", device="cpu"))
    assert engine.backend.requested == "auto"
    assert (engine.backend.backend, engine.backend.precision) == ("openvino", "fp32")
    assert engine.model.sha256 == engine.sha256 and engine.model.spec == engine.spec  # the eager model's attributes
    assert engine.model_info()["backend"]["backend"] == "openvino"


def _openvino_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=needs_openvino), "torch"])
def test_bf16_is_opt_in_and_close(demo_reference, backend: str):
    """bf16 is not fp32-equivalent (so never the default), but stays close: no flipped prediction on the samples,
    >= 99 % equal mask pixels."""
    work, entries, reference = demo_reference
    engine = Engine(Settings(workspace=work / "ws", device="cpu", backend=backend, precision="bf16"))
    if backend == "openvino" and not _openvino_has_bf16():  # this CPU (no AVX512_BF16 / AMX): the stated fallback
        assert engine.backend.backend == "torch" and "no bf16 support" in (engine.backend.fallback or "")
        return
    assert (engine.backend.backend, engine.backend.precision) == (backend, "bf16")
    dp, same, agreement = _fidelity(reference, _outputs(engine, entries, work / f"{backend}-bf16"))
    assert dp <= 0.05 and same, (dp, same)
    assert agreement >= 0.99, agreement


# ------------------------------------------------------------------------------------------------ cache, fallback


@pytest.fixture()
def small_demo(tmp_path: Path):
    """A small demo-architecture network (64 px) in its own weights folder, with the bundled samples as data."""
    weights = tmp_path / "weights"
    weights.mkdir()

    def write(seed: int) -> None:
        torch.manual_seed(seed)
        net = demo_unet.DemoUNet(demo_unet.DemoConfig(widths=(4, 8, 8, 8, 8)))
        demo_unet.save_checkpoint(net, weights / "small.pt", meta={"input_size": 64, "seed": seed})
        entry = {"name": "small", "arch": "demo_unet", "file": "small.pt", "input_size": 64,
                 "preprocessing": "letterbox"}
        (weights / "models.json").write_text(json.dumps([entry]))

    write(0)
    backends.clear_cache()
    settings = Settings(workspace=tmp_path / "ws", weights_dir=weights, device="cpu", data_root=BUNDLED_SAMPLES)
    yield settings, write
    backends.clear_cache()


def _reload(settings: Settings) -> Engine:
    """A fresh start as far as this process can make one: no model held in memory."""
    backends.clear_cache()
    return Engine(settings)


@needs_openvino
def test_converted_once_then_reused_from_disk(small_demo, caplog):
    settings, _ = small_demo
    settings = settings.with_(backend="openvino")
    before = backends.STATS["conversions"]
    with caplog.at_level(logging.WARNING, logger="core.models.backends"):
        first = Engine(settings)
    assert backends.STATS["conversions"] == before + 1
    assert not first.backend.cached and first.backend.convert_sec is not None
    assert any("converting" in r.getMessage() for r in caplog.records)  # the first conversion says so
    folder = settings.workspace / "cache" / "backends" / first.backend.artefact
    xml = folder / "model.xml"
    mtime = xml.stat().st_mtime_ns
    assert json.loads((folder / "meta.json").read_text())["sha256"] == first.sha256

    second = _reload(settings)
    assert backends.STATS["conversions"] == before + 1  # nothing converted again
    assert second.backend.cached and second.backend.convert_sec is None
    assert second.backend.artefact == first.backend.artefact
    assert xml.stat().st_mtime_ns == mtime
    assert second.predict(CLS)["probability"] == pytest.approx(first.predict(CLS)["probability"], abs=1e-5)


@needs_openvino
def test_new_weights_invalidate_the_cached_artefact(small_demo):
    settings, write = small_demo
    settings = settings.with_(backend="openvino")
    first = Engine(settings)
    old = settings.workspace / "cache" / "backends" / first.backend.artefact
    write(1)  # new weights: a new sha256
    before = backends.STATS["conversions"]
    second = _reload(settings)
    assert second.sha256 != first.sha256
    assert backends.STATS["conversions"] == before + 1
    assert second.backend.artefact != first.backend.artefact and not second.backend.cached
    assert not old.exists()  # the outdated artefact of this model is removed


@needs_openvino
def test_cache_dir_setting_and_env(small_demo, tmp_path: Path):
    settings, _ = small_demo
    env = {"UUSIC_BACKEND": "OpenVINO", "UUSIC_PRECISION": "fp32", "UUSIC_CACHE_DIR": str(tmp_path / "cc"),
           "UUSIC_WORKSPACE": str(settings.workspace), "UUSIC_WEIGHTS_DIR": str(settings.weights_dir),
           "UUSIC_DEVICE": "cpu"}
    from_env = Settings.from_env(env)
    assert (from_env.backend, from_env.precision, from_env.cache_dir) == ("openvino", "fp32", (tmp_path / "cc"))
    engine = Engine(from_env)
    assert (tmp_path / "cc" / engine.backend.artefact / "model.xml").is_file()


def test_bad_backend_settings_name_their_variable():
    with pytest.raises(ConfigError, match="UUSIC_BACKEND"):
        Settings.from_env({"UUSIC_BACKEND": "tensorrt"})
    with pytest.raises(ConfigError, match="UUSIC_PRECISION"):
        Settings.from_env({"UUSIC_PRECISION": "fp8"})


def test_missing_backend_falls_back_to_eager_and_shows_in_health(small_demo, monkeypatch, caplog):
    settings, _ = small_demo
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="core.models.backends"):
        service = AnalysisService(settings.with_(backend="openvino"))
        engine = service.engine()
    assert engine.backend.backend == "torch" and "openvino is not installed" in engine.backend.fallback
    assert isinstance(engine.model, demo_unet.DemoServedModel)  # the eager model itself
    assert any("openvino is not installed" in r.getMessage() for r in caplog.records)
    health = service.health()["backends"]["small"]
    assert health["requested"] == "openvino" and health["backend"] == "torch"
    assert "openvino is not installed" in health["fallback"]
    # auto without openvino is plain eager torch, said in the info but not warned about
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="core.models.backends"):
        auto = _reload(settings)
    assert auto.backend.backend == "torch" and "not installed" in auto.backend.fallback
    assert not caplog.records


def test_a_failing_conversion_falls_back_to_eager(small_demo, monkeypatch):
    settings, _ = small_demo

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::film")

    monkeypatch.setattr(backends.OpenVinoBackend, "build", broken)
    monkeypatch.setattr(backends.TorchCompileBackend, "build", broken)
    monkeypatch.setattr(backends, "installed", lambda name: None)
    for backend in ("openvino", "torch-compile"):
        engine = _reload(settings.with_(backend=backend))
        assert engine.backend.backend == "torch"
        assert "unsupported operator aten::film" in engine.backend.fallback
        assert engine.predict(SEG, output_dir=settings.workspace / "o")["mask_area_px"] >= 0
    assert not list((settings.workspace / "cache" / "backends").glob("*/meta.json"))  # nothing half-written


def test_manifest_fields_override_the_settings(small_demo):
    settings, _ = small_demo
    entry = json.loads((settings.weights_dir / "models.json").read_text())[0]
    (settings.weights_dir / "models.json").write_text(json.dumps([{**entry, "backend": "torch",
                                                                   "precision": "bf16"}]))
    engine = _reload(settings.with_(backend="openvino"))
    assert (engine.backend.requested, engine.backend.backend, engine.backend.precision) == ("torch", "torch", "bf16")
    assert engine.model.spec.name == "small"


def test_cuda_keeps_torch():
    spec = ModelSpec(name="m", arch="demo_unet", file="x.pt", extra={"backend": "openvino"})
    info, order = backends.resolve(spec, Settings(backend="openvino"), torch.device("cuda"))
    assert order == [] and info.backend == "torch" and "CPU serving" in (info.fallback or "")
    info, order = backends.resolve(ModelSpec(name="m", arch="demo_unet", file="x.pt"), Settings(), torch.device("cuda"))
    assert order == [] and info.fallback is None


def test_int8_without_nncf_or_openvino_is_a_fallback_not_an_error(small_demo, monkeypatch):
    settings, _ = small_demo
    monkeypatch.setattr(backends, "installed", lambda name: None if name == "torch" else f"{name} missing")
    engine = _reload(settings.with_(precision="int8"))
    assert (engine.backend.backend, engine.backend.precision) == ("torch", "fp32")
    assert "int8" in engine.backend.fallback


@pytest.mark.skipif(not os.environ.get("UUSIC_TEST_INT8"), reason="int8 calibration takes minutes; UUSIC_TEST_INT8=1")
def test_int8_openvino_on_the_samples(demo_reference):  # pragma: no cover - opt-in
    work, entries, reference = demo_reference
    shutil.rmtree(work / "ws" / "cache" / "backends", ignore_errors=True)
    engine = Engine(Settings(workspace=work / "ws", device="cpu", backend="openvino", precision="int8"))
    assert (engine.backend.backend, engine.backend.precision) == ("openvino", "int8")
    dp, _, agreement = _fidelity(reference, _outputs(engine, entries, work / "int8"))
    assert dp <= 0.2 and agreement >= 0.98
