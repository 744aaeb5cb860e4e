"""Lean start-up bench (issue 27): whole processes, several runs, every configuration in the same run.

For each run and each configuration (a source tree × ``UUSIC_BACKEND``) it starts ``python -m core serve`` on a free
loopback port and measures

- ``ready_s``: from starting the process to the first 200 of ``POST /v1/predict`` (one sample request, retried
  every 20 ms while the server is not yet listening);
- ``rss_mib`` / ``uss_mib``: the server's memory 1 s after that first answer (idle);
- ``rss_after_mib``: after ``--requests`` more sequential requests;
- ``torch``: whether ``libtorch_cpu`` is mapped into the server (torch imported);
- ``healthz``: the ``backends`` block of ``/healthz`` (which backend serves, conversion pending or not);
- ``state_at_first``: ``/healthz`` → ``backend_state`` right after the first answer (``converting`` on a first-ever
  start: eager torch answered while the conversion runs in the background), and ``converted_s``: from starting the
  process until no model is ``converting`` any more (the server is kept running until then, so that the cache is
  filled for the later runs).

The converted model is cached before the timed runs (one untimed start per configuration, in its own cache folder,
so a tree's cache format never meets another's); ``--cold`` adds one first-ever start per configuration (an empty
cache): ``listen_s`` (``/healthz`` answers) and ``ready_s``. ``--batch N`` also times ``python -m core predict`` on
``N`` bundled sample images (the whole process), twice: 1 image (the fixed cost) and N.

An older tree to compare with: ``git archive HEAD | tar -x -C /tmp/uusic_head`` (read-only for the repository), then
``--tree head=/tmp/uusic_head``. Timings are never asserted anywhere; ratios are only taken within one run.

    .venv/bin/python bench/lean.py --runs 3 --tree head=/tmp/uusic_head --backends auto,torch --cold --batch 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from common import free_port, stop, tree_args

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {"img_path_relative": "segmentation/BUSI/imgs/seg_00004.jpg", "task": "segmentation",
           "dataset_name": "BUSI", "organ": "Breast"}
START_LIMIT_S = 300


def sample_request(tree: Path) -> dict:
    """The first bundled BUSI segmentation entry of ``tree``'s samples (its request fields only)."""
    entries = json.loads((tree / "samples" / "ground_truth.json").read_text())
    for entry in entries:
        if entry["task"] == "segmentation" and entry["dataset_name"] == "BUSI":
            return {k: entry[k] for k in ("img_path_relative", "task", "dataset_name", "organ")}
    return REQUEST


def server_env(workspace: Path, cache: Path, backend: str) -> dict:
    env = {**os.environ, "UUSIC_WORKSPACE": str(workspace), "UUSIC_CACHE_DIR": str(cache), "UUSIC_BACKEND": backend}
    for name in ("UUSIC_API_KEY", "UUSIC_API_URL", "UUSIC_HISTORY_URL", "PYTHONPATH"):
        env.pop(name, None)
    return env


def torch_mapped(pid: int) -> bool:
    try:
        return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def measure_server(tree: Path, backend: str, cache: Path, requests: int) -> dict:
    """One server start: time to the first 200 of /v1/predict, memory idle and after ``requests`` more."""
    workspace = Path(tempfile.mkdtemp(prefix="uusic_lean_"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workspace / "server.log").open("wb")
    body = sample_request(tree)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=tree, env=server_env(workspace, cache, backend), stdout=log, stderr=subprocess.STDOUT)
    result: dict = {}
    try:
        with httpx.Client(timeout=60) as client:
            result.update(_first_answer(client, url, body, proc, start, workspace))
            result["state_at_first"] = client.get(f"{url}/healthz").json().get("backend_state")
            time.sleep(1.0)  # idle
            info = psutil.Process(proc.pid).memory_full_info()
            result.update(rss_mib=info.rss / 2**20, uss_mib=info.uss / 2**20, torch=torch_mapped(proc.pid))
            result["healthz"] = client.get(f"{url}/healthz").json().get("backends")
            for _ in range(requests):
                client.post(f"{url}/v1/predict", json=body).raise_for_status()
            if requests:
                result["rss_after_mib"] = psutil.Process(proc.pid).memory_info().rss / 2**20
            result["converted_s"] = _converted(client, url, start)
    finally:
        stop(proc, timeout=30)
        log.close()
        shutil.rmtree(workspace, ignore_errors=True)
    return result


def _first_answer(client: httpx.Client, url: str, body: dict, proc: subprocess.Popen, start: float,
                  workspace: Path) -> dict:
    listen = None
    while time.perf_counter() - start < START_LIMIT_S:
        if proc.poll() is not None:
            sys.exit("server exited:\n" + (workspace / "server.log").read_text(errors="replace")[-3000:])
        try:
            if listen is None:
                client.get(f"{url}/healthz")
                listen = time.perf_counter() - start
            response = client.post(f"{url}/v1/predict", json=body)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        if response.status_code == 200:
            return {"listen_s": listen, "ready_s": time.perf_counter() - start}
        time.sleep(0.02)
    sys.exit(f"no 200 from /v1/predict within {START_LIMIT_S} s")


def _converted(client: httpx.Client, url: str, start: float) -> float | None:
    """Seconds from the start until ``/healthz`` names no model ``converting`` (None: a tree without the state)."""
    while time.perf_counter() - start < START_LIMIT_S:
        states = client.get(f"{url}/healthz").json().get("backend_state")
        if states is None:
            return None
        if "converting" not in states.values():
            return time.perf_counter() - start
        time.sleep(0.1)
    sys.exit(f"still converting after {START_LIMIT_S} s")


def measure_batch(tree: Path, backend: str, cache: Path, images: int) -> float:
    """Wall seconds of ``python -m core predict`` over the first ``images`` bundled samples (the whole process)."""
    work = Path(tempfile.mkdtemp(prefix="uusic_lean_batch_"))
    try:
        entries = json.loads((tree / "samples" / "ground_truth.json").read_text())[:images]
        (work / "in.json").write_text(json.dumps(entries))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "core", "predict", "--input-json", str(work / "in.json"),
                        "--input-dir", str(tree / "samples"), "--output-dir", str(work / "out"), "--no-progress"],
                       cwd=tree, env=server_env(work / "ws", cache, backend), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _summary(label: str, rows: list[dict], keys: tuple[str, ...]) -> str:
    parts = [label]
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            parts.append(f"{key} median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})")
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    tree_args(parser)
    parser.add_argument("--backends", default="auto", help="UUSIC_BACKEND values, comma-separated")
    parser.add_argument("--requests", type=int, default=20, help="requests after the idle measurement")
    parser.add_argument("--cold", action="store_true", help="also one first-ever start (empty cache) each")
    parser.add_argument("--batch", type=int, default=0, help="also time `predict` on 1 and N sample images")
    parser.add_argument("--out", type=Path, default=None, help="write the raw rows as JSON here")
    args = parser.parse_args(argv)
    trees = ([] if args.skip_this else [("this", ROOT)]) + args.tree
    configs = [(label, tree, backend) for label, tree in trees for backend in args.backends.split(",")]
    caches = {c: Path(tempfile.mkdtemp(prefix="uusic_lean_cache_")) for c in configs}
    rows: list[dict] = []
    try:
        print(f"load average at start: {os.getloadavg()}", flush=True)
        for config in configs:
            name = f"{config[0]}/{config[2]}"
            row = measure_server(config[1], config[2], caches[config], 0)
            rows.append({"config": name, "kind": "first-ever" if args.cold else "warm-up", **row})
            print(f"{name} {rows[-1]['kind']}: {row}", flush=True)
        for run in range(args.runs):
            for config in configs:
                name = f"{config[0]}/{config[2]}"
                row = measure_server(config[1], config[2], caches[config], args.requests)
                rows.append({"config": name, "kind": "cached", "run": run, **row})
                print(f"run {run} {name}: {row}", flush=True)
                for images in (1, args.batch) if args.batch else ():
                    seconds = measure_batch(config[1], config[2], caches[config], images)
                    rows.append({"config": name, "kind": f"batch{images}", "run": run, "wall_s": seconds})
                    print(f"run {run} {name} predict {images} image(s): {seconds:.2f} s", flush=True)
        print(f"load average at end: {os.getloadavg()}")
        for config in configs:
            name = f"{config[0]}/{config[2]}"
            print(_summary(name, [r for r in rows if r["config"] == name and r["kind"] == "cached"],
                           ("ready_s", "rss_mib", "uss_mib", "rss_after_mib")))
            for images in (1, args.batch) if args.batch else ():
                print(_summary(f"{name} predict x{images}", [r for r in rows if r["config"] == name
                                                             and r["kind"] == f"batch{images}"], ("wall_s",)))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1, default=str))
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
