"""The inference engine: a loaded model and the three stages of analysing an image with it.

The engine computes; it does not record. :mod:`core.service` owns a case from request to history row and calls
the stages ``prepare`` → ``forward`` → ``finish`` (directly, through :mod:`core.batching` for lists, or through
its micro-batcher); ``predict`` / ``predict_batch`` are the same stages for library callers and benchmarks.

Flow per image: validate the request (:mod:`core.schema`) → resolve its path (:mod:`core.paths`) → decode
(:mod:`core.imaging`) → square input (:mod:`core.geometry`) → forward with the catalog's prompts → classification
probabilities from the dataset's head (``cls4`` or ``cls2``), or a mask mapped back exactly onto the original
pixels and written as a 0/255 PNG, with measurements (:mod:`core.measure`).

An engine is built from a manifest entry (:mod:`core.models.registry`, the checkpoint as data) and kept by the
model pool (:class:`core.routing.ModelPool`, one per settings key); this module keeps no loaded model. Decoding and
post-processing run outside the engine's lock; only the forward pass (and its GPU memory measurement) is
serialised, so concurrent callers are safe.

torch is imported only when the model runs on torch: a converted model served by its own runtime
(:class:`core.models.backends.RuntimeModel`, OpenVINO) takes numpy arrays, and the softmax, geometry and mask
inverse are numpy / OpenCV, so a start with a cached conversion never imports torch.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from core import catalog, recognition_encoder, tta
from core.batching import predict_all
from core.errors import NoModelError
from core.geometry import make_transform
from core.imaging import LoadedImage, load_image
from core.models import backends, registry
from core.models.base import ModelSpec
from core.paths import resolve_input
from core.resources import GpuMemory, device_label, measure_gpu, process_rss_mb
from core.schema import PredictRequest
from core.segmentation_output import SegmentationOutput
from core.settings import Settings, get_settings
from core.stages import Prepared, RawOutput, baseline_resize_nearest

__all__ = ["Engine", "Prepared", "RawOutput", "baseline_resize_nearest", "softmax"]

log = logging.getLogger(__name__)
NO_MODEL_MESSAGE = "no model for this dataset"
# "exact": the crop's true inverse (masks land on the original pixels); "baseline": the challenge model.py's
# nearest resize of the S x S mask over the whole image (stretches centre crops; kept for parity checks only)
MASK_INVERSES = ("exact", "baseline")
# "now": a CPU conversion that is not cached runs before the engine is ready (``make setup``, the batch CLI);
# "background": the engine serves eager torch at once and takes the converted model when it is ready (serving)
CONVERT_MODES = ("now", "background")


class Engine:
    """Serves one model (a manifest entry or an ad-hoc spec) on one device."""

    def __init__(self, settings: Settings | None = None, model: str | None = None, *, spec: ModelSpec | None = None,
                 device: str | None = None, mask_inverse: str = "exact", measurements: bool = True,
                 convert: str = "now"):
        if mask_inverse not in MASK_INVERSES:
            raise ValueError(f"mask_inverse must be one of {MASK_INVERSES}, got {mask_inverse!r}")
        if convert not in CONVERT_MODES:
            raise ValueError(f"convert must be one of {CONVERT_MODES}, got {convert!r}")
        self.mask_inverse = mask_inverse
        self.measurements = measurements  # the batch CLI (challenge output) has no use for them
        self.settings = settings or get_settings()
        self.spec = spec or registry.find_spec(self.settings, model)
        self.device = registry.resolve_device(device or self.settings.device)
        self.sha256 = registry.verify_weights(self.spec, self.settings.weights_dir)[1]
        self._lock = threading.Lock()  # this engine's forward passes run one at a time
        self._cpu_copy: Any = None  # CUDA OOM: the model on the CPU, loaded on the first OOM
        # CPU: the backend chosen for this model (converted once, cached on disk; eager torch on fallback or CUDA);
        # the eager model is loaded only when something needs it (a converted model serves without torch).
        # The lock is held while building, so that a background conversion hands over only to a built engine.
        with self._lock:
            self.model, self.backend = backends.serve(
                self.spec, self.settings, self.device, sha256=self.sha256,
                load_eager=lambda: registry.load_model(self.spec, self.device, weights_dir=self.settings.weights_dir),
                on_converted=self._take_converted if convert == "background" else None)
        self.sha256 = getattr(self.model, "sha256", None) or self.sha256
        if self.device.type == "cpu" and "torch" in sys.modules:  # torch imported after all: one device type
            self.device = registry.torch_device(self.device)
        self.amp = bool(self.settings.amp and self.device.type == "cuda")
        self.device_name = "CPU" if self.device.type == "cpu" else device_label(self.device)
        self._served = catalog.served_keys(self.spec.datasets)
        # the organ recogniser's head on this model's embedding (None: recognised from the image's own features)
        self.recognition_head = recognition_encoder.head_for_model(self.settings.weights_dir, self.spec.arch,
                                                                   self.sha256)

    def _take_converted(self, model: Any, info: backends.BackendInfo) -> None:
        """A background conversion ended: the converted model serves from the next forward pass on (the eager one
        is let go), or (``model`` None) eager torch goes on serving and ``info`` says why."""
        with self._lock:
            if model is not None:
                self.model = model
            self.backend = info

    # ------------------------------------------------------------------------------------------ metadata

    def serves(self, task: str, dataset_name: str) -> bool:
        """Whether this model has weights for ``(task, dataset_name)`` (:func:`core.catalog.serves`)."""
        return catalog.serves(self._served, task, dataset_name)

    @property
    def _letterbox(self) -> bool:
        return self.spec.preprocessing == "letterbox"

    def check_serves(self, task: str, dataset_name: str) -> None:
        """NoModelError ("no model for this dataset", naming the model) unless :meth:`serves`."""
        if not self.serves(task, dataset_name):
            raise NoModelError(f"{NO_MODEL_MESSAGE}: model {self.spec.name!r} has no weights for {task} on "
                               f"{dataset_name}", field="dataset_name")

    def served_datasets(self) -> list[tuple[str, str]]:
        return catalog.served_datasets(self._served)

    def model_info(self) -> dict:
        return {
            "name": self.spec.name,
            "arch": self.spec.arch,
            "file": Path(self.spec.file).name,
            "sha256": self.sha256,
            "device": str(self.device),
            "device_name": self.device_name,
            "amp": self.amp,
            "backend": self.backend.as_dict(),
            "input_size": self.spec.input_size,
            "preprocessing": self.spec.preprocessing,
            "mask_inverse": self.mask_inverse,
            "datasets": [list(k) for k in self.served_datasets()],
            "description": self.spec.description,
        }

    # ------------------------------------------------------------------------------------------ pipeline

    def prepare(self, request: dict | PredictRequest, *, input_dir: Path | None = None,
                image: LoadedImage | None = None) -> Prepared:
        """Validate, check the model serves it, resolve, decode and preprocess (thread-safe, no lock); ``image``:
        the request's image already decoded (by the route step, :mod:`core.auto_route`), not decoded again."""
        start = time.perf_counter()
        req = PredictRequest.parse(request)
        self.check_serves(req.task, req.dataset_name)
        if image is None:
            path = resolve_input(self.settings, req.img_path_relative, input_dir=input_dir)
            image = load_image(path, settings=self.settings, frame_index=req.frame_index)  # cine: that frame only
        decoded = time.perf_counter()
        transform = make_transform(self.spec.preprocessing, image.width, image.height, self.spec.input_size)
        array = transform.apply(image.rgb)
        views = self.tta_views(req)
        done = time.perf_counter()
        return Prepared(req, image, transform, array, done - start,
                        {"decode_sec": decoded - start, "preprocess_sec": done - decoded}, views=views,
                        view_input=tta.view_inputs(views, array) if views else None, input_dir=input_dir)

    def tta_views(self, request: PredictRequest) -> tuple[tta.View, ...]:
        """The TTA views for ``request`` (its ``tta`` field, else the setting), or () when TTA is off."""
        if not tta.tta_enabled(request.tta, self.settings.tta):
            return ()
        return tta.parse_views(self.settings.tta_views)

    def forward(self, batch: list[Prepared]) -> tuple[list[RawOutput], float, Any]:
        """One forward pass over ``batch`` under the engine lock; returns per-sample outputs, seconds, GPU memory."""
        rows = [p for p in batch for _ in p.model_inputs()]  # TTA: one row per view, all in this one pass
        prompts = [p.request.dataset.prompts() for p in rows]
        images = np.stack([a for p in batch for a in p.model_inputs()])
        vectors = [np.array([pr.as_tuple()[k] for pr in prompts], dtype=np.float32) for k in range(4)]
        model = self.model  # as it is now: a background conversion may hand over a converted one at any time
        if getattr(model, "numpy_io", False):  # a converted model on its own runtime: numpy in, numpy out
            with self._lock:
                start = time.perf_counter()
                out = self._run_model(model, images, vectors, np.concatenate)
                outputs = split_outputs(rows, out, _NumpyHeads, letterbox=self._letterbox)
                seconds = time.perf_counter() - start
            return _regroup(batch, outputs), seconds, GpuMemory()
        return self._forward_torch(model, batch, rows, images, vectors)

    def _forward_torch(self, model: Any, batch: list[Prepared], rows: list[Prepared], images_np: np.ndarray,
                       vectors_np: list[np.ndarray]) -> tuple[list[RawOutput], float, Any]:
        import torch

        images = torch.from_numpy(images_np)
        vectors = [torch.from_numpy(v) for v in vectors_np]
        device = registry.torch_device(self.device)
        with self._lock:
            start = time.perf_counter()
            try:
                with measure_gpu(self.device) as gpu, torch.inference_mode():
                    images_d = images.to(device, non_blocking=True)
                    vectors_d = [v.to(device) for v in vectors]
                    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
                    with autocast:
                        out = self._run_model(model, images_d, vectors_d, torch.cat)
                    outputs = split_outputs(rows, [o.float() for o in out], _TorchHeads, letterbox=self._letterbox)
            except torch.OutOfMemoryError:
                outputs, gpu = self._forward_on_cpu(rows, images, vectors), GpuMemory()
            seconds = time.perf_counter() - start
        return _regroup(batch, outputs), seconds, gpu

    def _run_model(self, model, images, vectors: list, cat: Any):
        """``model`` over the batch in chunks of at most ``spec.max_batch`` images (an export that runs one image at
        a time must never see more), the outputs concatenated in order (``cat``: ``torch.cat`` / ``np.concatenate``)."""
        limit = self.spec.max_batch or getattr(model, "max_batch", None)
        if not limit or images.shape[0] <= limit:
            return model(images, *vectors)
        parts = [model(images[i : i + limit], *(v[i : i + limit] for v in vectors))
                 for i in range(0, images.shape[0], limit)]
        return tuple(cat([part[k] for part in parts], 0) for k in range(len(parts[0])))

    def _forward_on_cpu(self, batch: list[Prepared], images, vectors: list):
        """CUDA ran out of memory: free what we can, warn, and run this batch on a CPU copy of the model."""
        import torch

        log.warning("CUDA out of memory for a batch of %d on %s; retrying on the CPU", len(batch), self.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._cpu_copy is None:  # kept by this engine for the next OOM
            self._cpu_copy = registry.load_model(self.spec, torch.device("cpu"), weights_dir=self.settings.weights_dir)
        with torch.inference_mode():
            out = self._run_model(self._cpu_copy, images, vectors, torch.cat)
            outputs = split_outputs(batch, [o.float() for o in out], _TorchHeads, letterbox=self._letterbox)
        for output in outputs:
            output.fallback_device = "cpu"
        return outputs

    def finish(self, prepared: Prepared, raw: RawOutput, *, output_dir: Path, forward_sec: float, gpu) -> dict:
        """Response dict for one sample: probabilities, or the mask written at the original size."""
        start = time.perf_counter()
        req = prepared.request
        dataset = req.dataset
        response: dict[str, Any] = {
            "task": req.task,
            "dataset_name": req.dataset_name,
            "organ": req.organ,
            "img_path_relative": req.img_path_relative,
            "img_name": req.img_name,
        }
        if req.task == "classification":
            probs, uncertainty = _class_probability(prepared, raw)
            probability = [float(v) for v in probs]
            prediction = int(np.argmax(probs))
            response[req.img_path_relative] = {"probability": probability, "prediction": prediction}
            if uncertainty is not None:
                response["uncertainty"] = uncertainty
            response.update(
                probability=probability,
                prediction=prediction,
                label_name=dataset.class_name(prediction, "en"),
                label_name_zh=dataset.class_name(prediction, "zh"),
                class_names=dataset.class_names("en"),
                class_names_zh=dataset.class_names("zh"),
            )
        else:
            response.update(SegmentationOutput(self.settings, self.mask_inverse, self.measurements)
                            .result(prepared, raw, output_dir))
        post = time.perf_counter() - start
        response.update(
            inference_time_sec=prepared.prep_sec + forward_sec + post,
            timings={**prepared.timings, "forward_sec": forward_sec, "postprocess_sec": post},
            memory_usage_mb=process_rss_mb(),
            gpu_memory_usage_mb=gpu.used_mb,
            gpu_memory_reserved_mb=gpu.reserved_mb,
            device=str(self.device),
            device_name=self.device_name,
            model_name=self.spec.name,
            model_sha256=self.sha256,
            image_width=prepared.image.width,
            image_height=prepared.image.height,
            image_format=prepared.image.format,
            input_sha256=prepared.image.sha256,
            frame_index=prepared.image.frame_index,  # cine (a still image: 0 of 1)
            frame_count=prepared.image.frame_count,
        )
        notes = [*response.pop("notes", []), *prepared.image.notes]  # the segmentation's own notes first
        if notes:
            response["notes"] = notes
        if raw.fallback_device:
            response["device"] = raw.fallback_device
            response.setdefault("notes", []).append(
                f"CUDA out of memory on {self.device}: this image was analysed on the CPU instead")
        for key, value in req.extras.items():
            response.setdefault(key, value)
        return response

    # ------------------------------------------------------------------------------------------ public API

    def predict(self, request: dict | PredictRequest, *, output_dir: Path | None = None,
                input_dir: Path | None = None) -> dict:
        """Analyse one image; raises a :class:`~core.errors.UUSICError` for bad input."""
        start = time.perf_counter()
        prepared = self.prepare(request, input_dir=input_dir)
        outputs, forward_sec, gpu = self.forward([prepared])
        response = self.finish(prepared, outputs[0], output_dir=self._output_dir(output_dir),
                               forward_sec=forward_sec, gpu=gpu)
        response["inference_time_sec"] = time.perf_counter() - start
        return response

    def predict_batch(self, requests: Iterable[dict | PredictRequest], **options: Any) -> list[dict]:
        """Analyse many images in order (:func:`core.batching.predict_all`); no history (the service records)."""
        return predict_all(self, requests, output_dir=self._output_dir(options.pop("output_dir", None)), **options)

    def _output_dir(self, output_dir: Path | None) -> Path:
        return Path(output_dir) if output_dir is not None else Path(self.settings.api_out)


def split_outputs(batch: list[Prepared], out: Any, heads: Any, *, letterbox: bool) -> list[RawOutput]:
    """Per-sample outputs from the model's ``(seg, cls2, cls4[, embedding])``: torch tensors (``heads`` =
    :class:`_TorchHeads`) or numpy arrays (:class:`_NumpyHeads`)."""
    seg, cls2, cls4 = out[:3]
    outputs: list[RawOutput] = [RawOutput() for _ in batch]
    if len(out) > 3:  # the encoder embedding the organ recogniser reads (core.recognition_encoder)
        for output, vector in zip(outputs, heads.rows(out[3]), strict=True):
            output.embedding = vector
    seg_rows = [i for i, p in enumerate(batch) if p.request.task == "segmentation"]
    for head, logits in (("cls4", cls4), ("cls2", cls2)):
        rows = [i for i, p in enumerate(batch)
                if p.request.task == "classification" and (p.request.dataset.head == "cls4") == (head == "cls4")]
        if rows:
            probs = heads.probs(logits[rows])
            for i, prob in zip(rows, probs, strict=True):
                outputs[i].probability = prob
    if seg_rows:
        seg_sel = seg[seg_rows]
        if letterbox:
            fg = heads.foreground(seg_sel)
            for i, f in zip(seg_rows, fg, strict=True):
                outputs[i].seg_foreground = f
        else:  # the baseline's argmax(softmax(...)) path, kept for parity
            labels = heads.labels(seg_sel)
            for i, lab in zip(seg_rows, labels, strict=True):
                outputs[i].seg_label = lab
    return outputs


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 in float32 (what ``torch.softmax(x, dim=1)`` gives, within a few ulp)."""
    x = np.asarray(logits, dtype=np.float32)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _NumpyHeads:
    """Probabilities, foreground and label maps from numpy logits (a converted model on its own runtime)."""

    @staticmethod
    def probs(logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    @staticmethod
    def rows(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    @staticmethod
    def foreground(seg: np.ndarray) -> np.ndarray:
        return softmax(seg)[:, 1].astype(np.float32)

    @staticmethod
    def labels(seg: np.ndarray) -> np.ndarray:
        return np.argmax(softmax(seg), axis=1).astype(np.uint8)  # first index on ties, as torch.argmax


class _TorchHeads:
    """The same from torch tensors, computed on their device (the GPU copies back only what is kept)."""

    @staticmethod
    def probs(logits: Any) -> np.ndarray:
        import torch

        return torch.softmax(logits, dim=1).cpu().numpy()

    @staticmethod
    def rows(values: Any) -> np.ndarray:
        return values.float().cpu().numpy()

    @staticmethod
    def foreground(seg: Any) -> np.ndarray:
        import torch

        return torch.softmax(seg, dim=1)[:, 1].cpu().numpy().astype(np.float32)

    @staticmethod
    def labels(seg: Any) -> np.ndarray:
        import torch

        return torch.argmax(torch.softmax(seg, dim=1), dim=1).to(torch.uint8).cpu().numpy()


def _class_probability(prepared: Prepared, raw: RawOutput) -> tuple[np.ndarray, dict | None]:
    """Classification probabilities: the one view's, or the mean over the TTA views with their spread."""
    if raw.views:
        rows = [v.probability for v in raw.views if v.probability is not None]
        return tta.fuse_probabilities(np.stack(rows), prepared.views)
    assert raw.probability is not None, "a classification sample has probabilities"
    return raw.probability, None


def _regroup(batch: list[Prepared], outputs: list[RawOutput]) -> list[RawOutput]:
    """One output per image: a TTA image's view rows gathered into one :class:`RawOutput` (``views``)."""
    grouped: list[RawOutput] = []
    index = 0
    for prepared in batch:
        if prepared.view_input is None:
            grouped.append(outputs[index])
            index += 1
            continue
        parts = outputs[index:index + len(prepared.view_input)]
        plain = next((part for part, view in zip(parts, prepared.views, strict=True) if view.is_identity), None)
        grouped.append(RawOutput(views=parts, fallback_device=parts[0].fallback_device,
                                 embedding=plain.embedding if plain is not None else None))
        index += len(parts)
    return grouped


# ---------------------------------------------------------------------------------------------- setup


def prepare_backend(settings: Settings | None = None) -> str:
    """Convert the default model for its CPU backend now, unless the conversion is cached (``make setup``), so that
    the first ``make run`` / ``make serve`` does not wait for it; returns one line saying what serves."""
    engine = Engine(settings or Settings.from_env())
    info = engine.backend
    done = "cached" if info.cached else f"converted in {info.convert_sec:.1f} s" if info.convert_sec else "as loaded"
    return (f"model {engine.spec.name!r}: {info.backend} {info.precision} on {engine.device} ({done})"
            + (f"; {info.fallback}" if info.fallback else ""))
