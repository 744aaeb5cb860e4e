"""Benchmark (a script, not a test): what the organ recogniser (core.recognition) adds to one analysis, demo model, CPU.

    .venv/bin/python bench/bench_recognition.py [--data-root ../shared/uusic-data] [--images 40] [--stride 40]
    .venv/bin/python bench/bench_recognition.py --features-only [--rounds 3]
    .venv/bin/python bench/bench_recognition.py --forward-cost [--rounds 101]

Every ``--stride``-th segmentation entry of the ground truth, one ``AnalysisService.analyze`` each (as the API and
dashboard run them), after a warm-up and the end of the backend's background conversion (timed alongside, that
thread doubled the ms); medians of the response's ``timings.recognition_sec`` (features + MLP + OOD score on the
already decoded image; with the demo network's encoder head, :mod:`core.recognition_encoder`, only the head on the
embedding the forward pass returned), ``timings.forward_sec`` and ``inference_time_sec``, and their ratios.
``--forward-cost``: what returning that embedding adds to the forward pass: the demo network converted to OpenVINO
twice in this process (the contract's three outputs; the served four), each compiled as the engine compiles it,
timed alternately on one image (``--rounds`` rounds of 20 calls each, so both see the same machine load): median ms
per call of each, and the median of the rounds' paired differences.
``--features-only``: the feature vector of the same decoded images with and without the version-3 tissue features
(:mod:`core.recognition_tissue`), alternated per round, median ms per image.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import recognition
from core.models.backends import wait_for_conversions
from core.recognition_tissue import tissue_features
from core.service import AnalysisService
from core.settings import Settings


def features_only(data_root: Path, requests: list[dict], rounds: int) -> dict[str, float]:
    """Median ms of :func:`core.recognition.features` per decoded image, with and without the tissue features."""
    images = []
    for request in requests:
        with Image.open(data_root / request["img_path_relative"]) as image:
            images.append(np.asarray(image.convert("RGB")))
    variants = {"without_tissue_ms": lambda grey, grey64=None: np.zeros(0, np.float32),
                "with_tissue_ms": tissue_features}
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for round_ in range(rounds):
            for name in list(variants)[:: 1 if round_ % 2 == 0 else -1]:
                recognition.tissue_features = variants[name]  # type: ignore[assignment]
                for rgb in images:
                    start = time.perf_counter()
                    recognition.features(rgb)
                    times[name].append(time.perf_counter() - start)
    finally:
        recognition.tissue_features = tissue_features
    return {name: round(statistics.median(values) * 1000, 2) for name, values in times.items()}


def forward_cost(rounds: int, calls: int = 20) -> dict[str, float]:
    """Median ms per forward call of the demo network in OpenVINO fp32 without and with the embedding output."""
    import openvino as ov
    import torch

    from core.models.backends import runtime_threads
    from core.models.base import example_inputs
    from core.models.demo_unet import Embedded, build_from_checkpoint
    from core.settings import WEIGHTS_DIR

    network = build_from_checkpoint(WEIGHTS_DIR / "demo_unet.pt")[0].eval()
    inputs = example_inputs(1, 256, seed=3)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": runtime_threads(),
              "PERFORMANCE_HINT": "LATENCY"}
    compiled = {}
    with torch.no_grad():
        for name, module in (("contract", network), ("embedded", Embedded(network).eval())):
            compiled[name] = ov.Core().compile_model(ov.convert_model(module, example_input=inputs), "CPU", config)
    arrays = [t.numpy() for t in inputs]
    requests = {name: model.create_infer_request() for name, model in compiled.items()}
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(rounds):
        for name, request in requests.items():
            request.infer(arrays)  # warm
            start = time.perf_counter()
            for _ in range(calls):
                request.infer(arrays)
            times[name].append((time.perf_counter() - start) / calls * 1000)
    contract, embedded = (statistics.median(times[k]) for k in ("contract", "embedded"))
    paired = statistics.median(e - c for c, e in zip(times["contract"], times["embedded"], strict=True))
    return {"rounds": rounds, "calls_per_round": calls, "contract_ms": round(contract, 3),
            "embedded_ms": round(embedded, 3), "added_ms_paired_median": round(paired, 3),
            "added_ratio": round(paired / contract, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/uusic-data"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--stride", type=int, default=40)
    parser.add_argument("--features-only", action="store_true")
    parser.add_argument("--forward-cost", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.forward_cost:
        print(json.dumps(forward_cost(args.rounds)))
        return 0
    entries = json.loads((args.data_root / "ground_truth.json").read_text(encoding="utf-8"))
    picked = [e for e in entries if e["task"] == "segmentation"][:: args.stride][: args.images]
    requests = [{k: e[k] for k in ("img_path_relative", "task", "dataset_name")} for e in picked]
    if args.features_only:
        print(json.dumps({"n": len(requests), **features_only(args.data_root, requests, args.rounds)}))
        return 0
    with tempfile.TemporaryDirectory() as workspace:
        service = AnalysisService(Settings(workspace=Path(workspace), data_root=args.data_root, device="cpu"))
        service.analyze(requests[0], source="api")  # warm-up: starts a backend's one-time conversion …
        wait_for_conversions(timeout=600)  # … which runs in a background thread
        service.analyze(requests[0], source="api")  # the converted model's first call
        bodies = [service.analyze(r, source="api").to_json() for r in requests]
    recognition = statistics.median(b["timings"]["recognition_sec"] for b in bodies)
    forward = statistics.median(b["timings"]["forward_sec"] for b in bodies)
    total = statistics.median(b["inference_time_sec"] for b in bodies)
    by = sorted({str((b.get("recognition") or {}).get("features")) for b in bodies})
    print(json.dumps({"n": len(bodies), "features": by, "recognition_ms_median": round(recognition * 1000, 3),
                      "forward_ms_median": round(forward * 1000, 2), "inference_ms_median": round(total * 1000, 2),
                      "ratio_to_forward": round(recognition / forward, 3),
                      "ratio_to_inference": round(recognition / total, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
