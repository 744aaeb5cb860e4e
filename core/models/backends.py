"""Inference backends for CPU serving: the loaded torch model, or the same network converted for a faster runtime.

=================  ====================================================================================================
backend            what runs the forward pass
=================  ====================================================================================================
``torch``          the model as loaded (eager PyTorch); ``bf16``: a copy with conv/linear weights in bf16 under
                   ``torch.autocast``
``torch-compile``  ``torch.export`` → AOTInductor package (``.pt2``, dynamic batch; needs a C++ compiler to build)
``openvino``       ``openvino.convert_model`` of the torch network (dynamic batch) → OpenVINO IR (``model.xml/.bin``),
                   compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32 (``fp32``) or bf16 (``bf16``);
                   ``int8``: static post-training quantisation with NNCF, calibrated on training images of the
                   data root (opt-in; needs ``nncf``)
``auto``           on the CPU the fastest backend whose outputs match fp32 eager (measured, docs/PERFORMANCE.md):
                   ``openvino`` when it is installed, else ``torch``; on CUDA always ``torch``
=================  ====================================================================================================

Choice: ``UUSIC_BACKEND`` / ``UUSIC_PRECISION`` (:class:`~core.settings.Settings`), overridden per model by the manifest
fields ``backend`` / ``precision``. Only CPU devices are converted; CUDA keeps torch (and ``UUSIC_AMP``).

Converted artefacts are written once to ``<workspace>/cache/backends/`` (or ``UUSIC_CACHE_DIR``), one folder per
key — the weights' sha256, backend, precision, library versions and input size — so a restart loads the artefact
instead of converting again, and new weights (a new sha256) get a new artefact (older ones of that model are removed).
A backend that is not installed, cannot convert the model or fails its check falls back to eager torch with a
warning in the log; the reason is kept in :class:`BackendInfo` and shown by ``/healthz``.

A server never waits for a conversion (``serve(..., on_converted=...)``, what the model pool asks for): when the
artefact is not cached it answers with eager torch at once (``state`` ``"converting"``) while one background thread
per artefact converts it, then hands the converted model over (``"converted"``); a conversion that fails leaves eager
torch serving (``"eager"``, ``fallback`` says why, without paths).

An OpenVINO artefact is served by :class:`RuntimeModel`: numpy in, numpy out, checked at start against eager
outputs saved beside it (``check.npz``), so a start with a cached conversion never imports torch and never keeps the
eager model: the eager model is loaded only to convert (then released), for a torch backend, or on a fallback. A
runtime failure of the converted model is a :class:`~core.errors.BackendUnavailable` (503) that names
``UUSIC_BACKEND=torch``. torch-compile and eager bf16 run in a :class:`ConvertedModel`, which keeps the eager
model's ``spec``, ``sha256``, ``device`` (and any other attribute) visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from core.errors import BackendUnavailable
from core.models import ov_convert
from core.models.base import ModelSpec, example_inputs

if TYPE_CHECKING:  # torch is imported only to convert, to run torch-side backends, or for eager torch
    import torch
    from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-compile", "openvino")
CHOICES = ("auto", *BACKENDS)
PRECISIONS = ("fp32", "bf16", "int8")
# ``auto`` on a CPU: the first of these that is installed (fastest fp32-equivalent first, by measurement)
AUTO_ORDER = ("openvino",)
FORMAT_VERSION = 2  # bump when the artefact layout or the conversion recipe changes (invalidates old caches);
# 2: the demo network's artefact returns its encoder embedding as a fourth output (core.recognition_encoder)
CALIBRATION_IMAGES = 300  # int8: training images used to calibrate the quantisation
MAX_EXPORT_BATCH = 1024  # torch-compile: the dynamic batch dimension's upper bound

# Tolerances that make a backend "equivalent to fp32 eager" (checked by tests/test_backends.py and the bench).
FIDELITY = {"max_abs_dp": 1e-4, "mask_agreement": 0.999}


@dataclass
class BackendInfo:
    """What runs a model, and why (``/healthz``, ``Engine.model_info``)."""

    requested: str  # the backend asked for (setting or manifest): auto | torch | torch-compile | openvino
    backend: str  # what runs: torch | torch-compile | openvino
    precision: str  # fp32 | bf16 | int8
    requested_precision: str = "fp32"
    fallback: str | None = None  # why the requested backend / precision is not the one running
    artefact: str | None = None  # the cached artefact's folder name
    cached: bool = False  # the artefact was on disk already (no conversion in this start)
    convert_sec: float | None = None  # conversion time when this start converted
    load_sec: float | None = None  # time to load / compile the artefact
    version: str | None = None  # the runtime library's version
    state: str = "eager"  # eager | converting (eager serves meanwhile) | converted

    def as_dict(self) -> dict:
        return asdict(self)


STATS = {"conversions": 0, "loads": 0}  # counters (tests: a second load converts nothing)
# Converted models in use, shared by the engines that serve them while any does (weak: the model pool owns them)
_LOADED: weakref.WeakValueDictionary[tuple, ConvertedModel] = weakref.WeakValueDictionary()  # (id(eager), artefact)
_RUNTIMES: weakref.WeakValueDictionary[str, RuntimeModel] = weakref.WeakValueDictionary()  # artefact -> its runtime
_CONVERTED: dict[str, Path] = {}  # artefact name -> the folder this process converted or loaded it in
_GUARD = threading.Lock()
_ARTEFACT_LOCKS: dict[str, threading.Lock] = {}  # one per artefact: a conversion holds only its own


def _artefact_lock(name: str) -> threading.Lock:
    """The lock of artefact ``name``: loading or converting one model never waits for another model's conversion."""
    with _GUARD:
        return _ARTEFACT_LOCKS.setdefault(name, threading.Lock())


# ------------------------------------------------------------------------------------------------ choosing


def requested(spec: ModelSpec, settings: Any) -> tuple[str, str]:
    """(backend, precision) asked for: the manifest entry's ``backend`` / ``precision``, else the settings."""
    extra = spec.extra or {}
    backend = getattr(spec, "backend", None) or extra.get("backend") or getattr(settings, "backend", "auto")
    precision = getattr(spec, "precision", None) or extra.get("precision") or getattr(settings, "precision", "fp32")
    return str(backend).strip().lower(), str(precision).strip().lower()


def installed(backend: str) -> str | None:
    """None when ``backend`` can run here, else why not."""
    if backend == "torch":
        return None
    if backend == "openvino":
        try:
            importlib.import_module("openvino")
        except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install raising anything
            return f"openvino is not installed ({type(exc).__name__}; pip install -r requirements-fast.txt)"
        return None
    if backend == "torch-compile":
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
            return "torch-compile needs a C++ compiler (g++) to build its package, and none was found"
        return None
    return f"unknown backend {backend!r} (known: {', '.join(CHOICES)})"


def resolve(spec: ModelSpec, settings: Any, device: Any) -> tuple[BackendInfo, list[str]]:
    """The info skeleton for ``spec`` on ``device`` and the backends to try in order (the last one is torch)."""
    backend, precision = requested(spec, settings)
    info = BackendInfo(requested=backend, backend="torch", precision="fp32", requested_precision=precision)
    if precision not in PRECISIONS:
        info.fallback = f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)}); running fp32"
        info.requested_precision = precision = "fp32"
    if device.type != "cpu":
        if backend not in ("auto", "torch") or precision != "fp32":
            info.fallback = f"{backend}/{precision} is for CPU serving; {device.type} runs torch (see UUSIC_AMP)"
        return info, []
    if backend == "auto":
        order = [b for b in AUTO_ORDER if installed(b) is None]
        if not order and precision == "fp32":
            info.fallback = f"auto: {installed(AUTO_ORDER[0])}; running eager torch"
        return info, [*order, "torch"]
    if backend not in BACKENDS:
        info.fallback = f"unknown backend {backend!r} (known: {', '.join(CHOICES)}); running eager torch"
        return info, ["torch"]
    return info, [backend] if backend == "torch" else [backend, "torch"]


# ------------------------------------------------------------------------------------------------ the wrappers


class ConvertedModel:
    """A served model whose forward runs a torch-side artefact (torch-compile, eager bf16); every other attribute is
    the eager model's."""

    numpy_io = False

    def __init__(self, eager: Any, runner: Callable[..., tuple], info: BackendInfo):
        self.eager = eager
        self._runner = runner
        self.backend_info = info
        self._lock = threading.Lock()  # runtimes' infer requests are not re-entrant

    def __getattr__(self, name: str) -> Any:  # spec, sha256, device, max_batch, network, meta ...
        if name in ("eager", "_runner", "backend_info", "_lock"):
            raise AttributeError(name)
        return getattr(self.eager, name)

    def forward(self, images, position, task, type_, nature):
        import torch

        inputs = [t.detach().to("cpu", torch.float32).contiguous() for t in (images, position, task, type_, nature)]
        with self._lock:
            out = self._runner(*inputs)
        return tuple(out)

    __call__ = forward

    def __repr__(self) -> str:
        info = self.backend_info
        return f"<ConvertedModel {info.backend}/{info.precision} of {self.eager!r}>"


class RuntimeModel:
    """A converted model served by its own runtime (OpenVINO) on numpy arrays: no torch, no eager copy in memory.

    ``forward`` takes the five contract inputs as numpy float32 arrays and returns numpy arrays; given torch tensors
    (library callers, contract checks) it returns torch tensors. A runtime failure is a :class:`BackendUnavailable`
    that says how to serve eager PyTorch instead."""

    numpy_io = True

    def __init__(self, runner: Callable[..., tuple], spec: ModelSpec, sha256: str, info: BackendInfo, *,
                 max_batch: int | None = None, device: Any = "cpu"):
        self._runner = runner
        self.spec, self.sha256, self.backend_info, self.device = spec, sha256, info, device
        self.max_batch = max_batch if max_batch is not None else spec.max_batch
        self._lock = threading.Lock()  # runtimes' infer requests are not re-entrant

    def forward(self, images, position, task, type_, nature):
        given = (images, position, task, type_, nature)
        tensors = not isinstance(images, np.ndarray)
        inputs = [np.ascontiguousarray(t.detach().cpu().float().numpy() if tensors else t, dtype=np.float32)
                  for t in given]
        try:
            with self._lock:
                out = self._runner(*inputs)
        except Exception as exc:  # noqa: BLE001 - a runtime failure: say how to switch backend
            info = self.backend_info
            raise BackendUnavailable(
                f"the {info.backend} {info.precision} model failed ({type(exc).__name__}: {_short(exc, 120)}); "
                "set UUSIC_BACKEND=torch to serve eager PyTorch instead") from exc
        if tensors:
            import torch

            return tuple(torch.from_numpy(o) for o in out)
        return tuple(out)

    __call__ = forward

    def __repr__(self) -> str:
        info = self.backend_info
        return f"<RuntimeModel {info.backend}/{info.precision} of {self.spec.name!r}>"


def torch_module(model: Any) -> Any:
    """The network behind a served model as an ``nn.Module`` (:func:`core.models.torch_modules.torch_module`)."""
    from core.models.torch_modules import torch_module as as_module

    return as_module(model)


# ------------------------------------------------------------------------------------------------ cache


def cache_root(settings: Any) -> Path:
    """``UUSIC_CACHE_DIR``, else ``<workspace>/cache/backends``."""
    folder = getattr(settings, "cache_dir", None)
    return Path(folder) if folder else Path(settings.workspace) / "cache" / "backends"


def library_version(backend: str) -> str:
    if backend == "openvino":
        import openvino

        return f"openvino-{openvino.__version__}"
    return f"torch-{torch_version()}"


def torch_version() -> str:
    """``torch.__version__`` (with its local part, e.g. ``+cu130``), read from torch's ``version.py`` while torch
    is not imported: the cache key of a converted model is computed without importing torch."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    with contextlib.suppress(Exception):
        found = importlib.util.find_spec("torch")
        if found is not None and found.origin:
            text = (Path(found.origin).parent / "version.py").read_text(encoding="utf-8")
            match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
            if match:
                return match.group(1)
    import torch

    return str(torch.__version__)


_THREADS: list[int] = []  # the count asked for by ``--threads``, for every backend of this process


def set_threads(count: int) -> None:
    """Intra-op threads for every backend of this process (the ``--threads`` of ``serve`` and ``predict``): a
    converted model's runtime, and torch's, now when torch is loaded, else when it first loads an eager model. It
    never imports torch itself (a cached converted model serves without it)."""
    _THREADS[:] = [count]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)


def runtime_threads() -> int:
    """Threads for a converted model's runtime: ``set_threads``' count, else torch's intra-op count when torch is
    loaded, else ``OMP_NUM_THREADS``, else the physical cores (torch's own default)."""
    if _THREADS:
        return _THREADS[0]
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    with contextlib.suppress(ValueError):
        if int(os.environ.get("OMP_NUM_THREADS", "")) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
    import psutil

    return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def cache_key(spec: ModelSpec, sha256: str, backend: str, precision: str) -> tuple[str, dict]:
    """The artefact's folder name and the fields it is keyed on."""
    fields = {"format": FORMAT_VERSION, "sha256": sha256, "arch": spec.arch, "backend": backend, "precision": precision,
              "library": library_version(backend), "torch": torch_version(), "input_size": spec.input_size,
              "seg_output": getattr(spec, "seg_output", "two"), "threshold": getattr(spec, "threshold", 0.5),
              "seg_activation": getattr(spec, "seg_activation", "sigmoid")}
    if precision == "int8":
        fields["calibration_images"] = CALIBRATION_IMAGES
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{_slug(spec.name)}-{backend}-{precision}-{digest}", fields


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "model"


def _prune(root: Path, keep: Path) -> None:
    """Remove older artefacts of the same model, backend and precision (replaced weights or library)."""
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    for other in root.glob(prefix + "*"):
        if other != keep and other.is_dir() and not other.name.startswith("."):
            with contextlib.suppress(OSError):
                shutil.rmtree(other)
                log.info("removed the outdated converted model %s", other.name)


@contextlib.contextmanager
def _building(root: Path, folder: Path) -> Iterator[Path]:
    """A temporary folder that becomes ``folder`` when the block succeeds (atomic for readers)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: use its artefact
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ backends


class _Backend:
    """Builds an artefact from a torch module into a folder, and loads a runner from it."""

    name = ""
    files: tuple[str, ...] = ()
    numpy_io = False  # load() gives a numpy runner (served by RuntimeModel, no torch) rather than a torch one

    def version(self) -> str:
        return library_version(self.name)

    def build(self, module: nn.Module, spec: ModelSpec, precision: str, folder: Path, settings: Any) -> None:
        raise NotImplementedError

    def load(self, folder: Path, precision: str) -> Callable[..., tuple]:
        raise NotImplementedError


def _dynamic_inputs(size: int) -> list[tuple[list[int], Any]]:
    return [([-1, size, size, 3], None), ([-1, 8], None), ([-1, 2], None), ([-1, 3], None), ([-1, 2], None)]


class OpenVinoBackend(_Backend):
    name = "openvino"
    files = ("model.xml", "model.bin")
    numpy_io = True
    HINTS: ClassVar[dict[str, str]] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}

    def build(self, module, spec, precision, folder, settings):
        import openvino as ov

        if precision == "bf16":
            self._check_bf16()
        if precision == "int8":
            try:
                importlib.import_module("nncf")
            except Exception as exc:  # noqa: BLE001
                raise BackendUnavailable(f"int8 needs nncf, which is not installed ({type(exc).__name__}; "
                                         "pip install -r requirements-fast.txt)") from None
        size = spec.input_size
        with tempfile.TemporaryDirectory(prefix="uusic-ov-") as work:
            converted = Path(work) / "model.xml"  # converted in a child process: this one's logging stays as it is
            ov_convert.convert_in_child(module, example_inputs(2, size), [s for s, _ in _dynamic_inputs(size)],
                                        Path(work), converted)
            model = ov.Core().read_model(converted)
            if precision == "int8":
                model = self._quantize(model, spec, settings)
            ov.save_model(model, folder / "model.xml", compress_to_fp16=False)

    @staticmethod
    def _check_bf16() -> None:
        import openvino as ov

        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in [str(c) for c in capabilities]:
            raise BackendUnavailable("this CPU has no bf16 support (OpenVINO would run f32)")

    def _quantize(self, model, spec: ModelSpec, settings: Any):
        import nncf

        samples = calibration_inputs(spec, settings, CALIBRATION_IMAGES)
        if not samples:
            raise BackendUnavailable("int8 needs training images to calibrate on, and the data root has none "
                                     "this model serves")
        log.info("calibrating int8 on %d training images of the data root", len(samples))
        dataset = nncf.Dataset(samples, lambda sample: [t.numpy() for t in sample])
        return nncf.quantize(model, dataset, subset_size=len(samples), model_type=_nncf_model_type(spec))

    def load(self, folder, precision):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.HINTS[precision], "INFERENCE_NUM_THREADS": runtime_threads(),
                  "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(folder / "compiled")}
        compiled = core.compile_model(str(folder / "model.xml"), "CPU", config)
        request = compiled.create_infer_request()

        def run(*inputs: np.ndarray) -> tuple:
            result = request.infer(list(inputs))
            return tuple(np.array(result[compiled.output(k)], dtype=np.float32, copy=True)
                         for k in range(len(compiled.outputs)))  # the contract's three (+ an embedding)

        return run


def _nncf_model_type(spec: ModelSpec):
    import nncf

    return nncf.ModelType.TRANSFORMER if spec.arch == "uusic_omni" else None


class TorchCompileBackend(_Backend):
    name = "torch-compile"
    files = ("model.pt2",)

    def build(self, module, spec, precision, folder, settings):
        import torch

        from core.models.torch_modules import Autocast

        if precision == "int8":
            raise BackendUnavailable("torch-compile int8 is not implemented; use openvino int8")
        if precision == "bf16":
            module = Autocast(module)
        batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
        dynamic = tuple({0: batch} for _ in range(5))
        with torch.no_grad(), _quiet():
            program = torch.export.export(module, example_inputs(2, spec.input_size), dynamic_shapes=dynamic)
            torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.pt2"),
                                                     inductor_configs={"freezing": True})

    def load(self, folder, precision):
        import torch

        runner = torch._inductor.aoti_load_package(str(folder / "model.pt2"))

        def run(*inputs: torch.Tensor) -> tuple:
            with torch.inference_mode():
                return tuple(runner(*inputs))

        return run


_BACKENDS: dict[str, _Backend] = {"openvino": OpenVinoBackend(), "torch-compile": TorchCompileBackend()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Tracer warnings (TracerWarning, deprecations) are noise to a clinic's log."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------------------------------------ calibration


def calibration_inputs(spec: ModelSpec, settings: Any, count: int) -> list[tuple[torch.Tensor, ...]]:
    """Up to ``count`` preprocessed training images of the data root that the model serves (its validation split,
    ``extra.validation_split``, left out), round-robin over datasets, each with its dataset's prompts."""
    import torch

    from core import catalog
    from core.geometry import make_transform
    from core.imaging import load_image

    root = Path(settings.data_root)
    try:
        entries = json.loads((root / "ground_truth.json").read_text())
    except (OSError, ValueError):
        return []
    held_out: set[str] = set()
    split = spec.extra.get("validation_split")
    if split:
        path = Path(split) if Path(split).is_absolute() else Path(settings.weights_dir) / split
        with contextlib.suppress(OSError, ValueError):
            held_out = {e["img_path_relative"] for e in json.loads(path.read_text())}
    by_key: dict[tuple[str, str], list[dict]] = {}
    for entry in entries:
        key = (entry.get("task"), entry.get("dataset_name"))
        if entry.get("img_path_relative") not in held_out and spec.serves(*key):
            by_key.setdefault(key, []).append(entry)
    picked: list[dict] = []
    i = 0
    while len(picked) < count and any(i < len(v) for v in by_key.values()):
        picked += [v[i] for _, v in sorted(by_key.items()) if i < len(v)][: count - len(picked)]
        i += 1
    samples = []
    for entry in picked:
        try:
            dataset = catalog.find_dataset(entry["task"], entry["dataset_name"])
            image = load_image(root / entry["img_path_relative"], settings=settings)
        except Exception:  # noqa: BLE001 - an unreadable image is skipped, calibration needs only most of them
            continue
        transform = make_transform(spec.preprocessing, image.width, image.height, spec.input_size)
        prompts = dataset.prompts().as_tuple()
        samples.append((torch.from_numpy(transform.apply(image.rgb))[None],
                        *(torch.tensor([p], dtype=torch.float32) for p in prompts)))
    return samples


# ------------------------------------------------------------------------------------------------ the hook


def serve(spec: ModelSpec, settings: Any, device: Any, *, sha256: str, load_eager: Callable[[], Any],
          release_eager: Callable[[Any], None] | None = None,
          on_converted: Callable[[Any, BackendInfo], None] | None = None) -> tuple[Any, BackendInfo]:
    """The served model for ``spec`` on ``device`` (eager, a :class:`ConvertedModel` or a :class:`RuntimeModel`) and
    what runs it. ``load_eager()`` loads the eager model (torch), called only when needed: to convert, for a torch
    backend, or on a fallback; a converted model served by its runtime never keeps it (``release_eager(eager)``).

    ``on_converted``: do not wait for a runtime conversion that is not cached: return eager torch now and call
    ``on_converted(model, info)`` from the conversion's thread when it ends (``model`` None: it failed, eager stays).
    Never raises for a backend problem: it falls back to eager torch with a warning and the reason in the info.
    """
    info, order = resolve(spec, settings, device)
    if not order:  # not a CPU device
        return load_eager(), info
    precision = info.requested_precision
    reasons: list[str] = [info.fallback] if info.fallback else []
    failed = bool(reasons) and info.requested != "auto"
    eager: list[Any] = []  # loaded at most once, on first need

    def get_eager() -> Any:
        if not eager:
            eager.append(load_eager())
            if _THREADS:  # torch is loaded now
                set_threads(_THREADS[0])
        return eager[0]

    for backend in order[:-1]:
        problem = installed(backend)
        if problem:
            reasons.append(problem)
            failed = failed or info.requested != "auto"
            continue
        try:
            wrapped: ConvertedModel | RuntimeModel | None = _cached_runtime(spec, settings, sha256, backend,
                                                                            precision, info, device)
            if wrapped is None and on_converted is not None and _BACKENDS[backend].numpy_io:
                job = BackgroundConversion(spec, settings, sha256, backend, precision, device)
                return job.start(get_eager(), info, reasons, on_converted)
            if wrapped is None:
                wrapped = _converted(get_eager, spec, settings, sha256, backend, precision, info, device)
        except Exception as exc:  # noqa: BLE001 - any conversion / runtime failure falls back to eager
            reasons.append(_failure(backend, precision, exc, settings))
            failed = True
            log.debug("backend %s failed for %r", backend, spec.name, exc_info=True)
            continue
        if eager and isinstance(wrapped, RuntimeModel):  # no second copy of the model in memory
            dropped = eager.pop()
            if release_eager is not None:
                release_eager(dropped)
        mine = dataclasses.replace(wrapped.backend_info, requested=info.requested, state="converted",
                                   requested_precision=info.requested_precision, fallback="; ".join(reasons) or None)
        return wrapped, mine
    return _eager(get_eager(), spec, info, precision, reasons, failed)


def _failure(backend: str, precision: str, exc: BaseException, settings: Any) -> str:
    """Why ``backend`` failed, for the log and the open ``/healthz``: no server path in it."""
    from core.redact import scrub_paths

    folders = [cache_root(settings), *(getattr(settings, "server_folders", lambda: ())())]
    return scrub_paths(f"{backend} {precision} failed: {type(exc).__name__}: {_short(exc)}", folders)


class _Conversion:
    """One artefact converting in a background thread; the engines waiting for it are called when it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Callable[[Any, str | None], None]] = []
        self.outcome: tuple[Any, str | None] | None = None  # (converted model or None, why it failed)
        self.done = threading.Event()

    def subscribe(self, callback: Callable[[Any, str | None], None]) -> bool:
        """Call ``callback(model, problem)`` when the conversion ends; False when it has ended already."""
        with self._lock:
            if self.outcome is None:
                self._waiting.append(callback)
                return True
        return False

    def end(self, model: Any, problem: str | None) -> None:
        with self._lock:
            self.outcome = (model, problem)
            waiting, self._waiting = self._waiting, []
        for callback in waiting:
            try:
                callback(model, problem)
            except Exception:  # noqa: BLE001 - one engine's hand-over must not stop the others'
                log.exception("handing the converted model over failed")
        self.done.set()


_PENDING: dict[str, _Conversion] = {}  # artefact name -> its conversion running in this process
_PENDING_LOCK = threading.Lock()


class BackgroundConversion:
    """Serve eager torch now, convert ``spec`` for ``backend`` in a background thread (one per artefact in this
    process, shared by every engine that asks meanwhile), and hand the converted model over when it is ready."""

    def __init__(self, spec: ModelSpec, settings: Any, sha256: str, backend: str, precision: str, device: Any):
        self.spec, self.settings, self.sha256, self.device = spec, settings, sha256, device
        self.backend, self.precision = backend, precision
        self.name = cache_key(spec, sha256, backend, precision)[0]

    def start(self, eager: Any, info: BackendInfo, reasons: list[str],
              on_converted: Callable[[Any, BackendInfo], None]) -> tuple[Any, BackendInfo]:
        """(eager model, its info with ``state="converting"``); ``on_converted`` is called when the conversion ends."""
        now = dataclasses.replace(info, backend="torch", precision="fp32", version=library_version("torch"),
                                  state="converting", fallback="; ".join(reasons) or None)

        def handed(model: Any, problem: str | None) -> None:
            on_converted(model, self.outcome_info(model, problem, now, reasons))

        with _PENDING_LOCK:
            job = _PENDING.get(self.name)
            fresh = job is None
            if job is None:
                job = _PENDING[self.name] = _Conversion()
        if fresh:
            log.warning("model %r: serving eager torch while converting to %s %s in the background", self.spec.name,
                        self.backend, self.precision)
            threading.Thread(target=self._run, args=(job, eager, info), daemon=True,
                             name=f"uusic-convert-{self.spec.name}").start()
        if job.subscribe(handed):
            return eager, now
        model, problem = job.outcome or (None, "the conversion ended without a result")
        final = self.outcome_info(model, problem, now, reasons)
        return (model if model is not None else eager), final

    @staticmethod
    def outcome_info(model: Any, problem: str | None, now: BackendInfo, reasons: list[str]) -> BackendInfo:
        if model is not None:
            return dataclasses.replace(model.backend_info, requested=now.requested, state="converted",
                                       requested_precision=now.requested_precision,
                                       fallback="; ".join(reasons) or None)
        return dataclasses.replace(now, state="eager", fallback="; ".join([*reasons, problem or "failed"]))

    def _run(self, job: _Conversion, eager: Any, info: BackendInfo) -> None:
        try:
            model = _converted(lambda: eager, self.spec, self.settings, self.sha256, self.backend, self.precision,
                               info, self.device)
            problem = None
        except Exception as exc:  # noqa: BLE001 - a failed conversion leaves eager torch serving
            model, problem = None, _failure(self.backend, self.precision, exc, self.settings)
            log.warning("model %r: %s; eager torch goes on serving", self.spec.name, problem)
            log.debug("background conversion of %r failed", self.spec.name, exc_info=True)
        job.end(model, problem)
        with _PENDING_LOCK:
            if _PENDING.get(self.name) is job:
                del _PENDING[self.name]


def wait_for_conversions(timeout: float | None = None) -> bool:
    """Wait until the background conversions running now have ended and handed over (tests, ``bench``); False
    when ``timeout`` seconds passed first."""
    with _PENDING_LOCK:
        jobs = list(_PENDING.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not job.done.wait(left):
            return False
    return True


def _eager(model: Any, spec: ModelSpec, info: BackendInfo, precision: str, reasons: list[str],
           failed: bool) -> tuple[Any, BackendInfo]:
    """Eager torch: the model as loaded (fp32), or a bf16 autocast copy."""
    info.backend, info.precision, info.version = "torch", "fp32", library_version("torch")
    served: Any = model
    if precision == "bf16":
        try:
            from core.models.torch_modules import Autocast

            served = ConvertedModel(model, Autocast(torch_module(model)), info)
            info.precision = "bf16"
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"torch bf16 failed: {type(exc).__name__}: {_short(exc)}")
            failed = True
    elif precision == "int8":
        reasons.append("int8 runs on openvino only (with nncf)")
        failed = True
    info.fallback = "; ".join(reasons) or None
    if info.fallback:
        (log.warning if failed else log.info)("model %r: %s → running eager torch %s", spec.name, info.fallback,
                                               info.precision)
    return served, info


CHECK_FILE = "check.npz"  # seeded inputs and the eager outputs for them: the start-up check, without torch
SERVE_FILE = "serve.json"  # what serving the artefact needs from the eager model (max_batch)


def _cached_runtime(spec: ModelSpec, settings: Any, sha: str, backend: str, precision: str,
                    requested_info: BackendInfo, device: Any) -> RuntimeModel | None:
    """The cached artefact served by its runtime without torch, or None when it needs torch first (not converted
    yet, a torch-side backend, or an artefact older than the torch-free check)."""
    impl = _BACKENDS[backend]
    if not impl.numpy_io:
        return None
    root = cache_root(settings)
    name, _ = cache_key(spec, sha, backend, precision)
    folder = _CONVERTED.get(name, root / name)
    if not all((folder / f).is_file() for f in ("meta.json", CHECK_FILE, SERVE_FILE)):
        folder = root / name
        if not all((folder / f).is_file() for f in ("meta.json", CHECK_FILE, SERVE_FILE)):
            return None
    with _artefact_lock(name):
        loaded = _RUNTIMES.get(name)
        if loaded is not None:
            return loaded
        info = BackendInfo(requested=requested_info.requested, backend=backend, precision=precision,
                           requested_precision=requested_info.requested_precision, artefact=name, cached=True,
                           version=impl.version())
        wrapped = _load_runtime(impl, folder, spec, sha, precision, info, device)
        _CONVERTED[name] = folder
        _RUNTIMES[name] = wrapped
    log.info("model %r runs on %s %s (%s, cached, loaded in %.2f s, without torch)", spec.name, backend, precision,
             name, info.load_sec)
    return wrapped


def _load_runtime(impl: _Backend, folder: Path, spec: ModelSpec, sha: str, precision: str, info: BackendInfo,
                  device: Any) -> RuntimeModel:
    start = time.perf_counter()
    serving = json.loads((folder / SERVE_FILE).read_text())
    runner = impl.load(folder, precision)
    STATS["loads"] += 1
    wrapped = RuntimeModel(runner, spec, sha, info, max_batch=serving.get("max_batch"), device=device)
    _check(wrapped, folder, precision)
    info.load_sec = round(time.perf_counter() - start, 3)
    return wrapped


def _converted(get_eager: Callable[[], Any], spec: ModelSpec, settings: Any, sha: str, backend: str,
               precision: str, requested_info: BackendInfo, device: Any) -> ConvertedModel | RuntimeModel:
    impl = _BACKENDS[backend]
    root = cache_root(settings)
    name, fields = cache_key(spec, sha, backend, precision)
    folder = root / name
    model = get_eager()
    with _artefact_lock(name):
        cached = _LOADED.get((id(model), name)) or _RUNTIMES.get(name)
        if cached is not None:  # this artefact already serves in this process
            return cached
        info = BackendInfo(requested=requested_info.requested, backend=backend, precision=precision,
                           requested_precision=requested_info.requested_precision, artefact=name,
                           version=impl.version())
        earlier = _CONVERTED.get(name)
        if (folder / "meta.json").is_file():
            info.cached = True
        elif earlier is not None and (earlier / "meta.json").is_file():
            folder, info.cached = earlier, True  # converted by this process under another cache folder (tests)
        else:
            info.convert_sec = _convert(model, spec, settings, impl, precision, root, folder, fields)
            _prune(root, folder)
        if not all((folder / f).is_file() for f in (CHECK_FILE, SERVE_FILE)):
            _write_check(model, spec, folder)  # an artefact of an earlier release: the next start runs without torch
        wrapped: ConvertedModel | RuntimeModel
        if impl.numpy_io:
            wrapped = _load_runtime(impl, folder, spec, sha, precision, info, device)
            _RUNTIMES[name] = wrapped
        else:
            start = time.perf_counter()
            wrapped = ConvertedModel(model, impl.load(folder, precision), info)
            STATS["loads"] += 1
            _check(wrapped, folder, precision)
            info.load_sec = round(time.perf_counter() - start, 3)
            _LOADED[(id(model), name)] = wrapped
        _CONVERTED[name] = folder
    log.info("model %r runs on %s %s (%s%s, loaded in %.2f s)", spec.name, backend, precision, name,
             ", cached" if info.cached else f", converted in {info.convert_sec:.1f} s", info.load_sec)
    return wrapped


def _convert(model: Any, spec: ModelSpec, settings: Any, impl: _Backend, precision: str, root: Path, folder: Path,
             fields: dict) -> float:
    log.warning("model %r: converting to %s %s once (first start with these weights; cached in %s) …",
                spec.name, impl.name, precision, folder)
    start = time.perf_counter()
    with _building(root, folder) as tmp:
        impl.build(torch_module(model), spec, precision, tmp, settings)
        _write_check(model, spec, tmp)
        seconds = time.perf_counter() - start
        meta = {**fields, "model": spec.name, "convert_sec": round(seconds, 2), "created": time.time(),
                "bytes": _dir_bytes(tmp)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    STATS["conversions"] += 1
    log.warning("model %r: converted to %s %s in %.1f s (%.1f MB)", spec.name, impl.name, precision, seconds,
                meta["bytes"] / 1e6)
    return round(seconds, 2)


CHECK_SEED = 7


def _write_check(eager: Any, spec: ModelSpec, folder: Path) -> None:
    """Seeded inputs and eager's outputs for them (``check.npz``) and what serving needs of the eager model
    (``serve.json``), written atomically next to the artefact."""
    import torch

    inputs = example_inputs(2, spec.input_size, seed=CHECK_SEED)
    with torch.inference_mode():
        outputs = [t.float().cpu() for t in eager(*inputs)]
    arrays = {f"in{k}": t.numpy() for k, t in enumerate(inputs)} | {f"out{k}": t.numpy() for k, t in
                                                                    enumerate(outputs)}
    tmp = folder / f".{CHECK_FILE}.tmp"
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, folder / CHECK_FILE)
    serving = {"max_batch": getattr(eager, "max_batch", None) or spec.max_batch}
    (folder / f".{SERVE_FILE}.tmp").write_text(json.dumps(serving))
    os.replace(folder / f".{SERVE_FILE}.tmp", folder / SERVE_FILE)


def _check(wrapped: ConvertedModel | RuntimeModel, folder: Path, precision: str) -> None:
    """One seeded batch through the converted model against eager's outputs (saved with the artefact at conversion,
    so a start runs no eager forward): shapes must match and outputs be finite and close — a broken artefact is
    refused here, not discovered on a patient's image."""
    with np.load(folder / CHECK_FILE) as saved:
        inputs = [saved[f"in{k}"] for k in range(5)]
        want = [saved[f"out{k}"] for k in range(sum(name.startswith("out") for name in saved.files))]
    if wrapped.numpy_io:
        got = [np.asarray(o, dtype=np.float32) for o in wrapped(*inputs)]
    else:
        import torch

        with torch.inference_mode():
            got = [o.float().cpu().numpy() for o in wrapped(*(torch.from_numpy(a) for a in inputs))]
    loose = precision != "fp32"
    if len(got) != len(want):
        raise BackendUnavailable(f"the converted model returns {len(got)} outputs, eager {len(want)}")
    for name, a, b in zip(("seg", "cls2", "cls4", "embedding"), want, got, strict=False):
        if tuple(a.shape) != tuple(b.shape):
            raise BackendUnavailable(f"{name} has shape {tuple(b.shape)}, eager {tuple(a.shape)}")
        if not bool(np.isfinite(b).all()):
            raise BackendUnavailable(f"{name} is not finite")
        scale = max(1.0, float(np.abs(a).max()))
        diff = float(np.abs(a.astype(np.float32) - b).max()) / scale
        if diff > (0.25 if loose else 1e-3):
            raise BackendUnavailable(f"{name} differs from eager by {diff:.3g} (relative)")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " …"


def info_of(model: Any) -> BackendInfo | None:
    return getattr(model, "backend_info", None) if isinstance(model, (ConvertedModel, RuntimeModel)) else None


def clear_cache() -> None:
    """Forget converted models held by this process (tests); the files on disk stay."""
    with _GUARD:
        _LOADED.clear()
        _RUNTIMES.clear()
        _CONVERTED.clear()


def artefact_bytes(settings: Any, info: BackendInfo, *, compiled: bool = False) -> int | None:
    """Disk size of the artefact behind ``info`` (bench); ``compiled``: of the runtime's compiled-blob cache."""
    if not info.artefact:
        return None
    folder = cache_root(settings) / info.artefact
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ("compiled" in p.parts) == compiled)


