"""The Ray backends against the plain ones on this machine, loopback only and bounded (not a test).

1. HTTP: ``python -m core serve --threads 2`` (uvicorn, one process) against ``python -m core serve --backend ray
   --replicas 2 --threads 1`` (a local Ray started by that command: 2 Serve replicas of one torch thread). Same
   request bodies (``/v1/random-sample`` of every served dataset), a warm-up, then 1 client x ``--single`` and
   ``--clients`` clients x ``--requests``: p50 / p95 / max latency, throughput, errors, the server's own
   ``inference_time_sec``; ``GET /healthz`` p50 on both (no model work: what Ray's proxy and router add per request);
   RSS (and USS: pages no other process shares) of every process of each server, Ray's included.
2. Batch: ``python -m core predict`` local against ``--backend ray`` (Ray Data, a local Ray) on the bundled samples
   and, when present, ``../shared/uusic-data`` (its ground_truth.json): wall time of the whole command and the
   img/s it reports.

    .venv/bin/python bench/bench_cluster.py                     # everything (~10 min on 2 cores)
    .venv/bin/python bench/bench_cluster.py --skip-data --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_api import free_port, percentile, run_clients, skeletons

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("UUSIC_SHARED_DATA", ROOT.parent / "shared" / "uusic-data"))
MAX_TOTAL_REQUESTS = 10_000


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min)"


def start_server(command: list[str], env: dict, log: Path, seconds: float = 240.0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    out = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning", *command], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            health = httpx.get(f"{url}/healthz", timeout=2)
            if health.status_code == 200 and health.json().get("model_loaded"):
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(process)
    sys.exit(f"server did not come up in {seconds:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def process_name(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    title = " ".join(cmd)
    for pattern in (r"ray::[\w:#()\->. ]+", r"(gcs_server|raylet|dashboard\.py|log_monitor\.py|monitor\.py|"
                                            r"runtime_env/agent/main\.py|dashboard/agent\.py|default_worker\.py)"):
        match = re.search(pattern, title)
        if match:
            return match.group(0).strip()
    if "-m core serve" in title or "core serve" in title:
        return "python -m core serve (driver)" if "--backend" in title else "python -m core serve"
    return (cmd[0].rsplit("/", 1)[-1] if cmd else proc.name())[:40]


def memory(pid: int) -> tuple[list[tuple[str, int, float, float]], float, float]:
    """(name, pid, RSS MiB, USS MiB) of ``pid`` and every process below it, and the RSS / USS totals."""
    root = psutil.Process(pid)
    rows = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rows.append((process_name(proc), proc.pid, info.rss / 2**20, info.uss / 2**20))
    rows.sort(key=lambda r: -r[2])
    return rows, sum(r[2] for r in rows), sum(r[3] for r in rows)


def healthz_p50(url: str, n: int = 100) -> float:
    with httpx.Client(base_url=url, timeout=30) as client:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            client.get("/healthz").raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def http_phase(name: str, url: str, bodies: list[dict], clients: int, requests: int) -> dict:
    latencies, server_times, errors, seconds = asyncio.run(run_clients(url, {}, bodies, clients, requests))
    ms = [v * 1000 for v in latencies]
    row = {"phase": f"{name} {clients} x {requests}", "requests": len(ms), "seconds": seconds,
           "req_per_s": len(ms) / seconds, "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
           "max_ms": max(ms), "server_p50_ms": statistics.median(server_times) * 1000 if server_times else None,
           "errors": sum(errors.values()), "error_kinds": errors}
    print(f"  {row['phase']}: {row['requests']} requests in {seconds:.1f} s ({row['req_per_s']:.1f} req/s); "
          f"p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, max {row['max_ms']:.1f} ms; server "
          f"inference_time_sec p50 {row['server_p50_ms'] or float('nan'):.1f} ms; errors {row['errors']} "
          f"{errors or ''}; {load()}", flush=True)
    return row


def bench_server(label: str, command: list[str], env: dict, work: Path, bodies: list[dict] | None,
                 args: argparse.Namespace) -> tuple[dict, list[dict]]:
    print(f"\n== {label}: python -m core serve {' '.join(command)}  ({load()})", flush=True)
    started = time.monotonic()
    process, url = start_server(command, env, work / f"{label.replace(' ', '_')}.log")
    print(f"  up in {time.monotonic() - started:.1f} s", flush=True)
    try:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        backends = health.get("backends") or {}
        print(f"  model {health.get('model')} on {health.get('device_name')}; CPU backend "
              f"{[b.get('backend') for b in backends.values()] or 'torch'}; micro-batching "
              f"{health.get('micro_batching')}", flush=True)
        if bodies is None:
            with httpx.Client(base_url=url, timeout=60) as client:
                bodies = skeletons(client, args.per_dataset)
        asyncio.run(run_clients(url, {}, bodies, args.clients, args.warmup))
        result: dict = {"label": label, "command": command, "phases": []}
        result["healthz_p50_ms"] = healthz_p50(url)
        print(f"  GET /healthz p50 {result['healthz_p50_ms']:.2f} ms (100 sequential)", flush=True)
        result["phases"].append(http_phase(label, url, bodies, 1, args.single))
        result["phases"].append(http_phase(label, url, bodies, args.clients, args.requests))
        rows, rss, uss = memory(process.pid)
        result["memory"] = {"processes": rows, "rss_total_mib": rss, "uss_total_mib": uss}
        print(f"  memory after the load: {len(rows)} processes, RSS total {rss:.0f} MiB (shared pages counted in "
              f"each), USS total {uss:.0f} MiB", flush=True)
        for name, pid, r, u in rows:
            print(f"    {name:<60} pid {pid:>7}  RSS {r:7.1f} MiB  USS {u:7.1f} MiB")
        return result, bodies
    finally:
        stop(process)


def run_predict(label: str, gt: Path, data: Path, out: Path, extra: list[str], env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "core", "predict", "--input-json", str(gt), "--input-dir", str(data),
               "--output-dir", str(out), "--device", "cpu", "--no-progress", *extra]
    print(f"\n== {label}: {' '.join(command[1:])}  ({load()})", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("done:")), "")
    match = re.search(r"done: (\d+) predicted \(([\d.]+) img/s\)", line)
    images, rate = (int(match.group(1)), float(match.group(2))) if match else (0, float("nan"))
    if done.returncode != 0 or not match:
        print(done.stderr[-3000:])
    print(f"  exit {done.returncode}; {line}\n  wall {wall:.1f} s for the whole command -> {images / wall:.2f} img/s "
          f"end to end", flush=True)
    return {"label": label, "extra": extra, "exit": done.returncode, "images": images, "reported_img_per_s": rate,
            "wall_s": wall, "end_to_end_img_per_s": images / wall if wall else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=100, help="requests per client in the concurrent phase")
    p.add_argument("--single", type=int, default=50, help="sequential single-client requests")
    p.add_argument("--warmup", type=int, default=3, help="warm-up requests per client")
    p.add_argument("--per-dataset", type=int, default=8, help="distinct images per served dataset")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--skip-shared", action="store_true", help="batch on the bundled samples only")
    p.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    if 2 * (args.clients * (args.requests + args.warmup) + args.single) > MAX_TOTAL_REQUESTS:
        sys.exit(f"refusing more than {MAX_TOTAL_REQUESTS} requests")

    work = Path(tempfile.mkdtemp(prefix="uusic_bench_cluster_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UUSIC_") or k in ("UUSIC_BACKEND",)}
    env.update(UUSIC_WORKSPACE=str(work / "workspace"), UUSIC_DEVICE="cpu", RAY_DEDUP_LOGS="1")
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; python {platform.python_version()}; {load()}")
    results: dict = {"machine": {"cpus": os.cpu_count(), "ram_gib": psutil.virtual_memory().total / 2**30},
                     "http": [], "batch": []}
    try:
        if not args.skip_http:
            plain, bodies = bench_server("plain", ["--threads", "2"], env, work, None, args)
            ray_env = {**env}
            ray, _ = bench_server("ray", ["--backend", "ray", "--replicas", "2", "--threads", "1"], ray_env, work,
                                  bodies, args)
            results["http"] = [plain, ray]
            print("\n== Ray's own overhead per request (1 client):")
            extra_route = ray["healthz_p50_ms"] - plain["healthz_p50_ms"]
            one_plain, one_ray = plain["phases"][0], ray["phases"][0]
            extra_predict = (one_ray["p50_ms"] - (one_ray["server_p50_ms"] or 0)) - (
                one_plain["p50_ms"] - (one_plain["server_p50_ms"] or 0))
            print(f"  GET /healthz: +{extra_route:.2f} ms (proxy + router, no model work)")
            print(f"  POST /v1/predict: latency minus the server's inference_time_sec: +{extra_predict:.2f} ms "
                  f"(proxy + router + the @serve.batch wait of UUSIC_BATCH_WAIT_MS, 4 ms by default)")
            results["ray_overhead_ms"] = {"healthz": extra_route, "predict": extra_predict}
        if not args.skip_data:
            sets = [("samples", ROOT / "samples" / "ground_truth.json", ROOT / "samples")]
            if not args.skip_shared and (SHARED_DATA / "ground_truth.json").is_file():
                sets.append(("uusic-data", SHARED_DATA / "ground_truth.json", SHARED_DATA))
            for name, gt, data in sets:
                count = len(json.loads(gt.read_text()))
                print(f"\n#### batch on {name}: {count} images", flush=True)
                runs = [(f"local {name}", []),
                        (f"ray {name} (1 engine actor x 1 thread)", ["--backend", "ray", "--concurrency", "1",
                                                                     "--threads", "1"])]
                if name == "samples":  # the bigger set gets the two main runs only (time)
                    runs += [(f"local {name} (1 thread)", ["--threads", "1"]),
                             (f"ray {name} (1 engine actor x 2 threads)", ["--backend", "ray", "--concurrency", "1",
                                                                           "--threads", "2"])]
                for label, extra in runs:
                    results["batch"].append({"set": name, **run_predict(label, gt, data, work / "out", extra, env)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
