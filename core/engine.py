"""The inference engine: a loaded model and the three stages of analysing an image with it.

The engine computes; it does not record. :mod:`core.service` owns a case from request to history row and calls
the stages ``prepare`` → ``forward`` → ``finish`` (directly, through :mod:`core.batching` for lists, or through
its micro-batcher); ``predict`` / ``predict_batch`` are the same stages for library callers and benchmarks.

Flow per image: validate the request (:mod:`core.schema`) → resolve its path (:mod:`core.paths`) → decode
(:mod:`core.imaging`) → square input (:mod:`core.geometry`) → forward with the catalog's prompts → classification
probabilities from the dataset's head (``cls4`` or ``cls2``), or a mask mapped back exactly onto the original
pixels and written as a 0/255 PNG, with measurements (:mod:`core.measure`).

Models are loaded once per process (:mod:`core.models.registry`). Decoding and post-processing run outside the
engine's lock; only the forward pass (and its GPU memory measurement) is serialised, so concurrent callers are safe.

torch is imported only when the model runs on torch: a converted model served by its own runtime
(:class:`core.models.backends.RuntimeModel`, OpenVINO) takes numpy arrays, and the softmax, geometry and mask
inverse are numpy / OpenCV, so a start with a cached conversion never imports torch.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core import calibration, catalog, tta
from core.batching import report_progress, run_batch
from core.errors import NoModelError, error_body
from core.files import atomic_save_image, atomic_write_bytes
from core.geometry import CenterCrop, Letterbox, make_transform
from core.imaging import LoadedImage, frame_mask_path, load_image
from core.models import backends, registry
from core.models.base import ModelSpec
from core.paths import is_shared_output, mask_relative_path, output_path, resolve_input, write_new_output
from core.resources import GpuMemory, device_label, measure_gpu, process_rss_mb
from core.schema import PredictRequest
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)
NO_MODEL_MESSAGE = "no model for this dataset"
# "exact": the crop's true inverse (masks land on the original pixels); "baseline": the challenge model.py's
# nearest resize of the S x S mask over the whole image (stretches centre crops; kept for parity checks only)
MASK_INVERSES = ("exact", "baseline")


def baseline_resize_nearest(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)`` without OpenCV (same indices)."""
    rows, cols = mask.shape
    inv_x, inv_y = 1.0 / (width / cols), 1.0 / (height / rows)
    cx = np.minimum(np.floor(np.arange(width) * inv_x).astype(np.int64), cols - 1)
    cy = np.minimum(np.floor(np.arange(height) * inv_y).astype(np.int64), rows - 1)
    return mask[np.ix_(cy, cx)]


@dataclass
class Prepared:
    """One decoded, preprocessed image waiting for the forward pass."""

    request: PredictRequest
    image: LoadedImage
    transform: CenterCrop | Letterbox
    input: np.ndarray  # S x S x 3 float32 in [0, 1]
    prep_sec: float
    timings: dict = field(default_factory=dict)
    views: tuple[tta.View, ...] = ()  # test-time augmentation: the views stacked into the forward pass (none: off)
    view_input: np.ndarray | None = None  # V x S x S x 3 float32, the input seen in each view
    input_dir: Path | None = None  # where the request's relative paths live (its ground-truth mask, core.reference)

    def model_inputs(self) -> list[np.ndarray]:
        """What this image contributes to the forward pass: its input, or one input per TTA view."""
        return [self.input] if self.view_input is None else list(self.view_input)


@dataclass
class RawOutput:
    """What post-processing needs from the forward pass for one sample (CPU numpy)."""

    probability: np.ndarray | None = None  # classification: softmax of the dataset's head
    seg_label: np.ndarray | None = None  # center_crop: argmax label map S x S (uint8)
    seg_foreground: np.ndarray | None = None  # letterbox: foreground probability S x S (float32)
    fallback_device: str | None = None  # set when CUDA ran out of memory and the sample ran on the CPU
    views: list[RawOutput] | None = None  # test-time augmentation: one output per view (in the view's frame)


_MODEL_LOCKS: dict[int, threading.Lock] = {}
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: object) -> threading.Lock:
    """One lock per loaded model object (models are cached for the process, so ids stay valid)."""
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(id(model), threading.Lock())


def error_record(request: Any, exc: BaseException) -> dict:
    """The per-image entry of a batch result when that image failed (the one error form, message as ``error``)."""
    rel = request.get("img_path_relative") if isinstance(request, dict) else getattr(request, "img_path_relative", None)
    body = error_body(exc)
    record = {"img_path_relative": rel, "error": body.pop("detail"), **body}
    if isinstance(exc, Exception) and not hasattr(exc, "message"):
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


class Engine:
    """Serves one model (a manifest entry or an ad-hoc spec) on one device."""

    def __init__(self, settings: Settings | None = None, model: str | None = None, *, spec: ModelSpec | None = None,
                 device: str | None = None, mask_inverse: str = "exact", measurements: bool = True):
        if mask_inverse not in MASK_INVERSES:
            raise ValueError(f"mask_inverse must be one of {MASK_INVERSES}, got {mask_inverse!r}")
        self.mask_inverse = mask_inverse
        self.measurements = measurements  # the batch CLI (challenge output) has no use for them
        self.settings = settings or get_settings()
        self.spec = spec or registry.find_spec(self.settings, model)
        self.device = registry.resolve_device(device or self.settings.device)
        self.sha256 = registry.verify_weights(self.spec, self.settings.weights_dir)[1]
        # CPU: the backend chosen for this model (converted once, cached on disk; eager torch on fallback or CUDA);
        # the eager model is loaded only when something needs it (a converted model serves without torch)
        self.model, self.backend = backends.serve(
            self.spec, self.settings, self.device, sha256=self.sha256, release_eager=registry.release,
            load_eager=lambda: registry.load_model(self.spec, self.device, weights_dir=self.settings.weights_dir))
        self.sha256 = getattr(self.model, "sha256", None) or self.sha256
        if self.device.type == "cpu" and "torch" in sys.modules:  # torch imported after all: one device type
            self.device = registry.torch_device(self.device)
        self.amp = bool(self.settings.amp and self.device.type == "cuda")
        self.device_name = "CPU" if self.device.type == "cpu" else device_label(self.device)
        self._lock = _model_lock(self.model)  # shared by every engine serving this loaded model
        self._served = catalog.served_keys(self.spec.datasets)

    # ------------------------------------------------------------------------------------------ metadata

    def serves(self, task: str, dataset_name: str) -> bool:
        """Whether this model has weights for ``(task, dataset_name)`` (:func:`core.catalog.serves`)."""
        return catalog.serves(self._served, task, dataset_name)

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

    def prepare(self, request: dict | PredictRequest, *, input_dir: Path | None = None) -> Prepared:
        """Validate, check the model serves it, resolve, decode and preprocess (thread-safe, no lock)."""
        start = time.perf_counter()
        req = PredictRequest.parse(request)
        self.check_serves(req.task, req.dataset_name)
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
        if getattr(self.model, "numpy_io", False):  # a converted model on its own runtime: numpy in, numpy out
            with self._lock:
                start = time.perf_counter()
                seg, cls2, cls4 = self._run_model(self.model, images, vectors, np.concatenate)
                outputs = self._extract(rows, seg, cls2, cls4, _NumpyHeads)
                seconds = time.perf_counter() - start
            return _regroup(batch, outputs), seconds, GpuMemory()
        return self._forward_torch(batch, rows, images, vectors)

    def _forward_torch(self, batch: list[Prepared], rows: list[Prepared], images_np: np.ndarray,
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
                        seg, cls2, cls4 = self._run_model(self.model, images_d, vectors_d, torch.cat)
                    outputs = self._extract(rows, seg.float(), cls2.float(), cls4.float(), _TorchHeads)
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
        return tuple(cat([part[k] for part in parts], 0) for k in range(3))

    def _forward_on_cpu(self, batch: list[Prepared], images, vectors: list):
        """CUDA ran out of memory: free what we can, warn, and run this batch on a CPU copy of the model."""
        import torch

        log.warning("CUDA out of memory for a batch of %d on %s; retrying on the CPU", len(batch), self.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cpu_model = registry.load_model(self.spec, torch.device("cpu"), weights_dir=self.settings.weights_dir)
        with torch.inference_mode():
            seg, cls2, cls4 = self._run_model(cpu_model, images, vectors, torch.cat)
            outputs = self._extract(batch, seg.float(), cls2.float(), cls4.float(), _TorchHeads)
        for output in outputs:
            output.fallback_device = "cpu"
        return outputs

    def _extract(self, batch: list[Prepared], seg, cls2, cls4, heads: Any) -> list[RawOutput]:
        """Per-sample outputs from the heads: torch tensors (``heads`` = :class:`_TorchHeads`) or numpy arrays
        (:class:`_NumpyHeads`)."""
        outputs: list[RawOutput] = [RawOutput() for _ in batch]
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
            if self.spec.preprocessing == "letterbox":
                fg = heads.foreground(seg_sel)
                for i, f in zip(seg_rows, fg, strict=True):
                    outputs[i].seg_foreground = f
            else:  # the baseline's argmax(softmax(...)) path, kept for parity
                labels = heads.labels(seg_sel)
                for i, lab in zip(seg_rows, labels, strict=True):
                    outputs[i].seg_label = lab
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
            response.update(self._finish_segmentation(prepared, raw, output_dir))
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

    def _write_mask(self, mask: np.ndarray, output_dir: Path, relative: str) -> Path:
        """Write the 0/255 PNG mask. In the workspace's shared ``api_out/`` a later run of the same image never
        overwrites an earlier run's mask (the history keeps each run's own file: ``runs/<random>/``); a job's own
        folder (CLI, batch) keeps the challenge layout and is rewritten on a rerun."""
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG", compress_level=1)
        if is_shared_output(output_dir, Path(self.settings.api_out)):
            return write_new_output(output_dir, relative, buffer.getvalue())
        target = output_path(output_dir, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(target, buffer.getvalue())

    def _finish_segmentation(self, prepared: Prepared, raw: RawOutput, output_dir: Path) -> dict:
        req, transform = prepared.request, prepared.transform
        fused = self._fuse_segmentation(prepared, raw) if raw.views else None
        mask = fused.mask if fused is not None else self._mask(prepared, raw)
        relative = frame_mask_path(mask_relative_path(req.img_path_relative), prepared.image)  # cine: one per frame
        target = self._write_mask(mask, output_dir, relative)
        spacing, source, notes = calibration.resolve_spacing(
            req.pixel_spacing_mm, req.pixel_spacing_source, prepared.image.pixel_spacing_mm,
            prepared.image.pixel_spacing_source)
        coverage = transform.coverage() if self.mask_inverse == "exact" or fused is not None else np.ones(1)
        fetal_head = req.dataset.group == "fetal_head"
        measurements = _measure(mask, spacing, fetal_head=fetal_head) if self.measurements else None
        result = {
            "mask_name": target.name,
            "mask_path": str(target),
            "mask_path_relative": relative,
            "mask_area_px": int(mask.sum()),
            "seg_target_info": req.dataset.seg_target,
            "pixel_spacing_mm": spacing,
            "pixel_spacing_source": source,
            "coverage_fraction": float(coverage.mean()),
            "measurements": measurements,
        }
        if fused is not None:
            result["uncertainty"] = self._segmentation_uncertainty(prepared, fused, target, spacing, fetal_head)
        if measurements is not None:
            from core.reference import reference_for

            reference = reference_for(self.settings, req, measurements, mask.shape, spacing,
                                      input_dir=prepared.input_dir)
            if reference is not None:
                result["reference"] = reference
        if notes:
            result["notes"] = notes
        return result

    def _mask(self, prepared: Prepared, raw: RawOutput) -> np.ndarray:
        """The one-view mask on the original pixels (the path every response took before TTA)."""
        transform = prepared.transform
        if raw.seg_foreground is not None and isinstance(transform, Letterbox):
            return transform.invert_probability(raw.seg_foreground) > 0.5
        if raw.seg_label is None:
            raise RuntimeError("a segmentation sample without a label map")  # the forward pass always sets one
        if self.mask_inverse == "baseline":
            return baseline_resize_nearest(raw.seg_label, prepared.image.width, prepared.image.height) > 0
        return transform.invert_mask(raw.seg_label, background=0) > 0

    @staticmethod
    def _fuse_segmentation(prepared: Prepared, raw: RawOutput) -> tta.FusedMask:
        """Every view's foreground map back on the original pixels, averaged (:func:`core.tta.fuse_masks`)."""
        transform = prepared.transform
        maps = [_foreground(view) for view in raw.views or []]
        if isinstance(transform, Letterbox):
            return tta.fuse_masks(prepared.views, maps, transform.invert_probability)
        return tta.fuse_masks(prepared.views, maps, lambda m: transform.invert_mask(m, background=0))

    def _segmentation_uncertainty(self, prepared: Prepared, fused: tta.FusedMask, target: Path,
                                  spacing: float | None, fetal_head: bool) -> dict:
        """The TTA block: views, agreement PNG (0..255 = fraction of views voting foreground), measurement spread."""
        path = target.with_name(f"{target.stem}_agreement.png")
        atomic_save_image(Image.fromarray(tta.agreement_png(fused.agreement), mode="L"), path, format="PNG",
                          compress_level=1)
        per_view = [_measure(m, spacing, fetal_head=fetal_head) for m in fused.view_masks] if self.measurements \
            else [{"area_px": int(m.sum())} for m in fused.view_masks]
        union = np.zeros_like(fused.mask)
        for m in fused.view_masks:
            union |= m
        consensus = np.maximum(fused.agreement, 1.0 - fused.agreement)[union]
        return {
            "views": len(prepared.views),
            "view_names": [v.name for v in prepared.views],
            "agreement_mean": float(consensus.mean()) if consensus.size else 1.0,
            "agreement_path": str(path),
            "measurement_spread": tta.spread(per_view),
        }

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

    def predict_batch(self, requests: Iterable[dict | PredictRequest], *, output_dir: Path | None = None,
                      batch_size: int = 8, progress: Any = None, input_dir: Path | None = None,
                      workers: int = 2, on_error: str = "record") -> list[dict]:
        """Analyse many images in order (:func:`core.batching.run_batch`); no history (the service records).

        ``progress``: an object with ``update(n)`` (tqdm) or a callable ``(done, total)``.
        ``on_error="record"`` returns an :func:`error_record` for a failed image; ``"raise"`` stops at the first.
        """
        items = list(requests)
        results: list[dict] = [{} for _ in items]
        done = 0

        def on_result(index: int, response: dict | None, exc: BaseException | None) -> None:
            nonlocal done
            if exc is not None:
                if on_error == "raise":
                    raise exc
                response = error_record(items[index], exc)
            results[index] = response or {}
            done += 1
            report_progress(progress, done, len(items))

        run_batch(self, items, output_dir=self._output_dir(output_dir), on_result=on_result,
                  batch_size=batch_size, input_dir=input_dir, workers=workers)
        return results

    def _output_dir(self, output_dir: Path | None) -> Path:
        return Path(output_dir) if output_dir is not None else Path(self.settings.api_out)


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


def _foreground(raw: RawOutput) -> np.ndarray:
    """A view's ``S x S`` foreground map: the probability (letterbox) or the 0/1 vote of the label map (crop)."""
    if raw.seg_foreground is not None:
        return raw.seg_foreground
    if raw.seg_label is None:
        raise RuntimeError("a segmentation view without a label map")  # the forward pass always sets one
    return np.asarray(raw.seg_label > 0, dtype=np.float32)


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
        grouped.append(RawOutput(views=parts, fallback_device=parts[0].fallback_device))
        index += len(parts)
    return grouped


def _measure(mask: np.ndarray, spacing: float | None, *, fetal_head: bool) -> dict:
    """Measurements from :func:`core.measure.measure_mask`; the area alone when that module is unavailable."""
    try:
        from core.measure import measure_mask
    except ImportError:
        return {"area_px": int(mask.sum())}
    try:
        return measure_mask(mask, pixel_spacing_mm=spacing, fetal_head=fetal_head)
    except Exception as exc:  # a measurement must never sink the prediction
        log.warning("measurement failed: %s", exc)
        return {"area_px": int(mask.sum()), "error": f"measurement failed: {exc}"}


# ---------------------------------------------------------------------------------------------- process cache

_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(settings: Settings | None = None, model: str | None = None) -> Engine:
    """The process-wide engine for (model, device, roots); built once, shared by all callers."""
    settings = settings or get_settings()
    key = (model or settings.default_model, settings.device, str(settings.weights_dir), str(settings.data_root),
           str(settings.workspace), settings.amp, settings.max_image_pixels, settings.max_image_side,
           settings.backend, settings.precision, str(settings.cache_dir), settings.tta, settings.tta_views)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine(settings, model)
            _ENGINES[key] = engine
        return engine


def prepare_backend(settings: Settings | None = None) -> str:
    """Convert the default model for its CPU backend now, unless the conversion is cached (``make setup``), so that
    the first ``make run`` / ``make serve`` does not wait for it; returns one line saying what serves."""
    engine = Engine(settings or Settings.from_env())
    info = engine.backend
    done = "cached" if info.cached else f"converted in {info.convert_sec:.1f} s" if info.convert_sec else "as loaded"
    return (f"model {engine.spec.name!r}: {info.backend} {info.precision} on {engine.device} ({done})"
            + (f"; {info.fallback}" if info.fallback else ""))
