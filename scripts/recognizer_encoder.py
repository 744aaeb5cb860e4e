"""The demo network's encoder as the recogniser's features (issue 25), the training side.

The vector: the global average of the stem's and of each encoder stage's output (24 + 48 + 96 + 160 + 256 = 584
values) for the image letterboxed as the engine feeds the network (``core.geometry.Letterbox`` at the manifest's
input size). The encoder is prompt-free (FiLM acts after it), so every forward pass of the served network computes
this vector whatever dataset it was asked for; the served forward returns it (``core.models.demo_unet``), so
recognition costs only the recogniser's head (MLP + out-of-distribution score, ~0.2 ms: ``core.recognition_encoder``)
instead of the hand-made features' ~3 ms. Training side: eager torch.

    .venv/bin/python scripts/train_recognizer.py --features encoder --out weights
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from core.geometry import Letterbox
from core.settings import PROJECT_ROOT

WEIGHTS = PROJECT_ROOT / "weights" / "demo_unet.pt"
INPUT_SIZE = 256  # the demo network's input size and preprocessing (weights/models.json: letterbox)
LENGTH = 584  # 24 + 48 + 96 + 160 + 256 channels


@functools.lru_cache(maxsize=1)
def network() -> Any:
    """The demo network (eval mode, 2 torch threads), loaded once."""
    import torch

    from core.models.demo_unet import build_from_checkpoint

    torch.set_num_threads(2)
    return build_from_checkpoint(WEIGHTS)[0].eval()


def network_sha256() -> str:
    """The sha256 of the network's weights file (the served recogniser reads only this network's embedding)."""
    return hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()


def tag() -> str:
    """What the vectors depend on: the network's weights (a retrained network needs a retrained recogniser)."""
    return f"encoder:demo_unet:{network_sha256()[:16]}"


def letterboxed(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` (H x W, H x W x 3 or x 4, uint8) as the engine's ``INPUT_SIZE`` square, float in [0, 1]."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return Letterbox(rgb.shape[1], rgb.shape[0], INPUT_SIZE).apply(np.ascontiguousarray(rgb[..., :3]))


def encoder_means(images: Any) -> Any:
    """The global average of each output of the network's encoder (``DemoUNet.encode``) for a ``[B, S, S, 3]``
    batch in [0, 1]: ``[B, LENGTH]``."""
    from core.models.demo_unet import embedding

    return embedding(network().encode(images))


def embedding(rgb: np.ndarray) -> np.ndarray:
    """The :data:`LENGTH` float32 values of one image."""
    import torch

    with torch.inference_mode():
        batch = torch.from_numpy(letterboxed(rgb)[None])
        return np.asarray(encoder_means(batch)[0].numpy(), dtype=np.float32)
