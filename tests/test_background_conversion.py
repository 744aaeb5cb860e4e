"""The first start never blocks on conversion (issue 27): with no cached OpenVINO artefact the server answers at once
with eager torch while one background thread converts, then serves the converted model; ``/healthz`` says which
(``backend_state``: converting | converted | eager). A conversion that fails leaves eager torch serving, and
``/healthz`` says why without a server path.

The conversion is held at a gate (an event) so the "still converting" state is observed, never slept for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.api import create_app
from core.models import backends
from core.routing import LOADED
from core.settings import Settings
from tests.tolerances import assert_masks_agree, assert_probabilities_close

pytestmark = pytest.mark.skipif(backends.installed("openvino") is not None, reason="openvino is not installed")

CLS = {"img_path_relative": "classification/BUSI/imgs/cls_1.png", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_2.png", "task": "segmentation", "dataset_name": "DDTI"}
WAIT_S = 120.0


@pytest.fixture()
def settings(tiny_settings: Settings) -> Iterator[Settings]:
    """The tiny model served on OpenVINO, nothing converted or held by this process yet."""
    assert backends.wait_for_conversions(WAIT_S)
    backends.clear_cache()
    current = tiny_settings.with_(backend="openvino")
    yield current
    assert backends.wait_for_conversions(WAIT_S)
    LOADED.release(current.cache_key())
    backends.clear_cache()


@pytest.fixture()
def gate(monkeypatch) -> threading.Event:
    """Set it to let the OpenVINO conversion run (until then it waits, in its background thread)."""
    event = threading.Event()
    impl = backends._BACKENDS["openvino"]
    build = impl.build

    def gated(*args, **kwargs):
        assert event.wait(WAIT_S), "the test never opened the gate"
        return build(*args, **kwargs)

    monkeypatch.setattr(impl, "build", gated)
    return event


def _artefacts(settings: Settings) -> list[Path]:
    return sorted(backends.cache_root(settings).glob("*/model.xml"))


def _state(client: TestClient) -> tuple[str, dict]:
    health = client.get("/healthz").json()
    return health["backend_state"]["tiny"], health["backends"]["tiny"]


def test_first_request_is_answered_while_converting_then_openvino_serves(settings: Settings, gate: threading.Event):
    with TestClient(create_app(settings)) as client:
        first_cls = client.post("/v1/predict", json=CLS)
        first_seg = client.post("/v1/predict", json=SEG)
        assert first_cls.status_code == 200 and first_seg.status_code == 200, first_seg.text
        assert _artefacts(settings) == []  # answered with the cache still empty
        first_mask = Path(first_seg.json()["mask_path"]).read_bytes()
        state, info = _state(client)
        assert (state, info["backend"], info["requested"]) == ("converting", "torch", "openvino")

        gate.set()
        assert backends.wait_for_conversions(WAIT_S)
        state, info = _state(client)
        assert (state, info["backend"], info["precision"], info["fallback"]) == ("converted", "openvino", "fp32", None)
        assert len(_artefacts(settings)) == 1
        engine = LOADED.of(settings.cache_key())["tiny"]
        assert isinstance(engine.model, backends.RuntimeModel)  # the eager model is let go

        then_cls = client.post("/v1/predict", json=CLS).json()
        then_seg = client.post("/v1/predict", json=SEG).json()
    assert_probabilities_close(then_cls["probability"], first_cls.json()["probability"], where="openvino vs eager")
    assert_masks_agree(Path(then_seg["mask_path"]).read_bytes(), first_mask, where="openvino vs eager")


def test_engines_asking_meanwhile_share_one_conversion(settings: Settings, gate: threading.Event):
    before = backends.STATS["conversions"]
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings.with_(tta="off"))) as two:
        assert one.post("/v1/predict", json=CLS).status_code == 200
        assert two.post("/v1/predict", json=CLS).status_code == 200
        assert _state(one)[0] == _state(two)[0] == "converting"
        gate.set()
        assert backends.wait_for_conversions(WAIT_S)
        assert _state(one)[0] == _state(two)[0] == "converted"
    LOADED.release(settings.with_(tta="off").cache_key())
    assert backends.STATS["conversions"] == before + 1


def test_a_failed_conversion_leaves_eager_serving_and_says_why(settings: Settings, monkeypatch):
    secret_folder = Path(settings.workspace) / "cache" / "private"

    def broken(*args, **kwargs):
        raise RuntimeError(f"cannot write {secret_folder}/model.xml")

    monkeypatch.setattr(backends._BACKENDS["openvino"], "build", broken)
    with TestClient(create_app(settings)) as client:
        first = client.post("/v1/predict", json=CLS)
        assert first.status_code == 200
        assert backends.wait_for_conversions(WAIT_S)
        state, info = _state(client)
        assert (state, info["backend"]) == ("eager", "torch")
        assert "openvino fp32 failed: RuntimeError" in info["fallback"]
        assert str(settings.workspace) not in info["fallback"] and "/tmp" not in info["fallback"], info["fallback"]
        again = client.post("/v1/predict", json=CLS)
        assert again.status_code == 200
    assert_probabilities_close(again.json()["probability"], first.json()["probability"], where="eager twice")
    assert _artefacts(settings) == []
