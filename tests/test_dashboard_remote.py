"""Remote mode reads the data root only through the API (issue 21): a dashboard whose own data root is empty still
loads a random sample, compares an edited result with its ground truth, and runs a challenge JSON of the server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import i18n

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOME = str(PROJECT_ROOT / "Home.py")


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.server
def test_remote_dashboard_reads_the_servers_data_root(tiny_settings, tmp_path: Path, monkeypatch):
    from conftest import serve_api

    key = "remote-key"
    env = {**os.environ, "UUSIC_WORKSPACE": str(tiny_settings.workspace),
           "UUSIC_DATA_ROOT": str(tiny_settings.data_root), "UUSIC_WEIGHTS_DIR": str(tiny_settings.weights_dir),
           "UUSIC_DEVICE": "cpu", "UUSIC_API_KEY": key}
    empty = tmp_path / "dashboard_data"  # the dashboard's own data root: nothing in it
    empty.mkdir()
    with serve_api(env, tmp_path / "api.log", timeout=60) as url:
        monkeypatch.setenv("UUSIC_WORKSPACE", str(tmp_path / "dashboard_ws"))
        monkeypatch.setenv("UUSIC_DATA_ROOT", str(empty))
        monkeypatch.setenv("UUSIC_API_URL", url)
        monkeypatch.setenv("UUSIC_API_KEY", key)
        at = AppTest.from_file(HOME, default_timeout=120)
        _ok(at.run())
        at.radio(key="task").set_value("segmentation").run()
        at.selectbox(key="organ_segmentation").set_value("thyroid").run()
        at.selectbox(key="dataset_segmentation_thyroid").set_value("DDTI").run()
        at.button(key="random_sample").click().run()
        _ok(at)
        assert at.session_state["image"]["sample"]["img_path_relative"].startswith("segmentation/DDTI/")
        at.checkbox(key="flip_h").check().run()
        at.button(key="run").click().run()
        _ok(at)
        assert [m for m in at.metric if m.label == i18n.t("dice_label", "zh")]  # the edited ground truth, over HTTP
        assert i18n.t("cl_reference_title", "zh") in [s.value for s in at.subheader]

        at.switch_page("pages/batch.py").run()
        at.radio(key="b_source").set_value("json").run()
        _ok(at)
        assert at.selectbox(key="b_json_file").options == ["ground_truth.json"]  # the server's data root
        at.button(key="b_run_json").click().run()
        _ok(at)
        assert any(i18n.t("batch_done", "zh", n=6, sec=0).split("，")[0] in s.value for s in at.success)
