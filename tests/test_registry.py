"""Manifest reading, strict weights verification with clear errors, adapters and the per-process cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.errors import NoModelError
from core.models import registry
from core.models.base import ModelSpec, WeightsError
from core.settings import Settings
from tests.conftest import TinyContractNet, sha256_of


def _inputs(batch: int, size: int = 32):
    return (torch.rand(batch, size, size, 3), torch.eye(8)[:batch % 8 or 1].repeat(batch, 1)[:batch],
            torch.eye(2)[[0] * batch], torch.eye(3)[[0] * batch], torch.eye(2)[[1] * batch])


def _manifest(folder: Path, entries: list[dict]) -> Settings:
    (folder / "models.json").write_text(json.dumps(entries))
    return Settings(weights_dir=folder, device="cpu")


def test_manifest_and_find_spec(tiny_settings: Settings):
    specs = registry.list_models(tiny_settings)
    assert [s.name for s in specs] == ["tiny", "tiny_letterbox"]
    assert specs[0].datasets == (("classification", "BUSI"), ("segmentation", "DDTI"))
    assert registry.find_spec(tiny_settings).name == "tiny"
    assert registry.find_spec(tiny_settings, "tiny_letterbox").preprocessing == "letterbox"
    with pytest.raises(NoModelError, match="no model named 'nope'"):
        registry.find_spec(tiny_settings, "nope")


def test_manifest_formats_and_errors(tmp_path: Path):
    settings = _manifest(tmp_path, {"models": [{"name": "m", "arch": "torchscript", "file": "m.ts",
                                                "datasets": ["segmentation/BUSI", {"task": "classification",
                                                                                   "dataset_name": "BUSI"}],
                                                "size_bytes": 10}]})
    spec = registry.find_spec(settings)
    assert spec.datasets == (("segmentation", "BUSI"), ("classification", "BUSI"))
    assert spec.extra == {"size_bytes": 10}
    with pytest.raises(WeightsError, match="not found"):
        registry.read_manifest(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(WeightsError, match="not valid JSON"):
        registry.read_manifest(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps([{"name": "x"}]))
    with pytest.raises(WeightsError, match="lacks arch, file"):
        registry.read_manifest(tmp_path / "bad.json")


def test_weights_file_problems_are_named(tmp_path: Path, tiny_torchscript: Path):
    good = tmp_path / "good.ts"
    good.write_bytes(tiny_torchscript.read_bytes())
    sha = sha256_of(good)
    spec = ModelSpec(name="m", arch="torchscript", file="good.ts", sha256=sha, input_size=32)
    assert registry.verify_weights(spec, tmp_path) == (good, sha)

    with pytest.raises(WeightsError, match=r"missing\.ts .*is missing"):
        registry.verify_weights(ModelSpec("m", "torchscript", "missing.ts"), tmp_path)
    (tmp_path / "empty.ts").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.ts .*is empty"):
        registry.verify_weights(ModelSpec("m", "torchscript", "empty.ts"), tmp_path)
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(WeightsError, match=r"truncated\.ts does not match its manifest sha256"):
        registry.verify_weights(ModelSpec("m", "torchscript", "truncated.ts", sha256=sha), tmp_path)
    # without a sha in the manifest, the truncation is caught by the loader: still one clear error
    with pytest.raises(WeightsError, match=r"truncated\.ts is not a loadable TorchScript file"):
        registry.load_model(ModelSpec("m2", "torchscript", "truncated.ts", input_size=32), "cpu",
                            weights_dir=tmp_path)
    with pytest.raises(WeightsError, match="unknown architecture 'resnet'"):
        registry.load_model(ModelSpec("m3", "resnet", "good.ts"), "cpu", weights_dir=tmp_path)
    with pytest.raises(WeightsError, match=r"good\.ts is not a loadable torch.export"):
        registry.load_model(ModelSpec("m4", "torch_export", "good.ts", input_size=32), "cpu", weights_dir=tmp_path)


def test_torchscript_adapter_keeps_no_cache(tmp_path: Path, tiny_torchscript: Path):
    spec = ModelSpec(name="ts", arch="torchscript", file=str(tiny_torchscript), input_size=32)
    model = registry.load_model(spec, "cpu", weights_dir=tmp_path)
    assert model is not registry.load_model(spec, torch.device("cpu"), weights_dir=tmp_path)  # the pool keeps models
    assert model.sha256 == sha256_of(tiny_torchscript)
    reference = TinyContractNet().eval()
    inputs = _inputs(3)
    with torch.inference_mode():
        for got, want in zip(model(*inputs), reference(*inputs), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dynamic", [True, False])
def test_torch_export_adapter(tmp_path: Path, dynamic: bool):
    net = TinyContractNet().eval()
    example = _inputs(2 if dynamic else 1)
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        shapes = tuple({0: batch} for _ in range(5))
    program = torch.export.export(net, example, dynamic_shapes=shapes)
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    spec = ModelSpec(name=f"pt2-{dynamic}", arch="torch_export", file=str(path), input_size=32)
    model = registry.load_model(spec, "cpu", weights_dir=tmp_path)
    assert model.max_batch == (None if dynamic else 1)  # a static batch-1 program is detected ...
    inputs = _inputs(3)  # ... and run one sample at a time
    with torch.inference_mode():
        for got, want in zip(model(*inputs), net(*inputs), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_exported_contract_is_checked(tmp_path: Path):
    class Wrong(torch.nn.Module):
        def forward(self, images, position, task, type_, nature):
            return images.mean(dim=(1, 2, 3)), position

    path = tmp_path / "wrong.ts"
    torch.jit.script(Wrong()).save(str(path))
    with pytest.raises(WeightsError, match="must return"):
        registry.load_model(ModelSpec("wrong", "torchscript", str(path), input_size=16), "cpu", weights_dir=tmp_path)


def test_adhoc_spec_and_devices(tmp_path: Path):
    spec = registry.adhoc_spec("uusic_omni", tmp_path / "best_model.pth")
    assert (spec.name, spec.input_size, spec.preprocessing, spec.datasets) == ("best_model", 224, "center_crop", None)
    with pytest.raises(WeightsError, match="unknown architecture"):
        registry.adhoc_spec("vgg", tmp_path / "x.pth")
    assert registry.resolve_device("cpu").type == "cpu"
    assert registry.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    from core.errors import DeviceError

    with pytest.raises(DeviceError):
        registry.resolve_device("tpu")
