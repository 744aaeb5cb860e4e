"""A segmentation's outputs from the forward pass: the mask back on the original pixels (exact inverse, the
baseline's resize, or the TTA views fused), written as a 0/255 PNG, measured in px and mm with the spacing's
source, its TTA uncertainty block and agreement map, and the ground truth's reference measurements."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from core import calibration, tta
from core.files import atomic_save_image, atomic_write_bytes
from core.geometry import Letterbox
from core.imaging import frame_mask_path
from core.paths import is_shared_output, mask_relative_path, output_path, write_new_output
from core.settings import Settings
from core.stages import Prepared, RawOutput, baseline_resize_nearest, foreground

log = logging.getLogger("core.engine")


class SegmentationOutput:
    """The outputs of one segmentation for an engine's settings, mask inverse and measurement switch."""

    def __init__(self, settings: Settings, mask_inverse: str = "exact", measurements: bool = True):
        self.settings, self.mask_inverse, self.measurements = settings, mask_inverse, measurements

    def write_mask(self, mask: np.ndarray, output_dir: Path, relative: str) -> Path:
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

    def result(self, prepared: Prepared, raw: RawOutput, output_dir: Path) -> dict:
        req, transform = prepared.request, prepared.transform
        fused = self.fuse(prepared, raw) if raw.views else None
        mask = fused.mask if fused is not None else self.mask(prepared, raw)
        relative = frame_mask_path(mask_relative_path(req.img_path_relative), prepared.image)  # cine: one per frame
        target = self.write_mask(mask, output_dir, relative)
        spacing, source, notes = calibration.resolve_spacing(
            req.pixel_spacing_mm, req.pixel_spacing_source, prepared.image.pixel_spacing_mm,
            prepared.image.pixel_spacing_source)
        coverage = transform.coverage() if self.mask_inverse == "exact" or fused is not None else np.ones(1)
        fetal_head = req.dataset.group == "fetal_head"
        measurements = measure(mask, spacing, fetal_head=fetal_head) if self.measurements else None
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
            result["uncertainty"] = self.uncertainty(prepared, fused, target, spacing, fetal_head)
        if measurements is not None:
            from core.reference import reference_for

            reference = reference_for(self.settings, req, measurements, mask.shape, spacing,
                                      input_dir=prepared.input_dir)
            if reference is not None:
                result["reference"] = reference
        if notes:
            result["notes"] = notes
        return result

    def mask(self, prepared: Prepared, raw: RawOutput) -> np.ndarray:
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
    def fuse(prepared: Prepared, raw: RawOutput) -> tta.FusedMask:
        """Every view's foreground map back on the original pixels, averaged (:func:`core.tta.fuse_masks`)."""
        transform = prepared.transform
        maps = [foreground(view) for view in raw.views or []]
        if isinstance(transform, Letterbox):
            return tta.fuse_masks(prepared.views, maps, transform.invert_probability)
        return tta.fuse_masks(prepared.views, maps, lambda m: transform.invert_mask(m, background=0))

    def uncertainty(self, prepared: Prepared, fused: tta.FusedMask, target: Path,
                                  spacing: float | None, fetal_head: bool) -> dict:
        """The TTA block: views, agreement PNG (0..255 = fraction of views voting foreground), measurement spread."""
        path = target.with_name(f"{target.stem}_agreement.png")
        atomic_save_image(Image.fromarray(tta.agreement_png(fused.agreement), mode="L"), path, format="PNG",
                          compress_level=1)
        per_view = [measure(m, spacing, fetal_head=fetal_head) for m in fused.view_masks] if self.measurements \
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


def measure(mask: np.ndarray, spacing: float | None, *, fetal_head: bool) -> dict:
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
