"""Engine on CPU: classification and segmentation, batching, errors, concurrency, real weights when shipped."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine import Engine
from core.errors import ImageError, NoModelError, PathError, RequestError
from core.geometry import CenterCrop
from core.models import registry
from core.settings import Settings
from tests import tolerances


def _requests(root: Path) -> list[dict]:
    return json.loads((root / "ground_truth.json").read_text())


def test_classification_response(tiny_settings: Settings):
    engine = Engine(tiny_settings, "tiny")
    request = _requests(tiny_settings.data_root)[0]
    response = engine.predict(request)
    rel = request["img_path_relative"]
    assert set(response[rel]) == {"probability", "prediction"}
    assert len(response["probability"]) == 2
    assert abs(sum(response["probability"]) - 1.0) < 1e-5
    assert response["prediction"] == int(np.argmax(response["probability"]))
    assert response["label_name"] in ("benign", "malignant")
    assert response["label_name_zh"] in ("良性", "恶性")
    assert response["device"] == "cpu" and response["device_name"] == "CPU"
    assert response["gpu_memory_usage_mb"] is None and response["gpu_memory_reserved_mb"] is None
    assert response["memory_usage_mb"] > 10
    assert response["inference_time_sec"] > 0
    assert response["model_name"] == "tiny" and len(response["model_sha256"]) == 64
    assert (response["image_width"], response["image_height"]) == tuple(request["img_dimensions"])


def test_classification_matches_bare_forward(tiny_settings: Settings):
    """The engine's probabilities are the softmax of the model's cls2 head on the baseline preprocessing."""
    engine = Engine(tiny_settings, "tiny")
    request = _requests(tiny_settings.data_root)[1]
    response = engine.predict(request)
    rgb = np.asarray(Image.open(tiny_settings.data_root / request["img_path_relative"]).convert("RGB"))
    x = torch.from_numpy(CenterCrop(rgb.shape[1], rgb.shape[0], 32).apply(rgb))[None]
    prompts = [torch.tensor([v]) for v in __import__("core.catalog").catalog.prompts_for("Breast",
                                                                                          "classification").as_tuple()]
    with torch.no_grad():
        _, cls2, _ = engine.model(x, *prompts)
    expected = torch.softmax(cls2, dim=1)[0].numpy()
    np.testing.assert_allclose(response["probability"], expected, atol=1e-6)


def test_segmentation_mask_written_at_original_size(tiny_settings: Settings, tmp_path: Path):
    engine = Engine(tiny_settings, "tiny")
    request = _requests(tiny_settings.data_root)[3]  # 64 x 48, non-square
    out = tmp_path / "out"
    response = engine.predict(request, output_dir=out)
    assert response["mask_path_relative"] == "segmentation/DDTI/masks/seg_0.png"
    mask_file = out / response["mask_path_relative"]
    assert Path(response["mask_path"]) == mask_file.resolve()
    mask = np.asarray(Image.open(mask_file))
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert response["mask_area_px"] == int((mask == 255).sum())
    assert response["measurements"]["area_px"] == response["mask_area_px"]
    # centre crop: columns at the sides were never seen by the model → background there
    seen = CenterCrop(64, 48, 32).coverage()
    assert not seen.all() and (mask[~seen] == 0).all()
    assert response["coverage_fraction"] == pytest.approx(48 / 64, abs=0.02)


def test_letterbox_segmentation_covers_whole_image(tiny_settings: Settings, tmp_path: Path):
    engine = Engine(tiny_settings, "tiny_letterbox")
    response = engine.predict(_requests(tiny_settings.data_root)[4], output_dir=tmp_path)
    mask = np.asarray(Image.open(response["mask_path"]))
    assert mask.shape == (70, 40)
    assert response["coverage_fraction"] == 1.0


def test_default_output_dir_is_api_out(tiny_settings: Settings):
    engine = Engine(tiny_settings, "tiny")
    response = engine.predict(_requests(tiny_settings.data_root)[5])
    assert Path(response["mask_path"]).is_relative_to(tiny_settings.api_out.resolve())


def test_batch_equals_single(tiny_settings: Settings, tmp_path: Path):
    engine = Engine(tiny_settings, "tiny")
    requests = _requests(tiny_settings.data_root)
    singles = [engine.predict(r, output_dir=tmp_path / "single") for r in requests]
    ticks = []
    batch = engine.predict_batch(requests, output_dir=tmp_path / "batch", batch_size=4,
                                 progress=lambda done, total: ticks.append((done, total)))
    assert ticks[-1] == (len(requests), len(requests))
    assert [b["img_path_relative"] for b in batch] == [r["img_path_relative"] for r in requests]
    for single, batched in zip(singles, batch, strict=True):
        if single["task"] == "classification":
            np.testing.assert_allclose(single["probability"], batched["probability"], atol=1e-5)
        else:
            tolerances.assert_masks_agree(batched["mask_path"], single["mask_path"])


def test_batch_records_bad_items_and_continues(tiny_settings: Settings, tmp_path: Path):
    engine = Engine(tiny_settings, "tiny")
    good = _requests(tiny_settings.data_root)[0]
    (tiny_settings.data_root / "classification/BUSI/imgs/broken.png").write_bytes(b"not a png")
    requests = [good, {**good, "img_path_relative": "classification/BUSI/imgs/broken.png"},
                {**good, "dataset_name": "Appendix", "organ": None}, {"task": "classification"},
                {**good, "img_path_relative": "../../etc/passwd"}, good]
    results = engine.predict_batch(requests, output_dir=tmp_path, batch_size=2)
    assert [r.get("error_type") for r in results] == [None, "ImageError", "NoModelError", "RequestError",
                                                      "PathError", None]
    assert "no model for this dataset" in results[2]["error"]
    with pytest.raises(ImageError):
        engine.predict_batch(requests[:2], output_dir=tmp_path, on_error="raise")


def test_errors_single(tiny_settings: Settings):
    engine = Engine(tiny_settings, "tiny")
    good = _requests(tiny_settings.data_root)[0]
    with pytest.raises(NoModelError, match="no model for this dataset"):
        engine.predict({**good, "dataset_name": "Fatty-Liver", "organ": "Liver"})
    with pytest.raises(RequestError, match="dataset_name"):
        engine.predict({**good, "dataset_name": "Nope"})
    with pytest.raises(PathError):
        engine.predict({**good, "img_path_relative": "/etc/hostname"})
    with pytest.raises(PathError) as missing:
        engine.predict({**good, "img_path_relative": "classification/BUSI/imgs/none.png"})
    assert missing.value.status_code == 404
    assert engine.serves("classification", "BUSI") and engine.serves("segmentation", "ddti")
    assert not engine.serves("classification", "Appendix") and not engine.serves("classification", "Nope")


def test_api_in_paths_resolve_under_workspace(tiny_settings: Settings, tmp_path: Path):
    from tests.conftest import write_image

    write_image(tiny_settings.api_in / "upload_1.jpg", 80, 60)
    engine = Engine(tiny_settings, "tiny")
    response = engine.predict({"img_path_relative": "api_in/upload_1.jpg", "task": "segmentation",
                               "dataset_name": "DDTI"})
    assert response["mask_path_relative"] == "masks/upload_1.png"
    assert response["organ"] == "Thyroid"


def test_concurrent_predicts_are_consistent(tiny_settings: Settings, tmp_path: Path):
    engine = Engine(tiny_settings, "tiny")
    request = _requests(tiny_settings.data_root)[0]
    expected = engine.predict(request)["probability"]
    results, errors = [], []

    def worker():
        try:
            for _ in range(5):
                results.append(engine.predict(request)["probability"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_pool_engine_is_shared(tiny_settings: Settings):
    from core.routing import ModelPool

    a = ModelPool(tiny_settings).engine("tiny")
    b = ModelPool(tiny_settings).engine("tiny")
    assert a is b  # one engine per settings key and model (the pool's registry; tests/test_model_pool.py)
    info = a.model_info()
    assert info["name"] == "tiny" and info["input_size"] == 32 and ["segmentation", "DDTI"] in info["datasets"]


def test_cuda_device_without_gpu_is_a_clear_error(tiny_settings: Settings):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from core.errors import DeviceError

    with pytest.raises(DeviceError, match="CUDA is not available"):
        Engine(tiny_settings.with_(device="cuda"), "tiny")


def test_baseline_mask_resize_option(tiny_settings: Settings, tmp_path: Path):
    from core.engine import baseline_resize_nearest

    small = np.array([[1, 0], [0, 1]], np.uint8)
    assert np.array_equal(baseline_resize_nearest(small, 4, 4), np.kron(small, np.ones((2, 2), np.uint8)))
    assert np.array_equal(baseline_resize_nearest(small, 2, 2), small)
    request = _requests(tiny_settings.data_root)[3]  # 64 x 48: the baseline stretches the crop sideways
    exact = Engine(tiny_settings, "tiny").predict(request, output_dir=tmp_path / "exact")
    stretched = Engine(tiny_settings, "tiny", mask_inverse="baseline").predict(request, output_dir=tmp_path / "b")
    a, b = (np.asarray(Image.open(r["mask_path"])) for r in (exact, stretched))
    assert a.shape == b.shape == (48, 64) and not np.array_equal(a, b)
    with pytest.raises(ValueError):
        Engine(tiny_settings, "tiny", mask_inverse="bilinear")


def test_resources_degrade_cleanly_on_cpu():
    from core import resources

    with resources.measure_gpu(torch.device("cpu")) as gpu:
        pass
    assert gpu.used_mb is None and gpu.reserved_mb is None
    snapshot = resources.system_snapshot()
    assert 0 <= snapshot["cpu_percent"] <= 100 * (snapshot["cpu_count"] or 1)
    assert snapshot["ram_total_mb"] > snapshot["ram_used_mb"] > 0 and snapshot["process_rss_mb"] > 0
    if not torch.cuda.is_available():
        assert snapshot["gpu"] is None and resources.device_label("cpu") == "CPU"


def test_uusic_omni_random_init_checkpoint(tiny_settings: Settings, omni_checkpoint: Path, tmp_path: Path):
    """A baseline-layout checkpoint served end to end: cls2 probabilities and exact-inverse masks."""
    from core import catalog

    spec = registry.adhoc_spec("uusic_omni", omni_checkpoint)
    engine = Engine(tiny_settings, spec=spec)
    assert engine.serves("classification", "Fatty-Liver")  # ad-hoc: no dataset list → serves all
    requests = _requests(tiny_settings.data_root)
    cls_request, seg_request = requests[0], requests[3]
    results = engine.predict_batch([cls_request, seg_request], output_dir=tmp_path, batch_size=2)
    rgb = np.asarray(Image.open(tiny_settings.data_root / cls_request["img_path_relative"]).convert("RGB"))
    transform = CenterCrop(rgb.shape[1], rgb.shape[0], 224)
    prompts = [torch.tensor([v]) for v in catalog.prompts_for("Breast", "classification").as_tuple()]
    with torch.inference_mode():
        _, cls2, _ = engine.model(torch.from_numpy(transform.apply(rgb))[None], *prompts)
    np.testing.assert_allclose(results[0]["probability"], torch.softmax(cls2, 1)[0].numpy(), atol=1e-5)

    rgb = np.asarray(Image.open(tiny_settings.data_root / seg_request["img_path_relative"]).convert("RGB"))
    transform = CenterCrop(rgb.shape[1], rgb.shape[0], 224)
    prompts = [torch.tensor([v]) for v in catalog.prompts_for("Thyroid", "segmentation").as_tuple()]
    with torch.inference_mode():
        seg, _, _ = engine.model(torch.from_numpy(transform.apply(rgb))[None], *prompts)
    label = torch.argmax(torch.softmax(seg, 1), 1)[0].numpy().astype(np.uint8)
    expected = transform.invert_mask(label) * 255
    tolerances.assert_masks_agree(results[1]["mask_path"], expected)  # batch of 2 vs the network on 1 image


def _demo_spec_or_skip() -> tuple[Settings, object]:
    settings = Settings.from_env().with_(device="cpu")
    try:
        specs = [s for s in registry.list_models(settings) if s.arch == "demo_unet"]
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no weights/models.json yet ({exc})")
    if not specs:
        pytest.skip("weights/models.json has no demo_unet entry yet")
    if not registry.weights_path(specs[0], settings.weights_dir).is_file():
        pytest.skip(f"demo weights file {specs[0].file} not shipped yet")
    return settings, specs[0]


def test_real_demo_weights_on_shipped_samples(tmp_path: Path):
    """The shipped demo model serves every dataset it was trained for and refuses the others."""
    settings, spec = _demo_spec_or_skip()
    samples = settings.data_root
    if not (samples / "ground_truth.json").is_file():
        pytest.skip(f"no ground_truth.json in the data root {samples}")
    engine = Engine(settings, spec.name)
    entries = json.loads((samples / "ground_truth.json").read_text())
    served = [e for e in entries if engine.serves(e["task"], e["dataset_name"])]
    assert served, "the demo model serves none of the bundled samples"
    picked = {}
    for e in served:
        picked.setdefault((e["task"], e["dataset_name"]), e)
    results = engine.predict_batch(list(picked.values()), output_dir=tmp_path, batch_size=4)
    for entry, result in zip(picked.values(), results, strict=True):
        assert "error" not in result, result
        assert (result["image_width"], result["image_height"]) == tuple(entry["img_dimensions"])
        if entry["task"] == "segmentation":
            mask = np.asarray(Image.open(result["mask_path"]))
            assert mask.shape == (entry["img_dimensions"][1], entry["img_dimensions"][0])
        else:
            assert abs(sum(result["probability"]) - 1) < 1e-5
    for dataset in ("Appendix", "Fatty-Liver", "Breast_luminal"):
        assert not engine.serves("classification", dataset)


def test_cuda_out_of_memory_retries_on_cpu_with_a_warning(tiny_settings: Settings, caplog):
    """A CUDA OOM in the forward pass is not an error for the user: the batch runs again on a CPU copy."""
    engine = Engine(tiny_settings)
    request = _requests(tiny_settings.data_root)[0]
    expected = engine.predict(request)
    real_model = engine.model

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    engine.model = out_of_memory
    try:
        with caplog.at_level("WARNING"):
            response = engine.predict(request)
    finally:
        engine.model = real_model
    assert response["device"] == "cpu"
    assert any("out of memory" in note for note in response["notes"])
    assert any("retrying on the CPU" in r.getMessage() for r in caplog.records)
    for key in ("probability", "prediction", "mask_area_px"):
        if key in expected:
            assert response[key] == pytest.approx(expected[key], abs=1e-6)
