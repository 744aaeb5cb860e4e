"""uusic_omni: the baseline's key layout, strict loading of every checkpoint layout, clear weight errors."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch

from core.models.base import ModelSpec, WeightsError
from core.models.uusic_omni import (
    UUSICOmniNet,
    build_from_file,
    load,
    load_state,
    save_baseline_checkpoint,
)

# facts read off the reference network (config swin_tiny_patch4_window7_224_lite, prompt=True)
KNOWN_SHAPES = {
    "swin.patch_embed.proj.weight": (96, 3, 4, 4),
    "swin.patch_embed.norm.weight": (96,),
    "swin.dec_prompt_mlp.weight": (768, 15),
    "swin.dec_prompt_mlp_cls2.weight": (384, 15),
    "swin.dec_prompt_mlp_seg2_cls3.weight": (192, 15),
    "swin.dec_prompt_mlp_seg3.weight": (96, 15),
    "swin.layers.0.blocks.0.attn.relative_position_bias_table": (169, 3),
    "swin.layers.0.blocks.0.attn.relative_position_index": (49, 49),
    "swin.layers.0.blocks.1.attn_mask": (64, 49, 49),
    "swin.layers.2.blocks.3.attn_mask": (4, 49, 49),
    "swin.layers.2.res_scale.reduction.weight": (768, 1536),
    "swin.layers.3.blocks.3.mlp.fc1.weight": (3072, 768),
    "swin.layers_task_seg_up.0.expand.weight": (1536, 768),
    "swin.layers_task_seg_up.3.blocks.1.attn_mask": (64, 49, 49),
    "swin.layers_task_seg_skip.1.weight": (384, 768),
    "swin.layers_task_seg_skip.3.weight": (96, 192),
    "swin.layers_task_cls_up.0.res_scale.linear.weight": (384, 768),
    "swin.layers_task_cls_up.2.blocks.1.attn.qkv.weight": (576, 192),
    "swin.layers_task_seg_head.0.expand.weight": (1536, 96),
    "swin.layers_task_seg_head.1.weight": (2, 96, 1, 1),
    "swin.layers_task_cls_head_2cls.0.weight": (2, 192),
    "swin.layers_task_cls_head_4cls.0.weight": (4, 192),
    "swin.norm.weight": (768,),
    "swin.norm_task_seg.weight": (96,),
    "swin.norm_task_cls.weight": (192,),
}
ABSENT = ["swin.layers.3.blocks.1.attn_mask", "swin.layers_task_cls_up.0.blocks.1.attn_mask",
          "swin.layers_task_seg_skip.0.weight", "swin.layers_task_cls_up.2.res_scale.linear.weight"]


@pytest.fixture(scope="module")
def net() -> UUSICOmniNet:
    torch.manual_seed(0)
    return UUSICOmniNet().eval()


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory) -> Path:
    return save_baseline_checkpoint(net, tmp_path_factory.mktemp("w") / "best_model.pth", layout="module")


def prompts(batch: int = 2):
    position = torch.zeros(batch, 8)
    position[:, 0] = 1
    task = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[:batch]
    type_ = torch.tensor([[1.0, 0.0, 0.0]]).repeat(batch, 1)
    nature = torch.tensor([[1.0, 0.0]]).repeat(batch, 1)
    return position, task, type_, nature


def test_state_dict_matches_baseline_layout(net):
    state = net.state_dict()
    assert len(state) == 457
    for key, shape in KNOWN_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT:
        assert key not in state
    assert sum(v.numel() for k, v in state.items() if "attn_mask" not in k and "index" not in k) > 40_000_000


def test_forward_shapes_batch2_cpu(net):
    images = torch.rand(2, 224, 224, 3)
    with torch.inference_mode():
        seg, cls2, cls4 = net(images, *prompts())
        seg5, _, cls4_tuple = net((images.unsqueeze(1), *prompts()))  # the baseline's tuple input
    assert seg.shape == (2, 2, 224, 224) and cls2.shape == (2, 2) and cls4.shape == (2, 4)
    assert torch.equal(seg, seg5) and torch.equal(cls4, cls4_tuple)
    assert torch.isfinite(seg).all()


def test_bf16_autocast_runs(net):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        seg, _, _ = net(torch.rand(1, 224, 224, 3), *prompts(1))
    assert seg.shape == (1, 2, 224, 224) and torch.isfinite(seg.float()).all()


@pytest.mark.parametrize("layout", ["module", "swin", "module_wrapped"])
def test_every_layout_loads_strictly(net, saved, layout, tmp_path):
    path = saved if layout == "module" else save_baseline_checkpoint(net, tmp_path / f"{layout}.pth", layout=layout)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    first = next(iter(raw["model"] if layout == "module_wrapped" else raw))
    assert first.startswith({"module": "module.swin.", "swin": "swin.", "module_wrapped": "module.swin."}[layout])
    state = load_state(path)
    assert set(state) == set(net.state_dict())
    loaded = build_from_file(path)
    assert not loaded.training
    ref = net.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_load_adapter(saved):
    spec = ModelSpec(name="omni", arch="uusic_omni", file=str(saved))
    served = load(spec, saved, torch.device("cpu"))
    assert served.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert served.spec is spec and served.device == torch.device("cpu")
    with torch.inference_mode():
        seg, _, cls4 = served.forward(torch.rand(2, 224, 224, 3), *prompts())
    assert seg.shape == (2, 2, 224, 224) and cls4.shape == (2, 4)
    with pytest.raises(ValueError, match="224"):
        served.forward(torch.rand(1, 256, 256, 3), *prompts(1))


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"nope\.pth.*not found"):
        load_state(path)


def test_truncated_file_names_it(saved, tmp_path):
    data = saved.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.pth.*(truncated|corrupt)"):
        build_from_file(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match=re.escape("junk.pth")):
        load_state(junk)


def test_wrong_architecture_lists_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_from_file(path)
    message = str(info.value)
    assert "other.pth" in message and "missing" in message and "unexpected" in message
    assert "swin.patch_embed.proj.weight" in message and "swin.0.weight" in message


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match=re.escape("list.pth")):
        load_state(path)


def test_shape_mismatch_names_tensor(net, tmp_path):
    state = {"module." + k: v for k, v in net.state_dict().items()}
    state["module.swin.layers_task_cls_head_4cls.0.weight"] = torch.zeros(5, 192)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    pattern = r"shapes\.pth.*wrong shape.*layers_task_cls_head_4cls\.0\.weight.*\(5, 192\)"
    with pytest.raises(WeightsError, match=pattern):
        build_from_file(path)
