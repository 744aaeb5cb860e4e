"""One registry of loaded models (issue 21): the model pool owns the engines, one per settings key and model name.

- a model is loaded once per settings key, whichever path asks for it (analyse, batch, cine, the recogniser's
  wrapped batch engine), and two services of the same settings share it;
- releasing the pool lets the engine and its model go (nothing else in the process keeps them);
- two settings keys are two entries, each with its own engine;
- the registry and the engine module keep no loaded model of their own.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from core import engine as engine_module
from core import routing
from core.models import registry
from core.service import AnalysisService
from core.settings import Settings

CLS = {"img_path_relative": "classification/BUSI/imgs/cls_1.png", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_2.png", "task": "segmentation", "dataset_name": "DDTI"}


@pytest.fixture()
def settings(tiny_settings: Settings):
    """The tiny model on eager torch (no conversion), its engines let go after the test."""
    current = tiny_settings.with_(backend="torch")
    yield current
    routing.LOADED.release(current.cache_key())


@pytest.fixture()
def loads(monkeypatch) -> list[str]:
    """The names of the models built from their checkpoints during the test."""
    seen: list[str] = []
    real = registry.load_model

    def counting(spec, device, **kwargs):
        seen.append(spec.name)
        return real(spec, device, **kwargs)

    monkeypatch.setattr(registry, "load_model", counting)
    return seen


def test_one_model_is_loaded_once_per_settings_key_on_every_path(settings: Settings, loads: list[str]):
    service = AnalysisService(settings)
    service.analyze(CLS)
    service.analyze(SEG)
    batch = service.analyze_batch([CLS, SEG], source="batch")  # the recogniser's wrapped engine
    assert all(not getattr(item, "error", None) for item in batch.items)
    service.analyze_frames(SEG, frames=[0])
    again = AnalysisService(settings)  # another service of the same settings shares the engine
    again.analyze(CLS)
    assert loads == ["tiny"]
    assert [k for k in routing.LOADED.entries() if k[0] == settings.cache_key()] == [(settings.cache_key(), "tiny")]
    assert service.pool.loaded["tiny"] is again.pool.loaded["tiny"] is service.engine()


def test_releasing_the_pool_frees_the_engine_and_its_model(settings: Settings, loads: list[str]):
    service = AnalysisService(settings)
    service.analyze(SEG)
    engine = weakref.ref(service.engine())
    model = weakref.ref(service.engine().model)
    assert service.pool.release() == 1
    assert service.pool.loaded == {} and service.health()["model_loaded"] is False
    gc.collect()
    assert engine() is None and model() is None, "something still holds the released model"
    service.analyze(CLS)  # the next request loads it again
    assert loads == ["tiny", "tiny"]


def test_two_settings_keys_are_two_entries(settings: Settings, loads: list[str]):
    other = settings.with_(tta="on")
    assert other.cache_key() != settings.cache_key()
    try:
        first, second = AnalysisService(settings), AnalysisService(other)
        assert first.engine() is not second.engine()
        mine = {k for k in routing.LOADED.entries() if k[0] in (settings.cache_key(), other.cache_key())}
        assert mine == {(settings.cache_key(), "tiny"), (other.cache_key(), "tiny")}
        assert loads == ["tiny", "tiny"]
        assert first.pool.release() == 1
        assert second.pool.loaded and not first.pool.loaded  # releasing one key leaves the other
    finally:
        routing.LOADED.release(other.cache_key())


def test_a_pool_around_a_given_engine_keeps_it_out_of_the_registry(settings: Settings):
    engine = engine_module.Engine(settings, "tiny")
    pool = routing.ModelPool(settings, engine=engine)
    assert pool.engine() is engine and pool.loaded == {"tiny": engine}
    assert (settings.cache_key(), "tiny") not in routing.LOADED.entries()
    assert pool.release() == 0 and pool.engine() is engine


def test_no_other_module_keeps_loaded_models():
    assert not hasattr(registry, "_CACHE") and not hasattr(engine_module, "_ENGINES")
    assert not hasattr(engine_module, "get_engine") and not hasattr(engine_module, "_MODEL_LOCKS")
