"""The contract every served network follows, whatever its architecture.

A served model takes a batch of square images and the baseline's four prompt vectors and returns
the UUSIC25 baseline's output triple::

    images   float32 [B, S, S, 3] in [0, 1], channels last (S = spec.input_size), no normalisation
    position float32 [B, 8]   task [B, 2]   type [B, 3]   nature [B, 2]   (one-hot, see core.catalog)
    returns  (seg_logits [B, 2, S, S], cls2_logits [B, 2], cls4_logits [B, 4])
             + optionally embedding [B, E] when the model has ``embedding_size = E``: prompt-free image features
             the organ recogniser may read (the demo network's encoder means, :mod:`core.recognition_encoder`)

Adapters (uusic_omni, the demo network, TorchScript / torch.export files) convert to what their
network wants internally.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from core.errors import WeightsError  # also re-exported: core.models.base.WeightsError
from core.files import sha256_file

if TYPE_CHECKING:  # torch is imported where a function needs it: a converted model serves without it
    import torch


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
    # the network's segmentation head: "two" = two-channel logits (softmax / argmax, the baseline); "one" = one
    # channel, foreground where activation(s) > threshold (the adapter turns it into two-channel logits)
    seg_output: str = "two"
    threshold: float = 0.5
    seg_activation: str = "sigmoid"  # "sigmoid": s are logits, sigmoid(s) > threshold; "none": s > threshold
    max_batch: int | None = None  # most images per forward pass (1: an export with a fixed batch); None = any
    extra: dict = field(default_factory=dict)

    def serves(self, task: str, dataset_name: str) -> bool:
        return self.datasets is None or (task, dataset_name) in self.datasets


SEG_OUTPUTS = ("two", "one")
SEG_ACTIVATIONS = ("sigmoid", "none")


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
    digest = sha256_file(path)
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


# ------------------------------------------------------------------------------------------------ contract checks

def example_inputs(batch: int, size: int, *, seed: int = 0, device: torch.device | str = "cpu"):
    """Seeded random images in [0, 1] and valid one-hot prompts, a different prompt per sample."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, size, size, 3, generator=generator)

    def one_hot(n: int) -> torch.Tensor:
        start = int(torch.randint(n, (1,), generator=generator))
        return torch.eye(n)[(torch.arange(batch) + start) % n]

    inputs = (images, one_hot(8), one_hot(2), one_hot(3), one_hot(2))
    return tuple(t.to(device) for t in inputs)


def check_contract(model, spec: ModelSpec, where: str) -> None:
    """One forward of one image: the served output shapes must be ``([1,2,S,S], [1,2], [1,4])``, and
    ``[1, E]`` after them for a model with ``embedding_size = E``."""
    import torch

    size = spec.input_size
    with torch.inference_mode():
        out = model(*example_inputs(1, size, device=getattr(model, "device", "cpu")))
    embedding_size = getattr(model, "embedding_size", None)
    if embedding_size and isinstance(out, (tuple, list)) and len(out) == 4:
        if tuple(out[3].shape) != (1, embedding_size):
            raise WeightsError(f"{where}: the model's embedding has shape {tuple(out[3].shape)}; expected "
                               f"(1, {embedding_size})")
        out = out[:3]
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise WeightsError(f"{where}: the model must return (seg_logits, cls2, cls4), got {type(out).__name__}")
    shapes = tuple(tuple(t.shape) for t in out)
    if shapes != ((1, 2, size, size), (1, 2), (1, 4)):
        hint = ""
        if len(shapes[0]) == 4 and shapes[0][1] == 1 and spec.seg_output != "one":
            hint = ' (a one-channel segmentation head: set "seg_output": "one" and its "threshold")'
        raise WeightsError(f"{where}: the model returns shapes {shapes}; expected "
                           f"((1, 2, {size}, {size}), (1, 2), (1, 4)){hint}")


BATCH_TOLERANCE = 1e-3  # |batch - one at a time| <= BATCH_TOLERANCE * max(1, max |one at a time|)


def check_batch(model, spec: ModelSpec, where: str, *, batch: int = 3, seed: int = 1) -> float:
    """A batch of ``batch`` seeded images must give what the same images give one at a time.

    Catches files whose batch size was frozen at trace / export time (``torch.jit.trace`` turns
    ``x.shape[0]`` into a constant, and a reshape then mixes the samples without any error). Returns the
    largest relative difference; raises :class:`WeightsError` beyond :data:`BATCH_TOLERANCE`.
    """
    import torch

    inputs = example_inputs(batch, spec.input_size, seed=seed, device=getattr(model, "device", "cpu"))
    advice = ('It was probably traced with torch.jit.trace or exported with a fixed batch size: export it with '
              '`python -m core export` (batch-1 networks are recorded as "max_batch": 1), or set "max_batch": 1 '
              'in its manifest entry if it only runs one image at a time.')
    with torch.inference_mode():
        singles = [model(*(t[i : i + 1] for t in inputs)) for i in range(batch)]
        try:
            together = model(*inputs)
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot take a batch"
            raise WeightsError(f"{where}: a batch of {batch} images fails ({type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:200]}). {advice}") from None
    worst = 0.0
    for k, name in enumerate(("seg", "cls2", "cls4")):
        reference = torch.cat([s[k] for s in singles]).float()
        got = together[k].float()
        if got.shape != reference.shape:
            raise WeightsError(f"{where}: a batch of {batch} gives {name} of shape {tuple(got.shape)}, one at a "
                               f"time {tuple(reference.shape)}. {advice}")
        diff = float((got - reference).abs().max()) / max(1.0, float(reference.abs().max()))
        if not diff <= BATCH_TOLERANCE:  # also NaN
            raise WeightsError(f"{where}: a batch of {batch} images disagrees with the same images one at a time "
                               f"(relative max |Δ| {diff:.3g} on {name}). {advice}")
        worst = max(worst, diff)
    return worst
