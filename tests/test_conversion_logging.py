"""An OpenVINO conversion leaves the serving process's logging alone (issue 20: no test-order dependence; issue 27:
conversion runs in the background while requests are served).

``openvino.convert_model`` sets the root logger to ERROR for the length of a conversion and puts back the root
handlers it saw at its start. The project converts in a child process, so neither happens here: checked by recording
every ``setLevel`` on the root logger and the identity of its handler list while a real conversion runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import small_demo_weights

from core.engine import Engine
from core.models import backends
from core.settings import BUNDLED_SAMPLES, Settings

pytestmark = pytest.mark.skipif(backends.installed("openvino") is not None, reason="openvino is not installed")


def test_a_conversion_never_touches_the_root_logger(tmp_path: Path, monkeypatch):
    settings = Settings(workspace=tmp_path / "ws", weights_dir=small_demo_weights(tmp_path / "weights"), device="cpu",
                        data_root=BUNDLED_SAMPLES, backend="openvino")
    root = logging.getLogger()
    levels: list[object] = []
    set_level = type(root).setLevel

    def recording(self, level):
        if self is root:
            levels.append(level)
        set_level(self, level)

    monkeypatch.setattr(type(root), "setLevel", recording)
    handlers = root.handlers
    backends.clear_cache()
    engine = Engine(settings)
    assert engine.backend.backend == "openvino" and not engine.backend.cached
    assert levels == []  # before: ["ERROR", <the level it found>] while converting
    assert root.handlers is handlers  # before: a copy of the list seen at the start was put back
