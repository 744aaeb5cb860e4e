"""Served models as ``torch.nn.Module`` s, for the converters of :mod:`core.models.backends` (which imports this
module only when it converts or runs eager bf16, so a cached converted model serves without torch)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def torch_module(model: Any) -> nn.Module:
    """The network behind a served model as an ``nn.Module`` taking the five contract inputs (float32, CPU)."""
    network = getattr(model, "network", None)
    if isinstance(network, nn.Module):
        return network.eval()
    return ServedAsModule(model)


class ServedAsModule(nn.Module):
    """Any served model (an exported file's adapter) as a module, so tracers can follow its forward."""

    def __init__(self, served: Any):
        super().__init__()
        self.served = served
        inner = getattr(served, "module", None)
        if isinstance(inner, nn.Module):
            self.inner = inner  # registered, so its parameters belong to this module

    def forward(self, images, position, task, type_, nature):
        return tuple(self.served.forward(images, position, task, type_, nature))


class Autocast(nn.Module):
    """``network`` under CPU bf16 autocast with its conv / linear weights stored in bf16 (no per-call re-cast)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = copy.deepcopy(network).eval()
        for module in self.network.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
                module.to(torch.bfloat16)

    def forward(self, images, position, task, type_, nature):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.network(images, position, task, type_, nature)
        return tuple(o.float() for o in out)
