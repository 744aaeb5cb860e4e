"""`python -m core export` and serving the team's own networks: a third-party architecture (torchvision LR-ASPP)
with a one-channel head, a SAM-style windowed ViT whose ``window_reverse`` forces a batch-1 export, a
``torch.jit.trace``'d file with a frozen batch that the load check refuses, ``python -m core models`` exiting 1 on a
wrong sha256, and an exported model served through the analysis service exactly like the eager network."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core import cli
from core.export import ContractWrapper, export_network, load_weights, prompt_mode, read_state_dict
from core.geometry import make_transform
from core.imaging import load_image
from core.models import registry
from core.models.base import ModelSpec, WeightsError, example_inputs
from core.models.exported import one_channel_logits
from core.schema import PredictRequest
from core.service import AnalysisService
from core.settings import Settings
from tests import tolerances
from tests.conftest import sha256_of

SEG = [{"img_path_relative": f"segmentation/DDTI/imgs/seg_{i}.png", "task": "segmentation", "dataset_name": "DDTI"}
       for i in range(3)]
CLS = [{"img_path_relative": f"classification/BUSI/imgs/cls_{i}.png", "task": "classification",
        "dataset_name": "BUSI"} for i in range(3)]


# ------------------------------------------------------------------------------------------------ networks

class LrasppUltrasound(nn.Module):
    """torchvision's LR-ASPP MobileNetV3 (a third-party architecture) with a one-channel head, plus two
    prompt-conditioned classification heads on its pooled logits. NCHW images, prompts as five arguments."""

    def __init__(self, seed: int = 0):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        torch.manual_seed(seed)
        self.seg = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1)
        self.cls2 = nn.Linear(2 + 15, 2)
        self.cls4 = nn.Linear(2 + 15, 4)
        # batch-norm statistics from a few random images, so the untrained network's masks are not constant
        for module in self.seg.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
        generator = torch.Generator().manual_seed(seed)
        self.seg.train()
        with torch.no_grad():
            for _ in range(2):
                self.seg(torch.rand(8, 3, 64, 64, generator=generator))
        self.eval()

    def forward(self, x, position, task, type_, nature):
        seg = self.seg(x)["out"]
        pooled = torch.cat([seg.mean(dim=(2, 3)), seg.amax(dim=(2, 3)), position, task, type_, nature], dim=1)
        return seg, self.cls2(pooled), self.cls4(pooled)


def window_partition(x, ws: int):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
    """As in SAM / Swin: the batch size recovered with ``int(a / b)``, which torch.export cannot keep dynamic."""
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def window_reverse_flat(windows, ws: int, h: int, w: int):
    """The same with a ``-1`` batch at the end: a frozen ``b`` then mixes the samples without any error."""
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.reshape(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, windows.shape[-1])


class SamStyleNet(nn.Module):
    """A small SAM-style ViT: patch embedding, one windowed attention block, one-channel mask logits and two
    classification heads. Takes NHWC images; with ``prompt=True`` one tuple ``(image, position, task, type,
    nature)`` like the team's ``SAMUSAdapter(config, prompt=True)``."""

    def __init__(self, size: int = 32, dim: int = 16, ws: int = 4, prompt: bool = True, flat: bool = False,
                 seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.prompt, self.ws, self.flat = prompt, ws, flat
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.prompt_mlp = nn.Linear(15, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Conv2d(dim, 1, 1)
        self.cls2 = nn.Linear(dim, 2)
        self.cls4 = nn.Linear(dim, 4)

    def forward(self, x):
        prompt = None
        if isinstance(x, tuple):
            x, position, task, type_, nature = x
            prompt = torch.cat([position, task, type_, nature], dim=1)
        t = self.embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B, H/4, W/4, C
        if prompt is not None:
            t = t + self.prompt_mlp(prompt)[:, None, None, :]
        _, h, w, c = t.shape
        y = window_partition(self.norm(t), self.ws).view(-1, self.ws * self.ws, c)
        y, _ = self.attn(y, y, y, need_weights=False)
        reverse = window_reverse_flat if self.flat else window_reverse
        t = t + reverse(y.view(-1, self.ws, self.ws, c), self.ws, h, w)
        t = t + self.mlp(t)
        seg = F.interpolate(self.head(t.permute(0, 3, 1, 2)), scale_factor=4, mode="bilinear", align_corners=False)
        pooled = t.mean(dim=(1, 2))
        return seg * 8.0, self.cls2(pooled), self.cls4(pooled)


class OneChannelNet(nn.Module):
    """The contract's inputs, a one-channel segmentation (scriptable)."""

    def forward(self, images, position, task, type_, nature):
        x = images.permute(0, 3, 1, 2)
        pooled = x.mean(dim=(2, 3))
        return x[:, :1] * 4.0 - 2.0, pooled[:, :2] + task, torch.cat([pooled, position[:, :1]], dim=1)


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def lraspp_export(tmp_path_factory):
    """LR-ASPP exported once for the module (dynamic batch), with its eager twin."""
    folder = tmp_path_factory.mktemp("lraspp")
    net = LrasppUltrasound().eval()
    result = export_network(net, folder / "lraspp.pt2", input_size=64, layout="nchw", name="lraspp")
    return net, result


@pytest.fixture(scope="module")
def sam_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samstyle")
    net = SamStyleNet().eval()
    result = export_network(net, folder / "sam.pt2", input_size=32, name="sam")
    return net, result


def _served_settings(tmp_path: Path, data_root: Path, entries: list[dict]) -> Settings:
    weights = tmp_path / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    (weights / "models.json").write_text(json.dumps(entries, indent=1))
    # eager torch on the CPU (no backend conversion): the exported program itself is what is compared
    pinned = {"backend": "torch"} if "backend" in Settings.model_fields else {}
    settings = Settings(workspace=tmp_path / "workspace", data_root=data_root, device="cpu", weights_dir=weights,
                        history_url=f"sqlite:///{tmp_path / 'history.sqlite3'}", **pinned)
    settings.ensure_workspace()
    return settings


def _eager(wrapper: nn.Module, data_root: Path, request: dict, size: int):
    """The eager network on ``request``'s image, preprocessed by the project's own geometry (centre crop):
    (seg, cls2, cls4, transform, dataset head)."""
    image = load_image(data_root / request["img_path_relative"])
    transform = make_transform("center_crop", image.width, image.height, size)
    parsed = PredictRequest.parse(request)
    prompts = parsed.dataset.prompts().as_tuple()
    inputs = (torch.from_numpy(transform.apply(image.rgb))[None], *(torch.tensor([p]) for p in prompts))
    with torch.inference_mode():
        seg, cls2, cls4 = wrapper(*inputs)
    return seg, cls2, cls4, transform, parsed.dataset.head


def _reference(wrapper: nn.Module, data_root: Path, request: dict, size: int, threshold: float):
    """What the eager network says: its probabilities, or ``sigmoid(s) > threshold`` mapped back onto the
    original pixels."""
    seg, cls2, cls4, transform, head = _eager(wrapper, data_root, request, size)
    if request["task"] == "classification":
        return torch.softmax(cls4 if head == "cls4" else cls2, dim=1)[0].numpy()
    foreground = (torch.sigmoid(seg[0, 0]) > threshold).numpy().astype(np.uint8)
    return transform.invert_mask(foreground, background=0) > 0


def _threshold_between(values: torch.Tensor) -> float:
    """A threshold near the median of ``values`` and as far as possible from every one of them, so that the
    exported program (1e-6 from the eager network) lands each pixel on the same side of it."""
    ordered = torch.unique(values.flatten().double())
    low, high = int(len(ordered) * 0.4), int(len(ordered) * 0.6)
    middle = ordered[low:high]
    gaps = middle[1:] - middle[:-1]
    i = int(torch.argmax(gaps))
    assert float(gaps[i]) > 1e-5
    return float((middle[i] + middle[i + 1]) / 2)


# ------------------------------------------------------------------------------------------------ export


def test_torchvision_lraspp_exports_with_a_dynamic_batch(lraspp_export):
    net, result = lraspp_export
    entry = result.entry
    assert result.max_batch is None and result.fallback_reason is None
    assert {k: entry[k] for k in ("arch", "input_size", "preprocessing", "datasets", "seg_output", "threshold",
                                  "max_batch")} == {"arch": "torch_export", "input_size": 64,
                                                    "preprocessing": "center_crop", "datasets": None,
                                                    "seg_output": "one", "threshold": 0.5, "max_batch": None}
    assert entry["sha256"] == sha256_of(result.path)
    assert max(result.max_abs_diff.values()) < 1e-4
    # served: the adapter's two-channel logits give exactly sigmoid(s) > threshold of the eager network
    inputs = example_inputs(5, 64, seed=7)
    wrapper = ContractWrapper(net, layout="nchw", prompts="args").eval()
    with torch.inference_mode():
        eager = wrapper(*inputs)
    threshold = float(torch.sigmoid(eager[0]).median())  # both classes in the mask
    spec = registry.spec_from_dict({**entry, "file": str(result.path), "threshold": threshold})
    model = registry.load_model(spec, "cpu", weights_dir=result.path.parent)
    with torch.inference_mode():
        seg, cls2, cls4 = model(*inputs)
    assert seg.shape == (5, 2, 64, 64)
    torch.testing.assert_close(cls2, eager[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls4, eager[2], atol=1e-5, rtol=1e-5)
    served_mask = torch.argmax(torch.softmax(seg, dim=1), dim=1)
    eager_mask = torch.sigmoid(eager[0][:, 0]) > threshold
    assert 0 < int(eager_mask.sum()) < eager_mask.numel()
    assert (served_mask.bool() == eager_mask).float().mean() > 0.9999  # exported vs eager: ~1e-6 apart


def test_one_channel_logits_are_exactly_the_threshold():
    s = torch.cat([torch.linspace(-8, 8, 20001), torch.tensor([0.0, 1e-9, -1e-9, 1e-7, -1e-7, 0.4054651, 0.4054652])])
    s = s.view(1, 1, 1, -1)
    for threshold in (0.5, 0.6, 0.1, 0.9):
        logits = one_channel_logits(s, threshold)
        want = torch.sigmoid(s[:, 0]) > threshold
        assert torch.equal(torch.argmax(torch.softmax(logits, dim=1), dim=1).bool(), want)
        assert torch.equal(torch.softmax(logits, dim=1)[:, 1] > 0.5, want)
    logits = one_channel_logits(s, 0.5, "none")  # the team's model.py: raw output > 0.5
    assert torch.equal(torch.argmax(logits, dim=1).bool(), s[:, 0] > 0.5)
    # at 0.5 with a sigmoid, the served foreground probability is sigmoid(s) itself
    torch.testing.assert_close(torch.softmax(one_channel_logits(s, 0.5), dim=1)[:, 1], torch.sigmoid(s[:, 0]),
                               atol=2e-6, rtol=0)


def test_sam_style_window_reverse_falls_back_to_batch_one(sam_export):
    net, result = sam_export
    assert prompt_mode(net) == "tuple"
    assert result.max_batch == 1 and result.entry["max_batch"] == 1
    assert "batch" in (result.fallback_reason or "")
    spec = registry.spec_from_dict({**result.entry, "file": str(result.path)})
    model = registry.load_model(spec, "cpu", weights_dir=result.path.parent)
    inputs = example_inputs(4, 32, seed=3)
    wrapper = ContractWrapper(net, prompts="tuple").eval()
    with torch.inference_mode():
        got, want = model(*inputs), wrapper(*inputs)  # run one image at a time by the adapter
    assert got[0].shape == (4, 2, 32, 32)
    for k in (1, 2):
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-5)
    # even without max_batch in the manifest, a fixed-batch program is detected and run one image at a time
    bare = registry.load_model(ModelSpec("bare", "torch_export", str(result.path), input_size=32, seg_output="one"),
                               "cpu", weights_dir=result.path.parent)
    assert bare.max_batch == 1


def test_cli_export_from_the_current_dir_with_a_wrapped_checkpoint(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "team_nets_cli.py").write_text(
        "from tests.test_export import SamStyleNet\n\n"
        "def build():\n    return SamStyleNet(seed=0)\n")
    trained = SamStyleNet(seed=5)  # "the checkpoint": other weights than the factory's
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}},
               tmp_path / "best_model.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(tmp_path / "weights"))
    code = cli.main(["export", "--factory", "team_nets_cli:build", "--weights", "best_model.pth",
                     "--input-size", "32", "--threshold", "0.3", "--out", "weights/team.pt2", "--name", "team"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    entry = json.loads(captured.out)
    assert entry["file"] == "team.pt2" and entry["name"] == "team" and entry["max_batch"] == 1
    assert (entry["seg_output"], entry["threshold"], entry["arch"]) == ("one", 0.3, "torch_export")
    assert "fixed batch of 1" in captured.err and "max |Δ|" in captured.err
    model = registry.load_model(registry.spec_from_dict(entry), "cpu", weights_dir=tmp_path / "weights")
    inputs = example_inputs(2, 32, seed=4)
    with torch.inference_mode():
        got, want = model(*inputs), ContractWrapper(trained.eval(), prompts="tuple")(*inputs)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)  # the checkpoint's weights, not the factory's

    # strict: a key the network does not have is refused, and so is a checkpoint of another network
    state = read_state_dict(tmp_path / "best_model.pth")
    torch.save({"model": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    assert cli.main(["export", "--factory", "team_nets_cli:build", "--weights", "extra.pth", "--input-size", "32",
                     "--out", "weights/x.pt2"]) == 2
    assert "1 unexpected key(s): extra.weight" in capsys.readouterr().err
    with pytest.raises(Exception, match="missing key"):
        load_weights(SamStyleNet(), _save({"embed.weight": state["embed.weight"]}, tmp_path / "part.pth"))
    assert cli.main(["export", "--factory", "nowhere_module:build", "--out", "x.pt2"]) == 2
    assert "cannot import 'nowhere_module'" in capsys.readouterr().err
    assert not (tmp_path / "weights" / "x.pt2").exists()


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_export_refuses_a_network_that_breaks_the_contract(tmp_path: Path):
    class ThreeChannels(nn.Module):
        def forward(self, x):
            return x.permute(0, 3, 1, 2), x.mean(dim=(1, 2))[:, :2], x.mean(dim=(1, 2)).repeat(1, 2)[:, :4]

    from core.export import ExportError

    with pytest.raises(ExportError, match=r"segmentation output has shape \(1, 3, 16, 16\)"):
        export_network(ThreeChannels(), tmp_path / "x.pt2", input_size=16)
    with pytest.raises(ExportError, match="--seg-output two but the network's segmentation has 1 channel"):
        export_network(SamStyleNet(), tmp_path / "x.pt2", input_size=32, seg_output="two", static_batch=True)
    assert not (tmp_path / "x.pt2").exists()


# ------------------------------------------------------------------------------------------------ load check

@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("flat", [True, False], ids=["silently-mixed", "raises"])
def test_a_traced_file_with_a_frozen_batch_is_refused(tmp_path: Path, flat: bool):
    net = SamStyleNet(flat=flat).eval()
    wrapper = ContractWrapper(net, prompts="tuple").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example_inputs(1, 32), check_trace=False)
    path = tmp_path / "traced.ts"
    traced.save(str(path))
    if flat:  # the trap: batch 3 runs, with the right shapes, and mixes the three images
        with torch.inference_mode():
            three = example_inputs(3, 32, seed=1)
            assert traced(*three)[0].shape == (3, 1, 32, 32)
            assert float((traced(*three)[1] - wrapper(*three)[1]).abs().max()) > 1e-3
    spec = ModelSpec("traced", "torchscript", str(path), input_size=32, seg_output="one")
    with pytest.raises(WeightsError, match=r"traced\.ts: a batch of 3 .*torch\.jit\.trace"):
        registry.load_model(spec, "cpu", weights_dir=tmp_path)
    # declared as one image at a time it is safe, and served one image at a time
    one = ModelSpec("traced1", "torchscript", str(path), input_size=32, seg_output="one", max_batch=1)
    model = registry.load_model(one, "cpu", weights_dir=tmp_path)
    inputs = example_inputs(3, 32, seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(model(*inputs)[2], wrapper(*inputs)[2], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ models command

def test_models_command_verifies_every_entry(tmp_path: Path, tiny_torchscript: Path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tiny.ts").write_bytes(tiny_torchscript.read_bytes())
    good = {"name": "tiny", "arch": "torchscript", "file": "tiny.ts", "sha256": sha256_of(weights / "tiny.ts"),
            "input_size": 32}
    (weights / "models.json").write_text(json.dumps([good]))
    monkeypatch.setenv("UUSIC_WEIGHTS_DIR", str(weights))
    assert cli.main(["models"]) == 0
    assert "ok (sha256" in capsys.readouterr().out

    wrong = {**good, "name": "wrong-sha", "sha256": "0" * 64}
    missing = {**good, "name": "gone", "file": "gone.ts"}
    (weights / "models.json").write_text(json.dumps([good, wrong, missing]))
    for argv in (["models"], ["models", "--no-load"]):
        assert cli.main(argv) == 1
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        assert len(lines) == 3 and " ok (" in lines[0]
        assert "FAILED" in lines[1] and "does not match its manifest sha256" in lines[1]
        assert "FAILED" in lines[2] and "is missing" in lines[2]
        assert "2 of 3 model(s) failed" in captured.err

    # loads, but returns a one-channel segmentation the manifest does not declare
    bad_head = tmp_path / "onechannel.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(OneChannelNet()).save(str(bad_head))
    (weights / "models.json").write_text(json.dumps([{**good, "name": "head", "file": str(bad_head),
                                                      "sha256": sha256_of(bad_head)}]))
    assert cli.main(["models", "--no-load"]) == 0
    capsys.readouterr()
    assert cli.main(["models"]) == 1
    assert 'set "seg_output": "one"' in capsys.readouterr().out


def test_manifest_head_fields_are_validated(tmp_path: Path):
    base = {"name": "m", "arch": "torch_export", "file": "m.pt2"}
    spec = registry.spec_from_dict({**base, "seg_output": "one", "threshold": 0.4, "max_batch": 1})
    assert (spec.seg_output, spec.threshold, spec.seg_activation, spec.max_batch, spec.extra) == (
        "one", 0.4, "sigmoid", 1, {})
    defaults = registry.spec_from_dict({**base, "threshold": None, "max_batch": None})
    assert (defaults.seg_output, defaults.threshold, defaults.max_batch) == ("two", 0.5, None)
    for bad, message in (({"seg_output": "three"}, "seg_output must be one of"),
                         ({"threshold": 1.5}, "strictly between 0 and 1"),
                         ({"threshold": "high"}, "threshold must be a number"),
                         ({"seg_activation": "relu"}, "seg_activation must be one of"),
                         ({"max_batch": 0}, "max_batch must be a whole number")):
        with pytest.raises(WeightsError, match=message):
            registry.spec_from_dict({**base, **bad})
    assert registry.spec_from_dict({**base, "seg_activation": "none", "threshold": 2.0}).threshold == 2.0


# ------------------------------------------------------------------------------------------------ served end to end

def test_exported_lraspp_served_through_the_analysis_service(lraspp_export, tmp_path: Path, tiny_data_root: Path):
    net, result = lraspp_export
    wrapper = ContractWrapper(net, layout="nchw", prompts="args").eval()
    # a threshold inside the eager network's range on these images, so the masks have both classes
    threshold = _threshold_between(torch.cat([torch.sigmoid(_eager(wrapper, tiny_data_root, r, 64)[0]).flatten()
                                              for r in SEG]))
    entry = {**result.entry, "file": str(result.path), "threshold": threshold,
             "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]}
    service = AnalysisService(_served_settings(tmp_path, tiny_data_root, [entry]), model="lraspp")

    worst_dp = 0.0
    for request in CLS:
        response = service.analyze(request, source="api")
        want = _reference(wrapper, tiny_data_root, request, 64, threshold)
        worst_dp = max(worst_dp, float(np.abs(np.asarray(response.probability) - want).max()))
    assert worst_dp < 1e-5
    batch = service.analyze_batch(SEG, source="batch")
    assert not batch.failures
    foreground = background = 0
    for request, response in zip(SEG, batch.responses, strict=True):
        want = _reference(wrapper, tiny_data_root, request, 64, threshold)
        got = np.asarray(Image.open(response.mask_path)) > 0
        assert got.shape == want.shape
        tolerances.assert_masks_agree(got, want)
        foreground, background = foreground + int(want.sum()), background + int((~want).sum())
    assert foreground > 0 and background > 0
    assert service.model_info("lraspp")["sha256"] == result.entry["sha256"]
    print(f"lraspp served vs eager: max |Δp| {worst_dp:.2e}, masks equal ({foreground} foreground px)")


def test_batch_one_export_served_in_a_batch_through_the_service(sam_export, tmp_path: Path, tiny_data_root: Path,
                                                                 monkeypatch):
    net, result = sam_export
    wrapper = ContractWrapper(net, prompts="tuple").eval()
    threshold = _threshold_between(torch.cat([torch.sigmoid(_eager(wrapper, tiny_data_root, r, 32)[0]).flatten()
                                              for r in SEG]))
    entry = {**result.entry, "file": str(result.path), "threshold": threshold,
             "datasets": [["classification", "BUSI"], ["segmentation", "DDTI"]]}
    service = AnalysisService(_served_settings(tmp_path, tiny_data_root, [entry]), model="sam")
    engine = service.engine()
    original = engine.model.module
    calls: list[int] = []

    def counting(*inputs):
        calls.append(int(inputs[0].shape[0]))
        return original(*inputs)

    monkeypatch.setattr(engine.model, "module", counting)
    batch = service.analyze_batch(SEG + CLS, source="batch", batch_size=6)
    assert not batch.failures and calls and set(calls) == {1}  # never more than max_batch images per call
    for request, response in zip(SEG + CLS, batch.items, strict=True):
        want = _reference(wrapper, tiny_data_root, request, 32, threshold)
        if request["task"] == "segmentation":
            assert np.array_equal(np.asarray(Image.open(response.mask_path)) > 0, want)
        else:
            assert float(np.abs(np.asarray(response.probability) - want).max()) < 1e-5


def test_engine_forward_never_exceeds_max_batch(tiny_settings: Settings, tiny_torchscript: Path):
    from core.engine import Engine

    spec = ModelSpec("tiny2", "torchscript", str(tiny_torchscript), input_size=32, max_batch=2,
                     datasets=(("classification", "BUSI"), ("segmentation", "DDTI")))
    engine = Engine(tiny_settings, spec=spec, device="cpu")
    reference = engine.model
    sizes: list[int] = []

    class Recording:
        max_batch = None  # the engine alone must split (spec.max_batch)

        def __call__(self, images, *vectors):
            sizes.append(int(images.shape[0]))
            return reference(images, *vectors)

    prepared = [engine.prepare(r) for r in (SEG + CLS)[:5]]
    want, _, _ = engine.forward(prepared)
    engine.model = Recording()
    got, _, _ = engine.forward(prepared)
    assert sizes == [2, 2, 1]
    for a, b in zip(want, got, strict=True):
        if a.probability is not None:
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
        else:
            assert np.array_equal(a.seg_label, b.seg_label)
