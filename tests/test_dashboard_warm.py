"""The dashboard starts loading its model in the background (issue 27): ``pages.common.warm_model``."""

from __future__ import annotations

import threading

import pytest

import core.client
import core.service
from pages import common


class FakeService:
    """Stands in for the in-process service: counts the model loads the warm-up asks for."""

    def __init__(self) -> None:
        self.loads = 0
        self.loaded = threading.Event()

    def engine(self):
        self.loads += 1
        self.loaded.set()


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("UUSIC_API_URL", raising=False)
    monkeypatch.setattr(common, "_WARMED", set())
    service = FakeService()
    monkeypatch.setattr(core.service, "AnalysisService", FakeService)  # the in-process kind, for the warm-up
    monkeypatch.setattr(core.client, "open_service", lambda settings: service)
    return service


def test_the_model_loads_once_in_the_background(fake):
    common.warm_model()
    assert fake.loaded.wait(30)
    common.warm_model()  # every later script run: nothing new
    assert fake.loads == 1


def test_nothing_is_loaded_ahead_for_a_remote_api(fake, monkeypatch):
    monkeypatch.setenv("UUSIC_API_URL", "http://127.0.0.1:9")
    common.warm_model()
    assert not common._WARMED and fake.loads == 0  # returned before starting anything


def test_a_model_that_cannot_load_is_left_to_the_page(monkeypatch, tmp_path):
    monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("UUSIC_API_URL", raising=False)
    monkeypatch.setattr(common, "_WARMED", set())
    failed = threading.Event()

    class Broken(FakeService):
        def engine(self):
            failed.set()
            raise RuntimeError("no weights")

    monkeypatch.setattr(core.service, "AnalysisService", Broken)
    monkeypatch.setattr(core.client, "open_service", lambda settings: Broken())
    common.warm_model()  # never raises here: the page reports it where it needs the model
    assert failed.wait(30)
