"""Load test of the HTTP API, loopback only and bounded.

Starts ``python -m core serve`` on a free 127.0.0.1 port (temp workspace; model and data root from the usual
``UUSIC_*`` settings, by default the demo model and the bundled samples/) or targets ``--url`` (loopback only),
then runs:

1. a sequential phase: one client, ``--single`` requests: the latency of a single-image request;
2. a concurrent phase: ``--clients`` clients x ``--requests`` requests each (default 8 x 200).

Requests cycle through request skeletons taken from ``/v1/random-sample`` for every dataset the model serves
that has images in the data root. Prints p50 / p95 / max latency, throughput, errors, the server's own
``inference_time_sec`` p50, and the server's RSS before (after warm-up) and after, with the growth in per cent.

    .venv/bin/python bench/load_api.py                    # 8 x 200 against a fresh server
    .venv/bin/python bench/load_api.py --clients 2 --requests 20 --url http://127.0.0.1:8000 --pid 1234
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
from common import free_port

ROOT = Path(__file__).resolve().parent.parent
MAX_TOTAL_REQUESTS = 20_000


def start_server(threads: int, micro_batch: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    workspace = Path(tempfile.mkdtemp(prefix="uusic_load_"))
    env = {**os.environ, "UUSIC_WORKSPACE": str(workspace)}
    env.pop("UUSIC_API_KEY", None)
    log = open(workspace / "server.log", "wb")  # noqa: SIM115 - the server's log; stays open for its lifetime
    process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--threads", str(threads), "--log-level", "warning",
                                "--micro-batch", micro_batch], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("server exited:\n" + (workspace / "server.log").read_text(errors="replace"))
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url, workspace
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    sys.exit("server did not start in 120 s")


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def skeletons(client: httpx.Client, per_dataset: int) -> list[dict]:
    datasets = client.get("/v1/datasets").raise_for_status().json()["datasets"]
    found = []
    for d in datasets:
        if not d["served"]:
            continue
        for _ in range(per_dataset):
            r = client.get("/v1/random-sample", params={"task": d["task"], "dataset_name": d["dataset_name"]})
            if r.status_code != 200:
                break
            found.append(r.json())
    return found


async def run_clients(url: str, headers: dict, bodies: list[dict], clients: int, requests: int):
    latencies: list[float] = []
    server_times: list[float] = []
    errors: dict[str, int] = {}

    async def one_client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for i in range(requests):
                body = bodies[(index * 7919 + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    response = await http.post("/v1/predict", json=body)
                    ok = response.status_code == 200
                    key = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, key, response = False, type(exc).__name__, None
                latencies.append(time.perf_counter() - start)
                if ok:
                    server_times.append(response.json().get("inference_time_sec") or 0.0)
                else:
                    errors[key] = errors.get(key, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return latencies, server_times, errors, time.perf_counter() - start


def report(name: str, latencies, server_times, errors, seconds) -> None:
    ms = [v * 1000 for v in latencies]
    server_p50_ms = statistics.median(server_times) * 1000 if server_times else float("nan")
    print(f"{name}: {len(ms)} requests in {seconds:.1f} s ({len(ms) / seconds:.1f} req/s); "
          f"latency p50 {percentile(ms, 50):.1f} ms, p95 {percentile(ms, 95):.1f} ms, max {max(ms):.1f} ms; "
          f"server inference_time_sec p50 {server_p50_ms:.1f} ms; "
          f"errors {sum(errors.values())} {errors or ''}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="target a running server (loopback only); default: start one")
    p.add_argument("--pid", type=int, help="the targeted server's process id (for RSS)")
    p.add_argument("--api-key", default=os.environ.get("UUSIC_API_KEY"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="requests per client")
    p.add_argument("--single", type=int, default=50, help="sequential single-client requests first")
    p.add_argument("--warmup", type=int, default=5, help="warm-up requests per client (same concurrency)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the concurrent phase (leak check)")
    p.add_argument("--per-dataset", type=int, default=8, help="distinct images per served dataset")
    p.add_argument("--threads", type=int, default=2, help="torch threads of a started server")
    p.add_argument("--micro-batch", choices=["auto", "on", "off"], default="auto", help="of a started server")
    args = p.parse_args(argv)
    if args.clients * (args.requests * args.rounds + args.warmup) + args.single > MAX_TOTAL_REQUESTS:
        sys.exit(f"refusing more than {MAX_TOTAL_REQUESTS} requests")

    process = workspace = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("--url must be a loopback address")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        process, url, workspace = start_server(args.threads, args.micro_batch)
        pid = process.pid
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            health = client.get("/healthz").json()
            print(f"server {url}: model {health.get('model')} on {health.get('device_name') or health.get('device')}; "
                  f"micro-batching {health.get('micro_batching')}; cpu cores here: {os.cpu_count()}")
            bodies = skeletons(client, args.per_dataset)
            if not bodies:
                sys.exit("no served dataset has images in the server's data root")
            kinds = sorted({f"{b['task']}/{b['dataset_name']}" for b in bodies})
            print(f"{len(bodies)} distinct requests over {len(kinds)} datasets: {', '.join(kinds)}")
            rss_start = rss_mb(pid)
        # warm-up with the same concurrency: every worker thread decodes, runs and writes once before RSS is taken
        asyncio.run(run_clients(url, headers, bodies, args.clients, args.warmup))
        rss_before = rss_mb(pid)
        if args.single:
            report(f"sequential 1 x {args.single}",
                   *asyncio.run(run_clients(url, headers, bodies, 1, args.single)))
        for round_ in range(1, args.rounds + 1):
            report(f"concurrent {args.clients} x {args.requests}" + (f" (round {round_})" if args.rounds > 1 else ""),
                   *asyncio.run(run_clients(url, headers, bodies, args.clients, args.requests)))
            rss_after = rss_mb(pid)
            if rss_before and rss_after:
                print(f"server RSS: {rss_start:.1f} MiB at start, {rss_before:.1f} MiB after warm-up "
                      f"({args.clients} x {args.warmup}), {rss_after:.1f} MiB now: growth "
                      f"{100 * (rss_after - rss_before) / rss_before:+.1f} % since warm-up "
                      f"({100 * (rss_after - rss_start) / rss_start:+.1f} % since start)")
            else:
                print("server RSS: unknown (pass --pid for a targeted server)")
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
            import shutil

            shutil.rmtree(workspace, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
