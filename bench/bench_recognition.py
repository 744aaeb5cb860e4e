"""Benchmark (a script, not a test): what the organ recogniser (core.recognition) adds to one analysis, demo model, CPU.

    .venv/bin/python bench/bench_recognition.py [--data-root ../shared/uusic-data] [--images 40] [--stride 40]

Every ``--stride``-th segmentation entry of the ground truth, one ``AnalysisService.analyze`` each (as the API and
dashboard run them), after a warm-up; medians of the response's ``timings.recognition_sec`` (features + MLP + OOD
score on the already decoded image), ``timings.forward_sec`` and ``inference_time_sec``, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.service import AnalysisService
from core.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/uusic-data"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--stride", type=int, default=40)
    args = parser.parse_args(argv)
    entries = json.loads((args.data_root / "ground_truth.json").read_text(encoding="utf-8"))
    picked = [e for e in entries if e["task"] == "segmentation"][:: args.stride][: args.images]
    requests = [{k: e[k] for k in ("img_path_relative", "task", "dataset_name")} for e in picked]
    with tempfile.TemporaryDirectory() as workspace:
        service = AnalysisService(Settings(workspace=Path(workspace), data_root=args.data_root, device="cpu"))
        service.analyze(requests[0], source="api")  # warm-up (and a backend's one-time conversion)
        bodies = [service.analyze(r, source="api").to_json() for r in requests]
    recognition = statistics.median(b["timings"]["recognition_sec"] for b in bodies)
    forward = statistics.median(b["timings"]["forward_sec"] for b in bodies)
    total = statistics.median(b["inference_time_sec"] for b in bodies)
    print(json.dumps({"n": len(bodies), "recognition_ms_median": round(recognition * 1000, 2),
                      "forward_ms_median": round(forward * 1000, 2), "inference_ms_median": round(total * 1000, 2),
                      "ratio_to_forward": round(recognition / forward, 3),
                      "ratio_to_inference": round(recognition / total, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
