"""Train the organ / dataset recogniser and its out-of-distribution score on the CPU (a few minutes; default: numpy).

    .venv/bin/python scripts/train_recognizer.py --data-root ../shared/uusic-data --out weights
    .venv/bin/python scripts/train_recognizer.py --features encoder --out weights

``--features``: ``hand`` (default): :func:`core.recognition.features`, numpy (``recognizer.npz``: routing, the
dashboard's suggestion and every model without an embedding); ``encoder``: the demo network's encoder channel
means (``scripts/recognizer_encoder.py``, eager torch; ``recognizer_encoder.npz``, read from the served forward
pass by :mod:`core.recognition_encoder`, tied to the demo weights' sha256).

Images: every distinct image (sha256 of the bytes) of ``ground_truth.json``; split like the demo network
(``int(sha256[:8], 16) % 100 < 20`` → validation), so both use the same validation images. Each training image is
seen as stored and ``--augment`` times re-cropped (aspect changes), rescaled, flipped, gamma-jittered and re-encoded
(JPEG q 40-95 or PNG); validation is measured on the stored image and on one such perturbed copy. Out of
distribution: synthetic non-ultrasound (noise, blank / saturated frames, checkerboards, ramps, colour blobs and
plasma "photos", their grey versions, rendered text), never used for training; the threshold is at least the 99th
percentile of the validation ultrasound's score and each dataset's 95th (:func:`ood_threshold`). A
leave-one-organ-out run of the score (standardisation and score refitted without the organ) measures how it
separates ultrasound of an organ it has not seen, on all validation images and on each half (by
``int(sha256[8:16], 16) % 2``: even = the half ``OOD_COLUMNS`` were chosen on, odd = the half they were not).
Writes ``recognizer.npz``, ``recognizer.json`` (sha256 + metrics), or their ``recognizer_encoder`` twins.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))  # recognizer_encoder, beside this script
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import recognition, recognition_encoder
from core.recognition import FEATURE_VERSION, Recognizer, features, ood_scores

ORGAN_OF = {"BUSI": "Breast", "BUS-BRA": "Breast", "BUSIS": "Breast", "DDTI": "Thyroid", "Fetal_HC": "Head",
            "CAMUS": "Heart"}
PCA_DIM = 32
SHRINK = 0.1  # per-class covariance shrinkage (PCA 32 / shrink 0.1 chosen on the Breast / Head / Heart held-back runs)
RESID_WEIGHT = 0.25  # weight of the PCA residual term (0 / 0.25 / 1: best mean AUROC of the same three runs)
EXCESS_WEIGHT = 3.0  # weight of the per-feature range term of the OOD score (chosen on the "tune" synthetic set)
# The columns of core.recognition.features the OOD score reads: intensity and gradient-magnitude histograms and
# speckle (258-283), LBP at 64 / 32 (303-322), the version-3 tissue features (421-499); not the thumbnail, cone,
# orientation or depth features, which an unseen organ shares with a served one. Chosen by a greedy search over
# feature groups maximising the worst held-back organ's AUROC on the even half of the validation images.
OOD_COLUMNS = np.r_[258:284, 303:323, 421:500]


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    """What the recogniser reads: one image's vector, the columns its out-of-distribution score reads, and a tag
    naming them (kept with a cache and in the record)."""

    tag: str
    vector: Callable[[np.ndarray], np.ndarray]
    ood_columns: np.ndarray
    features: str = recognition.HAND  # what the weights file says it reads (core.recognition.Recognizer checks it)
    weights_file: str = recognition.WEIGHTS_FILE
    record_file: str = recognition.RECORD_FILE
    record: dict = dataclasses.field(default_factory=dict)  # more for the record (the network's sha256)


def feature_set(name: str) -> FeatureSet:
    """``hand``: :func:`core.recognition.features`; ``encoder``: the demo network's encoder
    (``scripts/recognizer_encoder.py``)."""
    if name == "encoder":
        import recognizer_encoder

        return FeatureSet(recognizer_encoder.tag(), recognizer_encoder.embedding, np.arange(recognizer_encoder.LENGTH),
                          features=recognition_encoder.FEATURES, weights_file=recognition_encoder.WEIGHTS_FILE,
                          record_file=recognition_encoder.RECORD_FILE,
                          record={"network_sha256": recognizer_encoder.network_sha256()})
    return FeatureSet(recognition.HAND, features, OOD_COLUMNS)


def distinct_images(data_root: Path) -> list[tuple[str, str, Path]]:
    """(sha256, dataset, path) of every distinct image the ground truth names, first occurrence kept."""
    entries = json.loads((data_root / "ground_truth.json").read_text(encoding="utf-8"))
    seen: dict[str, tuple[str, str, Path]] = {}
    for entry in entries:
        path = data_root / entry["img_path_relative"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        seen.setdefault(digest, (digest, entry["dataset_name"], path))
    return sorted(seen.values(), key=lambda item: item[0])


def is_validation(digest: str) -> bool:
    return int(digest[:8], 16) % 100 < 20


def perturb(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A re-cropped (independent sides: the aspect changes), rescaled, maybe flipped, gamma-jittered, re-encoded
    copy of ``image``."""
    width, height = image.size
    cw, ch = int(width * rng.uniform(0.75, 1.0)), int(height * rng.uniform(0.75, 1.0))
    x0, y0 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    crop = image.crop((x0, y0, x0 + cw, y0 + ch))
    scale = rng.uniform(0.35, 1.3)
    crop = crop.resize((max(48, int(cw * scale)), max(48, int(ch * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(crop, dtype=np.float32) / 255.0
    array = np.clip(255.0 * array ** rng.uniform(0.8, 1.25), 0, 255).astype(np.uint8)
    return reencode(Image.fromarray(array), rng)


def reencode(image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    if rng.random() < 0.7:
        image.save(buffer, "JPEG", quality=int(rng.integers(40, 96)))
    else:
        image.save(buffer, "PNG", compress_level=1)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def ultrasound_features(images: list[tuple[str, str, Path]], augment: int, seed: int,
                        vector: Callable[[np.ndarray], np.ndarray] = features) -> dict[str, np.ndarray]:
    """Features (``vector``) of the stored images (``orig``), of their perturbed copies (``aug``, with
    ``aug_index``)."""
    rng = np.random.default_rng(seed)
    orig, aug, aug_index = [], [], []
    for index, (_, _, path) in enumerate(images):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        orig.append(vector(np.asarray(image)))
        for _ in range(augment):
            aug.append(vector(perturb(image, rng)))
            aug_index.append(index)
        if index % 500 == 0:
            print(f"  features {index}/{len(images)}", flush=True)
    return {"orig": np.stack(orig), "aug": np.stack(aug), "aug_index": np.array(aug_index)}


def cached_features(cache: Path | None, compute, tag: str) -> dict[str, np.ndarray]:
    """``compute()``, or the arrays ``cache`` holds when it exists and was made for the features ``tag`` names."""
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            if "tag" in data and str(data["tag"]) == tag:
                return {k: data[k] for k in ("orig", "aug", "aug_index")}
    feats = compute()
    if cache is not None:
        np.savez(cache, tag=np.array(tag), **feats)
    return feats


def synthetic_ood(count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Non-ultrasound images (``count`` of them, deterministic) and their kinds."""
    rng = np.random.default_rng(seed)
    makers = [_noise, _blank, _checkerboard, _ramp, _blobs, _plasma, _text]
    images, kinds = [], []
    for i in range(count):
        maker = makers[i % len(makers)]
        size = (int(rng.integers(120, 700)), int(rng.integers(120, 700)))
        image = maker(size, rng)
        if maker in (_blobs, _plasma, _text) and rng.random() < 0.4:
            image = image.convert("L").convert("RGB")  # a grey photo is the harder case
        images.append(reencode(image, rng))
        kinds.append(maker.__name__.strip("_"))
    return images, kinds


def _noise(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    grey = np.clip(rng.normal(rng.uniform(40, 200), rng.uniform(10, 80), (h, w)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _blank(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    value = [0, 255, int(rng.integers(1, 255))][int(rng.integers(0, 3))]
    colour = (value, value, value) if rng.random() < 0.7 else tuple(int(v) for v in rng.integers(0, 256, 3))
    return Image.new("RGB", size, colour)


def _checkerboard(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    cell = int(rng.integers(4, 64))
    board = ((np.arange(h)[:, None] // cell + np.arange(w)[None, :] // cell) % 2).astype(np.uint8) * 255
    return Image.fromarray(board).convert("RGB")


def _ramp(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    w, h = size
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    tint = rng.uniform(0.3, 1.0, 3)
    return Image.fromarray((255 * ramp[..., None] * tint).astype(np.uint8))


def _blobs(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 40))):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        r = int(rng.integers(5, max(6, min(size) // 3)))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def _plasma(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Smooth multi-octave colour noise: texture and colour like a photograph's."""
    w, h = size
    total = np.zeros((h, w, 3), dtype=np.float32)
    for octave in range(5):
        cells = 2 ** (octave + 1)
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        total += np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32) / 2 ** octave
    total = (total - total.min()) / (np.ptp(total) + 1e-6) * 255
    return Image.fromarray(total.astype(np.uint8))


def _text(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    dark = rng.random() < 0.5
    image = Image.new("RGB", size, (0, 0, 0) if dark else (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    words = ["ultrasound", "report", "patient", "12.5 mm", "LEFT", "BREAST", "Hz", "gain", "depth", "2026"]
    for y in range(5, size[1], int(rng.integers(12, 30))):
        line = " ".join(words[int(i)] for i in rng.integers(0, len(words), 6))
        draw.text((int(rng.integers(0, 20)), y), line, fill=(220, 220, 220) if dark else (20, 20, 20), font=font)
    return image


def train_mlp(x: np.ndarray, y: np.ndarray, classes: int, *, hidden: int, epochs: int, seed: int
              ) -> dict[str, np.ndarray]:
    """A one-hidden-layer softmax MLP (class-balanced cross-entropy, Adam, weight decay) on standardised ``x``."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weight = (1.0 / np.sqrt(np.maximum(counts, 1)))[y]
    weight = weight / weight.mean()
    params = {"w1": rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], hidden)), "b1": np.zeros(hidden),
              "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, classes)), "b2": np.zeros(classes)}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    step, lr, decay = 0, 2e-3, 1e-4
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 128):
            rows = order[start:start + 128]
            xb = x[rows] + rng.normal(0, 0.05, (len(rows), x.shape[1]))
            h = np.maximum(xb @ params["w1"] + params["b1"], 0)
            logits = h @ params["w2"] + params["b2"]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(rows)), y[rows]] -= 1
            d_logits = p * weight[rows, None] / len(rows)
            dh = (d_logits @ params["w2"].T) * (h > 0)
            grads = {"w2": h.T @ d_logits, "b2": d_logits.sum(0), "w1": xb.T @ dh, "b1": dh.sum(0)}
            step += 1
            rate = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
            for k, g in grads.items():
                m, v = moments[k]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                params[k] -= rate * ((m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
                                     + decay * params[k])
    return {k: v.astype(np.float32) for k, v in params.items()}


def _class_fit(white: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and shrunk precision of whitened PCA rows."""
    cov = np.cov((white - white.mean(axis=0)).T)
    cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / PCA_DIM * np.eye(PCA_DIM)
    return white.mean(axis=0), np.linalg.inv(cov)


def _maha(white: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    diff = white - mean
    return np.asarray(np.einsum("nd,de,ne->n", diff, precision, diff))


def fit_ood(z: np.ndarray, y: np.ndarray, fold: np.ndarray, resid_weight: float = RESID_WEIGHT
            ) -> dict[str, np.ndarray]:
    """PCA of the standardised training features; per class (``y``: the dataset) its mean and a shrunk covariance
    in the whitened PCA space (``SHRINK`` toward its mean variance), stored as the precision of the unwhitened PCA
    coordinates and scaled so that its median distance² for images it was not fitted on is 1 (two folds by image,
    ``fold``: a small class such as BUS-BRA, 19 images, fits its own images much more tightly than new ones); the
    medians that scale the terms of :func:`core.recognition.ood_scores` (the residual's scale divided by
    ``resid_weight``)."""
    centred = z - z.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred[::2], full_matrices=False)
    pca, spread = vt[:PCA_DIM], singular[:PCA_DIM] / np.sqrt(len(centred[::2]))
    white = z @ pca.T / spread
    means, precisions = [], []
    for label in np.unique(y):
        rows = y == label
        mean, precision = _class_fit(white[rows])
        held = [_class_fit(white[rows & (fold == f)]) for f in (0, 1)]
        unseen = np.concatenate([_maha(white[rows & (fold == 1 - f)], *held[f]) for f in (0, 1)])
        means.append(mean * spread)
        precisions.append(precision / np.sqrt(max(1.0, float(np.median(unseen)))) / spread[:, None] / spread[None, :])
    arrays = {"pca": pca, "class_means": np.stack(means), "precision": np.stack(precisions),
              "scale_maha": np.array(1.0), "scale_resid": np.array(1.0), "bounds": np.abs(z).max(axis=0),
              "excess_weight": np.array(EXCESS_WEIGHT)}
    maha_only = ood_scores(z, pca, arrays["class_means"], arrays["precision"], 1.0, np.inf)
    resid_only = ood_scores(z, pca, arrays["class_means"], arrays["precision"], np.inf, 1.0)
    arrays["scale_maha"] = np.array(np.median(maha_only))
    arrays["scale_resid"] = np.array(np.median(resid_only) / resid_weight if resid_weight > 0 else np.inf)
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside sample > score of an inside one), ties counted half."""
    scores = np.concatenate([inside, outside])
    ranks = np.empty(len(scores))
    order = scores.argsort(kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        same = scores == value
        ranks[same] = ranks[same].mean()
    return float((ranks[len(inside):].sum() - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def accuracy_by_organ(model: Recognizer, vectors: np.ndarray, organs: list[str], datasets: list[str]) -> dict:
    """Organ and dataset accuracy per true organ (and overall) of feature vectors."""
    probs, _ = model.scores(vectors)
    names = np.array(model.organs)
    organ_probs = np.stack([probs[:, names == o].sum(axis=1) for o in sorted(set(model.organs))], axis=1)
    predicted = np.array(sorted(set(model.organs)))[organ_probs.argmax(axis=1)]
    predicted_ds = np.array(model.datasets)[probs.argmax(axis=1)]
    truth, truth_ds = np.array(organs), np.array(datasets)
    out = {o: {"n": int((truth == o).sum()), "organ_accuracy": round(float((predicted == truth)[truth == o].mean()), 4)}
           for o in sorted(set(organs))}
    out["all"] = {"n": len(truth), "organ_accuracy": round(float((predicted == truth).mean()), 4),
                  "dataset_accuracy": round(float((predicted_ds == truth_ds).mean()), 4)}
    return out


def ood_metrics(model: Recognizer, id_scores: np.ndarray, count: int, seed: int,
                vector: Callable[[np.ndarray], np.ndarray] = features) -> dict:
    """AUROC and false accepts (overall, by kind) of a synthetic non-ultrasound set made with ``seed``."""
    images, kinds = synthetic_ood(count, seed)
    ood, kind = model.scores(np.stack([vector(im) for im in images]))[1], np.array(kinds)
    return {"n": len(ood), "seed": seed, "auroc": round(auroc(id_scores, ood), 4),
            "false_accept": round(float((ood <= model.threshold).mean()), 4),
            "false_accept_by_kind": {k: round(float((ood[kind == k] <= model.threshold).mean()), 4)
                                     for k in sorted(set(kinds))}}


def held_out_organs(x_train: np.ndarray, organ_train: np.ndarray, class_train: np.ndarray, fold_train: np.ndarray,
                    x_val: np.ndarray, organ_val: np.ndarray, parts: dict[str, np.ndarray],
                    resid_weight: float = RESID_WEIGHT, columns: np.ndarray = OOD_COLUMNS
                    ) -> dict[str, dict[str, float]]:
    """AUROC of the OOD score (on ``columns`` of the features) for each organ held back: standardisation and
    score fitted without it (as if it had never been seen), its validation images as 'outside', the other organs'
    validation images as 'inside' (``class_train``: the score's classes); for each of ``parts`` (name → mask of the
    validation rows)."""
    x_train, x_val = x_train[:, columns], x_val[:, columns]
    out: dict[str, dict[str, float]] = {name: {} for name in parts}
    for organ in sorted(set(organ_train.tolist())):
        keep = organ_train != organ
        mean, std = x_train[keep].mean(axis=0), x_train[keep].std(axis=0) + 1e-3
        fit = fit_ood((x_train[keep] - mean) / std, class_train[keep], fold_train[keep], resid_weight)
        args = (fit["pca"], fit["class_means"], fit["precision"], float(fit["scale_maha"]), float(fit["scale_resid"]),
                fit["bounds"], float(fit["excess_weight"]))
        scores = ood_scores((x_val - mean) / std, *args)
        for name, rows in parts.items():
            inside, outside = scores[rows & (organ_val != organ)], scores[rows & (organ_val == organ)]
            out[name][organ] = round(auroc(inside, outside), 4)
    return out


def _shown_args(argv: list[str]) -> str:
    """The command line as recorded: without ``--cache`` (a local scratch path, not how the weights were made)."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg == "--cache" or arg.startswith("--cache="):
            skip = arg == "--cache"
            continue
        shown.append(arg)
    return " ".join(shown)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/uusic-data"))
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--augment", type=int, default=3, help="perturbed copies per training image")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--ood-count", type=int, default=350)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="an .npz of the ultrasound features (made if absent)")
    parser.add_argument("--features", choices=["hand", "encoder"], default="hand",
                        help="hand: the hand-made features (default); encoder: the demo network's encoder "
                             "(scripts/recognizer_encoder.py), read from the served forward pass")
    return parser


def validation_rows(images: list, feats: dict[str, np.ndarray], val: np.ndarray, augment: int
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The validation features (the stored images and the first perturbed copy of each), the dataset of each row
    (stored rows first) and whether its image is in the even half (``int(sha256[8:16], 16) % 2 == 0``)."""
    first_copy = np.zeros(len(feats["aug_index"]), bool)
    first_copy[::augment] = True
    pick = first_copy & val[feats["aug_index"]]
    rows = np.concatenate([np.flatnonzero(val), feats["aug_index"][pick]])  # image index of each validation row
    x_val = {"stored": feats["orig"][val], "perturbed": feats["aug"][pick]}
    names = np.array([images[i][1] for i in rows])
    even = np.array([int(images[i][0][8:16], 16) % 2 == 0 for i in rows])
    return x_val, names, even


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen, start = feature_set(args.features), time.perf_counter()
    images = distinct_images(args.data_root)
    datasets = sorted(ORGAN_OF)
    labels = np.array([datasets.index(d) for _, d, _ in images])
    val = np.array([is_validation(h) for h, _, _ in images])
    print(f"{len(images)} distinct images, {int(val.sum())} validation", flush=True)
    feats = cached_features(args.cache, lambda: ultrasound_features(images, args.augment, args.seed, chosen.vector),
                            chosen.tag)
    aug_val = val[feats["aug_index"]]
    x_train = np.concatenate([feats["orig"][~val], feats["aug"][~aug_val]])
    y_train = np.concatenate([labels[~val], labels[feats["aug_index"]][~aug_val]])
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    z_train = (x_train - mean) / std
    mlp = train_mlp(z_train, y_train, len(datasets), hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    organ_train = np.array([ORGAN_OF[datasets[i]] for i in y_train])
    class_train = np.array([{"BUSIS": "BUSI"}.get(datasets[i], datasets[i]) for i in y_train])  # BUSIS: 2 images
    fold_train = np.concatenate([np.flatnonzero(~val), feats["aug_index"][~aug_val]]) % 2  # by image
    arrays = {**mlp, **fit_ood(z_train[:, chosen.ood_columns], class_train, fold_train),
              "ood_columns": chosen.ood_columns.astype(np.int64), "feature_mean": mean.astype(np.float32),
              "feature_std": std.astype(np.float32), "datasets": np.array(datasets),
              "organs": np.array([ORGAN_OF[d] for d in datasets]), "feature_version": np.array(FEATURE_VERSION),
              "threshold": np.array(np.inf, dtype=np.float32)}
    if chosen.features != recognition.HAND:  # a hand file says so by its feature_version (older files have no key)
        arrays["features"] = np.array(chosen.features)
    model = Recognizer(arrays, features=chosen.features)
    x_val, names_val, even = validation_rows(images, feats, val, args.augment)
    ds_val = dict(zip(x_val, np.split(names_val, [len(x_val["stored"])]), strict=True))
    id_scores = np.concatenate([model.scores(x)[1] for x in x_val.values()])
    threshold = ood_threshold(id_scores, names_val)
    arrays["threshold"] = np.array(threshold, dtype=np.float32)
    model = Recognizer(arrays, features=chosen.features)
    metrics = {
        "validation": {k: accuracy_by_organ(model, x_val[k], [ORGAN_OF[d] for d in ds_val[k]], ds_val[k].tolist())
                       for k in x_val},
        "threshold": round(threshold, 4),
        "false_reject_validation": round(float((id_scores > threshold).mean()), 4),
        "false_reject_validation_by_dataset": {d: round(float((id_scores[names_val == d] > threshold).mean()), 4)
                                               for d in sorted(set(names_val.tolist()))},
        "ood_synthetic_tune": ood_metrics(model, id_scores, args.ood_count, args.seed + 1, chosen.vector),
        "ood_synthetic_test": ood_metrics(model, id_scores, args.ood_count, args.seed + 2, chosen.vector),
        **{f"ood_held_out_organ_auroc{suffix}": value for suffix, value in held_out_organs(
            x_train, organ_train, class_train, fold_train, np.concatenate(list(x_val.values())),
            np.array([ORGAN_OF[d] for d in names_val]),
            {"": np.ones(len(even), bool), "_selection_half": even, "_report_half": ~even},
            columns=chosen.ood_columns).items()},
    }
    training = {"command": "python scripts/train_recognizer.py " + _shown_args(argv or sys.argv[1:]),
                "train_images": int((~val).sum()), "val_images": int(val.sum()), "augment": args.augment,
                "epochs": args.epochs, "hidden": args.hidden, "seed": args.seed, "features": chosen.tag,
                "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(save(args.out, arrays, training, metrics, chosen), indent=1))
    return 0


def ood_threshold(id_scores: np.ndarray, datasets: np.ndarray) -> float:
    """The out-of-distribution threshold on validation scores: at least their 99th percentile and each served
    dataset's 95th (so one device whose images score high is not warned about far more often than the others)."""
    per_dataset = [float(np.quantile(id_scores[datasets == d], 0.95)) for d in sorted(set(datasets.tolist()))]
    return max(float(np.quantile(id_scores, 0.99)), *per_dataset)


def save(out: Path, arrays: dict[str, np.ndarray], training: dict, metrics: dict, chosen: FeatureSet) -> dict:
    """Write the weights and their record (sha256, threshold, training and metrics) into ``out``: ``recognizer.npz``
    / ``.json``, or the encoder's ``recognizer_encoder.npz`` / ``.json``."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / chosen.weights_file
    np.savez_compressed(target, **arrays)
    record = {"file": chosen.weights_file, "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
              **({"feature_version": FEATURE_VERSION} if chosen.features == recognition.HAND
                 else {"features": chosen.features, **chosen.record}),
              "datasets": [str(d) for d in arrays["datasets"]],
              "threshold": round(float(arrays["threshold"]), 4), "training": training, "metrics": metrics,
              "model_card": "MODEL_CARD.md"}
    (out / chosen.record_file).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


if __name__ == "__main__":
    raise SystemExit(main())
