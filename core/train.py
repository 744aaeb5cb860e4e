"""Train the demo network (:mod:`core.models.demo_unet`) on any UUSIC-layout data root.

``python -m core train --data-root D --out weights/demo_unet.pt [--epochs N | --max-minutes M] ...``

* Entries come from ``<root>/ground_truth.json`` (else a scan of ``<task>/<dataset>/imgs`` + ``masks``).
* Split: deterministic per image *content* (sha256 of the file bytes → 80 % train / 20 % validation), so the same
  picture filed under classification and segmentation (BUSI, BUS-BRA) always lands on the same side. The validation
  entries are written as a request-schema JSON (``<out stem>_val_split.json`` unless ``--val-json``) for
  ``python -m core predict`` / ``evaluate``.
* Every image is decoded and letterboxed once (grey uint8, plus its mask) and kept in memory; ``--pack FILE`` saves
  or reuses that cache as a compressed ``.npz`` (used to ship data to a GPU machine).
* Augmentation on the training device: horizontal flip (not for CAMUS, whose apical views are sided), small affine
  (rotation, scale, shift), gamma / contrast / brightness jitter.
* Loss: segmentation cross-entropy + soft Dice on seg entries; cross-entropy on ``cls2`` for classification entries.
* AdamW with a cosine schedule on the larger of step and time fraction (so ``--max-minutes`` ends on a low LR),
  checkpoints every ``--checkpoint-minutes``, a tqdm bar and a log file next to the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.catalog import find_dataset, prompts_for
from core.evaluate import auc
from core.evaluate import dice as dice_score
from core.geometry import Letterbox
from core.models.demo_unet import DemoConfig, DemoUNet, save_checkpoint
from core.models.registry import resolve_device
from core.samples import read_entries

VALIDATION_PERCENT = 20
NO_HFLIP = {"CAMUS"}
log = logging.getLogger("core.train")


# ----------------------------------------------------------------------------------------------- data
def content_key(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_validation(key: str) -> bool:
    """Deterministic 80/20 split on a content hash."""
    return int(key[:8], 16) % 100 < VALIDATION_PERCENT


def usable(entry: dict) -> bool:
    """Entries the demo network learns from: segmentation with a mask, two-class classification with a label."""
    try:
        ds = find_dataset(entry["task"], entry["dataset_name"])
    except KeyError:
        return False
    if entry["task"] == "segmentation":
        return bool(entry.get("mask_path_relative"))
    return ds.head == "cls2" and entry.get("class_label_index") is not None


@dataclass
class Pack:
    """Letterboxed grey images (uint8 [N,S,S]), masks (bool [N,S,S]), labels (-1 none), prompts, split."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    is_seg: np.ndarray
    prompts: np.ndarray  # float32 [N,15]
    val: np.ndarray
    datasets: np.ndarray  # str "task/dataset"
    rel_paths: np.ndarray
    pixel_spacing: np.ndarray  # float32 mm per original px (nan unknown)
    scales: np.ndarray  # letterbox scale (model px per original px)

    def save(self, path: Path) -> None:
        jpegs = []
        for img in self.images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            jpegs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets = np.cumsum([0] + [len(j) for j in jpegs])
        np.savez_compressed(path, jpeg=np.concatenate(jpegs), offsets=offsets, size=self.images.shape[1],
                            masks=np.packbits(self.masks, axis=-1), labels=self.labels, is_seg=self.is_seg,
                            prompts=self.prompts, val=self.val, datasets=self.datasets, rel_paths=self.rel_paths,
                            pixel_spacing=self.pixel_spacing, scales=self.scales)

    @classmethod
    def load(cls, path: Path) -> Pack:
        z = np.load(path, allow_pickle=False)
        jpeg, offsets, size = z["jpeg"], z["offsets"], int(z["size"])
        if len(offsets) > 1:
            blobs = (jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1))
            images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in blobs])
        else:
            images = np.zeros((0, size, size), np.uint8)
        masks = np.unpackbits(z["masks"], axis=-1, count=size).astype(bool)
        return cls(images, masks, z["labels"], z["is_seg"], z["prompts"], z["val"], z["datasets"], z["rel_paths"],
                   z["pixel_spacing"], z["scales"])

    def __len__(self) -> int:
        return len(self.labels)


def build_pack(root: Path, size: int, *, subset: int | None = None, seed: int = 0,
               progress: bool = True, entries: list[dict] | None = None) -> tuple[Pack, list[dict]]:
    """Decode + letterbox every usable entry once (of ``entries``, else of the root's own list); also returns the
    validation entries (request schema)."""
    root = Path(root)
    entries = [e for e in (read_entries(root) if entries is None else entries) if usable(e)]
    if subset:
        rng = np.random.default_rng(seed)
        by_ds: dict[str, list[dict]] = {}
        for e in entries:
            by_ds.setdefault(f"{e['task']}/{e['dataset_name']}", []).append(e)
        entries = []
        for group in by_ds.values():
            picks = rng.permutation(len(group))[:subset]
            entries.extend(group[i] for i in sorted(picks))
    iterator = entries
    if progress:
        from tqdm import tqdm

        iterator = tqdm(entries, desc="Decoding", unit="img", file=sys.stderr)
    rows = []
    val_entries = []
    for e in iterator:
        img_path = root / e["img_path_relative"]
        rgb = np.asarray(Image.open(img_path).convert("RGB"))
        h, w = rgb.shape[:2]
        box = Letterbox(w, h, size)
        grey = np.round(box.apply(rgb).mean(axis=2) * 255).astype(np.uint8)
        seg = e["task"] == "segmentation"
        if seg:
            mask = np.asarray(Image.open(root / e["mask_path_relative"]).convert("L")) > 127
            if mask.shape != (h, w):
                raise ValueError(f"{e['mask_path_relative']}: mask {mask.shape[::-1]} vs image {(w, h)}")
            mask = box.apply_mask(mask)
        else:
            mask = np.zeros((size, size), bool)
        key = content_key(img_path)
        val = is_validation(key)
        if val:
            val_entries.append(e)
        p = prompts_for(e.get("organ") or find_dataset(e["task"], e["dataset_name"]).organ, e["task"])
        rows.append((grey, mask, int(e["class_label_index"]) if not seg else -1, seg,
                     np.array(p.position + p.task + p.type + p.nature, np.float32), val,
                     f"{e['task']}/{e['dataset_name']}", e["img_path_relative"],
                     float(e.get("pixel_spacing_mm") or np.nan), box.scale))
    cols: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [[]] * 10
    pack = Pack(np.stack(cols[0]), np.stack(cols[1]), np.array(cols[2], np.int64), np.array(cols[3], bool),
                np.stack(cols[4]), np.array(cols[5], bool), np.array(cols[6]), np.array(cols[7]),
                np.array(cols[8], np.float32), np.array(cols[9], np.float32))
    return pack, val_entries


# ----------------------------------------------------------------------------------------------- augmentation
def augment(images: torch.Tensor, masks: torch.Tensor, allow_hflip: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """images float [B,1,S,S] in [0,1], masks float [B,1,S,S]; random flip/affine/intensity on their device."""
    b, device = images.shape[0], images.device

    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator)

    angle = (rand(b) - 0.5) * 2 * math.radians(12)
    scale = 1 + (rand(b) - 0.5) * 0.3
    shift = (rand(b, 2) - 0.5) * 0.12
    flip = torch.where((rand(b) < 0.5) & allow_hflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5).float()
    gamma = torch.exp((rand(b, 1, 1, 1) - 0.5) * 0.6)
    contrast = 1 + (rand(b, 1, 1, 1) - 0.5) * 0.4
    bright = (rand(b, 1, 1, 1) - 0.5) * 0.16
    images = (images.clamp(0, 1) ** gamma * contrast + bright).clamp(0, 1)
    return images, masks


# ----------------------------------------------------------------------------------------------- loss, metrics
def multitask_loss(seg_logits, cls2, masks, labels, is_seg) -> tuple[torch.Tensor, dict]:
    loss = seg_logits.new_zeros(())
    parts = {}
    if is_seg.any():
        logits = seg_logits[is_seg].float()
        target = masks[is_seg, 0].long()
        ce = F.cross_entropy(logits, target)
        prob = logits.softmax(1)[:, 1]
        tgt = target.float()
        inter = (prob * tgt).sum((1, 2))
        dice = 1 - (2 * inter + 1) / (prob.sum((1, 2)) + tgt.sum((1, 2)) + 1)
        loss = loss + ce + dice.mean()
        parts["seg_ce"], parts["dice_loss"] = ce.detach(), dice.mean().detach()
    cls = ~is_seg
    if cls.any():
        ce2 = F.cross_entropy(cls2[cls].float(), labels[cls], label_smoothing=0.05)
        loss = loss + 0.5 * ce2
        parts["cls_ce"] = ce2.detach()
    return loss, parts


@torch.no_grad()
def validate(model: DemoUNet, pack: Pack, idx: np.ndarray, device: torch.device, batch_size: int = 32,
             amp: bool = False) -> dict:
    """Per-dataset Dice (at model resolution, letterbox canvas) and AUC / accuracy on the given entries."""
    model.eval()
    dice: dict[str, list[float]] = {}
    cls: dict[str, tuple[list, list]] = {}
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
        images = torch.from_numpy(pack.images[sel]).to(device).float().div(255)[..., None].expand(-1, -1, -1, 3)
        p = torch.from_numpy(pack.prompts[sel]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            seg, c2, _ = model(images, p[:, :8], p[:, 8:10], p[:, 10:13], p[:, 13:15])
        pred = (seg.float().argmax(1) == 1).cpu().numpy()
        prob = c2.float().softmax(1)[:, 1].cpu().numpy()
        for j, i in enumerate(sel):
            name = str(pack.datasets[i])
            if pack.is_seg[i]:
                dice.setdefault(name, []).append(dice_score(pack.masks[i], pred[j]))
            else:
                cls.setdefault(name, ([], []))
                cls[name][0].append(int(pack.labels[i]))
                cls[name][1].append(float(prob[j]))
    model.train()
    out: dict[str, dict[str, float | None]] = {
        k: {"dice": float(np.mean(v)), "n": len(v)} for k, v in sorted(dice.items())
    }
    for k, (label_list, score_list) in sorted(cls.items()):
        labels, scores = np.array(label_list), np.array(score_list)
        two_class = np.stack([1 - scores, scores], axis=1)
        out[k] = {"auc": auc(labels.tolist(), two_class.tolist()), "accuracy": float(((scores > 0.5) == labels).mean()),
                  "n": len(labels)}
    return out


# ----------------------------------------------------------------------------------------------- training
def train(pack: Pack, out: Path, *, epochs: int = 30, batch_size: int = 16, lr: float = 2e-3,
          weight_decay: float = 1e-4, device: str = "auto", max_minutes: float | None = None,
          checkpoint_minutes: float = 2.0, seed: int = 0, amp: bool = False, max_steps: int | None = None,
          config: DemoConfig = DemoConfig(),  # noqa: B008 - DemoConfig is a frozen (immutable) dataclass
          extra_checkpoint_dir: Path | None = None,
          progress: bool = True, meta: dict | None = None, init: DemoUNet | None = None) -> dict:
    """Train on the pack's training entries (from ``init``'s weights when given, else from scratch); returns a
    summary with losses and validation metrics."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = (init if init is not None else DemoUNet(config)).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_idx, val_idx = np.flatnonzero(~pack.val), np.flatnonzero(pack.val)
    if len(train_idx) == 0:
        raise ValueError("no training entries (all went to validation); use a larger data root")
    data = _device_tensors(pack, dev)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    total_steps = max_steps or epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = min(200, max(1, total_steps // 20))
    budget = max_minutes * 60 if max_minutes else None
    gen = torch.Generator(device=dev).manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = last_ckpt = time.perf_counter()
    history: list[tuple[int, float]] = []
    bar = _progress_bar(total_steps) if progress else None
    step, running, order, pos = 0, None, rng.permutation(train_idx), 0
    model.train()
    while step < total_steps:
        frac = max(step / total_steps, (time.perf_counter() - t0) / budget if budget else 0.0)
        if frac >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * max(_lr_scale(step, warmup, frac), 0.01)
        if pos + batch_size > len(order):
            order, pos = rng.permutation(train_idx), 0
        sel = torch.from_numpy(order[pos:pos + batch_size]).to(dev)
        pos += batch_size
        loss = _train_step(model, optimizer, data, sel, gen, amp=amp and dev.type == "cuda", device_type=dev.type)
        step += 1
        value = float(loss) if (step % 10 == 0 or step < 20) else None  # a GPU sync only when logged
        if value is not None:
            running = value if running is None else 0.9 * running + 0.1 * value
            history.append((step, value))
        if bar is not None:
            bar.update(1)
            if value is not None:
                bar.set_postfix(loss=f"{running:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if step % steps_per_epoch == 0:
            log.info("epoch %d step %d loss %.4f lr %.2e %.0fs", step // steps_per_epoch, step, running or 0,
                     optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
        if time.perf_counter() - last_ckpt > checkpoint_minutes * 60:
            _checkpoint(model, out, extra_checkpoint_dir, {**(meta or {}), "steps": step, "partial": True})
            last_ckpt = time.perf_counter()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    metrics = validate(model, pack, val_idx, dev, amp=amp) if len(val_idx) else {}
    summary = {"steps": step, "epochs": round(step / steps_per_epoch, 2), "seconds": round(seconds, 1),
               **_run_facts(dev, len(train_idx), len(val_idx), batch_size, lr, history),
               "val_metrics_model_resolution": metrics}
    _checkpoint(model, out, extra_checkpoint_dir, {**(meta or {}), **summary, "partial": False})
    log.info("done: %s", json.dumps(summary))
    return summary


def _run_facts(dev: torch.device, n_train: int, n_val: int, batch_size: int, lr: float,
               history: list[tuple[int, float]]) -> dict[str, Any]:
    """The summary's device, data and loss facts (first loss, mean of the last ten logged)."""
    return {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "train_images": int(n_train), "val_images": int(n_val), "batch_size": batch_size, "lr": lr,
            "first_loss": history[0][1] if history else None,
            "last_loss": float(np.mean([v for _, v in history[-10:]])) if history else None}


def _device_tensors(pack: Pack, dev: torch.device) -> dict[str, torch.Tensor]:
    """The pack's arrays on the training device (uint8 images: ~130 MB for the full UUSIC sample data)."""
    hflip_ok = np.array([str(d).split("/", 1)[1] not in NO_HFLIP for d in pack.datasets])
    arrays = {"images": pack.images, "masks": pack.masks, "labels": pack.labels, "is_seg": pack.is_seg,
              "prompts": pack.prompts, "hflip_ok": hflip_ok}
    return {name: torch.from_numpy(array).to(dev) for name, array in arrays.items()}


def _progress_bar(total_steps: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total_steps, desc="Training", unit="step", file=sys.stderr, mininterval=2.0)


def _lr_scale(step: int, warmup: int, frac: float) -> float:
    """Linear warm-up, then cosine decay over the run's fraction done (steps or time budget)."""
    return (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: dict[str, torch.Tensor],
                sel: torch.Tensor, gen: torch.Generator, *, amp: bool, device_type: str) -> torch.Tensor:
    """One optimisation step on the entries ``sel`` (augmented with ``gen``); returns the (detached) loss."""
    x = data["images"][sel].float().div(255)[:, None]
    m = data["masks"][sel].float()[:, None]
    x, m = augment(x, m, data["hflip_ok"][sel], gen)
    p = data["prompts"][sel]
    x = x.permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        seg, c2, _ = model(x, p[:, :8], p[:, 8:10], p[:, 10:13], p[:, 13:15])
    loss, _parts = multitask_loss(seg, c2, m, data["labels"][sel], data["is_seg"][sel])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return loss.detach()


def _checkpoint(model, out: Path, extra_dir: Path | None, meta: dict) -> None:
    raw = getattr(model, "_orig_mod", model)
    save_checkpoint(raw, out, meta)
    if extra_dir is not None:
        save_checkpoint(raw, Path(extra_dir) / Path(out).name, meta)
    log.info("checkpoint %s (step %s)", out, meta.get("steps"))


def write_val_split(val_entries: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(val_entries, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", "--data", dest="data_root", type=Path,
                   help="UUSIC-layout root (needed unless --pack names an existing file)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file to write, e.g. weights/demo_unet.pt (with --init: <weights dir>/<name>.pt)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3; with --init 2e-4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget; the LR schedule follows it")
    p.add_argument("--checkpoint-minutes", type=float, default=2.0)
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="also save checkpoints here")
    p.add_argument("--subset", type=int, default=None, help="at most N images per dataset (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=256, help="(with --init: the base model's)")
    p.add_argument("--widths", default=",".join(map(str, DemoConfig.widths)), help="(with --init: the base's)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2 on CPU)")
    p.add_argument("--pack", type=Path, default=None, help="cache of decoded images (.npz): reused if present")
    p.add_argument("--pack-only", action="store_true", help="write --pack and exit")
    p.add_argument("--val-json", type=Path, default=None, help="validation split as request JSON")
    p.add_argument("--log", type=Path, default=None, help="log file (default: <out>.log)")
    p.add_argument("--no-progress", action="store_true")
    return p


@contextmanager
def training_log(args: argparse.Namespace) -> Iterator[None]:
    """While training: the log file next to the weights (or ``--log``), stderr, and the torch CPU threads.

    The handlers go on the ``core`` logger and leave with the run, so nothing outlives it (a handler kept on the
    root logger would later write to a stream that has closed).
    """
    log_path = args.log or args.out.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger, formatter = logging.getLogger("core"), logging.Formatter("%(asctime)s %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(log_path), logging.StreamHandler(sys.stderr)]
    level = logger.level
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads or (2 if not torch.cuda.is_available() else torch.get_num_threads()))
    try:
        yield
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _load_pack(args: argparse.Namespace) -> Pack | int:
    """The pack of ``--data-root`` (or the ``--pack`` cache); an exit code on a bad argument or ``--pack-only``."""
    if args.pack and args.pack.is_file() and not args.pack_only:
        pack = Pack.load(args.pack)
        log.info("loaded pack %s: %d entries", args.pack, len(pack))
        if pack.images.shape[1] != args.input_size:
            print(f"error: pack {args.pack} has input size {pack.images.shape[1]}, not {args.input_size}",
                  file=sys.stderr)
            return 2
        return pack
    if args.data_root is None:
        print("error: --data-root is required (no --pack file to reuse)", file=sys.stderr)
        return 2
    if not Path(args.data_root).is_dir():
        print(f"error: data root {args.data_root} is not a folder", file=sys.stderr)
        return 2
    pack, val_entries = build_pack(args.data_root, args.input_size, subset=args.subset, seed=args.seed,
                                   progress=not args.no_progress)
    val_json = args.val_json or args.out.with_name(args.out.stem + "_val_split.json")
    write_val_split(val_entries, val_json)
    log.info("%d entries (%d validation → %s)", len(pack), int(pack.val.sum()), val_json)
    if args.pack:
        args.pack.parent.mkdir(parents=True, exist_ok=True)
        pack.save(args.pack)
        log.info("pack written: %s (%.1f MB)", args.pack, args.pack.stat().st_size / 1e6)
        if args.pack_only:
            return 0
    return pack


def _meta(args: argparse.Namespace, argv: list[str] | None) -> dict:
    return {"input_size": args.input_size, "preprocessing": "letterbox", "seed": args.seed,
            "command": "python -m core train " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out is None:
        print("error: --out is required (the weights file to write)", file=sys.stderr)
        return 2
    with training_log(args):
        pack = _load_pack(args)
        if isinstance(pack, int):
            return pack
        config = DemoConfig(widths=tuple(int(v) for v in args.widths.split(",")))
        summary = train(pack, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr or 2e-3,
                        device=args.device, max_minutes=args.max_minutes, checkpoint_minutes=args.checkpoint_minutes,
                        seed=args.seed, amp=args.amp, max_steps=args.max_steps, config=config,
                        extra_checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                        meta=_meta(args, argv))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
