"""Benchmark (a script, not a test): what test-time augmentation (core.tta) buys and costs, demo model, CPU.

    .venv/bin/python bench/bench_tta.py [--data-root ../shared/uusic-data] [--hc-images 20] [--val-stride 1]
        [--cost-images 12] [--backend auto] [--views "identity,hflip,rot-10,rot+10"] [--out docs/bench/bench_tta]

Three parts, each with and without TTA (the same engine, the request's ``tta`` field decides):

* ``hc`` — rotation sensitivity: the first N Fetal_HC images of ``weights/demo_val_split.json`` at 0°, 90° and
  90°+20° (rotated with :mod:`core.editing`, the dashboard's edits; the map spacing is unchanged, so HC in mm must
  not change); per image the range (max - min) and SD of HC over the three rotations, and |HC - reference HC|.
* ``val`` — the validation split (every ``--val-stride``-th entry of each task x dataset) through
  ``Engine.predict_batch``, scored with :func:`core.evaluate.evaluate`: Dice / NSD per segmentation dataset, AUC /
  accuracy per classification dataset.
* ``cost`` — per-image wall time of ``Engine.predict`` (one image per call, as the API / dashboard run it, with
  measurements), TTA and no-TTA interleaved per image, after a warm-up; the ratio decides ``tta=auto`` (< 2x: on).

Writes ``<out>.json`` (every number) and ``<out>.txt`` (the summary printed). Timings on a shared machine are noisy;
the ratio is taken per image (TTA / no-TTA of the same image, same moment) and its median reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.editing import apply_edits  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.evaluate import evaluate  # noqa: E402
from core.settings import Settings  # noqa: E402

ROTATIONS = {"0": [], "90": [{"op": "rotate90", "k": 1}], "90+20": [{"op": "rotate90", "k": 1},
                                                                     {"op": "rotate", "angle": 20.0}]}


def build_engine(args, workspace: Path, *, measurements: bool = True) -> Engine:
    settings = Settings(workspace=workspace, data_root=args.data_root, device="cpu", backend=args.backend,
                        tta_views=args.views)
    return Engine(settings, "uusic-demo-unet", measurements=measurements)


def hc_part(engine: Engine, entries: list[dict], args, tmp: Path) -> dict:
    """HC (mm) of each image at each rotation, with and without TTA."""
    chosen = [e for e in entries if e["dataset_name"] == "Fetal_HC" and e.get("head_circumference_mm")]
    chosen = chosen[: args.hc_images]
    requests, keys = [], []
    for entry in chosen:
        with Image.open(args.data_root / entry["img_path_relative"]) as image:
            original = image.convert("RGB")
        for name, edits in ROTATIONS.items():
            rel = f"hc/{Path(entry['img_name']).stem}_{name.replace('+', 'p')}.png"
            (tmp / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
            apply_edits(original, edits).save(tmp / "in" / rel)
            for tta in (False, True):
                requests.append({"img_path_relative": rel, "task": "segmentation", "dataset_name": "Fetal_HC",
                                 "pixel_spacing_mm": entry["pixel_spacing_mm"],
                                 "pixel_spacing_source": "ground_truth", "tta": tta})
                keys.append((entry["img_name"], name, tta))
    start = time.perf_counter()
    results = engine.predict_batch(requests, input_dir=tmp / "in", output_dir=tmp / f"hc_out_{time.time_ns()}",
                                   batch_size=4, on_error="raise")
    seconds = time.perf_counter() - start
    hc: dict = {}
    for (img, rot, tta), result in zip(keys, results, strict=True):
        value = (result.get("measurements") or {}).get("head_circumference_mm")
        hc.setdefault(img, {}).setdefault("tta" if tta else "plain", {})[rot] = value
    return summarise_hc(hc, {e["img_name"]: e["head_circumference_mm"] for e in chosen}, seconds)


def summarise_hc(hc: dict, reference: dict, seconds: float) -> dict:
    per_image = []
    for img, modes in hc.items():
        row = {"img_name": img, "reference_hc_mm": reference[img]}
        for mode, values in modes.items():
            numbers = [v for v in values.values() if v is not None]
            row[mode] = {"hc_mm": values, "range_mm": max(numbers) - min(numbers) if len(numbers) == 3 else None,
                         "sd_mm": float(np.std(numbers)) if len(numbers) == 3 else None,
                         "abs_error_0deg_mm": abs(values["0"] - reference[img]) if values.get("0") else None,
                         "abs_error_mean_mm": float(np.mean([abs(v - reference[img]) for v in numbers]))
                         if numbers else None}
        per_image.append(row)
    summary = {}
    for mode in ("plain", "tta"):
        ranges = [r[mode]["range_mm"] for r in per_image if r[mode]["range_mm"] is not None]
        summary[mode] = {"n": len(ranges), "mean_range_mm": _mean(ranges), "median_range_mm": _median(ranges),
                         "max_range_mm": max(ranges) if ranges else None,
                         "mean_sd_mm": _mean([r[mode]["sd_mm"] for r in per_image if r[mode]["sd_mm"] is not None]),
                         "mae_0deg_mm": _mean([r[mode]["abs_error_0deg_mm"] for r in per_image
                                               if r[mode]["abs_error_0deg_mm"] is not None]),
                         "mae_all_rotations_mm": _mean([r[mode]["abs_error_mean_mm"] for r in per_image
                                                        if r[mode]["abs_error_mean_mm"] is not None])}
    shrinks = [r for r in per_image if r["plain"]["range_mm"] is not None and r["tta"]["range_mm"] is not None]
    summary["images_where_tta_shrinks_range"] = sum(r["tta"]["range_mm"] < r["plain"]["range_mm"] for r in shrinks)
    return {"summary": summary, "per_image": per_image, "seconds": seconds}


def val_part(engine: Engine, entries: list[dict], args, tmp: Path) -> dict:
    """Validation metrics with and without TTA (the same entries)."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:  # every k-th entry of each (task, dataset): the split alternates tasks, a plain stride not
        groups.setdefault((entry["task"], entry["dataset_name"]), []).append(entry)
    chosen = [e for group in groups.values() for e in group[:: args.val_stride]]
    out: dict = {"n_entries": len(chosen), "stride": args.val_stride}
    for tta in (False, True):
        pred_dir = tmp / ("val_tta" if tta else "val_plain")
        start = time.perf_counter()
        results = engine.predict_batch([{**e, "tta": tta} for e in chosen], input_dir=args.data_root,
                                       output_dir=pred_dir, batch_size=8)
        seconds = time.perf_counter() - start
        classification = {r["img_path_relative"]: {"probability": r["probability"], "prediction": r["prediction"]}
                          for r in results if r.get("task") == "classification" and "probability" in r}
        (pred_dir / "classification.json").write_text(json.dumps(classification))
        report = evaluate(chosen, args.data_root, pred_dir)
        report.pop("per_image", None)
        out["tta" if tta else "plain"] = {"seconds": seconds, "errors": sum(1 for r in results if "error" in r),
                                          "report": report}
    return out


def cost_part(engine: Engine, entries: list[dict], args) -> dict:
    """Per-image seconds of ``Engine.predict`` with and without TTA, interleaved, after one warm-up each."""
    groups = [("segmentation", "Fetal_HC"), ("segmentation", "BUSI"), ("classification", "BUSI")]
    per_group = max(1, args.cost_images // len(groups))
    chosen = [e for key in groups for e in [x for x in entries if (x["task"], x["dataset_name"]) == key][:per_group]]
    out_dir = Path(tempfile.mkdtemp(prefix="tta_cost_"))
    for tta in (False, True):
        engine.predict({**chosen[0], "tta": tta}, input_dir=args.data_root, output_dir=out_dir)
    rows = []
    for entry in chosen:
        row = {"img_path_relative": entry["img_path_relative"], "task": entry["task"]}
        for tta in (False, True):
            start = time.perf_counter()
            response = engine.predict({**entry, "tta": tta}, input_dir=args.data_root, output_dir=out_dir)
            row["tta_sec" if tta else "plain_sec"] = time.perf_counter() - start
            row["tta_forward_sec" if tta else "plain_forward_sec"] = response["timings"]["forward_sec"]
        row["ratio"] = row["tta_sec"] / row["plain_sec"]
        row["forward_ratio"] = row["tta_forward_sec"] / row["plain_forward_sec"]
        rows.append(row)
    ratios = [r["ratio"] for r in rows]
    return {"n": len(rows), "median_ratio": _median(ratios), "mean_ratio": _mean(ratios),
            "median_forward_ratio": _median([r["forward_ratio"] for r in rows]),
            "median_plain_sec": _median([r["plain_sec"] for r in rows]),
            "median_tta_sec": _median([r["tta_sec"] for r in rows]),
            "by_task": {task: _median([r["ratio"] for r in rows if r["task"] == task]) for task in
                        ("segmentation", "classification")},
            "auto_decision": "on" if (_median(ratios) or 99) < 2.0 else "off", "per_image": rows}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def summary_text(report: dict) -> str:
    lines = [f"bench_tta — demo model, CPU, backend {report['backend']}, views {report['views']}, "
             f"torch threads {report['threads']}"]
    if "hc" in report:
        s = report["hc"]["summary"]
        lines.append(f"HC rotation sensitivity (0°, 90°, 90°+20°), {s['plain']['n']} Fetal_HC validation images:")
        for mode in ("plain", "tta"):
            m = s[mode]
            lines.append(f"  {mode:5}: HC range mean {m['mean_range_mm']:.2f} mm, median {m['median_range_mm']:.2f}, "
                         f"max {m['max_range_mm']:.2f}; SD mean {m['mean_sd_mm']:.2f} mm; |HC-ref| at 0° "
                         f"{m['mae_0deg_mm']:.2f} mm, over the rotations {m['mae_all_rotations_mm']:.2f} mm")
        lines.append(f"  TTA shrinks the range on {s['images_where_tta_shrinks_range']} of {s['plain']['n']} images")
    if "val" in report:
        v = report["val"]
        lines.append(f"Validation ({v['n_entries']} entries of weights/demo_val_split.json, every {v['stride']}. of "
                     "each task x dataset):")
        for mode in ("plain", "tta"):
            r = v[mode]["report"]
            per = ", ".join(f"{k} Dice {d['dice']:.4f}" for k, d in r["segmentation"].items() if d["dice"] is not None)
            cls = ", ".join(f"{k} AUC {d['auc']:.4f}" for k, d in r["classification"].items() if d["auc"] is not None)
            lines.append(f"  {mode:5}: macro Dice {r['macro']['dice']:.4f}, NSD {r['macro']['nsd']:.4f}, AUC "
                         f"{r['macro']['auc']:.4f}, accuracy {r['macro']['accuracy']:.4f} ({v[mode]['seconds']:.0f} s)")
            lines.append(f"         {per}; {cls}")
    if "cost" in report:
        c = report["cost"]
        lines.append(f"Cost per image (Engine.predict, {c['n']} images, interleaved): no TTA "
                     f"{c['median_plain_sec'] * 1000:.0f} ms, TTA {c['median_tta_sec'] * 1000:.0f} ms (medians); "
                     f"ratio median {c['median_ratio']:.2f}x (segmentation {c['by_task']['segmentation']:.2f}x, "
                     f"classification {c['by_task']['classification']:.2f}x), forward-only "
                     f"{c['median_forward_ratio']:.2f}x → tta=auto: {c['auto_decision']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "uusic-data")
    parser.add_argument("--split", type=Path, default=ROOT / "weights" / "demo_val_split.json")
    parser.add_argument("--hc-images", type=int, default=20)
    parser.add_argument("--val-stride", type=int, default=1)
    parser.add_argument("--cost-images", type=int, default=12)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--views", default="identity,hflip,rot-10,rot+10")
    parser.add_argument("--parts", default="hc,val,cost")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "bench_tta")
    args = parser.parse_args(argv)
    import torch

    entries = json.loads(args.split.read_text())
    with tempfile.TemporaryDirectory(prefix="bench_tta_") as folder:
        tmp = Path(folder)
        engine = build_engine(args, tmp / "ws")
        report: dict = {"backend": engine.backend.as_dict().get("backend"), "views": args.views,
                        "threads": torch.get_num_threads()}
        parts = args.parts.split(",")
        if "hc" in parts:
            report["hc"] = hc_part(engine, entries, args, tmp)
        if "val" in parts:
            report["val"] = val_part(build_engine(args, tmp / "ws", measurements=False), entries, args, tmp)
        if "cost" in parts:
            report["cost"] = cost_part(engine, entries, args)
    text = summary_text(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    args.out.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
