"""Command line: ``python -m core {predict,evaluate,models,train,serve} ...``.

``predict`` is a drop-in for the challenge's ``model.py``: it reads the challenge JSON, writes
``OUT/classification.json`` (``{img_path_relative: {probability, prediction}}``) and the masks at
``OUT/<img_path_relative with imgs → masks, .png>`` at the original image size. Decoding and preprocessing
run in a thread pool ahead of the batched forward passes, mask writing behind them (``--no-overlap``: one after the
other). Entries for datasets the model has no weights for
are skipped with a warning and counted. The work is done by :class:`core.service.AnalysisService` (the
same flow as the API and the dashboard); with ``--record`` every image lands in the history too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.response import BatchResult
    from core.service import AnalysisService
    from core.settings import Settings

USAGE = """usage: python -m core <command> [options]

commands:
  predict    run a model over a challenge-format JSON (drop-in for the challenge's model.py)
  evaluate   Dice / NSD / AUC / accuracy of a prediction folder against ground truth
  models     verify the models of weights/models.json (sha256, load, output shapes)
  export     turn the team's own network (factory + checkpoint) into a served torch.export file
  train      train the demo network (core.train); --data DIR --init MODEL: fine-tune it into a new model
             version of the manifest (core.finetune)
  serve      start the HTTP API (core.api)
  workspace  usage of api_in/ and api_out/, retention: status | gc [--dry-run] [--days N] [--max-gb G]
  history    back up and move the run history: export --out F.tar.gz | import F.tar.gz | backup --out F.sqlite3
             export-labels --out DIR [--since T] [--dataset D]: corrected runs as a training set
  pacs       the PACS over DICOMweb (UUSIC_DICOMWEB_URL): search | pull | analyze [--store] | store | watch [--once]

`python -m core <command> --help` for options."""


def _predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core predict", description=__doc__.split("\n\n")[1])
    p.add_argument("--input-json", required=True, type=Path, help="challenge JSON: a list of request objects")
    p.add_argument("--input-dir", required=True, type=Path, help="root the img_path_relative entries live under")
    p.add_argument("--output-dir", required=True, type=Path, help="where classification.json and masks go")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="name in weights/models.json (default: UUSIC_MODEL or the first entry)")
    which.add_argument("--arch", choices=["uusic_omni", "demo_unet", "torchscript", "torch_export"],
                       help="ad-hoc model: architecture of --weights")
    p.add_argument("--weights", type=Path, help="ad-hoc model: the weights file (with --arch)")
    p.add_argument("--input-size", type=int, default=None, help="ad-hoc model: square input size")
    p.add_argument("--preprocessing", choices=["center_crop", "letterbox"], default=None,
                   help="ad-hoc model: geometry (uusic_omni default center_crop)")
    p.add_argument("--mask-resize", choices=["exact", "baseline"], default="exact",
                   help="exact: invert the centre crop onto the original pixels (default); baseline: stretch the "
                        "square mask over the whole image like the challenge's model.py (parity checks only)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: UUSIC_DEVICE or auto)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="decode / preprocess / mask-writing threads")
    p.add_argument("--no-overlap", action="store_true",
                   help="decode, forward and mask writing one after the other in this thread (for comparisons)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the inference runtime (OpenVINO or torch; default: physical cores)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--record", dest="record", action="store_true", default=None,
                   help="record every image in the history (default: UUSIC_RECORD_CLI, off)")
    p.add_argument("--no-record", dest="record", action="store_false", help="do not record in the history")
    p.add_argument("--frames", default=None, metavar="all|0,3,5",
                   help="cine: analyse these frames of every entry (a multi-frame DICOM or a video; 'all' = every "
                        "frame) as one batch each; writes OUT/frames.json (per-frame results + the loop's summary: "
                        "area curve, largest / smallest frame, ED / ES and fractional area change for cardiac views)")
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data over a local Ray or the cluster at --address "
                        "(needs requirements-cluster.txt; see docs/DEPLOY.md)")
    ray = p.add_argument_group("--backend ray")
    ray.add_argument("--address", default=None, help="join the Ray cluster at ADDR; default: start a local Ray")
    ray.add_argument("--concurrency", type=int, default=1, help="engine actors, one loaded model each (default 1)")
    ray.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per engine actor (default 0)")
    return p


def _records(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether this predict run lands in the history (``--record`` / ``--no-record``, else UUSIC_RECORD_CLI)."""
    return bool(args.record) if args.record is not None else settings.record_cli_runs


def _build_service(args: argparse.Namespace) -> AnalysisService:
    """The analysis service over the engine the options describe (manifest model or ad-hoc weights)."""
    from core.engine import Engine
    from core.models import registry
    from core.service import AnalysisService
    from core.settings import Settings

    base = Settings.from_env()
    settings = base.with_(data_root=args.input_dir.resolve(), device=args.device or base.device,
                          amp=args.amp or base.amp)
    spec = None
    if args.arch:
        spec = registry.adhoc_spec(args.arch, args.weights, input_size=args.input_size,
                                   preprocessing=args.preprocessing)
    if getattr(args, "backend", "local") == "ray":  # the same service, its stages on Ray Data (core.cluster.batch)
        from core.cluster import import_ray

        import_ray()
        from core.cluster.batch import build_service

        return build_service(settings, args.model, spec, mask_inverse=args.mask_resize, address=args.address,
                             concurrency=args.concurrency, num_gpus=args.num_gpus_per_worker, threads=args.threads)
    engine = Engine(settings, args.model, spec=spec, mask_inverse=args.mask_resize, measurements=False)
    return AnalysisService(settings, engine=engine, workspace_check=_records(args, settings))  # no history: no check


def _report(result, output_dir: Path) -> int:
    """Warnings for skipped and failed entries, the summary line; exit status 1 when an image failed."""
    unserved: Counter = Counter()
    invalid, failed = [], []
    for failure in result.failures:
        if failure.error_type == "NoModelError":
            unserved[f"{failure.task}/{failure.dataset_name}"] += 1
        elif failure.error_type == "RequestError":
            invalid.append(failure)
        else:
            failed.append(failure)
    for failure in invalid[:10]:
        print(f"warning: skipped invalid entry {failure.img_path_relative or '?'}: {failure.error}", file=sys.stderr)
    for key, count in sorted(unserved.items()):
        print(f"warning: skipped {count} image(s) of {key}: no model for this dataset", file=sys.stderr)
    for failure in failed[:10]:
        print(f"warning: failed {failure.img_path_relative}: {failure.error}", file=sys.stderr)
    done = len(result.responses)
    rate = done / result.seconds if result.seconds > 0 else float("nan")
    print(f"done: {done} predicted ({rate:.2f} img/s), {len(failed)} failed, {sum(unserved.values())} skipped "
          f"(no model), {len(invalid)} invalid; output in {output_dir}")
    return 1 if failed else 0


class _Refused(Exception):
    """A CLI input that cannot be used: printed as ``error: <message>``, exit code 2 (never a traceback)."""


def predict_main(argv: list[str]) -> int:
    args = _predict_parser().parse_args(argv)
    from core.redact import redact_text
    from core.service import write_classification_json

    try:
        if (args.arch is None) != (args.weights is None):
            raise _Refused("--arch and --weights go together")
        entries = _read_entries(args.input_json)
        if not args.input_dir.is_dir():
            raise _Refused(f"input dir {args.input_dir} not found")
        _check_output_dir(args.output_dir)  # before the model loads
        if args.threads:
            from core.models import backends

            backends.set_threads(args.threads)  # never imports torch: a cached converted model serves without it
        service = _open_predict_service(args)
    except _Refused as exc:
        print(f"error: {redact_text(exc)}", file=sys.stderr)  # a history or settings error: no secret of a URL
        return 2
    info = service.model_info()
    print(f"model {info['name']} ({info['arch']}, sha256 {info['sha256'][:12]}…) on {info['device_name']}",
          file=sys.stderr)
    record = _records(args, service.settings)
    if args.frames is not None:
        return _predict_frames(service, entries, args, record)
    result = _predict_batch(service, entries, args, record)
    try:
        write_classification_json(args.output_dir, result.items)
    except OSError as exc:
        print(f"error: cannot write classification.json into {args.output_dir}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    return _report(result, args.output_dir)


def _predict_batch(service: AnalysisService, entries: list, args: argparse.Namespace, record: bool) -> BatchResult:
    """The batch through the service; a progress bar unless ``--no-progress`` (tqdm is imported only then)."""
    from core import predict_probe

    first = predict_probe.FirstResult()
    workers = 0 if args.no_overlap else args.workers
    with contextlib.ExitStack() as stack:
        if not args.no_progress:
            from tqdm import tqdm

            first.inner = stack.enter_context(tqdm(total=len(entries), desc="Predicting", unit="img",
                                                   file=sys.stderr))
        result = service.analyze_batch(entries, source="cli", output_dir=args.output_dir, input_dir=args.input_dir,
                                       batch_size=args.batch_size, progress=first, workers=workers, record=record)
    predict_probe.report(first, result.responses, overlap=workers >= 1)
    return result


def _read_entries(path: Path) -> list:
    """The input JSON's requests (nesting deeper than MAX_JSON_DEPTH is refused before parsing)."""
    from core.errors import UUSICError
    from core.schema import loads_json, parse_request_list

    try:
        return parse_request_list(loads_json(path.read_bytes(), what="the file"))
    except FileNotFoundError:
        raise _Refused(f"input JSON {path} not found") from None
    except (ValueError, RecursionError, UUSICError) as exc:
        raise _Refused(f"input JSON {path} is not a list of requests: {exc}") from None
    except OSError as exc:  # a folder, no permission
        raise _Refused(f"cannot read input JSON {path}: {exc.strerror or exc}") from None


def _check_output_dir(folder: Path) -> None:
    """An output dir that is a file or read-only is a one-line error, found before the model loads."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = ("it is a file, not a folder" if folder.exists() and not folder.is_dir()
                  else exc.strerror or str(exc))
        raise _Refused(f"--output-dir {folder} cannot be written: {reason}") from None


def _open_predict_service(args: argparse.Namespace) -> AnalysisService:
    from core.errors import UUSICError

    try:
        return _build_service(args)
    except UUSICError as exc:
        raise _Refused(str(exc)) from None
    except OSError as exc:  # the workspace (UUSIC_WORKSPACE) is a file, read-only, ...
        raise _Refused(f"the workspace cannot be used ({exc.filename or 'UUSIC_WORKSPACE'}): "
                       f"{exc.strerror or exc}") from None


def _predict_frames(service, entries: list, args: argparse.Namespace, record: bool) -> int:
    """``predict --frames``: every entry's frames through ``analyze_frames``; OUT/frames.json; exit 1 on a failure."""
    import json

    from tqdm import tqdm

    from core.errors import UUSICError
    from core.files import atomic_write_text

    cines, failed = [], 0
    with tqdm(desc="Frames", unit="frame", disable=args.no_progress, file=sys.stderr) as bar:
        for entry in entries:
            rel = entry.get("img_path_relative") if isinstance(entry, dict) else None
            try:
                result = service.analyze_frames(entry, frames=args.frames, source="cli", progress=bar,
                                                output_dir=args.output_dir, input_dir=args.input_dir, record=record)
            except UUSICError as exc:
                failed += 1
                print(f"warning: failed {rel or '?'}: {exc}", file=sys.stderr)
                cines.append({"img_path_relative": rel, "error": str(exc), "error_type": type(exc).__name__})
                continue
            failed += len(result.failures)
            cines.append({"img_path_relative": rel, **result.to_json()})
            summary = result.summary
            print(f"{rel}: {len(result.responses)} of {len(summary['frames'])} frame(s) analysed; largest "
                  f"{summary['largest_frame']}, smallest {summary['smallest_frame']}", file=sys.stderr)
    try:
        atomic_write_text(Path(args.output_dir) / "frames.json", json.dumps(cines, indent=1, ensure_ascii=False))
    except OSError as exc:
        print(f"error: cannot write frames.json into {args.output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"done: {len(cines)} cine(s), {failed} failure(s); output in {args.output_dir}/frames.json")
    return 1 if failed else 0


def models_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core models",
        description="verify every entry of weights/models.json: the file and its sha256, then that it loads on the "
                    "CPU and returns the contract's output shapes; one line per model, exit status 1 when any fails")
    parser.add_argument("--no-load", action="store_true", help="only check the files and their sha256")
    args = parser.parse_args(argv)
    from core.errors import UUSICError
    from core.models import registry
    from core.models.base import WeightsError
    from core.settings import Settings

    settings = Settings.from_env()
    try:
        specs = registry.list_models(settings)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for spec in specs:
        served = "all datasets" if spec.datasets is None else f"{len(spec.datasets)} datasets"
        head = f"{spec.name:<24}{spec.arch:<14}{spec.input_size:>5}  {spec.preprocessing:<12}{served:<16}{spec.file}"
        try:
            note = registry.verify_entry(spec, settings.weights_dir, load=not args.no_load)
        except UUSICError as exc:
            failed += 1
            print(f"{head}  FAILED: {exc}")
        else:
            print(f"{head}  ok ({note})")
    if failed:
        print(f"error: {failed} of {len(specs)} model(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _delegate(module: str, argv: list[str]) -> int:
    try:
        target = importlib.import_module(module)
    except ImportError as exc:
        print(f"error: {module} is not available ({exc})", file=sys.stderr)
        return 2
    return int(target.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "predict":
        return predict_main(rest)
    if command == "evaluate":
        from core.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if command == "models":
        return models_main(rest)
    if command == "export":
        return _delegate("core.export", rest)
    if command == "train":  # --init: a fine-tune registered as a new model version (core.finetune)
        return _delegate("core.finetune", rest)
    if command == "serve":
        return _delegate("core.api", rest)
    if command == "workspace":
        return _delegate("core.workspace", rest)
    if command == "history" and rest[:1] == ["export-labels"]:  # the corrected runs as a training set
        return _delegate("core.label_export", rest[1:])
    if command == "history":
        return _delegate("core.backup", rest)
    if command == "pacs":
        return _delegate("core.pacs_cli", rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
