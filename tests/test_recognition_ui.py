"""Issue 25 on the Analyze page (``streamlit.testing.v1.AppTest``, real engine, tiny model): when an image is loaded
the organ recogniser's suggestion is shown with one button that switches the organ / dataset (the image goes
along); a result of another organ than the recogniser's, or of an out-of-distribution image, is shown behind a
warning. And the suggestion's door, ``recognise`` in-process and over HTTP (``POST /v1/recognise``).

The recogniser is replaced by a fixed answer where a test needs one (the tiny data root's images are synthetic);
one test gives a noise image to the real one.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core import i18n, recognition
from core.api import create_app
from core.client import ApiClient
from core.errors import UploadError
from core.service import AnalysisService
from core.settings import PROJECT_ROOT, Settings

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

HOME = str(PROJECT_ROOT / "Home.py")
BREAST = recognition.Recognition(organ="Breast", dataset="BUSI", confidence=0.91, in_distribution=True,
                                 ood_score=1.0)


@pytest.fixture()
def answer(recogniser_answer: dict) -> dict:
    """The recogniser's fixed answer for every image (``answer["found"]``)."""
    recogniser_answer["found"] = BREAST
    return recogniser_answer


@pytest.fixture()
def app(dashboard_env: Settings):
    """The dashboard with a manifest that also serves segmentation/BUSI (so a breast suggestion can be taken)."""
    manifest_path = dashboard_env.weights_dir / "models.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest:
        entry["datasets"].append(["segmentation", "BUSI"])
    manifest_path.write_text(json.dumps(manifest))
    at = AppTest.from_file(HOME, default_timeout=120)
    at.run()
    return _ok(at)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _thyroid_sample(at: AppTest) -> AppTest:
    at.radio(key="task").set_value("segmentation").run()
    at.selectbox(key="organ_segmentation").set_value("thyroid").run()
    at.selectbox(key="dataset_segmentation_thyroid").set_value("DDTI").run()
    at.button(key="random_sample").click().run()
    return _ok(at)


def _texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def test_the_suggestion_is_shown_and_accepting_it_switches_the_dataset(app: AppTest, answer: dict):
    _thyroid_sample(app)
    looks = i18n.t("rec_looks_like", "zh", organ=i18n.group_name("breast", "zh"), dataset="BUSI", p="91%")
    assert looks in _texts(app.info)
    accept = app.button(key="rec_accept")
    assert accept.label == i18n.t("rec_accept", "zh", organ=i18n.group_name("breast", "zh"), dataset="BUSI")
    name = app.session_state["image"]["name"]
    accept.click().run()
    _ok(app)
    assert app.selectbox(key="organ_segmentation").value == "breast"
    assert app.selectbox(key="dataset_segmentation_breast").value == "BUSI"
    image = app.session_state["image"]  # the image came along: the user's choice, not another dataset's leftover
    assert (image["task"], image["dataset"], image["name"]) == ("segmentation", "BUSI", name)
    assert image["sample"] is None  # the sample's labels were DDTI's
    assert "rec_accept" not in [b.key for b in app.button]
    assert any(c.value.endswith(f" · {looks}") for c in app.caption)  # now the chosen one: said, without a button


def test_a_result_of_another_organ_is_shown_behind_a_warning(app: AppTest, answer: dict):
    _thyroid_sample(app)
    app.button(key="run").click().run()
    _ok(app)
    assert app.session_state["result"]["response"]["organ"] == "Thyroid"
    warning = i18n.t("rec_disagree_result", "zh", organ=i18n.group_name("breast", "zh"), dataset="BUSI", p="91%",
                     chosen=i18n.group_name("thyroid", "zh"))
    assert _texts(app.warning).count(warning) == 1
    assert app.subheader and i18n.t("result", "zh") in _texts(app.subheader)  # shown, not hidden


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (160, 200, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_out_of_distribution_image_is_said_and_its_result_is_behind_a_warning(app: AppTest, answer: dict):
    answer["found"] = BREAST.model_copy(update={"in_distribution": False, "ood_score": 40.0})
    app.radio(key="task").set_value("segmentation").run()
    app.radio(key="source").set_value("upload").run()
    app.file_uploader(key="upload").set_value([("noise.png", _noise_png(), "image/png")]).run()
    _ok(app)
    assert i18n.t("rec_ood_image", "zh") in _texts(app.warning)
    assert not [b for b in app.button if b.key == "rec_accept"]
    app.button(key="run").click().run()
    _ok(app)
    assert app.session_state["result"]["response"]["recognition"]["in_distribution"] is False
    assert _texts(app.warning).count(i18n.t("rec_ood_result", "zh")) == 1
    app.session_state["lang"] = "en"
    app.run()
    assert i18n.t("rec_ood_result", "en") in _texts(_ok(app).warning)


def test_the_real_recogniser_finds_a_noise_image_out_of_distribution(tiny_settings: Settings):
    recognition.forget()
    found = AnalysisService(tiny_settings, model="tiny").recognise(_noise_png(), "noise.png")
    assert found is not None and found.in_distribution is False


def test_recognise_in_process_and_over_http(tiny_settings: Settings, answer: dict):
    local = AnalysisService(tiny_settings, model="tiny")
    noise = _noise_png()
    found = local.recognise(noise, "noise.png")
    assert found == BREAST
    with TestClient(create_app(settings=tiny_settings, service=local)) as http:
        remote = ApiClient(tiny_settings.with_(api_url="http://testserver"))
        remote._http = http
        assert remote.recognise(noise, "noise.png") == found
        body = http.post("/v1/recognise", files={"file": ("noise.png", noise)}).json()
        assert set(body["recognition"]) >= {"organ", "dataset", "confidence", "in_distribution"}
        too_big = http.post("/v1/recognise", files={"file": ("big.png", b"0" * (tiny_settings.max_upload_mb *
                                                                                  1024 * 1024 + 10))})
        assert too_big.status_code == 413 and too_big.json()["field"] == "file"
        not_image = http.post("/v1/recognise", files={"file": ("notes.png", b"hello")})
        assert not_image.status_code == 400 and "notes.png" in not_image.json()["detail"]
    with pytest.raises(UploadError):
        local.recognise(b"0" * (tiny_settings.max_upload_mb * 1024 * 1024 + 1), "big.png")
