"""What is on the screen: the organ / dataset an image looks like, and whether it looks like ultrasound the models
were made for at all (out of distribution).

A small numpy model (``weights/recognizer.npz``, trained by ``scripts/train_recognizer.py``, its sha256 recorded in
``weights/recognizer.json``): hand features of a 64 × 64 squashed thumbnail (grey thumbnail, intensity and gradient
histograms, speckle, spectrum, colour) and of a 128 × 128 one (texture, cone shape, speckle:
:mod:`core.recognition_features`; tissue texture: :mod:`core.recognition_tissue`) → a one-hidden-layer MLP over the
served datasets (organ = the sum of its datasets' probabilities); the out-of-distribution score, on the texture columns
only (``ood_columns``: not the cone or the thumbnail, which an unseen organ shares with a served one), is the
smallest per-organ Mahalanobis distance plus the PCA residual in the standardised feature space plus each such
feature's excess beyond the range seen in training, compared with a threshold chosen on validation data. Loaded
once per weights file; a missing or broken file (or one made for other features) means "recognition unavailable"
(:func:`recognise` returns None), never an error. numpy + PIL only.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from core.files import sha256_file
from core.recognition_features import FINE, mean, pool2, share, std, texture_features
from core.recognition_tissue import tissue_features
from core.settings import WEIGHTS_DIR

log = logging.getLogger("uusic.recognition")

FEATURE_VERSION = 3  # 2: + texture / cone / speckle features of a 128 x 128 thumbnail; 3: + tissue texture features
SIDE = 64  # the squashed thumbnail the features are computed on (aspect and size are no shortcut)
WEIGHTS_FILE = "recognizer.npz"
RECORD_FILE = "recognizer.json"  # {"file", "sha256", ...}: kept apart from models.json (a list of served models)
HAND = f"hand:{FEATURE_VERSION}"  # what this module's features are called in a weights file (``features``)
_GRAD_EDGES = np.array([0, 1, 2, 4, 8, 16, 32, 64], dtype=np.float32)  # magnitude bins: [0,1) … [64, ∞)


class Recognition(BaseModel):
    """The recogniser's answer for one image."""

    organ: str  # catalog organ name: Breast | Thyroid | Head | Heart
    dataset: str  # the served dataset it looks most like
    confidence: float  # probability of ``organ`` (0..1)
    in_distribution: bool  # False: not like any ultrasound the models were trained on
    ood_score: float  # larger = further from the training ultrasound; ``threshold`` decides
    features: str = "image"  # "image": this module's features of the image; "encoder": the network's own embedding

    def public(self) -> dict[str, Any]:
        """The ``recognition`` block of a response."""
        return {"organ": self.organ, "dataset": self.dataset, "confidence": round(self.confidence, 4),
                "in_distribution": self.in_distribution, "features": self.features}


def thumbnail(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``FINE x FINE x 3`` and ``SIDE x SIDE x 3`` float32 thumbnails of ``rgb`` (H x W x 3 or H x W uint8),
    squashed (the aspect is not kept); the small one is made from the fine one."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if image.mode != "RGB":
        image = image.convert("RGB")
    fine = image.resize((FINE, FINE), Image.Resampling.BILINEAR, reducing_gap=1.0)  # 1.0: 0.5 ms less than 2.0
    small = fine.resize((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(fine, dtype=np.float32), np.asarray(small, dtype=np.float32)


def features(rgb: np.ndarray) -> np.ndarray:
    """The feature vector of one image (float32, fixed length for :data:`FEATURE_VERSION`)."""
    fine, small = thumbnail(rgb)
    red, green, blue = small[..., 0], small[..., 1], small[..., 2]
    grey = (red + green + blue) / 3.0  # == small.mean(axis=2) (sums of whole numbers are exact), without its slow
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)  # reduce over 3
    colour = [float(mean(spread) / 255.0), share(spread > 24)]
    thumb = grey.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel() / 255.0
    counts = np.bincount(np.minimum(grey, 255).astype(np.int64).ravel() >> 3, minlength=32)  # 32 levels
    hist, levels = (counts[0::2] + counts[1::2]) / grey.size, counts / grey.size  # 16 and 32 levels
    gx, gy = np.abs(np.diff(grey, axis=1))[:-1], np.abs(np.diff(grey, axis=0))[:, :-1]
    magnitude = np.hypot(gx, gy)
    grad = np.bincount(np.searchsorted(_GRAD_EDGES, magnitude.ravel(), side="right"), minlength=9)[1:9] / magnitude.size
    padded = np.pad(grey, 1, mode="edge")
    blur = sum(padded[i:i + SIDE, j:j + SIDE] for i in range(3) for j in range(3)) / 9.0
    high = grey - blur
    bright = grey > 16
    speckle = [float(std(high) / 64.0), float(std(high[bright]) / (mean(grey[bright]) + 1.0)) if bright.any()
               else 0.0]
    shares = np.sort(levels)[::-1]
    entropy = -float((levels[levels > 0] * np.log2(levels[levels > 0])).sum()) / 5.0
    stats = [entropy, float(shares[:2].sum()), float(shares[2:8].sum()),
             float(mean(grey) / 255), float(std(grey) / 128), share(grey < 8), share(grey > 247),
             float(mean(np.abs(grey - grey[:, ::-1])) / 255), share(gx == 0),
             float(mean(magnitude) / 64), float(std(magnitude) / 64)]
    grey128 = (fine[..., 0] + fine[..., 1] + fine[..., 2]) / 3.0
    grey64 = pool2(grey128)  # shared by both feature families
    return np.concatenate([colour, thumb, hist, grad, speckle, stats, _spectrum(grey),
                           texture_features(grey128, grey64), tissue_features(grey128, grey64)]).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _radius_bins() -> np.ndarray:
    fy, fx = np.meshgrid(np.fft.fftfreq(SIDE), np.fft.rfftfreq(SIDE), indexing="ij")
    return np.minimum((np.hypot(fy, fx) / 0.5 * 8).astype(np.int64), 7)


def _spectrum(grey: np.ndarray) -> np.ndarray:
    """Share of the (mean-removed) power in 8 radial frequency bands, log-scaled."""
    power = np.abs(np.fft.rfft2(grey - mean(grey))) ** 2
    bands = np.bincount(_radius_bins().ravel(), weights=power.ravel(), minlength=8)
    return np.log10(bands / (bands.sum() + 1e-6) + 1e-6) / 6.0 + 1.0


class Recognizer:
    """The loaded model: :meth:`predict` one image."""

    def __init__(self, arrays: dict[str, np.ndarray], features: str = HAND):
        self.label = "image" if features == HAND else features  # what its answers say they were made from
        self.mean, self.std = arrays["feature_mean"], arrays["feature_std"]
        self.w1, self.b1, self.w2, self.b2 = arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"]
        self.datasets = [str(x) for x in arrays["datasets"]]
        self.organs = [str(x) for x in arrays["organs"]]
        self.pca, self.class_means, self.precision = arrays["pca"], arrays["class_means"], arrays["precision"]
        self.scale_maha, self.scale_resid = float(arrays["scale_maha"]), float(arrays["scale_resid"])
        self.bounds, self.excess_weight = arrays["bounds"], float(arrays["excess_weight"])
        self.threshold = float(arrays["threshold"])
        made_for = str(arrays["features"]) if "features" in arrays else f"hand:{int(arrays['feature_version'])}"
        if made_for != features or self.w1.shape[0] != self.mean.shape[0]:
            raise ValueError("recogniser weights were made for other features")
        self.ood_columns = np.asarray(arrays["ood_columns"], dtype=np.int64)  # the features the OOD score reads
        if self.bounds.shape[0] != len(self.ood_columns) or self.ood_columns.max() >= self.mean.shape[0]:
            raise ValueError("recogniser weights were made for other features")

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dataset probabilities N x D, out-of-distribution scores N) of feature vectors N x F."""
        z = (vectors - self.mean) / self.std
        hidden = np.maximum(z @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, ood_scores(z[:, self.ood_columns], self.pca, self.class_means, self.precision,
                                 self.scale_maha, self.scale_resid, self.bounds, self.excess_weight)

    def predict(self, rgb: np.ndarray) -> Recognition:
        """The answer for one decoded image (hand features)."""
        return self.predict_vector(features(rgb))

    def predict_vector(self, vector: np.ndarray) -> Recognition:
        """The answer for one feature vector (the kind of features this model was trained on)."""
        probs, ood = self.scores(np.asarray(vector, dtype=np.float32)[None, :])
        organ_probs: dict[str, float] = {}
        for organ, p in zip(self.organs, probs[0], strict=True):
            organ_probs[organ] = organ_probs.get(organ, 0.0) + float(p)
        organ = max(organ_probs, key=lambda k: organ_probs[k])
        ranked = sorted(((float(p), name) for name, o, p in zip(self.datasets, self.organs, probs[0], strict=True)
                         if o == organ), reverse=True)
        score = float(ood[0])
        return Recognition(organ=organ, dataset=ranked[0][1], confidence=organ_probs[organ],
                           in_distribution=bool(score <= self.threshold), ood_score=round(score, 4),
                           features=self.label)


def ood_scores(z: np.ndarray, pca: np.ndarray, class_means: np.ndarray, precision: np.ndarray, scale_maha: float,
               scale_resid: float, bounds: np.ndarray | None = None, excess_weight: float = 0.0) -> np.ndarray:
    """Smallest class Mahalanobis distance² in the PCA space (``precision``: one shared matrix, or one per class,
    C x K x K) plus the squared residual off that space, each divided by its scale (the training median; a larger
    residual scale weighs the residual less), plus ``excess_weight`` × the squared excess of each standardised
    feature beyond ``bounds`` (its largest |z| in training): one feature far outside everything seen (a text page's
    flat background) counts even when the sums do not."""
    projected = z @ pca.T
    residual = ((z - projected @ pca) ** 2).sum(axis=1)
    diffs = projected[:, None, :] - class_means[None, :, :]
    per_class = precision if precision.ndim == 3 else np.broadcast_to(precision, (len(class_means), *precision.shape))
    maha = np.einsum("ncd,cde,nce->nc", diffs, per_class, diffs).min(axis=1)
    score = maha / scale_maha + residual / scale_resid
    if bounds is not None and excess_weight:
        score = score + excess_weight * (np.maximum(np.abs(z) - bounds, 0.0) ** 2).sum(axis=1)
    return np.asarray(score, dtype=np.float64)


_LOCK = threading.Lock()
_LOADED: dict[str, Recognizer | None] = {}
_RESOLVED: dict[str, str] = {}  # a folder as given -> as resolved (the key of _LOADED)


def load(weights_dir: Path) -> Recognizer | None:
    """The recogniser of ``weights_dir`` (loaded once per process), or None when its file is missing, does not match
    the recorded sha256 or cannot be read (logged once, no path in the message)."""
    raw = str(weights_dir)
    key = _RESOLVED.get(raw) or _RESOLVED.setdefault(raw, str(Path(weights_dir).resolve()))  # resolve(): 30 µs a call
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(Path(weights_dir))
        return _LOADED[key]


def weights_folder(weights_dir: Path | None, record_file: str) -> Path:
    """``weights_dir`` when it holds ``record_file``, else the project's bundled weights folder (a weights folder of
    served models need not carry its own recogniser)."""
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return folder if (folder / record_file).is_file() else WEIGHTS_DIR


def read_weights(folder: Path, record_file: str = RECORD_FILE, features: str = HAND) -> tuple[Recognizer, dict]:
    """The recogniser recorded in ``folder / record_file`` (its file's sha256 checked) and that record; raises on
    any problem (a missing, mismatching or unreadable file, weights made for other features)."""
    record = json.loads((folder / record_file).read_text(encoding="utf-8"))
    path = folder / Path(str(record.get("file") or WEIGHTS_FILE)).name
    if sha256_file(path) != record.get("sha256"):
        raise ValueError(f"sha256 does not match {record_file}")
    with np.load(path, allow_pickle=False) as data:
        return Recognizer({name: data[name] for name in data.files}, features=features), record


def _load(weights_dir: Path) -> Recognizer | None:
    try:
        return read_weights(weights_dir)[0]
    except Exception as exc:  # noqa: BLE001 - no recogniser is a note, never a failed analysis
        log.warning("organ recogniser unavailable: %s", type(exc).__name__ if isinstance(exc, OSError) else exc)
        return None


def forget() -> None:
    """Drop the loaded recognisers (tests that swap the weights file)."""
    with _LOCK:
        _LOADED.clear()
        _RESOLVED.clear()


Found = tuple[Recognition | None, float]  # an answer (None: unavailable) and the seconds it took


def timed(rgb: np.ndarray, weights_dir: Path | None = None) -> Found:
    """:func:`recognise` and its seconds."""
    start = time.perf_counter()
    found = recognise(rgb, weights_dir)
    return found, time.perf_counter() - start


def recognise(rgb: np.ndarray, weights_dir: Path | None = None) -> Recognition | None:
    """The recognition of one decoded image (H x W x 3 uint8), or None when no recogniser is available. The
    recogniser of ``weights_dir`` when it has a ``recognizer.json``, else the project's bundled one (a weights folder
    of served models need not carry its own)."""
    model = load(weights_folder(weights_dir, RECORD_FILE))
    if model is None:
        return None
    try:
        return model.predict(rgb)
    except Exception as exc:  # noqa: BLE001 - an odd image is not recognised, and still analysed
        log.warning("organ recognition failed: %s", type(exc).__name__)
        return None


UNAVAILABLE_NOTE = "organ recognition unavailable: the recogniser's weights are missing or do not match their sha256"
OOD_NOTE = ("the image does not look like the ultrasound the models were trained on (out of distribution): "
            "check it before using the result")
OOD_REFUSAL = ("the image does not look like the ultrasound the models were trained on (out of distribution); "
               "this server refuses such inputs (UUSIC_REFUSE_OOD)")


def annotate(response: dict[str, Any], found: Recognition | None, organ: str | None) -> None:
    """Add ``recognition`` to an engine response (None when unavailable) and the notes it calls for: no recogniser,
    out of distribution, or an organ other than the one chosen."""
    response["recognition"] = found.public() if found is not None else None
    notes: list[str] = []
    if found is None:
        notes.append(UNAVAILABLE_NOTE)
    elif not found.in_distribution:
        notes.append(OOD_NOTE)
    elif organ and found.organ.lower() != organ.lower():
        notes.append(f"the image looks like {found.organ} ({found.dataset}, confidence {found.confidence:.0%}), "
                     f"not {organ}: check the organ chosen")
    if notes:
        response["notes"] = [*(response.get("notes") or []), *notes]
