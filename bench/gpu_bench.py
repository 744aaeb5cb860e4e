"""GPU benchmark (a script, not a test): everything the performance record needs from a lent GPU, in one short run.

    python bench/gpu_bench.py [--out results.json] [--iters 50] [--batch 64]

For the uusic_omni architecture (a seeded random-init checkpoint saved by core.models.uusic_omni) and the demo
network (weights/models.json): forward latency at batch 1 (fp32 and bf16 autocast, median of ``--iters`` timed
calls after warm-up, CUDA-synchronised), batched images/s at ``--batch``, and ``torch.cuda.max_memory_allocated``.
Then the engine end to end on the bundled samples: ``Engine.predict_batch`` images/s against a per-image loop
of ``Engine.predict`` (same model, same device), with output parity. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import catalog  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.models import registry  # noqa: E402
from core.models.uusic_omni import UUSICOmniNet, save_baseline_checkpoint  # noqa: E402
from core.settings import BUNDLED_SAMPLES, Settings  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _inputs(size: int, batch: int, device: torch.device, organ: str = "Breast", task: str = "segmentation"):
    images = torch.rand(batch, size, size, 3, device=device)
    prompts = catalog.prompts_for(organ, task).as_tuple()
    return [images] + [torch.tensor([p] * batch, dtype=torch.float32, device=device) for p in prompts]


def time_forward(model, size: int, batch: int, iters: int, bf16: bool) -> dict:
    device = model.device
    args = _inputs(size, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(5):
            model.forward(*args)
        _sync()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model.forward(*args)
            _sync()
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"batch": batch, "bf16": bf16, "median_ms": round(median * 1000, 3),
              "images_per_s": round(batch / median, 1)}
    if device.type == "cuda":
        result["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def engine_parity(settings: Settings, spec, data_root: Path, batch_size: int) -> dict:
    entries = [e for e in json.loads((data_root / "ground_truth.json").read_text())]
    engine = Engine(settings, spec=spec)
    entries = [e for e in entries if engine.serves(e["task"], e["dataset_name"])]
    with tempfile.TemporaryDirectory() as tmp:
        loop_dir, batch_dir = Path(tmp) / "loop", Path(tmp) / "batch"
        for e in entries[:4]:
            engine.predict(e, output_dir=loop_dir)  # warm-up
        _sync()
        start = time.perf_counter()
        loop = [engine.predict(e, output_dir=loop_dir) for e in entries]
        _sync()
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        batched = engine.predict_batch(entries, output_dir=batch_dir, batch_size=batch_size)
        _sync()
        batch_s = time.perf_counter() - start
        max_dp, same_masks, masks = 0.0, 0, 0
        for a, b in zip(loop, batched, strict=True):  # predict_batch: one result per request, in order
            if "probability" in a and b and "probability" in b:
                max_dp = max(max_dp, max(abs(x - y) for x, y in zip(a["probability"], b["probability"], strict=True)))
            if a.get("mask_path") and b and b.get("mask_path"):
                masks += 1
                same_masks += Path(a["mask_path"]).read_bytes() == Path(b["mask_path"]).read_bytes()
    return {"images": len(entries), "loop_images_per_s": round(len(entries) / loop_s, 1),
            "batch_images_per_s": round(len(entries) / batch_s, 1), "ratio": round(loop_s / batch_s, 2),
            "max_abs_probability_diff": max_dp, "identical_masks": f"{same_masks}/{masks}",
            "per_image_ms_loop": round(1000 * loop_s / len(entries), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    device = registry.resolve_device(settings.device)
    report: dict = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        omni_file = save_baseline_checkpoint(UUSICOmniNet(), Path(tmp) / "omni_random.pth")
        specs = {"uusic_omni (random init)": registry.adhoc_spec("uusic_omni", omni_file, name="omni-random")}
        try:
            specs["demo_unet"] = registry.find_spec(settings)
        except Exception as exc:  # noqa: BLE001 - report, keep going
            report["demo_unet_error"] = str(exc)
        for label, spec in specs.items():
            section: dict = {}
            try:
                model = registry.load_model(spec, device, weights_dir=settings.weights_dir)
                size = spec.input_size
                for bf16 in (False, True):
                    key = "bf16" if bf16 else "fp32"
                    section[f"batch1_{key}"] = time_forward(model, size, 1, args.iters, bf16)
                    section[f"batch{args.batch}_{key}"] = time_forward(model, size, args.batch,
                                                                       max(5, args.iters // 5), bf16)
                section["engine_on_samples"] = engine_parity(settings, spec, BUNDLED_SAMPLES, batch_size=16)
            except Exception as exc:  # noqa: BLE001
                section["error"] = f"{type(exc).__name__}: {exc}"
            report[label] = section
            print(json.dumps({label: section}, indent=1), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
