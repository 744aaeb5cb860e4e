"""Score predictions against ground truth: Dice and NSD per segmentation dataset, AUC and accuracy per
classification dataset, macro averages over datasets.

``python -m core evaluate --ground-truth GT.json --data-root D --pred-dir O [--out metrics.json]`` reads
``O/classification.json`` and the masks ``python -m core predict`` writes (``imgs`` → ``masks``, ``.png``;
the baseline's ``img`` → ``mask`` naming is accepted too).

Definitions: Dice = 2|A∩B| / (|A|+|B|), 1.0 when both masks are empty. NSD (normalised surface distance) as in
the challenge's ``evaluation/metrics.py``: inner boundaries (4-connectivity), the fraction of boundary pixels of
each mask lying within ``tolerance`` pixels of the other's boundary (default 2 px). AUC: ROC AUC of the positive
class (binary) or one-vs-rest macro (4 classes). Missing predictions are counted and reported, not scored;
for Fetal_HC with ``head_circumference_mm`` in the ground truth, the mean absolute HC error is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from core.files import atomic_write_text
from core.paths import mask_relative_path
from core.schema import parse_request_list

DEFAULT_NSD_TOLERANCE_PX = 2.0
_CROSS = ndimage.generate_binary_structure(2, 1)


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    a, b = np.asarray(gt) > 0, np.asarray(pred) > 0
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)


def nsd(gt: np.ndarray, pred: np.ndarray, tolerance: float = DEFAULT_NSD_TOLERANCE_PX) -> float:
    """Normalised surface distance at ``tolerance`` pixels; 1.0 when both are empty, 0.0 when one is."""
    a, b = np.asarray(gt) > 0, np.asarray(pred) > 0
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    rows, cols = np.nonzero(a | b)
    pad = int(math.ceil(tolerance)) + 2  # crop to the union's box: same result, much faster
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, a.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, a.shape[1])
    a, b = a[r0:r1, c0:c1], b[r0:r1, c0:c1]
    boundary_a, boundary_b = _inner_boundary(a), _inner_boundary(b)
    distance_to_a = ndimage.distance_transform_edt(~boundary_a)
    distance_to_b = ndimage.distance_transform_edt(~boundary_b)
    a_near_b = int((boundary_a & (distance_to_b <= tolerance)).sum())
    b_near_a = int((boundary_b & (distance_to_a <= tolerance)).sum())
    return (a_near_b + b_near_a) / (int(boundary_a.sum()) + int(boundary_b.sum()))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def _prediction_mask_path(pred_dir: Path, img_path_relative: str) -> Path | None:
    candidates = [pred_dir / mask_relative_path(img_path_relative)]
    baseline = img_path_relative.replace("img", "mask")  # the challenge baseline's naming
    candidates += [pred_dir / baseline, (pred_dir / baseline).with_suffix(".png")]
    return next((c for c in candidates if c.is_file()), None)


def auc(labels: list[int], probabilities: list[list[float]]) -> float | None:
    """ROC AUC of per-class probabilities (one-vs-rest macro for more than two classes); None when undefined."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if len(set(y.tolist())) < 2:
        return None  # undefined with one class present
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    p = p / p.sum(axis=1, keepdims=True)
    present = sorted(set(y.tolist()))
    if len(present) < p.shape[1]:
        return None
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(p.shape[1]))))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


class _Scores:
    """Per-image scores of one prediction folder against the ground truth, gathered entry by entry."""

    def __init__(self, data_root: Path, pred_dir: Path, nsd_tolerance: float):
        self.data_root, self.pred_dir, self.nsd_tolerance = data_root, pred_dir, nsd_tolerance
        cls_file = pred_dir / "classification.json"
        self.cls_pred = json.loads(cls_file.read_text(encoding="utf-8")) if cls_file.is_file() else {}
        self.seg_rows: dict[str, list[dict]] = defaultdict(list)
        self.cls_rows: dict[str, list[dict]] = defaultdict(list)
        self.missing: dict[str, list[str]] = defaultdict(list)
        self.problems: list[str] = []

    def add(self, entry: dict) -> None:
        task, name, rel = entry.get("task"), entry.get("dataset_name"), entry.get("img_path_relative")
        scored = ((task == "segmentation" and entry.get("mask_path_relative"))
                  or (task == "classification" and entry.get("class_label_index") is not None))
        if not scored:
            return
        if not isinstance(name, str) or not isinstance(rel, str):
            self.problems.append(_malformed(entry))
        elif task == "segmentation":
            self._add_segmentation(entry, name, rel)
        else:
            self._add_classification(entry, name, rel)

    def _add_segmentation(self, entry: dict, name: str, rel: str) -> None:
        gt_path = self.data_root / entry["mask_path_relative"]
        pred_path = _prediction_mask_path(self.pred_dir, rel)
        if pred_path is None:
            self.missing[f"segmentation/{name}"].append(rel)
            return
        if not gt_path.is_file():
            self.problems.append(f"ground-truth mask missing: {entry['mask_path_relative']}")
            return
        gt, pred = _read_mask(gt_path), _read_mask(pred_path)
        if gt.shape != pred.shape:
            self.problems.append(f"{rel}: prediction {pred.shape[::-1]} vs ground truth {gt.shape[::-1]} (w, h)")
            return
        row = {"img_path_relative": rel, "dice": dice(gt, pred), "nsd": nsd(gt, pred, self.nsd_tolerance)}
        if entry.get("head_circumference_mm") and entry.get("pixel_spacing_mm"):
            row["hc_abs_error_mm"] = _hc_error(pred, entry)
        self.seg_rows[name].append(row)

    def _add_classification(self, entry: dict, name: str, rel: str) -> None:
        scores = self.cls_pred.get(rel)
        if scores is None:
            self.missing[f"classification/{name}"].append(rel)
            return
        self.cls_rows[name].append({"img_path_relative": rel, "label": int(entry["class_label_index"]),
                                    "probability": [float(v) for v in scores["probability"]],
                                    "prediction": int(scores["prediction"])})

    def names(self, task: str, rows: dict[str, list[dict]]) -> list[str]:
        return sorted(set(rows) | {k.split("/", 1)[1] for k in self.missing if k.startswith(f"{task}/")})

    def segmentation(self) -> dict[str, dict]:
        summary = {}
        for name in self.names("segmentation", self.seg_rows):
            rows = self.seg_rows.get(name, [])
            result = {"n": len(rows), "missing": len(self.missing.get(f"segmentation/{name}", [])),
                      "dice": _mean(r["dice"] for r in rows), "nsd": _mean(r["nsd"] for r in rows)}
            hc = [r["hc_abs_error_mm"] for r in rows if r.get("hc_abs_error_mm") is not None]
            if hc:
                result["hc_mae_mm"] = float(np.mean(hc))
                result["hc_n"] = len(hc)
            summary[name] = result
        return summary

    def classification(self) -> dict[str, dict]:
        summary = {}
        for name in self.names("classification", self.cls_rows):
            rows = self.cls_rows.get(name, [])
            labels = [r["label"] for r in rows]
            summary[name] = {
                "n": len(rows),
                "missing": len(self.missing.get(f"classification/{name}", [])),
                "auc": auc(labels, [r["probability"] for r in rows]) if rows else None,
                "accuracy": _mean(float(r["prediction"] == r["label"]) for r in rows),
            }
        return summary


def evaluate(ground_truth: list[dict] | Path | str, data_root: Path | str, pred_dir: Path | str, *,
             nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_PX, progress: bool = False) -> dict:
    """Metrics report (a JSON-ready dict); see the module docstring for definitions."""
    if not isinstance(ground_truth, list):
        ground_truth = parse_request_list(json.loads(Path(ground_truth).read_text(encoding="utf-8")))
    scores = _Scores(Path(data_root), Path(pred_dir), nsd_tolerance)
    entries = ground_truth
    if progress:
        from tqdm import tqdm

        entries = tqdm(ground_truth, desc="Scoring", unit="img")
    for entry in entries:
        scores.add(entry)
    segmentation, classification = scores.segmentation(), scores.classification()
    return {
        "nsd_tolerance_px": nsd_tolerance,
        "segmentation": segmentation,
        "classification": classification,
        "macro": {
            "dice": _mean(v["dice"] for v in segmentation.values()),
            "nsd": _mean(v["nsd"] for v in segmentation.values()),
            "auc": _mean(v["auc"] for v in classification.values()),
            "accuracy": _mean(v["accuracy"] for v in classification.values()),
        },
        "missing_total": sum(len(v) for v in scores.missing.values()),
        "missing": {k: v[:20] for k, v in scores.missing.items()},
        "problems": scores.problems,
        "per_image": {"segmentation": dict(scores.seg_rows), "classification": dict(scores.cls_rows)},
    }


def _malformed(entry: dict) -> str:
    """The problem line for a ground-truth entry without a string ``img_path_relative`` / ``dataset_name``."""
    return f"ground-truth entry without img_path_relative or dataset_name: {str(entry)[:200]}"


def _hc_error(pred: np.ndarray, entry: dict) -> float | None:
    try:
        from core.measure import measure_mask
    except ImportError:
        return None
    if not pred.any():
        return None
    try:
        measured = measure_mask(pred, pixel_spacing_mm=float(entry["pixel_spacing_mm"]), fetal_head=True)
    except Exception:
        return None
    value = measured.get("head_circumference_mm")
    return None if value is None else abs(float(value) - float(entry["head_circumference_mm"]))


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """A plain-text table of the report."""
    lines = [f"Segmentation (NSD tolerance {report['nsd_tolerance_px']:g} px)",
             f"{'dataset':<24}{'n':>6}{'missing':>9}{'Dice':>9}{'NSD':>9}{'HC MAE mm':>11}"]
    for name, v in report["segmentation"].items():
        lines.append(f"{name:<24}{v['n']:>6}{v['missing']:>9}{_fmt(v['dice']):>9}{_fmt(v['nsd']):>9}"
                     f"{_fmt(v.get('hc_mae_mm'), 2):>11}")
    lines += ["", "Classification", f"{'dataset':<24}{'n':>6}{'missing':>9}{'AUC':>9}{'Acc':>9}"]
    for name, v in report["classification"].items():
        lines.append(f"{name:<24}{v['n']:>6}{v['missing']:>9}{_fmt(v['auc']):>9}{_fmt(v['accuracy']):>9}")
    macro = report["macro"]
    lines += ["", f"Macro: Dice {_fmt(macro['dice'])}  NSD {_fmt(macro['nsd'])}  AUC {_fmt(macro['auc'])}  "
                  f"Acc {_fmt(macro['accuracy'])}"]
    if report["missing_total"]:
        lines.append(f"Missing predictions: {report['missing_total']} (not scored)")
    if report["problems"]:
        lines.append(f"Problems: {len(report['problems'])} (first: {report['problems'][0]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground-truth", required=True, type=Path, help="challenge-format JSON with labels")
    parser.add_argument("--data-root", required=True, type=Path, help="where the ground-truth masks live")
    parser.add_argument("--pred-dir", required=True, type=Path, help="output dir of `python -m core predict`")
    parser.add_argument("--out", type=Path, default=None, help="metrics JSON (default: PRED_DIR/metrics.json)")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_PX, help="pixels (default 2)")
    args = parser.parse_args(argv)
    if not args.ground_truth.is_file():
        print(f"error: ground truth {args.ground_truth} not found", file=sys.stderr)
        return 2
    if not args.pred_dir.is_dir():
        print(f"error: prediction dir {args.pred_dir} not found", file=sys.stderr)
        return 2
    report = evaluate(args.ground_truth, args.data_root, args.pred_dir, nsd_tolerance=args.nsd_tolerance,
                      progress=sys.stderr.isatty())
    print(format_table(report))
    out = args.out or args.pred_dir / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(report, indent=2))
    print(f"metrics written to {out}")
    return 0
