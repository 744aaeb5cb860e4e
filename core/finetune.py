"""``python -m core train --data DIR --init MODEL [--name NAME] [--val-data ROOT [--val-entries JSON]] ...``:
fine-tune a served model on a corrected set (``core history export-labels``) and register the result.

* ``--init`` is a manifest model name (its file is checked against its sha256 first) or a demo_unet weights file;
  the network, its widths and its input size come from that checkpoint. Default learning rate 2e-4.
* Validation, the same entries before and after (per dataset, at model resolution, :func:`core.train.validate`):
  ``--val-data ROOT`` = every usable entry of ROOT, or of ``--val-entries JSON`` (a request-schema list relative to
  ROOT). Without it: the base model's own validation split (its manifest ``extra.validation_split``, e.g.
  ``weights/demo_val_split.json``) when all its images are under ``UUSIC_DATA_ROOT``; else the held-out 20 % of
  ``--data`` by content hash (the split ``core train`` always uses). When no entry of ``--data`` is held out (a small
  export), the numbers are on the training entries and the output says so.
* The weights go to ``<weights dir>/<name>.pt`` (or ``--out``; an existing file is never overwritten) and a NEW
  manifest entry ``<base>-ft-<YYYYMMDD-HHMM>`` (or ``--name``) with its sha256 is appended
  (:func:`core.model_versions.register_version`): the bundled entry stays as it is and both can be served.

Without ``--init`` this is ``core train`` as before (:func:`core.train.main`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core import train as T
from core.model_versions import check_new_name, register_version, resolve_init, version_name
from core.models.base import ModelSpec, WeightsError
from core.models.demo_unet import DemoUNet, build_from_checkpoint
from core.models.registry import resolve_device
from core.settings import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
FINE_TUNE_LR = 2e-4


def parser() -> argparse.ArgumentParser:
    p = T._parser()
    p.add_argument("--init", default=None, help="fine-tune: start from this manifest model (name) or demo_unet "
                   "weights file; the result is registered in the manifest as a new model version")
    p.add_argument("--name", default=None, help="with --init: the new version's name (default <base>-ft-<date>)")
    p.add_argument("--val-data", type=Path, default=None, help="with --init: validate on this UUSIC-layout root "
                   "(default: the base model's own validation split when its images are under UUSIC_DATA_ROOT, "
                   "else the held-out 20 %% of --data)")
    p.add_argument("--val-entries", type=Path, default=None, help="with --val-data: a request-schema JSON list of "
                   "its entries to validate on (e.g. weights/demo_val_split.json)")
    return p


def concat(train_part: T.Pack, val_part: T.Pack) -> T.Pack:
    """One pack: every entry of ``train_part`` for training, every entry of ``val_part`` for validation."""
    parts = (T.Pack(**{**train_part.__dict__, "val": np.zeros(len(train_part), bool)}),
             T.Pack(**{**val_part.__dict__, "val": np.ones(len(val_part), bool)}))
    return T.Pack(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in train_part.__dict__})


def _val_entries(root: Path, listing: Path | None) -> list[dict] | None:
    """The entries of ``--val-entries`` (each inside ``root``), or None for the root's own list."""
    if listing is None:
        return None
    entries = json.loads(Path(listing).read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("--val-entries must be a JSON list of request objects")
    base = root.resolve()
    for e in entries:
        for key in ("img_path_relative", "mask_path_relative"):
            if e.get(key) and not (base / str(e[key])).resolve().is_relative_to(base):
                raise ValueError(f"--val-entries: {key} {str(e[key])[:80]!r} is outside --val-data")
    return entries


def shared_split(settings: Settings, base: ModelSpec | None) -> tuple[Path, Path] | None:
    """(data root, listing) of the base model's own validation split (its manifest ``extra.validation_split``, a
    request JSON in the weights folder) when every image it lists is under ``settings.data_root``; else None."""
    name = base.extra.get("validation_split") if base is not None else None
    listing = Path(settings.weights_dir) / str(name) if isinstance(name, str) and name else None
    if listing is None or not listing.is_file():
        return None
    root = Path(settings.data_root)
    try:
        entries = _val_entries(root, listing) or []
    except (ValueError, OSError):
        return None
    found = entries and all((root / str(e.get("img_path_relative") or "")).is_file() for e in entries)
    return (root, listing) if found else None


def _with_validation(pack: T.Pack, args: argparse.Namespace) -> tuple[T.Pack, str]:
    """The pack to fine-tune on and the words for its validation part."""
    if args.val_data is not None:
        if not Path(args.val_data).is_dir():
            raise ValueError("--val-data is not a folder")
        entries = _val_entries(args.val_data, args.val_entries)
        val_pack, _ = T.build_pack(args.val_data, args.input_size, progress=False, entries=entries)
        if len(val_pack) == 0:
            raise ValueError("--val-data has no usable entry (segmentation with a mask, 2-class with a label)")
        what = f"--val-entries {Path(args.val_entries).name}" if args.val_entries else "all usable entries"
        return concat(pack, val_pack), f"--val-data {Path(args.val_data).name} ({what}, {len(val_pack)} images)"
    held = int(pack.val.sum())
    if held == 0:
        return pack, (f"no entry of --data is held out ({len(pack)} images): the numbers are on the TRAINING "
                      "entries, not a validation; pass --val-data for one")
    return pack, f"held-out 20 % of --data by content hash (the split core train uses, {held} images)"


def _prepare(args: argparse.Namespace, settings: Settings) -> tuple[DemoUNet, ModelSpec | None, str]:
    """The starting network, its manifest entry (or None for a file) and the new version's name; fills
    ``args.input_size``, ``args.out`` and ``args.widths`` from the checkpoint."""
    init_path, base = resolve_init(settings, args.init)
    network, meta = build_from_checkpoint(init_path)
    args.input_size = int(base.input_size if base else meta.get("input_size") or args.input_size)
    args.widths = ",".join(map(str, network.config.widths))
    name = args.name or version_name(base.name if base else init_path.stem)
    if not NAME.fullmatch(name):
        raise ValueError("--name: use 1-80 letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    check_new_name(settings, name)
    args.out = args.out or Path(settings.weights_dir) / f"{name}.pt"
    if Path(args.out).exists():
        raise ValueError(f"--out: {Path(args.out).name} exists; a fine-tune never overwrites weights")
    return network, base, name


def fine_tune(args: argparse.Namespace, argv: list[str] | None, settings: Settings) -> dict:
    """Fine-tune ``--init`` on ``--data``; validate before and after; register the new version."""
    network, base, name, shared = _checked_start(args, settings)
    with T.training_log(args):
        return _tune(args, argv, settings, (network, base, name, shared))


def _checked_start(args: argparse.Namespace, settings: Settings) -> tuple:
    """The base network, its registry entry, the new name and the shared validation split (checked first)."""
    if args.val_entries is not None and args.val_data is None:
        raise ValueError("--val-entries needs --val-data (the root its paths are relative to)")
    network, base, name = _prepare(args, settings)
    shared = shared_split(settings, base) if args.val_data is None else None
    if shared is not None:
        args.val_data, args.val_entries = shared  # the split the base model was measured on
    return network, base, name, shared


def _tune(args: argparse.Namespace, argv: list[str] | None, settings: Settings, start: tuple) -> dict:
    network, base, name, shared = start
    loaded = T._load_pack(args)
    if isinstance(loaded, int):
        raise ValueError("--data: no usable training data (see the message above)")
    pack, split = _with_validation(loaded, args)
    split = f"the base model's validation split, {split}" if shared is not None else split
    dev = resolve_device(args.device)
    eval_idx = np.flatnonzero(pack.val) if pack.val.any() else np.arange(len(pack))
    before = T.validate(network.to(dev), pack, eval_idx, dev)
    meta = {**T._meta(args, argv), "init": base.name if base else Path(args.init).name, "fine_tuned": True}
    summary = T.train(pack, args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr or FINE_TUNE_LR, device=args.device, max_minutes=args.max_minutes,
                      checkpoint_minutes=args.checkpoint_minutes, seed=args.seed, amp=args.amp,
                      max_steps=args.max_steps, config=network.config, progress=not args.no_progress, meta=meta,
                      init=network)
    after = summary["val_metrics_model_resolution"]  # core.train.validate on the same entries, after training
    if not pack.val.any():  # nothing held out: the same entries as before, with the weights written
        tuned, _ = build_from_checkpoint(args.out)
        after = T.validate(tuned.to(dev), pack, eval_idx, dev)
    datasets = sorted({str(d) for d in pack.datasets[~pack.val]})
    facts = {"init": meta["init"], "data": Path(args.data_root).name if args.data_root else None,
             "validation": split, "steps": summary["steps"], "lr": summary["lr"],
             "train_images": summary["train_images"], "val_before": before, "val_after": after,
             "date": datetime.now(UTC).isoformat(timespec="seconds")}
    entry = register_version(settings, name, Path(args.out), base=base, input_size=args.input_size,
                             datasets=[d.split("/", 1) for d in datasets], facts=facts)
    return {"name": name, "sha256": entry["sha256"], "file": entry["file"], "validation": split,
            "before": before, "after": after, "steps": summary["steps"], "train_images": summary["train_images"]}


def before_after_lines(result: dict) -> list[str]:
    """The validation numbers before and after, one line per dataset and metric."""
    lines = [f"validation: {result['validation']}", f"{'dataset':<34}{'metric':<10}{'before':>8}{'after':>8}"]
    for dataset in sorted(set(result["before"]) | set(result["after"])):
        was, now = result["before"].get(dataset, {}), result["after"].get(dataset, {})
        for metric in ("dice", "auc", "accuracy"):
            if metric in was or metric in now:
                lines.append(f"{dataset:<34}{metric:<10}{_number(was.get(metric)):>8}{_number(now.get(metric)):>8}")
    return lines


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.init is None:
        if args.name or args.val_data or args.val_entries:
            print("error: --name, --val-data and --val-entries go with --init (a fine-tune)", file=sys.stderr)
            return 2
        return T.main(argv)
    settings = Settings.from_env()
    try:
        result = fine_tune(args, argv, settings)
    except (WeightsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(before_after_lines(result)))
    print(f"registered {result['name']} (sha256 {result['sha256'][:12]}…, file {result['file']}) in models.json; "
          f"serve it with model={result['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
