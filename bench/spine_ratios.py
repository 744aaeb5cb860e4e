"""Spine ratios (issue 21): click-to-result, API p50 and batch CLI of two source trees, NEW / OLD, in one run.

Each bench runs as a whole process with ``cwd=`` the tree (its own copy of the bench script, its own ``core``),
interleaved per round (OLD, NEW, then NEW, OLD, ...: the same machine load for both), several rounds, medians:

- ``click``: ``bench/click_to_result.py --runs K`` (a streamlit dashboard in chromium): its median click → result;
- ``api``: ``bench/load_api.py`` with one client: the sequential ``/v1/predict`` latency p50;
- ``batch``: ``python -m core predict --no-progress --no-record`` on the first N bundled samples (wall seconds of the
  process), and on 1 image (the fixed cost): the marginal cost per image is (wall N - wall 1) / (N - 1).

Each tree gets its own converted-model cache (``UUSIC_CACHE_DIR``), filled by one untimed 1-image process first.

    git -C /work/main archive 725e2a0 | tar -x -C /tmp/spine_old   # plus ln -s <venv> /tmp/spine_old/.venv
    .venv/bin/python bench/spine_ratios.py --tree OLD=/tmp/spine_old --tree NEW=/tmp/spine_new --rounds 3

Timings are never asserted; ratios are only taken within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLICK = re.compile(r"median ([\d.]+) s\s+min")
API = re.compile(r"sequential 1 x \d+: .*?latency p50 ([\d.]+) ms")


def _env(cache: Path, workspace: Path) -> dict[str, str]:
    env = {**os.environ, "UUSIC_CACHE_DIR": str(cache), "UUSIC_WORKSPACE": str(workspace)}
    for name in ("UUSIC_API_KEY", "UUSIC_API_URL", "UUSIC_HISTORY_URL", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _run(cmd: list[str], tree: Path, cache: Path, timeout: int) -> tuple[float, str]:
    """One whole process in ``tree``: (wall seconds, stdout + stderr); exits on failure."""
    workspace = Path(tempfile.mkdtemp(prefix="uusic_spine_ws_"))
    try:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=_env(cache, workspace), capture_output=True, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed in {tree} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr


def _entries(tree: Path, count: int, work: Path) -> Path:
    path = work / f"in{count}.json"
    path.write_text(json.dumps(json.loads((tree / "samples" / "ground_truth.json").read_text())[:count]))
    return path


def batch(tree: Path, cache: Path, images: int, work: Path) -> float:
    """Wall seconds of ``python -m core predict`` over the first ``images`` bundled samples."""
    out = Path(tempfile.mkdtemp(prefix="uusic_spine_out_", dir=work))
    cmd = [sys.executable, "-m", "core", "predict", "--input-json", str(_entries(tree, images, work)),
           "--input-dir", str(tree / "samples"), "--output-dir", str(out), "--no-progress", "--no-record"]
    return _run(cmd, tree, cache, 900)[0]


def click(tree: Path, cache: Path, clicks: int) -> float:
    """The median click → result (seconds) of one dashboard process."""
    text = _run([sys.executable, "bench/click_to_result.py", "--runs", str(clicks)], tree, cache, 900)[1]
    found = CLICK.search(text)
    if not found:
        raise SystemExit(f"no median in click_to_result output:\n{text[-2000:]}")
    return float(found.group(1))


def api(tree: Path, cache: Path, requests: int) -> float:
    """The sequential ``/v1/predict`` latency p50 (ms) of one started server."""
    cmd = [sys.executable, "bench/load_api.py", "--clients", "1", "--requests", "1", "--warmup", "3",
           "--single", str(requests), "--per-dataset", "2"]
    text = _run(cmd, tree, cache, 900)[1]
    found = API.search(text)
    if not found:
        raise SystemExit(f"no sequential p50 in load_api output:\n{text[-2000:]}")
    return float(found.group(1))


def one_round(trees: list[tuple[str, Path]], caches: dict[str, Path], args: argparse.Namespace, work: Path,
              rows: dict[str, list[float]]) -> None:
    for bench in args.benches.split(","):
        for name, tree in trees:
            if bench == "click":
                values = {"click_s": click(tree, caches[name], args.clicks)}
            elif bench == "api":
                values = {"api_p50_ms": api(tree, caches[name], args.requests)}
            else:
                one, many = batch(tree, caches[name], 1, work), batch(tree, caches[name], args.images, work)
                values = {"batch1_s": one, f"batch{args.images}_s": many,
                          "per_image_ms": 1000 * (many - one) / (args.images - 1)}
            for key, value in values.items():
                rows.setdefault(f"{name} {key}", []).append(value)
            print(f"  {name} {bench}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="exactly two: OLD, NEW")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--benches", default="click,api,batch")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per dashboard process (first one apart)")
    parser.add_argument("--requests", type=int, default=30, help="sequential API requests per server")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args(argv)
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    if len(trees) != 2:
        raise SystemExit("give exactly two trees: --tree OLD=PATH --tree NEW=PATH")
    work = Path(tempfile.mkdtemp(prefix="uusic_spine_"))
    caches = {name: work / f"cache-{name}" for name, _ in trees}
    rows: dict[str, list[float]] = {}
    try:
        print(f"load average at start: {os.getloadavg()}", flush=True)
        for name, tree in trees:  # untimed: each tree converts into its own cache
            print(f"warm-up {name}: {batch(tree, caches[name], 1, work):.1f} s", flush=True)
        for run in range(args.rounds):
            print(f"round {run + 1} (load {os.getloadavg()[0]:.1f})", flush=True)
            one_round(trees if run % 2 == 0 else trees[::-1], caches, args, work, rows)
        print(f"load average at end: {os.getloadavg()}")
        old, new = trees[0][0], trees[1][0]
        for key in sorted({k.split(" ", 1)[1] for k in rows}):
            a, b = statistics.median(rows[f"{old} {key}"]), statistics.median(rows[f"{new} {key}"])
            print(f"{key:<16} {old} {a:9.3f}  {new} {b:9.3f}  {new}/{old} {b / a:5.2f}  "
                  f"(medians of {len(rows[f'{new} {key}'])}; raw {old} {[round(v, 3) for v in rows[f'{old} {key}']]}"
                  f" {new} {[round(v, 3) for v in rows[f'{new} {key}']]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
