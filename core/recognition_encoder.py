"""The organ recogniser on the served network's own encoder: recognition that costs no features of its own.

The demo network's forward pass returns, beside the contract's outputs, the global average of its stem's and each
encoder stage's output (584 values, prompt-free: the same whatever dataset it was asked for; see
:mod:`core.models.demo_unet`). ``weights/recognizer_encoder.npz`` (``scripts/train_recognizer.py --features
encoder``) is the same head as :mod:`core.recognition` (MLP over the served datasets, out-of-distribution score and
threshold) trained on those vectors; its record ``recognizer_encoder.json`` names the network weights' sha256, and
it reads only the embedding of that network (another network's vectors mean something else). An engine whose model
has no such embedding, or no matching head, is recognised from the image as before (:mod:`core.recognition`), and
so is an image the head is unsure of (:data:`SURE`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from core.recognition import Found, Recognition, Recognizer, read_weights, weights_folder

log = logging.getLogger("uusic.recognition")

FEATURES = "encoder"  # the ``features`` of such a weights file
WEIGHTS_FILE = "recognizer_encoder.npz"
RECORD_FILE = "recognizer_encoder.json"  # {"file", "sha256", "network_sha256", ...}

_LOCK = threading.Lock()
_LOADED: dict[str, tuple[Recognizer, str] | None] = {}  # resolved folder -> (head, network sha256) or None


# An answer less sure than this goes to the image recogniser (core.analysis.recognise_output): on the validation
# split 1 of 382 images (0.26 %) fell below it, the head's only organ error there, which the image recogniser got right
SURE = 0.9
EMBEDDING_ARCHS = ("demo_unet",)  # architectures whose served forward returns the encoder embedding


def head_for_model(weights_dir: Path | None, arch: str, network_sha256: str | None) -> Recognizer | None:
    """The head that recognises from the forward pass of a model of ``arch`` with these weights, or None (the
    model has no embedding, or no head was trained on its embedding): one check for every engine."""
    return head_for(weights_dir, network_sha256) if arch in EMBEDDING_ARCHS else None


def head_for(weights_dir: Path | None, network_sha256: str | None) -> Recognizer | None:
    """The encoder recogniser of ``weights_dir`` (else the bundled one) when it was trained on the embedding of the
    network whose weights have ``network_sha256``; None otherwise (the image's own features are used instead)."""
    folder = weights_folder(weights_dir, RECORD_FILE)
    key = str(folder.resolve())
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(folder)
        loaded = _LOADED[key]
    if loaded is None or not network_sha256 or loaded[1] != network_sha256:
        return None
    return loaded[0]


def _load(folder: Path) -> tuple[Recognizer, str] | None:
    if not (folder / RECORD_FILE).is_file():
        return None
    try:
        head, record = read_weights(folder, RECORD_FILE, FEATURES)
        return head, str(record.get("network_sha256") or "")
    except Exception as exc:  # noqa: BLE001 - no encoder head: the image's own features are used, never a failure
        log.warning("encoder recogniser unavailable: %s", type(exc).__name__ if isinstance(exc, OSError) else exc)
        return None


def forget() -> None:
    """Drop the loaded heads (tests that swap the weights file)."""
    with _LOCK:
        _LOADED.clear()


def recognise(head: Recognizer, embedding: np.ndarray) -> Found:
    """The head's answer for one image's embedding and the seconds it took (None when it fails)."""
    start = time.perf_counter()
    try:
        found: Recognition | None = head.predict_vector(embedding)
    except Exception as exc:  # noqa: BLE001 - an odd vector is not recognised, and still analysed
        log.warning("organ recognition failed: %s", type(exc).__name__)
        found = None
    return found, time.perf_counter() - start
