"""Serve TorchScript (``torch.jit.save``) and ``torch.export`` (``.pt2``) files through the model contract.

The exported module is called as ``module(images[B,S,S,3], position[B,8], task[B,2], type[B,3], nature[B,2])``
and must return the triple ``(seg_logits[B,2,S,S], cls2[B,2], cls4[B,4])``: any architecture the team
exports (SAMUS, MoE variants, ...) is served like the baseline. A program exported with a fixed batch of 1
is run one sample at a time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from core.models.base import ModelSpec, WeightsError


class ExportedModel:
    """Adapter around a TorchScript module or an ``ExportedProgram``'s module (already in eval form)."""

    def __init__(self, module, spec: ModelSpec, device: torch.device, kind: str):
        self.module = module
        self.spec = spec
        self.device = device
        self.kind = kind
        self.sha256 = ""
        self._per_sample = False

    def _call(self, *inputs):
        out = self.module(*inputs)
        if isinstance(out, dict):
            out = (out["seg"], out["cls2"], out["cls4"])
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise WeightsError(
                f"{self.spec.file}: exported module must return (seg_logits, cls2, cls4), got {type(out).__name__}"
            )
        return tuple(out)

    def forward(self, images, position, task, type_, nature):
        inputs = (images, position, task, type_, nature)
        if images.shape[0] > 1 and not self._per_sample:
            try:
                return self._call(*inputs)
            except WeightsError:
                raise
            except Exception:  # e.g. exported with a static batch of 1
                self._per_sample = True
        if self._per_sample and images.shape[0] > 1:
            parts = [self._call(*(t[i : i + 1] for t in inputs)) for i in range(images.shape[0])]
            return tuple(torch.cat([p[k] for p in parts], dim=0) for k in range(3))
        return self._call(*inputs)

    __call__ = forward


def _check_contract(model: ExportedModel, spec: ModelSpec, path: Path) -> None:
    """One forward on a blank image: the output shapes must follow the contract."""
    size = spec.input_size
    device = model.device
    with torch.inference_mode():
        seg, cls2, cls4 = model(
            torch.zeros(1, size, size, 3, device=device),
            torch.eye(8, device=device)[:1],
            torch.eye(2, device=device)[:1],
            torch.eye(3, device=device)[:1],
            torch.eye(2, device=device)[1:],
        )
    shapes = (tuple(seg.shape), tuple(cls2.shape), tuple(cls4.shape))
    if shapes[0][:2] != (1, 2) or shapes[1] != (1, 2) or shapes[2] != (1, 4):
        raise WeightsError(
            f"{path}: exported module returns shapes {shapes}; expected ((1,2,S,S), (1,2), (1,4))"
        )


def load(spec: ModelSpec, path: Path, device: torch.device) -> ExportedModel:
    """Load a ``torchscript`` or ``torch_export`` file for ``spec``; raises :class:`WeightsError`."""
    path = Path(path)
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
        module = program.module()
        try:
            module = module.to(device)
        except Exception as exc:
            raise WeightsError(f"{path}: cannot move the exported program to {device}: {exc}") from None
    else:
        raise WeightsError(f"{path}: exported adapter cannot load architecture {spec.arch!r}")
    model = ExportedModel(module, spec, device, spec.arch)
    _check_contract(model, spec, path)
    return model
