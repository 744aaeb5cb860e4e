"""The recogniser on the demo network's encoder (issue 25): the vector (``scripts/recognizer_encoder.py``) is what
every forward pass computes whatever dataset (prompt) it was asked for, and the served forward returns it, so the
demo model is recognised from its own pass (:mod:`core.recognition_encoder`) without features of its own."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import analysis, recognition_encoder
from core.catalog import find_dataset
from core.errors import RequestError
from core.files import sha256_file
from core.schema import PredictRequest
from core.service import AnalysisService
from core.settings import BUNDLED_SAMPLES, PROJECT_ROOT, WEIGHTS_DIR, Settings

DEMO = "uusic-demo-unet"

SCRIPTS = PROJECT_ROOT / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoder():
    return _script("recognizer_encoder")


def _image(seed: int, size: tuple[int, int] = (300, 220)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def test_the_vector_has_one_mean_per_encoder_channel_and_is_repeatable(encoder):
    first, again = encoder.embedding(_image(0)), encoder.embedding(_image(0))
    assert first.shape == (encoder.LENGTH,) and first.dtype == np.float32 and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)  # our own code's determinism: same process, same input
    assert encoder.embedding(_image(0)[..., 0]).shape == (encoder.LENGTH,)  # a grey image too
    assert encoder.tag().startswith("encoder:demo_unet:")


def test_every_forward_pass_computes_the_vector_whatever_the_prompt(encoder):
    """The encoder is prompt-free: hooks on the full network's stem and stages, run with two different prompts,
    give the same global averages as :func:`embedding` (so serving it from the forward pass would be free)."""
    net = encoder.network()
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.mean(dim=(2, 3))[0]))
             for m in [net.stem, *net.encoder]]
    image = torch.from_numpy(encoder.letterboxed(_image(1))[None])
    vectors = []
    try:
        for position in (0, 5):
            seen.clear()
            prompts = [torch.zeros(1, n) for n in (8, 2, 3, 2)]
            prompts[0][0, position] = 1.0
            with torch.inference_mode():
                net(image, *prompts)
            vectors.append(torch.cat(seen).numpy())
    finally:
        for hook in hooks:
            hook.remove()
    alone = encoder.embedding(_image(1))
    for vector in vectors:
        np.testing.assert_allclose(vector, alone, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> AnalysisService:
    settings = Settings().with_(workspace=tmp_path_factory.mktemp("ws"), data_root=BUNDLED_SAMPLES,
                                weights_dir=WEIGHTS_DIR, device="cpu")
    return AnalysisService(settings, model=DEMO)


def _samples() -> list[dict]:
    entries = json.loads((BUNDLED_SAMPLES / "ground_truth.json").read_text(encoding="utf-8"))
    return [{k: e[k] for k in ("img_path_relative", "task", "dataset_name")} for e in entries]


def _no_image_features(*_args, **_kwargs):
    raise AssertionError("the demo model is recognised from its forward pass, not from the image's features")


def test_the_demo_model_is_recognised_from_its_forward_pass(demo: AnalysisService, encoder, monkeypatch):
    """One analysis and one batch: the recognition comes from the embedding the forward pass returned (the image's
    own features are never computed), is what the head gives for eager torch's embedding of the same image
    (OpenVINO fp32 vs eager: within tolerance), and names the sample's organ; the one bundled image the head is
    unsure of (a BUS-BRA image filed under both tasks: Thyroid at 64 %) goes to the image recogniser (Breast)."""
    monkeypatch.setattr(analysis, "recognise_image", _no_image_features)
    head = recognition_encoder.head_for(WEIGHTS_DIR, encoder.network_sha256())
    assert head is not None
    samples, by = _samples(), []
    for request in samples:
        body = demo.analyze(request, source="api").to_json()
        found = body["recognition"]
        assert "recognition_sec" in body["timings"] and not body.get("notes")
        assert found["organ"] == find_dataset(request["task"], request["dataset_name"]).organ
        rgb = np.asarray(Image.open(BUNDLED_SAMPLES / request["img_path_relative"]).convert("RGB"))
        eager = head.predict_vector(encoder.embedding(rgb))
        sure = eager.confidence >= recognition_encoder.SURE
        assert found["features"] == ("encoder" if sure else "image")
        if sure:
            assert eager.organ == found["organ"] and eager.in_distribution == found["in_distribution"]
            assert found["confidence"] == pytest.approx(eager.confidence, abs=2e-3)
        by.append(found["features"])
    assert by.count("image") <= 2  # the one unsure image, filed under both tasks
    batch = demo.analyze_batch(samples, source="batch", record=False)
    assert [item.to_json()["recognition"]["features"] for item in batch.responses] == by


def test_the_served_embedding_is_the_encoder_vector(demo: AnalysisService, encoder):
    engine = demo.pool.engine(DEMO)
    request = next(r for r in _samples() if r["dataset_name"] == "DDTI")
    prepared = engine.prepare(request)
    (raw,), _, _ = engine.forward([prepared])
    assert raw.embedding is not None and raw.embedding.shape == (encoder.LENGTH,)
    np.testing.assert_allclose(raw.embedding, encoder.embedding(prepared.image.rgb), rtol=1e-3, atol=1e-4)
    views = engine.tta_views(PredictRequest.parse({**request, "tta": True}))
    tta = engine.prepare({**request, "tta": True})
    (raw_tta,), _, _ = engine.forward([tta])
    assert len(views) > 1 and raw_tta.embedding is not None  # the identity view's
    np.testing.assert_allclose(raw_tta.embedding, raw.embedding, rtol=1e-3, atol=1e-4)


def test_refusing_out_of_distribution_comes_after_the_forward_and_writes_nothing(demo: AnalysisService,
                                                                                  tmp_path: Path):
    folder = tmp_path / "in" / "segmentation" / "DDTI" / "imgs"
    folder.mkdir(parents=True)
    Image.new("RGB", (200, 150), "black").save(folder / "blank.png")
    request = {"img_path_relative": "segmentation/DDTI/imgs/blank.png", "task": "segmentation",
               "dataset_name": "DDTI"}
    refusing = AnalysisService(demo.settings.with_(refuse_ood=True), model=DEMO)
    out = tmp_path / "out"
    with pytest.raises(RequestError) as raised:
        refusing.analyze(request, source="api", input_dir=tmp_path / "in", output_dir=out)
    assert raised.value.status_code == 422 and "UUSIC_REFUSE_OOD" in str(raised.value)
    assert not out.exists() or not any(out.rglob("*.png"))
    batch = refusing.analyze_batch([request], source="batch", input_dir=tmp_path / "in", output_dir=out / "batch")
    assert batch.failures[0].status_code == 422 and not any(out.rglob("*.png"))
    shown = demo.analyze(request, source="api", input_dir=tmp_path / "in", output_dir=out).to_json()
    assert shown["recognition"]["features"] == "encoder" and shown["recognition"]["in_distribution"] is False


def test_a_head_is_used_only_for_the_network_it_was_trained_on(tmp_path: Path, encoder):
    sha = encoder.network_sha256()
    assert recognition_encoder.head_for_model(WEIGHTS_DIR, "demo_unet", sha) is not None
    assert recognition_encoder.head_for_model(WEIGHTS_DIR, "uusic_omni", sha) is None  # no embedding
    assert recognition_encoder.head_for(WEIGHTS_DIR, "0" * 64) is None  # another network's vectors
    record = json.loads((WEIGHTS_DIR / recognition_encoder.RECORD_FILE).read_text(encoding="utf-8"))
    assert record["network_sha256"] == sha and record["sha256"] == sha256_file(WEIGHTS_DIR / record["file"])
    (tmp_path / recognition_encoder.RECORD_FILE).write_text(json.dumps(record), encoding="utf-8")
    (tmp_path / recognition_encoder.WEIGHTS_FILE).write_bytes(b"not a recogniser")
    try:
        assert recognition_encoder.head_for(tmp_path, sha) is None  # broken: the image's features instead
    finally:
        recognition_encoder.forget()
