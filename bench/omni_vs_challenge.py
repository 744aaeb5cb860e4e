"""Batch CLI on an omni checkpoint against the challenge's own ``model.py`` loop (issue 27): whole processes, side by
side, interleaved rounds, one run.

    .venv/bin/python bench/omni_vs_challenge.py [--images 150] [--rounds 3] [--tree old=/tmp/old] [--out F.json]

The model: a uusic_omni entry of weights/models.json, else a random-init checkpoint (seed 0) saved in the baseline's
``best_model.pth`` layout (``bench_batch_cli.omni_model_args``). The images: ``--images`` BUSI (classification and
segmentation), Fetal_HC and DDTI entries of the data root's ground truth, round-robin (``common.pick_entries``).
Configurations, each a whole process started in turn in every round (the order rotates from round to round):

- ``challenge``: ``bench/challenge_loop.py``, a stand-in of the baseline's ``model.py`` (eager fp32 torch, batch 1);
- ``new fp32``: ``python -m core predict`` of this tree, the default backend (``UUSIC_BACKEND=auto``);
- ``new bf16``: the same with ``UUSIC_PRECISION=bf16`` (opt-in);
- ``<name> fp32``: ``python -m core predict`` of each ``--tree NAME=PATH`` (``git archive REV | tar -x -C PATH``),
  run with this interpreter.

Every CLI run uses ``--mask-resize baseline`` (the challenge's stretch of the 224 mask, so masks are comparable pixel
for pixel), batch 8, 2 workers, its tree's own converted-model cache filled beforehand by an untimed probe process,
which also says what backend and precision serve (``Engine.model_info()['backend']``, what ``/healthz`` shows). One
untimed warm-up of every configuration on 8 images precedes the rounds; the images are read once before them.
Printed per configuration: median / min / max wall seconds, img/s, the ratio to the challenge loop's median in the
same run, and the outputs against the challenge loop's (round 0): max |Δp|, prediction flips, mask pixel agreement
per image (min / mean). Load average at start and end, CPU name and flags. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_batch_cli import omni_model_args  # noqa: E402
from common import cpu_name, load_average, pick_entries, tree_args  # noqa: E402

from core.paths import mask_relative_path  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests import tolerances  # noqa: E402

DATASETS = ("BUSI", "Fetal_HC", "DDTI")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PROBE = r"""
import json, sys
from pathlib import Path
from core.engine import Engine
from core.models import registry
from core.settings import Settings
settings = Settings.from_env().with_(device="cpu")
argv = sys.argv[1:]
spec = None if argv[0] == "--model" else registry.adhoc_spec("uusic_omni", Path(argv[argv.index("--weights") + 1]))
engine = Engine(settings, argv[1] if spec is None else None, spec=spec)
print("backend: " + json.dumps(engine.model_info().get("backend")))
"""


@dataclass
class Config:
    """One configuration: the challenge loop (``tree`` None) or ``python -m core predict`` of a tree."""

    name: str
    tree: Path | None = None
    precision: str = "fp32"
    walls: list[float] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    backend: dict | None = None


@dataclass
class Context:
    work: Path
    data_root: Path
    model_args: list[str]
    weights: Path
    batch_size: int
    workers: int


def cli_env(cfg: Config, tree: Path, ctx: Context) -> dict:
    """A CLI configuration's environment: its tree first on the path, its own cache and workspace."""
    tag = cfg.name.split()[0]
    return {**os.environ, "PYTHONPATH": str(tree), "UUSIC_BACKEND": "auto", "UUSIC_PRECISION": cfg.precision,
            "UUSIC_CACHE_DIR": str(ctx.work / f"cache-{tag}"), "UUSIC_WORKSPACE": str(ctx.work / f"ws-{tag}"),
            "UUSIC_DEBUG_STARTUP": "1", "UUSIC_RECORD_CLI": "0"}


def command(cfg: Config, ctx: Context, json_path: Path, out: Path) -> tuple[list[str], Path, dict]:
    """(argv, cwd, env) of one run of ``cfg`` over ``json_path`` into ``out``."""
    common = ["--input-json", str(json_path), "--input-dir", str(ctx.data_root), "--output-dir", str(out)]
    if cfg.tree is None:
        return ([sys.executable, str(ROOT / "bench" / "challenge_loop.py"), *common, "--weights", str(ctx.weights)],
                ROOT, dict(os.environ))
    argv = [sys.executable, "-m", "core", "predict", *common, "--device", "cpu", "--batch-size", str(ctx.batch_size),
            "--workers", str(ctx.workers), "--mask-resize", "baseline", "--no-progress", "--no-record",
            *ctx.model_args]
    return argv, cfg.tree, cli_env(cfg, cfg.tree, ctx)


def run_once(cfg: Config, ctx: Context, json_path: Path, out: Path) -> dict:
    """One whole process: wall seconds (launch to exit), CPU seconds (user + system, all its threads) and the CLI's
    ``startup:`` line when it prints one."""
    argv, cwd, env = command(cfg, ctx, json_path, out)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run: dict = {"wall": wall, "cpu": cpu, "rc": proc.returncode}
    if proc.returncode != 0:
        run["error"] = proc.stderr[-1500:]
        print(f"  ! {cfg.name} failed (exit {proc.returncode}):\n{proc.stderr[-1500:]}", flush=True)
    line = next((x for x in proc.stderr.splitlines() if x.startswith("startup: ")), None)
    if line:
        probe = json.loads(line.removeprefix("startup: "))
        run.update(forward_sec=probe.get("forward_sec_total"), imported=probe.get("imported"))
    return run


def probe_backend(cfg: Config, ctx: Context) -> dict | None:
    """What serves ``cfg`` (an untimed process of its tree, same environment); fills its converted-model cache."""
    _, cwd, env = command(cfg, ctx, ctx.work / "none.json", ctx.work / "none")
    proc = subprocess.run([sys.executable, "-c", PROBE, *ctx.model_args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("backend: ")), None)
    if line is None:
        print(f"  ! probe of {cfg.name} said nothing (exit {proc.returncode}): {proc.stderr[-800:]}", flush=True)
        return None
    return json.loads(line.removeprefix("backend: "))


def prepare(configs: list[Config], ctx: Context, entries: list[dict]) -> None:
    """Untimed: probe every CLI configuration (and fill its cache), read the images once, warm every process path."""
    for entry in entries:
        (ctx.data_root / entry["img_path_relative"]).read_bytes()
    warm = ctx.work / "warm.json"
    warm.write_text(json.dumps(entries[:8]))
    for cfg in configs:
        started = time.perf_counter()
        if cfg.tree is not None:
            cfg.backend = probe_backend(cfg, ctx)
        run_once(cfg, ctx, warm, ctx.work / f"warm-{cfg.name.replace(' ', '-')}")
        info = cfg.backend or {}
        print(f"  prepared {cfg.name:<10} in {time.perf_counter() - started:6.1f} s; serves: "
              f"{info.get('backend', 'torch (eager, challenge loop)')} {info.get('precision', 'fp32')}"
              + (f" (requested {info.get('requested_precision')}; fallback: {info['fallback']})"
                 if info.get("fallback") else ""), flush=True)


def rounds(configs: list[Config], ctx: Context, json_path: Path, count: int) -> None:
    """``count`` rounds; every configuration once per round, the order rotated by one each round."""
    for r in range(count):
        order = configs[r % len(configs):] + configs[: r % len(configs)]
        for cfg in order:
            run = run_once(cfg, ctx, json_path, out_dir(ctx, cfg, r))
            run["round"] = r
            cfg.runs.append(run)
            cfg.walls.append(run["wall"])
            print(f"  round {r} {cfg.name:<10} {run['wall']:7.2f} s wall {run['cpu']:7.2f} s CPU  load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)


def out_dir(ctx: Context, cfg: Config, r: int) -> Path:
    return ctx.work / "out" / f"{cfg.name.replace(' ', '-')}-r{r}"


def agreement(entries: list[dict], ref: Path, other: Path) -> dict:
    """Outputs of ``other`` against the challenge loop's ``ref``: classification and masks."""
    try:
        ref_cls = json.loads((ref / "classification.json").read_text())
        cls = json.loads((other / "classification.json").read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"no classification.json ({type(exc).__name__})"}
    keys = [k for k in ref_cls if k in cls]
    dp = [float(np.max(np.abs(np.subtract(ref_cls[k]["probability"], cls[k]["probability"])))) for k in keys]
    flips = sum(ref_cls[k]["prediction"] != cls[k]["prediction"] for k in keys)
    fractions, missing, pinned = [], 0, 0
    for e in (e for e in entries if e["task"] == "segmentation"):
        rel = mask_relative_path(e["img_path_relative"])
        if not (other / rel).is_file() or not (ref / rel).is_file():
            missing += 1
            continue
        a, b = tolerances.as_mask(ref / rel), tolerances.as_mask(other / rel)
        fractions.append(float(np.mean(a == b)) if a.shape == b.shape else 0.0)
        pinned += int(a.shape == b.shape and tolerances.masks_agree(a, b))
    return {"classified": len(keys), "missing_classifications": len(ref_cls) - len(keys),
            "max_abs_dp": max(dp, default=0.0), "prediction_flips": int(flips), "masks": len(fractions),
            "probabilities_within_pin": sum(d <= tolerances.PROBABILITY_ATOL for d in dp),
            "masks_within_pin": pinned,
            "masks_missing": missing, "masks_identical": sum(f == 1.0 for f in fractions),
            "mask_agreement_min": min(fractions, default=float("nan")),
            "mask_agreement_mean": statistics.fmean(fractions) if fractions else float("nan")}


def machine() -> dict:
    """CPU name, the flags that matter for bf16 / int8, OpenVINO's view of the CPU, core count."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        line = next((x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")), "flags:")
        flags = set(line.split(":", 1)[1].split())
    try:
        import openvino as ov

        caps = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        ov_version: str | None = ov.__version__
    except Exception:  # noqa: BLE001 - not installed / no CPU plugin: said as such
        caps, ov_version = [], None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS},
            "openvino": ov_version, "openvino_cpu_capabilities": caps, "python": platform.python_version()}


def summarise(cfg: Config, base: Config, n: int, agree: dict | None) -> dict:
    """A configuration's figures; the ratio is the challenge loop's median over this one's, in this run."""
    walls = [w for w, r in zip(cfg.walls, cfg.runs, strict=True) if r["rc"] == 0]
    if not walls:
        return {"name": cfg.name, "error": "every run failed", "backend": cfg.backend}
    med = statistics.median(walls)
    cpu = statistics.median(r["cpu"] for r in cfg.runs if r["rc"] == 0)
    base_cpu = statistics.median(r["cpu"] for r in base.runs)
    per_round = [b / c for b, c in zip(base.walls, cfg.walls, strict=False)]
    fwd = [r["forward_sec"] for r in cfg.runs if r.get("forward_sec") is not None]
    imported = next((r["imported"] for r in cfg.runs if r.get("imported")), None)
    return {"name": cfg.name, "tree": str(cfg.tree) if cfg.tree else None, "precision_requested": cfg.precision,
            "backend": cfg.backend, "walls": cfg.walls, "median_s": med, "min_s": min(walls), "max_s": max(walls),
            "img_per_s": n / med, "ratio_vs_challenge": statistics.median(base.walls) / med, "cpu_s_median": cpu,
            "cpu_ratio_vs_challenge": base_cpu / cpu,
            "ratio_per_round": per_round, "forward_s_median": statistics.median(fwd) if fwd else None,
            "imported": imported, "agreement": agree}


def print_report(rows: list[dict], n: int) -> None:
    print(f"\n{'config':<11}{'serves':<15}{'median s':>9}{'min':>8}{'max':>8}{'img/s':>7}{'ratio':>7}{'CPU s':>8}"
          f"{'ratio':>7}{'fwd s':>8}  outputs vs challenge")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<11}{row['error']}")
            continue
        info = row["backend"] or {"backend": "torch", "precision": "fp32"}
        fwd = f"{row['forward_s_median']:7.2f}" if row["forward_s_median"] is not None else "      -"
        a = row["agreement"]
        outputs = "(reference)" if a is None else a.get("error") or (
            f"max|dp| {a['max_abs_dp']:.1e}, flips {a['prediction_flips']}/{a['classified']}, masks identical "
            f"{a['masks_identical']}/{a['masks']}, pixel agreement min {100 * a['mask_agreement_min']:.3f} % "
            f"mean {100 * a['mask_agreement_mean']:.3f} %; within the fp32 pins (tests/tolerances.py): "
            f"probabilities {a['probabilities_within_pin']}/{a['classified']}, masks {a['masks_within_pin']}/"
            f"{a['masks']}")
        print(f"{row['name']:<11}{info['backend'] + ' ' + info['precision']:<15}{row['median_s']:9.2f}"
              f"{row['min_s']:8.2f}{row['max_s']:8.2f}{row['img_per_s']:7.2f}{row['ratio_vs_challenge']:6.2f}x"
              f"{row['cpu_s_median']:8.1f}{row['cpu_ratio_vs_challenge']:6.2f}x {fwd}  {outputs}")
    for row in rows:
        if row.get("backend") and row["backend"].get("fallback"):
            print(f"note: {row['name']} asked for {row['backend'].get('requested')}/"
                  f"{row['backend'].get('requested_precision')} and ran {row['backend']['backend']} "
                  f"{row['backend']['precision']}: {row['backend']['fallback']}")
        if row.get("imported"):
            heavy = sorted(k for k, v in row["imported"].items() if v)
            print(f"imported by {row['name']}: {', '.join(heavy) or 'none of the heavy libraries'}")
    print(f"ratio = challenge median / config median over {n} images, same run (wall; CPU: user + system seconds "
          "of the process, all threads); fwd s = the CLI's engine-timed forward seconds (UUSIC_DEBUG_STARTUP)")


def build_configs(trees: list[tuple[str, Path]], bf16: bool) -> list[Config]:
    configs = [Config("challenge"), Config("new fp32", ROOT)]
    if bf16:
        configs.append(Config("new bf16", ROOT, "bf16"))
    configs += [Config(f"{name} fp32", path) for name, path in trees]
    return configs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    tree_args(parser)  # --skip-this is not used here: the new tree is the one measured against the challenge
    parser.add_argument("--no-bf16", action="store_true", help="leave out the UUSIC_PRECISION=bf16 configuration")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    default_root = ROOT.parent / "shared" / "uusic-data"
    parser.add_argument("--data-root", type=Path, default=default_root if default_root.is_dir() else None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    settings = Settings.from_env().with_(device="cpu")
    data_root = (args.data_root or settings.data_root).resolve()
    configs = build_configs(args.tree, not args.no_bf16)
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_average()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="uusic-omni-vs-challenge-") as tmp:
        work = Path(tmp)
        model_args, spec, source = omni_model_args(settings, work)
        weights = Path(spec.file) if Path(spec.file).is_absolute() else settings.weights_dir / spec.file
        ctx = Context(work, data_root, model_args, weights, args.batch_size, args.workers)
        entries = pick_entries(data_root, lambda task, dataset: dataset in DATASETS, args.images)
        (work / "entries.json").write_text(json.dumps(entries))
        kinds = sorted({f"{e['task'][:3]}/{e['dataset_name']}" for e in entries})
        print(f"{started}; {info['cpu']}, {info['cores']} cores; flags {info['flags']}; OpenVINO {info['openvino']} "
              f"CPU capabilities {info['openvino_cpu_capabilities']}\nmodel uusic_omni ({source}); {len(entries)} "
              f"images ({', '.join(kinds)}) of {data_root}; {args.rounds} rounds; batch {args.batch_size}, "
              f"{args.workers} workers; load average at start {tuple(load_start)}", flush=True)
        prepare(configs, ctx, entries)
        rounds(configs, ctx, work / "entries.json", args.rounds)
        base = configs[0]
        rows = [summarise(c, base, len(entries), None if c is base else
                          agreement(entries, out_dir(ctx, base, 0), out_dir(ctx, c, 0))) for c in configs]
    load_end = load_average()
    print_report(rows, len(entries))
    print(f"load average at start {tuple(load_start)}, at end "
          f"{tuple(load_end)}; finished {time.strftime('%H:%M:%S %Z')}")
    if args.out:
        args.out.write_text(json.dumps({"started": started, "machine": info, "model": source, "images": len(entries),
                                        "datasets": kinds, "rounds": args.rounds, "batch_size": args.batch_size,
                                        "workers": args.workers, "load_start": load_start, "load_end": load_end,
                                        "configs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
