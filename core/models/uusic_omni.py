"""UUSIC25 baseline "omni" network: a prompted Swin-Unet with one segmentation and two classification heads.

Written for this project from the published architecture description (config
``swin_tiny_patch4_window7_224_lite``: embed 96, encoder depths 4-4-4-4, decoder depths 2-2-2-2,
heads 3/6/12/24, window 7, 224 input). Module and parameter names follow the baseline so that its
checkpoints (``best_model.pth`` = flat ``module.swin.*``; ``latest.pth`` = ``{'model': ...}``;
or plain ``swin.*``) load with ``strict=True``.

Input as the baseline takes it: a tuple ``(image [B,1,S,S,3] or [B,S,S,3] in [0,1], position [B,8],
task [B,2], type [B,3], nature [B,2])``; output ``(seg_logits [B,2,S,S], cls2 [B,2], cls4 [B,4])``.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.models.base import ModelSpec, WeightsError, file_sha256

PROMPT_DIM = 8 + 2 + 3 + 2  # position, task, type, nature
LAYOUTS = ("module_wrapped", "swin", "module")


@dataclass(frozen=True)
class OmniConfig:
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 96
    encoder_depths: tuple[int, ...] = (4, 4, 4, 4)
    decoder_depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0


# --------------------------------------------------------------------------- building blocks


def _to_windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] → [B * H/w * W/w, w*w, C]."""
    b, h, wd, c = x.shape
    x = x.reshape(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _from_windows(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`_to_windows` → [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def _pixel_shuffle_tokens(x: torch.Tensor, h: int, w: int, scale: int) -> torch.Tensor:
    """Tokens [B, h*w, s*s*c] → [B, (h*s)*(w*s), c], channel order (s_row, s_col, c)."""
    b, _, channels = x.shape
    c = channels // (scale * scale)
    x = x.reshape(b, h, w, scale, scale, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * scale * w * scale, c)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self attention inside ``w x w`` windows with a learned relative position bias."""

    relative_position_index: torch.Tensor  # a buffer (register_buffer); declared for the type checker

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        span = 2 * window - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(span * span, heads))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[:, None] - ys[None, :] + window - 1
        dx = xs[:, None] - xs[None, :] + window - 1
        self.register_buffer("relative_position_index", dy * span + dx)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        nb, n, c = x.shape
        q, k, v = self.qkv(x).reshape(nb, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        scores = scores + bias.reshape(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            scores = scores.reshape(nb // windows, windows, self.heads, n, n) + mask[None, :, None].to(scores.dtype)
            scores = scores.reshape(nb, self.heads, n, n)
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(nb, n, c))


def _shift_mask(res: int, window: int, shift: int) -> torch.Tensor:
    """Additive (0 / -100) mask keeping shifted windows from mixing regions that were not adjacent."""
    region = torch.zeros(1, res, res, 1)
    bounds = ((0, res - window), (res - window, res - shift), (res - shift, res))
    label = 0
    for r0, r1 in bounds:
        for c0, c1 in bounds:
            region[:, r0:r1, c0:c1, :] = label
            label += 1
    ids = _to_windows(region, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, res: int, heads: int, window: int, shifted: bool, mlp_ratio: float):
        super().__init__()
        self.res = res
        self.window = min(window, res)
        self.shift = window // 2 if (shifted and res > window) else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", _shift_mask(res, self.window, self.shift) if self.shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.norm1(x).reshape(b, self.res, self.res, c)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        h = self.attn(_to_windows(h, self.window), self.attn_mask)
        h = _from_windows(h, self.window, self.res, self.res)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve the resolution, double the channels (2x2 neighbours concatenated)."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.res = res
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.reshape(b, self.res, self.res, c)
        parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
        x = torch.cat(parts, dim=-1).reshape(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    """Double the resolution, halve the channels."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.res = res
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle_tokens(self.expand(x), self.res, self.res, 2))


class FinalPatchExpand_X4(nn.Module):
    """Quadruple the resolution at constant channels (back to pixel resolution)."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.res = res
        self.expand = nn.Linear(dim, 16 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle_tokens(self.expand(x), self.res, self.res, 4))


class ChannelHalf(nn.Module):
    def __init__(self, res: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim // 2, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x))


class BasicLayer(nn.Module):
    """``depth`` Swin blocks (alternating plain / shifted windows), then an optional resolution change."""

    def __init__(self, dim, res, depth, heads, window, mlp_ratio, res_scale=None):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, res, heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio) for i in range(depth)
        )
        self.res_scale = res_scale(res, dim) if res_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.res_scale(x) if self.res_scale is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class OmniSwin(nn.Module):
    """Shared encoder; a U-shaped segmentation decoder and a 7x7 classification decoder, both prompted."""

    def __init__(self, cfg: OmniConfig):
        super().__init__()
        self.cfg = cfg
        e, levels = cfg.embed_dim, len(cfg.encoder_depths)
        grid = cfg.img_size // cfg.patch_size
        self.grid = grid
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, e)
        self.dec_prompt_mlp = nn.Linear(PROMPT_DIM, e * 8)
        self.dec_prompt_mlp_cls2 = nn.Linear(PROMPT_DIM, e * 4)
        self.dec_prompt_mlp_seg2_cls3 = nn.Linear(PROMPT_DIM, e * 2)
        self.dec_prompt_mlp_seg3 = nn.Linear(PROMPT_DIM, e)

        def layer(level: int, depth: int, res: int, dim: int | None = None, res_scale=None) -> BasicLayer:
            dim = dim if dim is not None else e * 2**level
            return BasicLayer(dim, res, depth, cfg.num_heads[level], cfg.window_size, cfg.mlp_ratio, res_scale)

        self.layers = nn.ModuleList(
            layer(i, cfg.encoder_depths[i], grid >> i, res_scale=PatchMerging if i < levels - 1 else None)
            for i in range(levels)
        )
        deepest = levels - 1
        self.layers_task_seg_up = nn.ModuleList([PatchExpand(grid >> deepest, e * 2**deepest)])
        self.layers_task_seg_skip = nn.ModuleList([nn.Identity()])
        self.layers_task_cls_up = nn.ModuleList()
        for i in range(1, levels):
            level = deepest - i
            self.layers_task_seg_skip.append(nn.Linear(2 * e * 2**level, e * 2**level))
            self.layers_task_seg_up.append(
                layer(level, cfg.decoder_depths[level], grid >> level, res_scale=PatchExpand if i < deepest else None)
            )
            self.layers_task_cls_up.append(
                layer(level + 1, cfg.decoder_depths[level + 1], grid >> deepest,
                      res_scale=ChannelHalf if i < deepest else None)
            )
        self.layers_task_seg_head = nn.ModuleList(
            [FinalPatchExpand_X4(grid, e), nn.Conv2d(e, 2, kernel_size=1, bias=False)]
        )
        self.layers_task_cls_head_2cls = nn.ModuleList([nn.Linear(e * 2, 2)])
        self.layers_task_cls_head_4cls = nn.ModuleList([nn.Linear(e * 2, 4)])
        self.norm = nn.LayerNorm(e * 2**deepest)
        self.norm_task_seg = nn.LayerNorm(e)
        self.norm_task_cls = nn.LayerNorm(e * 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor):
        """image [B, 3, S, S]; prompt [B, 15] (position, task, type, nature concatenated)."""
        x = self.patch_embed(image)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x) + self.dec_prompt_mlp(prompt).unsqueeze(1)

        seg = self.layers_task_seg_up[0](x)
        for i in range(1, len(self.layers_task_seg_up)):
            seg = self.layers_task_seg_skip[i](torch.cat([seg, skips[len(skips) - 1 - i]], dim=-1))
            if i == 2:
                seg = seg + self.dec_prompt_mlp_seg2_cls3(prompt).unsqueeze(1)
            elif i == 3:
                seg = seg + self.dec_prompt_mlp_seg3(prompt).unsqueeze(1)
            seg = self.layers_task_seg_up[i](seg)
        seg = self.layers_task_seg_head[0](self.norm_task_seg(seg))
        b = seg.shape[0]
        side = 4 * self.grid
        seg = seg.reshape(b, side, side, -1).permute(0, 3, 1, 2)
        seg = self.layers_task_seg_head[1](seg)

        cls = self.layers_task_cls_up[0](x)
        cls = self.layers_task_cls_up[1](cls + self.dec_prompt_mlp_cls2(prompt).unsqueeze(1))
        cls = self.layers_task_cls_up[2](cls + self.dec_prompt_mlp_seg2_cls3(prompt).unsqueeze(1))
        cls = self.norm_task_cls(cls).mean(dim=1)
        return seg, self.layers_task_cls_head_2cls[0](cls), self.layers_task_cls_head_4cls[0](cls)


class UUSICOmniNet(nn.Module):
    """The baseline's ``OmniVisionTransformer(config, prompt=True)``; parameters live under ``swin.``."""

    def __init__(self, cfg: OmniConfig | None = None):
        super().__init__()
        self.cfg = cfg or OmniConfig()
        self.swin = OmniSwin(self.cfg)

    def forward(self, inputs, position=None, task=None, type_=None, nature=None):
        """``forward((image, position, task, type, nature))`` as the baseline, or the five as arguments.

        ``image`` is ``[B, 1, S, S, 3]`` (baseline) or ``[B, S, S, 3]``, float in [0, 1].
        """
        if position is None:
            inputs, position, task, type_, nature = inputs
        image = inputs.squeeze(1) if inputs.dim() == 5 else inputs
        image = image.permute(0, 3, 1, 2)
        prompt = torch.cat([position, task, type_, nature], dim=1).to(image.dtype)
        return self.swin(image, prompt)


# --------------------------------------------------------------------------- checkpoints


def _normalise_keys(obj, path: Path) -> dict[str, torch.Tensor]:
    """Any of the baseline's layouts → ``swin.*`` keys."""
    if isinstance(obj, Mapping) and isinstance(obj.get("arch"), str) and obj["arch"] != "uusic_omni":
        raise WeightsError(f"weights file {path}: the checkpoint is a {obj['arch']!r} model, "
                           "but the manifest declares it as uusic_omni")
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(
            f"weights file {path}: expected a state dict (or {{'model': state_dict}}), got {type(obj).__name__}"
        )
    state = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"weights file {path}: entry {key!r} is not a tensor; not a state dict")
        name = key[len("module."):] if key.startswith("module.") else key
        if not name.startswith("swin."):
            name = "swin." + name
        state[name] = value
    return state


def load_state(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a baseline checkpoint (``module.swin.*``, ``swin.*``, ``{'model': ...}``) → ``swin.*`` state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"weights file {path} is truncated or corrupt ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    return _normalise_keys(obj, path)


def check_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Raise :class:`WeightsError` unless ``state`` matches ``model`` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"weights file {path} does not match the uusic_omni architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        shown = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3])
        raise WeightsError(f"weights file {path} has {len(wrong)} tensors of the wrong shape ({shown})")


def build_from_file(path: Path | str, device: torch.device | str = "cpu") -> UUSICOmniNet:
    """A network in eval mode with the file's weights loaded strictly."""
    model = UUSICOmniNet()
    state = load_state(path)
    check_state(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def save_baseline_checkpoint(model: UUSICOmniNet, path: Path | str, layout: str = "module_wrapped") -> Path:
    """Save as the baseline trainer does: ``module_wrapped`` = ``{'model': module.swin.*, 'epoch': 0}``
    (latest.pth), ``module`` = flat ``module.swin.*`` (best_model.pth), ``swin`` = flat ``swin.*``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if layout != "swin":
        state = {"module." + k: v for k, v in state.items()}
    obj = {"model": state, "epoch": 0} if layout == "module_wrapped" else state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


class OmniServedModel:
    """Adapter to the ServedModel contract of :mod:`core.models.base`."""

    def __init__(self, spec: ModelSpec, network: UUSICOmniNet, device: torch.device, sha256: str):
        self.spec = spec
        self.network = network
        self.device = device
        self.sha256 = sha256

    def forward(self, images, position, task, type_, nature):
        """images [B, S, S, 3] float in [0, 1] → (seg_logits [B,2,S,S], cls2 [B,2], cls4 [B,4])."""
        size = self.network.cfg.img_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(f"uusic_omni expects images [B, {size}, {size}, 3], got {list(images.shape)}")
        dev = self.device
        return self.network(images.to(dev), position.to(dev), task.to(dev), type_.to(dev), nature.to(dev))

    __call__ = forward


def load(spec: ModelSpec, path: Path, device: torch.device) -> OmniServedModel:
    """Load a baseline checkpoint strictly and wrap it as a served model."""
    if spec.input_size != OmniConfig.img_size:
        raise WeightsError(
            f"weights file {path}: uusic_omni takes {OmniConfig.img_size} px input, manifest says {spec.input_size}"
        )
    network = build_from_file(path, device)
    return OmniServedModel(spec, network, torch.device(device), file_sha256(path))
