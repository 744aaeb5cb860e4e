"""The project's own demo network: a small prompt-conditioned U-Net trained from scratch (see core.train).

Input follows :mod:`core.models.base` (``[B,S,S,3]`` float in [0,1], letterboxed). The image is turned to grey
(ultrasound is grey; colour overlays are ignored), normalised, and passed through a stride-2 stem, a four-stage
encoder and a U-Net decoder built from ``torchvision.ops.Conv2dNormActivation``. The 15-dim baseline prompt
(position 8 + task 2 + type 3 + nature 2) drives FiLM (per-channel scale and shift) on the bottleneck and every
decoder stage, so one network serves every organ. Classification heads (``cls2``, ``cls4``) read the pooled,
prompt-conditioned bottleneck. Outputs: ``(seg_logits[B,2,S,S], cls2[B,2], cls4[B,4])``; served, a fourth:
the global average of the stem's and each encoder stage's output (``embedding[B,584]``), prompt-free, which the
organ recogniser reads (:mod:`core.recognition_encoder`) instead of computing features of its own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation

from core.models.base import ModelSpec, WeightsError, file_sha256

PROMPT_DIM = 15
ARCH = "demo_unet"


@dataclass(frozen=True)
class DemoConfig:
    widths: tuple[int, ...] = (24, 48, 96, 160, 256)  # stem (S/2), then S/4, S/8, S/16, S/32
    dropout: float = 0.2


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Conv2dNormActivation(cin, cout, 3, stride=stride),
        Conv2dNormActivation(cout, cout, 3),
    )


class FiLM(nn.Module):
    """Per-channel ``x * (1 + gamma) + beta`` from the prompt vector (starts as identity)."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(PROMPT_DIM, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * channels))
        last = cast(nn.Linear, self.net[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.net(prompt).chunk(2, dim=1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class DemoUNet(nn.Module):
    """Prompt-conditioned U-Net; ``forward`` follows the served-model contract."""

    def __init__(self, config: DemoConfig = DemoConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = _block(1, w[0], stride=2)
        self.encoder = nn.ModuleList(_block(w[i], w[i + 1], stride=2) for i in range(len(w) - 1))
        self.bottleneck_film = FiLM(w[-1])
        self.decoder = nn.ModuleList(_block(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.decoder_film = nn.ModuleList(FiLM(w[i]) for i in reversed(range(len(w) - 1)))
        self.seg_head = nn.Conv2d(w[0], 2, 1)
        self.cls_body = nn.Sequential(
            nn.Linear(w[-1] + PROMPT_DIM, 128), nn.ReLU(inplace=True), nn.Dropout(config.dropout)
        )
        self.cls2 = nn.Linear(128, 2)
        self.cls4 = nn.Linear(128, 4)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and each encoder stage's output for ``[B,S,S,3]`` images in [0,1]: prompt-free (the prompt acts
        after the encoder), so the same whatever dataset the forward pass is asked for."""
        x = images.permute(0, 3, 1, 2).mean(dim=1, keepdim=True)
        x = (x - 0.25) / 0.25
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        return skips

    def forward(self, images, position, task, type_, nature):
        return self.forward_embedded(images, position, task, type_, nature)[:3]

    def forward_embedded(self, images, position, task, type_, nature):
        """The contract's three outputs and the encoder's channel means ``[B, sum(widths)]`` (:func:`embedding`)."""
        size = images.shape[1:3]
        prompt = torch.cat([position, task, type_, nature], dim=1).to(images.dtype)
        skips = self.encode(images)
        means = embedding(skips)
        y = self.bottleneck_film(skips.pop(), prompt)
        pooled = torch.cat([F.adaptive_avg_pool2d(y, 1).flatten(1), prompt], dim=1)
        for stage, film in zip(self.decoder, self.decoder_film, strict=True):
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = film(stage(torch.cat([y, skip], dim=1)), prompt)
        seg = F.interpolate(self.seg_head(y), size=size, mode="bilinear", align_corners=False)
        hidden = self.cls_body(pooled)
        return seg, self.cls2(hidden), self.cls4(hidden), means


def embedding(skips: list[torch.Tensor]) -> torch.Tensor:
    """The global average of each encoder output (:meth:`DemoUNet.encode`), concatenated (``[B, 584]`` for the
    default widths)."""
    return torch.cat([s.mean(dim=(2, 3)) for s in skips], dim=1)


class Embedded(nn.Module):
    """The network as served: its forward returns the contract's outputs and the encoder embedding (what a
    converter traces, so the converted model returns it too)."""

    def __init__(self, network: DemoUNet):
        super().__init__()
        self.inner = network

    def forward(self, images, position, task, type_, nature):
        return self.inner.forward_embedded(images, position, task, type_, nature)


def save_checkpoint(model: DemoUNet, path: Path, meta: dict | None = None) -> None:
    """A weights-only checkpoint: arch, config, float32 state dict and a metadata dict of plain values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    payload = {"arch": ARCH, "config": {"widths": list(model.config.widths), "dropout": model.config.dropout},
               "state_dict": state, "meta": json.loads(json.dumps(meta or {}, default=str))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def build_from_checkpoint(path: Path) -> tuple[DemoUNet, dict]:
    """The network and metadata of a checkpoint; :class:`WeightsError` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code
        raise WeightsError(f"weights file {path} cannot be read as a demo_unet checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("arch") != ARCH or "state_dict" not in payload:
        raise WeightsError(f"weights file {path} is not a demo_unet checkpoint (no arch/state_dict)")
    cfg = payload.get("config") or {}
    config = DemoConfig(widths=tuple(int(v) for v in cfg.get("widths", DemoConfig.widths)),
                        dropout=float(cfg.get("dropout", DemoConfig.dropout)))
    model = DemoUNet(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights file {path} does not match the demo_unet architecture: {exc}") from None
    return model, dict(payload.get("meta") or {})


class DemoServedModel:
    """A loaded demo network bound to a device (the :class:`~core.models.base.ServedModel` protocol)."""

    def __init__(self, spec: ModelSpec, network: DemoUNet, device: torch.device, sha256: str, meta: dict):
        self.spec = spec
        self.device = device
        self.sha256 = sha256
        self.meta = meta
        self.network = Embedded(network.to(device).eval()).eval()  # outputs: the contract's three + the embedding
        self.embedding_size = sum(network.config.widths)  # 584 for the default widths

    @torch.inference_mode()
    def forward(self, images, position, task, type_, nature):
        args = [t.to(self.device, dtype=torch.float32) for t in (images, position, task, type_, nature)]
        return self.network(*args)

    __call__ = forward


def load(spec: ModelSpec, path: Path, device: torch.device) -> DemoServedModel:
    """Load a demo checkpoint for serving; raises :class:`WeightsError` naming the file."""
    network, meta = build_from_checkpoint(Path(path))
    input_size = meta.get("input_size")
    if input_size is not None and int(input_size) != int(spec.input_size):
        raise WeightsError(f"weights file {path} was trained at input size {input_size}, "
                           f"but the manifest says {spec.input_size}")
    return DemoServedModel(spec, network, torch.device(device), file_sha256(path), meta)


def config_dict(config: DemoConfig) -> dict:
    return asdict(config)
