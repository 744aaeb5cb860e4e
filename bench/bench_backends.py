"""Benchmark (a script, not a test): CPU inference backends × precisions (core/models/backends.py).

    .venv/bin/python bench/bench_backends.py [--models demo,omni] [--iters 9] [--threads 2]
        [--demo-combos torch:fp32,openvino:fp32,...] [--omni-combos ...] [--skip-fidelity] [--skip-cli]
        [--skip-cold] [--out docs/bench/bench_backends_cpu.json]

For each model (``demo``: the shipped demo network; ``omni``: the uusic_omni architecture, a random-init
checkpoint, seed 0 — its speed is real, its outputs are noise) and each backend × precision:

* conversion: seconds to convert (fresh cache folder), seconds to load/compile, disk size of the cached artefact,
  and any fallback;
* speed: the served model's forward pass on real validation images, batch 1 and batch 8, ms per image; all
  combinations are timed in interleaved rounds (so background load hits them alike), min and median of the rounds;
* fidelity against fp32 eager torch: max |Δp| of the classification probabilities, prediction flips, and the
  fraction of equal mask pixels — for the demo over the whole validation split (weights/demo_val_split.json,
  490 images of ../shared/uusic-data) with the validation Dice / AUC per dataset and their change; for omni over
  ``--omni-fidelity-images`` validation images (no Dice: a random network);
* end to end, the default backend (auto): the batch CLI (``python -m core predict``) against the challenge's
  reference per-image loop in eager fp32 torch (decode → centre crop / letterbox → forward → softmax, or the
  mask stretched back — the baseline's nearest resize — and written as a PNG);
* cold start: a fresh process (imports, engine with a cached converted model, first prediction), and the idle
  ``python -m core serve`` process's RSS with the model loaded, per backend.

Prints a table and writes the raw numbers as JSON (``--out``). No assertion: timings are not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_name, stop  # noqa: E402

from core import catalog  # noqa: E402
from core.engine import Engine, baseline_resize_nearest  # noqa: E402
from core.evaluate import evaluate  # noqa: E402
from core.geometry import Letterbox, make_transform  # noqa: E402
from core.models import backends, registry  # noqa: E402
from core.models.base import ModelSpec  # noqa: E402
from core.paths import mask_relative_path  # noqa: E402
from core.settings import Settings  # noqa: E402

DEMO_COMBOS = ("torch:fp32,torch:bf16,torch-compile:fp32,torch-compile:bf16,openvino:fp32,openvino:bf16,"
               "openvino:int8")
OMNI_COMBOS = "torch:fp32,torch:bf16,torch-compile:fp32,openvino:fp32,openvino:bf16,openvino:int8"


def combos(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        if item.strip():
            backend, _, precision = item.strip().partition(":")
            out.append((backend, precision or "fp32"))
    return out


def omni_spec(work: Path) -> ModelSpec:
    from core.models import uusic_omni

    path = work / "omni_random_init.pth"
    torch.manual_seed(0)
    uusic_omni.save_baseline_checkpoint(uusic_omni.UUSICOmniNet(), path, layout="module")
    return registry.adhoc_spec("uusic_omni", path, name="uusic_omni_random_init")


def validation_entries(split: Path, data_root: Path, engine: Engine) -> list[dict]:
    entries = json.loads(split.read_text())
    return [e for e in entries if engine.serves(e["task"], e["dataset_name"])
            and (data_root / e["img_path_relative"]).is_file()]


def spread(entries: list[dict], count: int) -> list[dict]:
    """``count`` entries round-robin over (task, dataset) (deterministic)."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["task"], e["dataset_name"]), []).append(e)
    picked, i = [], 0
    while len(picked) < count and any(i < len(v) for v in groups.values()):
        picked += [v[i] for _, v in sorted(groups.items()) if i < len(v)][: count - len(picked)]
        i += 1
    return picked


def batch_inputs(engine: Engine, entries: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    prepared = [engine.prepare(e) for e in entries]
    images = torch.from_numpy(np.stack([p.input for p in prepared]))
    prompts = [p.request.dataset.prompts().as_tuple() for p in prepared]
    vectors = [torch.tensor([pr[k] for pr in prompts], dtype=torch.float32) for k in range(4)]
    return images, vectors


def timed_rounds(engines: dict, inputs: dict, iters: int) -> dict:
    """Interleaved rounds: each round times every engine's forward at batch 1 and batch 8 once — wall time, and the
    process's CPU time (all threads; robust when other processes load the machine)."""
    times: dict = {key: {1: [], 8: []} for key in engines}
    cpu: dict = {key: {1: [], 8: []} for key in engines}
    for engine in engines.values():  # warm-up
        for b in (1, 8):
            images, vectors = inputs[b]
            with torch.inference_mode():
                engine.model(images, *vectors)
    for _ in range(iters):
        for key, engine in engines.items():
            for b in (1, 8):
                images, vectors = inputs[b]
                start, start_cpu = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    engine.model(images, *vectors)
                times[key][b].append(1000 * (time.perf_counter() - start) / b)
                cpu[key][b].append(1000 * (time.process_time() - start_cpu) / b)
    return {key: {b: {"min": min(v), "median": statistics.median(v), "cpu_min": min(cpu[key][b]),
                      "cpu_median": statistics.median(cpu[key][b])} for b, v in per.items()}
            for key, per in times.items()}


def run_outputs(engine: Engine, entries: list[dict], data_root: Path, out: Path) -> dict:
    """Predictions in the challenge layout (masks + classification.json) and {img: (kind, value, prediction)}."""
    results = engine.predict_batch(entries, output_dir=out, input_dir=data_root, batch_size=8)
    observed, classification = {}, {}
    for entry, result in zip(entries, results, strict=True):
        if "error" in result:
            raise SystemExit(f"prediction failed: {result}")
        rel = entry["img_path_relative"]
        if entry["task"] == "classification":
            classification[rel] = {"probability": result["probability"], "prediction": result["prediction"]}
            observed[rel] = ("cls", np.array(result["probability"]), result["prediction"])
        else:
            observed[rel] = ("seg", np.asarray(Image.open(result["mask_path"])) > 0, None)
    (out / "classification.json").write_text(json.dumps(classification))
    return observed


def fidelity(reference: dict, candidate: dict) -> dict:
    dp, flips, equal, total, n_cls = 0.0, 0, 0, 0, 0
    for key, (kind, want, prediction) in reference.items():
        _, got, got_prediction = candidate[key]
        if kind == "cls":
            n_cls += 1
            dp = max(dp, float(np.abs(want - got).max()))
            flips += int(prediction != got_prediction)
        else:
            equal += int((want == got).sum())
            total += want.size
    return {"max_abs_dp": dp, "prediction_flips": flips, "classified": n_cls,
            "mask_agreement": equal / total if total else None, "mask_pixels_changed": total - equal}


def metrics(split: list[dict], data_root: Path, pred_dir: Path) -> dict:
    report = evaluate(split, data_root, pred_dir)
    out = {f"seg/{k}": v["dice"] for k, v in report["segmentation"].items()}
    out.update({f"cls/{k}": v["auc"] for k, v in report["classification"].items()})
    return out


# ------------------------------------------------------------------------------------------------ end to end


def reference_loop(model, spec: ModelSpec, entries: list[dict], data_root: Path, out: Path) -> float:
    """The challenge's model.py per image, eager fp32: decode → square input → forward (batch 1) → softmax, or the
    label map stretched back over the image (nearest resize; letterbox: its exact inverse) → PNG."""
    start = time.perf_counter()
    classification = {}
    for entry in entries:
        rgb = np.array(Image.open(data_root / entry["img_path_relative"]).convert("RGB"))
        transform = make_transform(spec.preprocessing, rgb.shape[1], rgb.shape[0], spec.input_size)
        x = torch.from_numpy(transform.apply(rgb)).unsqueeze(0)
        dataset = catalog.find_dataset(entry["task"], entry["dataset_name"])
        prompts = [torch.tensor([v], dtype=torch.float32) for v in dataset.prompts().as_tuple()]
        with torch.no_grad():
            seg, cls2, cls4 = model(x, *prompts)[:3]  # a served demo model also returns its embedding
        if entry["task"] == "classification":
            probs = torch.softmax(cls4 if dataset.head == "cls4" else cls2, dim=1).numpy().flatten()
            classification[entry["img_path_relative"]] = {"probability": probs.tolist(),
                                                          "prediction": int(np.argmax(probs))}
            continue
        if isinstance(transform, Letterbox):
            mask = transform.invert_probability(torch.softmax(seg, dim=1)[0, 1].numpy().astype(np.float32)) > 0.5
        else:
            label = torch.argmax(torch.softmax(seg, dim=1), dim=1)[0].to(torch.uint8).numpy()
            mask = baseline_resize_nearest(label, rgb.shape[1], rgb.shape[0]) > 0
        target = out / mask_relative_path(entry["img_path_relative"])
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(target, format="PNG", compress_level=1)
    (out / "classification.json").write_text(json.dumps(classification))
    return time.perf_counter() - start


def batch_cli(model_args: list[str], entries: list[dict], data_root: Path, out: Path, env: dict) -> float:
    from core.cli import main as cli_main

    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(entries))
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        start = time.perf_counter()
        code = cli_main(["predict", "--input-json", str(json_path), "--input-dir", str(data_root), "--output-dir",
                         str(out), "--device", "cpu", "--batch-size", "8", "--workers", "2", "--no-progress",
                         *model_args])
        seconds = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if code != 0:
        raise SystemExit(f"batch CLI failed ({code})")
    return seconds


# ------------------------------------------------------------------------------------------------ cold start, RSS

COLD = r"""
import time; t0 = time.perf_counter()
import json, sys, torch
torch.set_num_threads({threads})
from core.settings import Settings
from core.engine import Engine
t1 = time.perf_counter()
settings = Settings.from_env()
engine = Engine(settings)
t2 = time.perf_counter()
entry = json.loads(sys.argv[1])
engine.predict(entry, output_dir=settings.workspace / "cold")
t3 = time.perf_counter()
import psutil
print(json.dumps({{"import_s": t1 - t0, "engine_s": t2 - t1, "first_predict_s": t3 - t2,
                   "backend": engine.backend.as_dict(), "rss_mib": psutil.Process().memory_info().rss / 2**20}}))
"""


def cold_start(env: dict, entry: dict, threads: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", COLD.format(threads=threads), json.dumps(entry)], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def idle_server_rss(env: dict, request: dict) -> dict:
    import httpx
    import psutil

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server_env = {**os.environ, **env}
    server_env.pop("UUSIC_API_KEY", None)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], cwd=ROOT, env=server_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(url + "/healthz", timeout=2).json()
                if health.get("model_loaded"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = time.perf_counter() - start
        idle = psutil.Process(process.pid).memory_info().rss / 2**20
        httpx.post(url + "/v1/predict", json=request, timeout=120).raise_for_status()
        time.sleep(1.0)
        after = psutil.Process(process.pid).memory_info().rss / 2**20
        backends_health = httpx.get(url + "/healthz", timeout=5).json().get("backends")
        return {"ready_s": ready, "idle_rss_mib": idle, "rss_after_one_request_mib": after,
                "healthz_backends": backends_health}
    finally:
        stop(process)


# ------------------------------------------------------------------------------------------------ main


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,omni")
    parser.add_argument("--demo-combos", default=DEMO_COMBOS)
    parser.add_argument("--omni-combos", default=OMNI_COMBOS)
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fidelity-images", type=int, default=0, help="demo: first N validation images (0: all)")
    parser.add_argument("--omni-fidelity-images", type=int, default=48)
    parser.add_argument("--cli-images", type=int, default=48)
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    default_root = ROOT.parent / "shared" / "uusic-data"
    parser.add_argument("--data-root", type=Path, default=default_root)
    parser.add_argument("--split", type=Path, default=ROOT / "weights" / "demo_val_split.json")
    parser.add_argument("--out", type=Path)
    return parser


def main() -> int:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    data_root = args.data_root.resolve()
    work = Path(tempfile.mkdtemp(prefix="uusic-bench-backends-"))
    base = Settings(workspace=work / "ws", data_root=data_root, device="cpu", cache_dir=work / "cache")
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "openvino": _version("openvino"), "nncf": _version("nncf"), "python": platform.python_version(),
               "loadavg_start": os.getloadavg()}
    print(json.dumps(machine))
    report: dict = {"machine": machine, "models": {}}
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        report["models"][which] = measure_model(which, args, base, work)
    machine["loadavg_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))
        print(f"\nraw numbers: {args.out}")
    return 0


def measure_model(which: str, args: argparse.Namespace, base: Settings, work: Path) -> dict:
    """Every measurement of one model (``demo`` or ``omni``): build, speed, fidelity, end to end, cold start."""
    data_root, cache = base.data_root, work / "cache"
    spec = registry.find_spec(base) if which == "demo" else omni_spec(work)
    print(f"\n[{which}] {spec.name} ({spec.arch}, input {spec.input_size}, {spec.preprocessing})"
          + ("" if which == "demo" else " — random-init checkpoint (seed 0): speed only, outputs are noise"))
    engines, rows = build_engines(base, spec, combos(args.demo_combos if which == "demo" else args.omni_combos))
    reference_engine = engines.get("torch:fp32") or Engine(base.with_(backend="torch"), spec=spec)
    val = validation_entries(args.split, data_root, reference_engine)
    speed_entries = spread(val, 8)
    inputs = {1: batch_inputs(reference_engine, speed_entries[:1]),
              8: batch_inputs(reference_engine, speed_entries)}
    speeds = timed_rounds(engines, inputs, args.iters)
    base_speed = speeds.get("torch:fp32")
    for key, speed in speeds.items():
        rows[key]["ms_per_img"] = speed
        if base_speed:
            rows[key]["speedup_min"] = {b: base_speed[b]["min"] / speed[b]["min"] for b in (1, 8)}
            rows[key]["speedup_cpu"] = {b: base_speed[b]["cpu_median"] / speed[b]["cpu_median"] for b in (1, 8)}
    if not args.skip_fidelity:
        fid_entries = ((val[: args.fidelity_images] if args.fidelity_images else val) if which == "demo"
                       else spread(val, args.omni_fidelity_images))
        fidelity_rows(which, rows, engines, reference_engine, fid_entries, data_root, work)
    for key, row in rows.items():
        print("  " + row_line(key, row))
    entry = {"spec": {"name": spec.name, "arch": spec.arch, "input_size": spec.input_size},
             "validation_images": len(val), "rows": rows}
    if not args.skip_cli:
        entry["end_to_end"] = end_to_end(which, spec, reference_engine, val, data_root, work, cache, args)
    if not args.skip_cold:
        entry["cold_start"] = cold_starts(which, spec, base, work, speed_entries[0], args.threads)
    return entry


def build_engines(base: Settings, spec: ModelSpec, chosen: list[tuple[str, str]]
                  ) -> tuple[dict[str, Engine], dict[str, dict]]:
    """An engine per (backend, precision), built from scratch; the rows of their build, and the engines that run
    what was asked for (a fallback is reported, not measured)."""
    engines: dict[str, Engine] = {}
    rows: dict[str, dict] = {}
    for backend, precision in chosen:
        key = f"{backend}:{precision}"
        backends.clear_cache()
        start = time.perf_counter()
        engine = Engine(base.with_(backend=backend, precision=precision), spec=spec)
        info = engine.backend
        rows[key] = {"backend": info.as_dict(), "build_s": time.perf_counter() - start,
                     "artefact_bytes": backends.artefact_bytes(base, info),
                     "compiled_cache_bytes": backends.artefact_bytes(base, info, compiled=True)}
        ran = f"{info.backend}:{info.precision}"
        print(f"  {key:20s} built in {rows[key]['build_s']:6.1f} s → {ran}"
              + (f" (convert {info.convert_sec} s, load {info.load_sec} s, "
                 f"{(rows[key]['artefact_bytes'] or 0) / 1e6:.1f} MB)" if info.artefact else "")
              + (f"  FALLBACK: {info.fallback}" if info.fallback else ""), flush=True)
        if ran == key:
            engines[key] = engine
    return engines, rows


def fidelity_rows(which: str, rows: dict[str, dict], engines: dict[str, Engine], reference_engine: Engine,
                  entries: list[dict], data_root: Path, work: Path) -> None:
    """Each engine's outputs against eager fp32's on ``entries`` (and, for the demo, the metric changes)."""
    print(f"  fidelity over {len(entries)} validation images …", flush=True)
    ref_out = work / which / "torch-fp32"
    reference = run_outputs(reference_engine, entries, data_root, ref_out)
    ref_metrics = metrics(entries, data_root, ref_out) if which == "demo" else None
    for key, engine in engines.items():
        if key == "torch:fp32":
            continue
        out = work / which / key.replace(":", "-")
        rows[key]["fidelity"] = fidelity(reference, run_outputs(engine, entries, data_root, out))
        if ref_metrics is not None:
            got = metrics(entries, data_root, out)
            rows[key]["metric_change"] = {k: (None if v is None or got.get(k) is None else got[k] - v)
                                          for k, v in ref_metrics.items()}
    if ref_metrics is not None:
        rows["torch:fp32"]["metrics"] = ref_metrics


def cold_starts(which: str, spec: ModelSpec, base: Settings, work: Path, entry: dict, threads: int) -> dict:
    """A cold process and an idle server per backend (torch, auto) with the converted-model cache of this run."""
    found = {}
    model_env = _model_env(which, spec, base)
    for backend in ("torch", "auto"):
        env = {**model_env, "UUSIC_BACKEND": backend, "UUSIC_CACHE_DIR": str(work / "cache"),
               "UUSIC_WORKSPACE": str(work / "ws"), "UUSIC_DATA_ROOT": str(base.data_root), "UUSIC_DEVICE": "cpu"}
        cold = cold_start(env, entry, threads)
        server = idle_server_rss(env, {k: entry[k] for k in ("img_path_relative", "task", "dataset_name")})
        found[backend] = {"process": cold, "server": server}
        print(f"  cold start ({backend}): " + cold_line(cold, server), flush=True)
    return found


def row_line(key: str, row: dict) -> str:
    speed = row.get("ms_per_img") or {}
    fid = row.get("fidelity") or {}
    up = row.get("speedup_min") or {}
    change = row.get("metric_change") or {}
    worst = max((abs(v) for v in change.values() if v is not None), default=None)
    agreement = None if fid.get("mask_agreement") is None else 100 * fid["mask_agreement"]
    b1, b8 = speed.get(1) or {}, speed.get(8) or {}
    cpu_up = row.get("speedup_cpu") or {}
    return (f"{key:20s} wall b1 {fmt(b1.get('min'))} ms (median {fmt(b1.get('median'))}) b8 {fmt(b8.get('min'))} "
            f"ms/img (median {fmt(b8.get('median'))}) x{fmt(up.get(1), '.2f')}/x{fmt(up.get(8), '.2f')}; CPU b1 "
            f"{fmt(b1.get('cpu_median'))} b8 {fmt(b8.get('cpu_median'))} ms/img x{fmt(cpu_up.get(1), '.2f')}/"
            f"x{fmt(cpu_up.get(8), '.2f')}  "
            f"|dp| {fmt(fid.get('max_abs_dp'), '.1e')} flips {fid.get('prediction_flips', '-')}  "
            f"masks {fmt(agreement, '.4f')} %  max |d Dice/AUC| {fmt(worst, '.4f')}")


def cold_line(cold: dict, server: dict) -> str:
    info = cold.get("backend") or {}
    return (f"process {fmt(cold.get('process_wall_s'), '.2f')} s (imports {fmt(cold.get('import_s'), '.2f')}, "
            f"engine {fmt(cold.get('engine_s'), '.2f')}, first predict {fmt(cold.get('first_predict_s'), '.2f')}; "
            f"{info.get('backend')} {info.get('precision')}, cached {info.get('cached')}, RSS "
            f"{fmt(cold.get('rss_mib'))} MiB); serve ready {fmt(server.get('ready_s'), '.1f')} s, idle RSS "
            f"{fmt(server.get('idle_rss_mib'))} MiB, after one request "
            f"{fmt(server.get('rss_after_one_request_mib'))} MiB")


def _model_env(which: str, spec: ModelSpec, base: Settings) -> dict:
    """Environment that makes a fresh process serve ``spec``: the demo's manifest, or a one-entry manifest."""
    if which == "demo":
        return {"UUSIC_WEIGHTS_DIR": str(base.weights_dir), "UUSIC_MODEL": spec.name}
    folder = Path(spec.file).parent / "manifest"
    folder.mkdir(exist_ok=True)
    (folder / "models.json").write_text(json.dumps([{"name": spec.name, "arch": spec.arch, "file": spec.file,
                                                     "input_size": spec.input_size,
                                                     "preprocessing": spec.preprocessing}]))
    return {"UUSIC_WEIGHTS_DIR": str(folder), "UUSIC_MODEL": spec.name}


def end_to_end(which: str, spec: ModelSpec, reference_engine: Engine, val: list[dict], data_root: Path, work: Path,
               cache: Path, args) -> dict:
    entries = spread(val, args.cli_images)
    model_env = _model_env(which, spec, Settings(device="cpu"))
    env = {**model_env, "UUSIC_CACHE_DIR": str(cache), "UUSIC_WORKSPACE": str(work / "ws")}
    eager = reference_engine.model
    # warm-up of both paths (allocator, thread pools, the converted model's first compile)
    reference_loop(eager, spec, entries[:4], data_root, work / f"{which}-warm-ref")
    batch_cli([], entries[:8], data_root, work / f"{which}-warm-cli", {**env, "UUSIC_BACKEND": "auto"})
    loop_s = reference_loop(eager, spec, entries, data_root, work / f"{which}-ref")
    result = {"images": len(entries), "reference_loop_img_s": len(entries) / loop_s}
    for backend in ("auto", "torch"):
        seconds = batch_cli([], entries, data_root, work / f"{which}-cli-{backend}", {**env, "UUSIC_BACKEND": backend})
        result[f"batch_cli_{backend}_img_s"] = len(entries) / seconds
    print(f"  end to end over {len(entries)} images: challenge loop (eager fp32) {result['reference_loop_img_s']:.2f} "
          f"img/s; batch CLI default (auto) {result['batch_cli_auto_img_s']:.2f} img/s "
          f"(×{result['batch_cli_auto_img_s'] / result['reference_loop_img_s']:.2f}); batch CLI torch "
          f"{result['batch_cli_torch_img_s']:.2f} img/s", flush=True)
    return result


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
