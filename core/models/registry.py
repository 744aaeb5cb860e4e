"""The model manifest (``weights/models.json``) and the registry that verifies and loads its entries.

Manifest: a JSON list of :class:`~core.models.base.ModelSpec` fields (or ``{"models": [...]}``)::

    [{"name": "demo", "arch": "demo_unet", "file": "demo.pt", "sha256": "...", "input_size": 256,
      "preprocessing": "letterbox", "datasets": [["segmentation", "BUSI"], ...], "description": "..."}]

Every load checks the file exists, is not empty and matches its sha256, then dispatches by ``arch`` to the
adapter's ``load(spec, path, device) -> ServedModel``. Any failure is one :class:`WeightsError` naming the file
and the problem. This module is the checkpoint as data (manifest, resolving, verifying, building); it keeps no
loaded model: :class:`core.routing.ModelPool` owns the loaded models and their engines, one per settings key.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import NoModelError
from core.models.base import (
    SEG_ACTIVATIONS,
    SEG_OUTPUTS,
    ModelSpec,
    ServedModel,
    WeightsError,
    check_contract,
    file_sha256,
)
from core.settings import Settings

if TYPE_CHECKING:  # torch is imported when a model is loaded, not to serve a cached converted model
    import torch

ARCHITECTURES = {
    "uusic_omni": "core.models.uusic_omni",
    "demo_unet": "core.models.demo_unet",
    "torchscript": "core.models.exported",
    "torch_export": "core.models.exported",
}
_SPEC_FIELDS = {f.name for f in fields(ModelSpec)}


def _datasets(value, where: str) -> tuple[tuple[str, str], ...] | None:
    """``[["segmentation","BUSI"], {"task":..,"dataset_name":..}, "segmentation/BUSI"]`` → tuple of pairs."""
    if value is None:
        return None
    pairs = []
    for item in value:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
        elif isinstance(item, dict) and "task" in item and ("dataset_name" in item or "dataset" in item):
            pairs.append((str(item["task"]), str(item.get("dataset_name", item.get("dataset")))))
        elif isinstance(item, str) and "/" in item:
            task, name = item.split("/", 1)
            pairs.append((task, name))
        else:
            raise WeightsError(f"{where}: cannot read dataset entry {item!r}; use [task, dataset_name]")
    return tuple(pairs)


def spec_from_dict(entry: dict, where: str = "models.json") -> ModelSpec:
    if not isinstance(entry, dict):
        raise WeightsError(f"{where}: each model entry must be an object, got {type(entry).__name__}")
    missing = [k for k in ("name", "arch", "file") if not entry.get(k)]
    if missing:
        raise WeightsError(f"{where}: model entry {entry.get('name', '?')!r} lacks {', '.join(missing)}")
    known = {k: v for k, v in entry.items() if k in _SPEC_FIELDS and k != "extra"}
    extra = dict(entry.get("extra") or {})
    extra.update({k: v for k, v in entry.items() if k not in _SPEC_FIELDS})
    label = f"{where} [{entry['name']}]"
    known["datasets"] = _datasets(entry.get("datasets"), label)
    if "input_size" in known:
        known["input_size"] = int(known["input_size"])
    _check_head_fields(known, label)
    return ModelSpec(**known, extra=extra)


def _check_head_fields(known: dict, where: str) -> None:
    """``seg_output``, ``seg_activation``, ``threshold`` and ``max_batch`` of an entry, validated in place."""
    if known.get("seg_output") is None:
        known.pop("seg_output", None)
    elif known["seg_output"] not in SEG_OUTPUTS:
        raise WeightsError(f"{where}: seg_output must be one of {', '.join(SEG_OUTPUTS)}, got {known['seg_output']!r}")
    if known.get("seg_activation") is None:
        known.pop("seg_activation", None)
    elif known["seg_activation"] not in SEG_ACTIVATIONS:
        raise WeightsError(f"{where}: seg_activation must be one of {', '.join(SEG_ACTIVATIONS)}, "
                           f"got {known['seg_activation']!r}")
    if known.get("threshold") is None:
        known.pop("threshold", None)
    else:
        value = known["threshold"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WeightsError(f"{where}: threshold must be a number, got {value!r}")
        if known.get("seg_activation", "sigmoid") == "sigmoid" and not 0.0 < value < 1.0:
            raise WeightsError(f"{where}: threshold {value!r} must lie strictly between 0 and 1 (sigmoid head)")
        known["threshold"] = float(value)
    if "max_batch" in known and known["max_batch"] is not None:
        value = known["max_batch"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WeightsError(f"{where}: max_batch must be a whole number >= 1 or null, got {value!r}")


def read_manifest(path: Path) -> list[ModelSpec]:
    """All entries of a manifest file; raises :class:`WeightsError` when it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"model manifest {path} not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"model manifest {path} is not valid JSON: {exc}") from None
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise WeightsError(f"model manifest {path} must hold a list of models")
    return [spec_from_dict(e, path.name) for e in entries]


def list_models(settings: Settings) -> list[ModelSpec]:
    return read_manifest(settings.manifest_path)


def find_spec(settings: Settings, name: str | None = None) -> ModelSpec:
    """The manifest entry called ``name`` (default: ``settings.default_model``, else the first entry)."""
    specs = list_models(settings)
    if not specs:
        raise NoModelError(f"the model manifest {settings.manifest_path} lists no models")
    wanted = name or settings.default_model
    if wanted is None:
        return specs[0]
    for spec in specs:
        if spec.name == wanted:
            return spec
    raise NoModelError(f"no model named {wanted!r} in {settings.manifest_path}; known: "
                       f"{', '.join(s.name for s in specs)}")


def adhoc_spec(arch: str, weights: Path | str, *, name: str | None = None, input_size: int | None = None,
               preprocessing: str | None = None, datasets=None) -> ModelSpec:
    """A spec for a weights file given on the command line (``--arch uusic_omni --weights FILE``)."""
    if arch not in ARCHITECTURES:
        raise WeightsError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    path = Path(weights).expanduser().resolve()
    defaults = {"uusic_omni": (224, "center_crop")}.get(arch, (None, None))
    return ModelSpec(
        name=name or path.stem,
        arch=arch,
        file=str(path),
        sha256=None,
        input_size=int(input_size or defaults[0] or 224),
        preprocessing=preprocessing or defaults[1] or "center_crop",
        datasets=_datasets(datasets, "ad-hoc spec"),
    )


def weights_path(spec: ModelSpec, weights_dir: Path) -> Path:
    path = Path(spec.file).expanduser()
    return path if path.is_absolute() else Path(weights_dir) / path


def verify_weights(spec: ModelSpec, weights_dir: Path) -> tuple[Path, str]:
    """The weights file and its sha256; :class:`WeightsError` when missing, empty, truncated or mismatched."""
    path = weights_path(spec, weights_dir)
    if not path.is_file():
        raise WeightsError(f"weights file {path} for model {spec.name!r} is missing")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"weights file {path} for model {spec.name!r} is empty")
    expected_size = spec.extra.get("size_bytes")
    if expected_size is not None and int(expected_size) != size:
        raise WeightsError(
            f"weights file {path} is {size:,} bytes but the manifest says {int(expected_size):,} (truncated?)"
        )
    sha = file_sha256(path)
    if spec.sha256 and spec.sha256.lower() != sha:
        raise WeightsError(
            f"weights file {path} does not match its manifest sha256 (expected {spec.sha256[:12]}…, got "
            f"{sha[:12]}…, {size:,} bytes): truncated, replaced or corrupt"
        )
    return path, sha


@dataclass(frozen=True)
class CpuDevice:
    """The CPU, named without importing torch (a cached converted model serves without it); ``.type`` / ``.index``
    / ``str()`` as a ``torch.device``, which :func:`torch_device` turns it into."""

    type: str = "cpu"
    index: int | None = None

    def __str__(self) -> str:
        return "cpu"


def torch_device(device: Any) -> torch.device:
    """``device`` (a name, a :class:`CpuDevice` or a ``torch.device``) as a ``torch.device``."""
    import torch

    return device if isinstance(device, torch.device) else torch.device(str(device))


def _cuda_possible() -> bool:
    """False when this machine certainly has no usable NVIDIA GPU (no driver): then ``auto`` is the CPU without
    importing torch to ask."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia") or sys.platform != "linux"


def resolve_device(name: Any) -> Any:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA device without CUDA is an error.

    The CPU is a ``torch.device`` once torch is imported, else a :class:`CpuDevice` (torch stays unimported)."""
    from core.errors import DeviceError

    text = str(name or "auto").strip().lower()
    if text in ("cpu", "auto") and "torch" not in sys.modules and (text == "cpu" or not _cuda_possible()):
        return CpuDevice()
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def _adapter(arch: str):
    module_name = ARCHITECTURES.get(arch)
    if module_name is None:
        raise WeightsError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsError(f"architecture {arch!r} is not available ({module_name}: {exc})") from None


def load_model(spec: ModelSpec, device: Any, *, weights_dir: Path | None = None) -> ServedModel:
    """Verify and build ``spec`` on ``device`` (a new model each call: the pool keeps the loaded ones)."""
    weights_dir = Path(weights_dir) if weights_dir is not None else Settings().weights_dir
    device = torch_device(device)
    path, sha = verify_weights(spec, weights_dir)
    adapter = _adapter(spec.arch)
    try:
        model = adapter.load(spec, path, device)
    except WeightsError:
        raise
    except Exception as exc:  # torch.load / load_state_dict / jit errors → one clear message
        raise WeightsError(
            f"weights file {path} cannot be loaded as {spec.arch!r}: {type(exc).__name__}: {_short(exc)}"
        ) from exc
    with contextlib.suppress(AttributeError):
        model.sha256 = sha
    if getattr(model, "spec", None) is None:
        with contextlib.suppress(AttributeError):
            model.spec = spec
    return model


def verify_entry(spec: ModelSpec, weights_dir: Path, *, load: bool = True, device: str = "cpu") -> str:
    """Check one manifest entry the way serving it would: the file and its sha256, then (``load``) that it loads
    on ``device`` and returns the contract's shapes. Returns a short note; raises :class:`WeightsError`."""
    path, sha = verify_weights(spec, weights_dir)
    note = f"sha256 {sha[:12]}…" + ("" if spec.sha256 else " (the manifest has no sha256)")
    if not load:
        return note
    model = load_model(spec, device, weights_dir=weights_dir)
    try:
        check_contract(model, spec, str(path))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - a forward that crashes is a broken entry, named as such
        raise WeightsError(f"{path}: a forward pass fails: {type(exc).__name__}: {_short(exc)}") from None
    limit = getattr(model, "max_batch", None) or spec.max_batch
    return note + f", loads on {device}" + (f", max_batch {limit}" if limit else "")


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " …"


def with_datasets(spec: ModelSpec, datasets) -> ModelSpec:
    return replace(spec, datasets=_datasets(datasets, spec.name))
