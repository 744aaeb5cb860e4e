"""Serve TorchScript (``torch.jit.save``) and ``torch.export`` (``.pt2``) files through the model contract.

The exported module is called as ``module(images[B,S,S,3], position[B,8], task[B,2], type[B,3], nature[B,2])``
and returns ``(seg, cls2[B,2], cls4[B,4])``: any architecture the team exports (SAMUS, MoE variants, ...) is
served like the baseline. ``python -m core export`` (:mod:`core.export`) writes such files.

``seg`` is ``[B,2,S,S]`` logits, or — with ``"seg_output": "one"`` in the manifest — one channel ``s`` that the
network thresholds itself: foreground where ``sigmoid(s) > threshold`` (``"seg_activation": "sigmoid"``, the
default: ``s`` are logits) or ``s > threshold`` (``"none"``: ``s`` are probabilities, or raw scores compared
directly, as the team's ``model.py`` does). The adapter turns it into the two-channel logits ``[0, s - c]`` with
``c = logit(threshold)`` (``threshold`` for ``none``), so that the engine's ``argmax(softmax(.))`` and
``softmax(.)[1] > 0.5`` give exactly that foreground; with a sigmoid at 0.5, ``softmax(.)[1]`` is ``sigmoid(s)``.

Batches larger than ``max_batch`` are run in chunks (a program exported with a fixed batch of 1 is detected and
run one image at a time). Every load checks the output shapes and — unless the model runs one image at a
time — that a batch of 3 gives what the 3 images give one at a time, so that a file whose batch size was frozen
by ``torch.jit.trace`` is refused instead of mixing patients' images.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from core.models.base import ModelSpec, WeightsError, check_batch, check_contract

# A foreground pixel's logit is at least this, a background pixel's at most 0: softmax in float32 then never
# rounds the two channels to a tie on the wrong side of the threshold.
_MARGIN = 1e-6


def threshold_offset(threshold: float, activation: str) -> float:
    """``c`` such that the foreground is ``s > c``: ``logit(threshold)`` for a sigmoid, else ``threshold``."""
    if activation == "none":
        return float(threshold)
    if not 0.0 < threshold < 1.0:
        raise WeightsError(f"threshold {threshold!r} must lie strictly between 0 and 1 for a sigmoid head")
    return math.log(threshold / (1.0 - threshold))


def one_channel_logits(seg: torch.Tensor, threshold: float = 0.5, activation: str = "sigmoid") -> torch.Tensor:
    """``[B,1,S,S]`` scores → ``[B,2,S,S]`` logits whose argmax is ``activation(s) > threshold``, exactly."""
    s = seg[:, :1].float()
    foreground = s > threshold if activation == "none" else torch.sigmoid(s) > threshold
    shifted = s - threshold_offset(threshold, activation)
    shifted = torch.where(foreground, shifted.clamp(min=_MARGIN), shifted.clamp(max=0.0))
    return torch.cat([torch.zeros_like(shifted), shifted], dim=1)


class ExportedModel:
    """Adapter around a TorchScript module or an ``ExportedProgram``'s module (already in eval form)."""

    def __init__(self, module, spec: ModelSpec, device: torch.device, kind: str, *, max_batch: int | None = None):
        self.module = module
        self.spec = spec
        self.device = device
        self.kind = kind
        self.sha256 = ""
        self.max_batch = max_batch if max_batch is not None else spec.max_batch

    def _call(self, *inputs):
        out = self.module(*inputs)
        if isinstance(out, dict):
            out = (out["seg"], out["cls2"], out["cls4"])
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise WeightsError(
                f"{self.spec.file}: exported module must return (seg_logits, cls2, cls4), got {type(out).__name__}"
            )
        seg, cls2, cls4 = out
        if self.spec.seg_output == "one":
            if seg.dim() != 4 or seg.shape[1] != 1:
                raise WeightsError(f"{self.spec.file}: the manifest says \"seg_output\": \"one\" but the module "
                                   f"returns a segmentation of shape {tuple(seg.shape)}")
            seg = one_channel_logits(seg, self.spec.threshold, self.spec.seg_activation)
        return seg, cls2, cls4

    def forward(self, images, position, task, type_, nature):
        inputs = (images, position, task, type_, nature)
        limit = self.max_batch
        if limit and images.shape[0] > limit:
            parts = [self._call(*(t[i : i + limit] for t in inputs)) for i in range(0, images.shape[0], limit)]
            return tuple(torch.cat([p[k] for p in parts], dim=0) for k in range(3))
        return self._call(*inputs)

    __call__ = forward


def static_batch(program) -> int | None:
    """The batch size an ``ExportedProgram`` was exported with when it is fixed (``None`` when dynamic)."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                value = node.meta.get("val")
                first = value.shape[0] if value is not None and len(value.shape) else None
                return first if isinstance(first, int) else None
    except Exception:  # noqa: BLE001 - an unusual program: no detection, the batch check decides
        return None
    return None


def load(spec: ModelSpec, path: Path, device: torch.device) -> ExportedModel:
    """Load a ``torchscript`` or ``torch_export`` file for ``spec``; raises :class:`WeightsError`."""
    path = Path(path)
    max_batch = spec.max_batch
    if spec.arch == "torchscript":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, its files still exist
                module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:
            raise WeightsError(f"{path} is not a loadable TorchScript file: {exc}") from None
        module.eval()
    elif spec.arch == "torch_export":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a loadable torch.export (.pt2) file: {exc}") from None
        fixed = static_batch(program)
        if fixed is not None and fixed != 1:
            raise WeightsError(f"{path} was exported with a fixed batch of {fixed}: it cannot run one image. "
                               "Export it with a dynamic batch or a batch of 1 (`python -m core export`).")
        if fixed == 1:
            max_batch = 1  # the program checks its input shapes: run it one image at a time
        module = program.module()
        try:
            module = module.to(device)
        except Exception as exc:
            raise WeightsError(f"{path}: cannot move the exported program to {device}: {exc}") from None
    else:
        raise WeightsError(f"{path}: exported adapter cannot load architecture {spec.arch!r}")
    if spec.seg_output == "one":
        threshold_offset(spec.threshold, spec.seg_activation)  # a bad threshold is a load error, not a 500 later
    model = ExportedModel(module, spec, device, spec.arch, max_batch=max_batch)
    check_contract(model, spec, str(path))
    if model.max_batch != 1:
        check_batch(model, spec, str(path))
    return model
