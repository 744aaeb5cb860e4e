"""What passes between the engine's stages: a prepared image (decoded, geometry applied, waiting for the forward
pass) and the raw output of that pass for one image; the baseline's nearest resize of a mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import tta
from core.geometry import CenterCrop, Letterbox
from core.imaging import LoadedImage
from core.schema import PredictRequest


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
    embedding: np.ndarray | None = None  # the model's prompt-free image features (the organ recogniser reads them)


def foreground(raw: RawOutput) -> np.ndarray:
    """A view's ``S x S`` foreground map: the probability (letterbox) or the 0/1 vote of the label map (crop)."""
    if raw.seg_foreground is not None:
        return raw.seg_foreground
    if raw.seg_label is None:
        raise RuntimeError("a segmentation view without a label map")  # the forward pass always sets one
    return np.asarray(raw.seg_label > 0, dtype=np.float32)
