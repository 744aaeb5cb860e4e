"""Benchmark (a script, not a test): the batch CLI path against a plain per-image loop, and the engine's own
overhead against the bare forward pass — measured in one run, fp32, on CPU by default.

    .venv/bin/python bench/bench_batch_cli.py [--images 48] [--batch-size 8] [--threads 2] [--models omni,demo]

For each model (``omni``: the uusic_omni architecture — a manifest entry, else a random-init checkpoint saved
here; ``demo``: the demo network of weights/models.json):

* plain loop — what the challenge's ``model.py`` does per image: decode → preprocess → forward (batch 1,
  ``torch.no_grad``) → postprocess (softmax, or mask inverse + PNG) → next image;
* batch CLI — ``python -m core predict`` in-process (``core.cli.main``): prefetching decode/preprocess threads,
  batched forward, threaded mask writing;
* outputs compared: classification probabilities (max |Δ|) and masks (identical count);
* engine overhead — per image, ``Engine.predict`` vs the same work done bare; (engine − bare) / bare forward.

Prints ratios; no assertion (timings are not tests). Targets: speed-up ≥ 1.3×, overhead ≤ 15 % of forward.
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
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pick_entries  # noqa: E402

from core import catalog  # noqa: E402
from core.cli import main as cli_main  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.geometry import Letterbox, make_transform  # noqa: E402
from core.models import registry  # noqa: E402
from core.models.base import ModelSpec  # noqa: E402
from core.paths import mask_relative_path  # noqa: E402
from core.settings import Settings  # noqa: E402


def bare_one(model, spec: ModelSpec, device, entry: dict, input_dir: Path, out_dir: Path, timing: dict) -> object:
    """One image the way the challenge's model.py does it (with the exact mask inverse)."""
    t0 = time.perf_counter()
    rgb = np.array(Image.open(input_dir / entry["img_path_relative"]).convert("RGB"))
    transform = make_transform(spec.preprocessing, rgb.shape[1], rgb.shape[0], spec.input_size)
    x = torch.from_numpy(transform.apply(rgb)).unsqueeze(0).to(device)
    dataset = catalog.find_dataset(entry["task"], entry["dataset_name"])
    prompts = [torch.tensor([v], dtype=torch.float32, device=device) for v in dataset.prompts().as_tuple()]
    t1 = time.perf_counter()
    with torch.no_grad():
        seg, cls2, cls4 = model(x, *prompts)[:3]  # a served demo model also returns its embedding
    t2 = time.perf_counter()
    if entry["task"] == "classification":
        logits = cls4 if dataset.head == "cls4" else cls2
        probs = torch.softmax(logits, dim=1).cpu().numpy().flatten()
        result = {"probability": probs.tolist(), "prediction": int(np.argmax(probs))}
    else:
        if isinstance(transform, Letterbox):
            fg = torch.softmax(seg, dim=1)[0, 1].cpu().numpy().astype(np.float32)
            mask = transform.invert_probability(fg) > 0.5
        else:
            label = torch.argmax(torch.softmax(seg, dim=1), dim=1)[0].to(torch.uint8).cpu().numpy()
            mask = transform.invert_mask(label) > 0
        target = out_dir / mask_relative_path(entry["img_path_relative"])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(target, format="PNG", compress_level=1)
        result = str(target)
    t3 = time.perf_counter()
    timing["forward"] = timing.get("forward", 0.0) + (t2 - t1)
    timing["total"] = timing.get("total", 0.0) + (t3 - t0)
    return result


def plain_loop(engine: Engine, entries: list[dict], input_dir: Path, out_dir: Path) -> tuple[float, dict]:
    classification: dict = {}
    timing: dict = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for entry in entries:
        result = bare_one(engine.model, engine.spec, engine.device, entry, input_dir, out_dir, timing)
        if entry["task"] == "classification":
            classification[entry["img_path_relative"]] = result
    (out_dir / "classification.json").write_text(json.dumps(classification, indent=4))
    return time.perf_counter() - start, classification


def batch_cli(model_args: list[str], json_path: Path, input_dir: Path, out_dir: Path, batch_size: int,
              workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    code = cli_main(["predict", "--input-json", str(json_path), "--input-dir", str(input_dir), "--output-dir",
                     str(out_dir), "--device", "cpu", "--batch-size", str(batch_size), "--workers", str(workers),
                     "--no-progress", *model_args])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"batch CLI failed with exit code {code}")
    return elapsed, json.loads((out_dir / "classification.json").read_text())


def compare(entries: list[dict], plain_dir: Path, plain_cls: dict, batch_dir: Path, batch_cls: dict) -> str:
    diffs = [float(np.max(np.abs(np.subtract(plain_cls[k]["probability"], batch_cls[k]["probability"]))))
             for k in plain_cls]
    same_pred = sum(plain_cls[k]["prediction"] == batch_cls[k]["prediction"] for k in plain_cls)
    seg = [e for e in entries if e["task"] == "segmentation"]
    identical, pixels_differ = 0, 0
    for e in seg:
        rel = mask_relative_path(e["img_path_relative"])
        a = np.asarray(Image.open(plain_dir / rel))
        b = np.asarray(Image.open(batch_dir / rel))
        identical += int(np.array_equal(a, b))
        pixels_differ += int((a != b).sum())
    return (f"classification: {len(diffs)} images, max |Δp| = {max(diffs, default=0.0):.2e}, "
            f"same prediction {same_pred}/{len(diffs)}; masks identical {identical}/{len(seg)} "
            f"({pixels_differ} pixels differ)")


def engine_overhead(engine: Engine, entries: list[dict], input_dir: Path, work: Path, repeats: int) -> dict:
    """Per image, Engine.predict vs the same work done bare; interleaved, median of ``repeats``."""
    bare_total, bare_forward, engine_total, engine_forward = [], [], [], []
    for entry in entries:
        b_t, b_f, e_t, e_f, m_t = [], [], [], [], []
        for _ in range(repeats):
            timing: dict = {}
            bare_one(engine.model, engine.spec, engine.device, entry, input_dir, work / "bare", timing)
            b_t.append(timing["total"])
            b_f.append(timing["forward"])
            t0 = time.perf_counter()
            response = engine.predict(entry, output_dir=work / "engine", input_dir=input_dir)
            e_t.append(time.perf_counter() - t0)
            e_f.append(response["timings"]["forward_sec"])
            m_t.append(response.get("timings", {}).get("postprocess_sec", 0.0))
        bare_total.append(statistics.median(b_t))
        bare_forward.append(statistics.median(b_f))
        engine_total.append(statistics.median(e_t))
        engine_forward.append(statistics.median(e_f))
    forward = sum(bare_forward)
    return {
        "images": len(entries),
        "bare_total_s": sum(bare_total),
        "bare_forward_s": forward,
        "engine_total_s": sum(engine_total),
        "overhead_s": sum(engine_total) - sum(bare_total),
        "overhead_pct_of_forward": 100.0 * (sum(engine_total) - sum(bare_total)) / forward,
    }


def omni_model_args(settings: Settings, work: Path) -> tuple[list[str], ModelSpec, str]:
    """A uusic_omni model: the manifest's entry, else a random-init checkpoint saved by our own network code."""
    try:
        for spec in registry.list_models(settings):
            if spec.arch == "uusic_omni":
                return ["--model", spec.name], spec, f"manifest entry {spec.name}"
    except Exception:
        pass
    from core.models import uusic_omni

    path = work / "omni_random_init.pth"
    torch.manual_seed(0)
    uusic_omni.save_baseline_checkpoint(uusic_omni.UUSICOmniNet(), path, layout="module")
    spec = registry.adhoc_spec("uusic_omni", path)
    return ["--arch", "uusic_omni", "--weights", str(path)], spec, "random-init checkpoint (seed 0)"


def demo_model_args(settings: Settings) -> tuple[list[str], ModelSpec, str]:
    for spec in registry.list_models(settings):
        if spec.arch == "demo_unet":
            return ["--model", spec.name], spec, f"manifest entry {spec.name}"
    raise LookupError("no demo_unet entry in weights/models.json")


def bench_model(which: str, args: argparse.Namespace, settings: Settings, data_root: Path, work: Path) -> None:
    """One model (``omni`` / ``demo``): the plain loop and the batch CLI side by side, their outputs compared, and
    the engine's overhead over a bare forward, printed."""
    try:
        model_args, spec, source = omni_model_args(settings, work) if which == "omni" else demo_model_args(settings)
    except Exception as exc:  # noqa: BLE001 - a missing model is reported, the other one still runs
        print(f"\n[{which}] skipped: {exc}")
        return
    engine = Engine(settings.with_(data_root=data_root), spec=spec)
    entries = pick_entries(data_root, engine.serves, args.images)
    json_path = work / f"{which}.json"
    json_path.write_text(json.dumps(entries))
    kinds = {(e["task"], e["dataset_name"]) for e in entries}
    print(f"\n[{which}] {spec.arch} ({source}), input {spec.input_size}, {spec.preprocessing}; "
          f"{len(entries)} images from {len(kinds)} datasets")
    # warm-up: one batch through each path (allocator, lazy imports, thread pools)
    warm_json = work / f"{which}-warm.json"
    warm_json.write_text(json.dumps(entries[: args.batch_size]))
    plain_loop(engine, entries[:2], data_root, work / f"{which}-warm-plain")
    batch_cli(model_args, warm_json, data_root, work / f"{which}-warm-batch", args.batch_size, args.workers)
    plain_sec, plain_cls = plain_loop(engine, entries, data_root, work / f"{which}-plain")
    batch_sec, batch_cls = batch_cli(model_args, json_path, data_root, work / f"{which}-batch",
                                     args.batch_size, args.workers)
    n = len(entries)
    print(f"  plain loop : {plain_sec:7.2f} s  {n / plain_sec:6.2f} img/s")
    print(f"  batch CLI  : {batch_sec:7.2f} s  {n / batch_sec:6.2f} img/s")
    print(f"  speed-up   : {plain_sec / batch_sec:.2f}x (target >= 1.3x)")
    print("  outputs    : " + compare(entries, work / f"{which}-plain", plain_cls, work / f"{which}-batch", batch_cls))
    print_overhead(engine, entries[: args.overhead_images], data_root, work / which, args.repeats)


def print_overhead(engine: Engine, entries: list[dict], data_root: Path, work: Path, repeats: int) -> None:
    """The engine's overhead over a bare forward (measuring nothing, like the bare path), and what the mask
    measurements add."""
    engine.measurements = False  # like for like: the bare path measures nothing either
    overhead = engine_overhead(engine, entries, data_root, work, repeats)
    engine.measurements = True
    with_measure = engine_overhead(engine, entries, data_root, work, repeats)
    print(f"  overhead   : engine {overhead['engine_total_s']:.3f} s vs bare {overhead['bare_total_s']:.3f} s"
          f" over {overhead['images']} images (median of {repeats}); bare forward "
          f"{overhead['bare_forward_s']:.3f} s → engine overhead "
          f"{overhead['overhead_pct_of_forward']:.1f} % of forward (target <= 15 %)")
    measure_s = with_measure["engine_total_s"] - overhead["engine_total_s"]
    print(f"  measuring  : mask measurements (area, diameters, HC) add {measure_s:.3f} s over the same images "
          f"({100.0 * measure_s / overhead['bare_forward_s']:.1f} % of forward)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (both paths)")
    parser.add_argument("--overhead-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="omni,demo")
    default_root = ROOT.parent / "shared" / "uusic-data"
    parser.add_argument("--data-root", type=Path, default=default_root if default_root.is_dir() else None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = Settings.from_env().with_(device="cpu")
    data_root = (args.data_root or settings.data_root).resolve()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32; data {data_root}; "
          f"{args.images} images, batch {args.batch_size}, {args.workers} workers")
    with tempfile.TemporaryDirectory(prefix="uusic-bench-") as tmp:
        for which in [m.strip() for m in args.models.split(",") if m.strip()]:
            bench_model(which, args, settings, data_root, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
