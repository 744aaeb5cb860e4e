"""Resource measurements: process RSS (psutil), GPU memory (torch.cuda) and GPU utilisation (NVML).

Without a GPU every GPU field is ``None`` — the views show "CPU", never zeros pretending to be measurements.
NVML comes from the ``nvidia-ml-py`` package (imported as ``pynvml``).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

import psutil

MB = 1024 * 1024
_PROCESS = psutil.Process()
_NVML_LOCK = threading.Lock()
_NVML_STATE: dict = {"tried": False, "ok": False}


def process_rss_mb() -> float:
    """Resident memory of this process in MiB."""
    return _PROCESS.memory_info().rss / MB


def _cuda(device) -> ModuleType | None:
    """``torch.cuda`` when ``device`` is a usable CUDA device, else ``None``."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return None
    if device is None or str(device).split(":")[0] != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda


@dataclass
class GpuMemory:
    """Peak memory during a measured block (MiB); ``None`` on CPU."""

    used_mb: float | None = None  # torch.cuda.max_memory_allocated
    reserved_mb: float | None = None  # torch.cuda.memory_reserved


@contextmanager
def measure_gpu(device):
    """Reset the CUDA peak counters, run the block, then fill the yielded :class:`GpuMemory`.

    Call it where no other thread runs CUDA work on the same device (the engine holds its lock).
    """
    result = GpuMemory()
    cuda = _cuda(device)
    if cuda is None:
        yield result
        return
    cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        cuda.synchronize(device)
        result.used_mb = cuda.max_memory_allocated(device) / MB
        result.reserved_mb = cuda.memory_reserved(device) / MB


def _nvml():
    """The initialised ``pynvml`` module, or ``None`` when NVML is unavailable (no driver / no GPU)."""
    with _NVML_LOCK:
        if not _NVML_STATE["tried"]:
            _NVML_STATE["tried"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _NVML_STATE["module"] = pynvml
                _NVML_STATE["ok"] = pynvml.nvmlDeviceGetCount() > 0
            except Exception:
                _NVML_STATE["ok"] = False
        return _NVML_STATE.get("module") if _NVML_STATE["ok"] else None


def nvml_gpu(index: int = 0) -> dict | None:
    """Utilisation and memory of GPU ``index`` from NVML, or ``None`` without NVML / GPU."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        util = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = nvml.nvmlDeviceGetName(handle)
        return {
            "name": name.decode() if isinstance(name, bytes) else str(name),
            "util_percent": float(util.gpu),
            "mem_used_mb": memory.used / MB,
            "mem_total_mb": memory.total / MB,
        }
    except Exception:
        return None


def device_label(device) -> str:
    """"CPU" or the GPU's name, for display."""
    cuda = _cuda(device)
    if cuda is None:
        return "CPU"
    try:
        import torch

        index = torch.device(device).index or 0
        return cuda.get_device_name(index)
    except Exception:
        return str(device)


def system_snapshot() -> dict:
    """A cheap reading for the dashboard's live strip: CPU %, RAM and GPU (``None`` without one)."""
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "ram_used_mb": (memory.total - memory.available) / MB,
        "ram_total_mb": memory.total / MB,
        "ram_percent": memory.percent,
        "process_rss_mb": process_rss_mb(),
        "gpu": nvml_gpu(0),
    }
