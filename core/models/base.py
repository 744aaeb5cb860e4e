"""The contract every served network follows, whatever its architecture.

A served model takes a batch of square images and the baseline's four prompt vectors and returns
the UUSIC25 baseline's output triple::

    images   float32 [B, S, S, 3] in [0, 1], channels last (S = spec.input_size), no normalisation
    position float32 [B, 8]   task [B, 2]   type [B, 3]   nature [B, 2]   (one-hot, see core.catalog)
    returns  (seg_logits [B, 2, S, S], cls2_logits [B, 2], cls4_logits [B, 4])

Adapters (uusic_omni, the demo network, TorchScript / torch.export files) convert to what their
network wants internally.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from core.errors import WeightsError  # noqa: F401 - re-exported: core.models.base.WeightsError


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``weights/models.json``."""

    name: str
    arch: str  # "uusic_omni" | "demo_unet" | "torchscript" | "torch_export"
    file: str  # relative to the weights dir (or absolute)
    sha256: str | None = None
    input_size: int = 224
    preprocessing: str = "center_crop"  # "center_crop" (baseline) | "letterbox"
    datasets: tuple[tuple[str, str], ...] | None = None  # (task, dataset) pairs it serves; None = all
    description: str = ""
    extra: dict = field(default_factory=dict)

    def serves(self, task: str, dataset_name: str) -> bool:
        return self.datasets is None or (task, dataset_name) in self.datasets


class ServedModel(Protocol):
    spec: ModelSpec
    device: torch.device
    sha256: str

    def forward(
        self,
        images: torch.Tensor,
        position: torch.Tensor,
        task: torch.Tensor,
        type_: torch.Tensor,
        nature: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path | str) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) in this process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]
