"""Batch CLI overlap bench (issue 27): ``python -m core predict`` as whole processes, the old path (``--no-overlap``:
decode → forward → mask PNG one after the other) beside the new one (decode ahead / writing behind in threads), in
one run, several runs each, alternating.

    .venv/bin/python bench/bench_batch_overlap.py [--images 50] [--runs 3] [--batch-size 8] [--workers 2]

Each process runs with ``UUSIC_DEBUG_STARTUP=1`` and prints one ``startup:`` line (:mod:`core.predict_probe`): when
its first image was done, the engine-timed forward seconds of its images, which heavy libraries it imported.
Reported per path (medians over the runs):

- ``fixed``: a 1-image process, from launch to its image done, minus that image's forward (the start-up cost);
- ``per image``: ``(wall(N images) - wall(1 image)) / (N - 1)``, the marginal cost of one more image;
- ``forward``: forward seconds per image, from the ``--no-overlap`` runs (nothing runs beside the forward there);
- ratios: per image / forward (the target: ≤ 1.10, forward-bound) and old / new;
- ``--tree head=/tmp/uusic_head`` (``git archive HEAD | tar -x -C /tmp/uusic_head``, read-only for the repository):
  1-image processes of that tree beside this one, wall seconds (the start-up cost of the two trees).

The model is the default of weights/models.json (the demo network; its OpenVINO conversion is cached by one untimed
warm-up process). Timings are never asserted; ratios are only taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pick_entries  # noqa: E402


def served_datasets() -> Callable[[str, str], bool] | None:
    """Whether the default manifest model serves a (task, dataset) (None: everything), read without loading it."""
    from core.models import registry
    from core.settings import Settings

    spec = registry.list_models(Settings.from_env())[0]
    if spec.datasets is None:
        return None
    served = {tuple(d) for d in spec.datasets}
    return lambda task, dataset: (task, dataset) in served


def run_cli(json_path: Path, data_root: Path, out: Path, args: argparse.Namespace, overlap: bool,
            tree: Path = ROOT) -> dict:
    """One ``python -m core predict`` process (of ``tree``): wall seconds and its ``startup:`` line (an older tree
    prints none: wall seconds only)."""
    cmd = [sys.executable, "-m", "core", "predict", "--input-json", str(json_path), "--input-dir", str(data_root),
           "--output-dir", str(out), "--device", "cpu", "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--no-progress", "--no-record"] + ([] if overlap else ["--no-overlap"])
    env = {**os.environ, "UUSIC_DEBUG_STARTUP": "1", "PYTHONPATH": str(tree)}
    start = time.time()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    line = next((x for x in proc.stderr.splitlines() if x.startswith("startup: ")), None)
    if line is None:
        return {"wall": wall}
    probe = json.loads(line.removeprefix("startup: "))
    return {"wall": wall, "first": probe["first_result_unix"] - start, **probe}


def compare_trees(trees: list[str], work: Path, data_root: Path, args: argparse.Namespace) -> None:
    """1-image processes of other source trees beside this one (wall seconds, median): the start-up cost alone."""
    named = [("this", ROOT)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in trees]
    walls: dict[str, list[float]] = {}
    for name, tree in named:  # untimed: a tree's own first start converts into its own workspace cache
        run_cli(work / "one.json", data_root, work / f"tree-{name}-warm", args, True, tree)
    for run in range(args.runs):
        for name, tree in named:
            walls.setdefault(name, []).append(run_cli(work / "one.json", data_root, work / f"tree-{name}-{run}",
                                                      args, True, tree)["wall"])
    base = statistics.median(walls["this"])
    for name, values in walls.items():
        print(f"  1-image process, tree {name:<6}: {statistics.median(values):5.2f} s wall (median of {len(values)};"
              f" {statistics.median(values) / base:.2f}x this tree)")


def summarise(name: str, one: list[dict], many: list[dict], n: int, forward: float) -> float:
    fixed = statistics.median(r["first"] - r["first_forward_sec"] for r in one)
    wall_1 = statistics.median(r["wall"] for r in one)
    wall_n = statistics.median(r["wall"] for r in many)
    per_image = (wall_n - wall_1) / (n - 1)
    own_forward = statistics.median(r["forward_sec_total"] for r in many) / n
    heavy = sorted({k for r in one + many for k, v in r["imported"].items() if v})
    print(f"  {name:<18} fixed {fixed:5.2f} s (1-image wall {wall_1:5.2f} s) | {n} images {wall_n:6.2f} s | "
          f"per image {1000 * per_image:6.1f} ms = {per_image / forward:4.2f}x forward | forward in these runs "
          f"{1000 * own_forward:5.1f} ms/img | imported: {', '.join(heavy) or 'none of the heavy ones'}")
    return per_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    default_root = ROOT.parent / "shared" / "uusic-data"
    parser.add_argument("--data-root", type=Path, default=default_root if default_root.is_dir() else ROOT / "samples")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="also time 1-image processes of this source tree, e.g. git archive HEAD | tar -x -C PATH")
    args = parser.parse_args()
    data_root = args.data_root.resolve()
    entries = pick_entries(data_root, served_datasets(), args.images)
    n = len(entries)
    print(f"data {data_root}: {n} images from {len({(e['task'], e['dataset_name']) for e in entries})} datasets; "
          f"batch {args.batch_size}, {args.workers} workers; {args.runs} runs; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="uusic-overlap-") as tmp:
        work = Path(tmp)
        (work / "all.json").write_text(json.dumps(entries))
        (work / "one.json").write_text(json.dumps(entries[:1]))
        run_cli(work / "one.json", data_root, work / "warm", args, True)  # converts once if not cached
        results: dict[tuple[bool, str], list[dict]] = {}
        for run in range(args.runs):
            for overlap in (False, True):
                for which in ("one", "all"):
                    r = run_cli(work / f"{which}.json", data_root, work / f"out-{overlap}-{which}-{run}", args,
                                overlap)
                    results.setdefault((overlap, which), []).append(r)
        forward = statistics.median(r["forward_sec_total"] for r in results[(False, "all")]) / n
        print(f"forward alone (engine-timed, --no-overlap runs): {1000 * forward:.1f} ms/img; "
              f"load average now {os.getloadavg()}")
        old = summarise("old (--no-overlap)", results[(False, "one")], results[(False, "all")], n, forward)
        new = summarise("new (overlap)", results[(True, "one")], results[(True, "all")], n, forward)
        print(f"  per image old / new: {old / new:.2f}x; new per image / forward: {new / forward:.2f}x "
              f"(target <= 1.10)")
        if args.tree:
            compare_trees(args.tree, work, data_root, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
