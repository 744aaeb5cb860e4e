"""``python -m core history export-labels [--since TIME] [--dataset NAME] --out DIR``: the corrected runs as a
UUSIC-layout training set for ``core train``.

Each run with a correction becomes ``<task>/<dataset>/imgs/run_<id>.png`` (the analysed pixels, re-encoded: no
file name, no metadata, no DICOM header) and, for a segmentation, ``masks/run_<id>.png`` (the latest corrected
mask, 0/255); ``ground_truth.json`` lists them in the request schema, a classification with its corrected
``class_label_index``. A run whose image is gone (retention) is skipped and counted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core import catalog
from core.corrections import Corrections, load_corrected_mask
from core.errors import UUSICError
from core.history import HistoryStore
from core.settings import Settings


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # pixels only: no text chunks, no EXIF
    return buffer.getvalue()


def _image(settings: Settings, run: dict) -> np.ndarray:
    """The pixels a run analysed (its frame for a cine)."""
    from core.imaging import load_image
    from core.paths import resolve_input

    request: dict = run["request"] if isinstance(run.get("request"), dict) else {}
    path = resolve_input(settings, str(run.get("img_path_relative") or ""))
    return load_image(path, settings=settings, frame_index=request.get("frame_index")).rgb


def _entry(run: dict, record: dict, rel_img: str, size: tuple[int, int]) -> dict:
    entry: dict[str, Any] = {"img_name": Path(rel_img).name, "img_path_relative": rel_img, "task": run["task"],
                             "dataset_name": run["dataset_name"], "organ": run.get("organ"),
                             "img_dimensions": [size[0], size[1]], "correction_version": record["version"]}
    response: dict = run["response"] if isinstance(run.get("response"), dict) else {}
    if response.get("pixel_spacing_mm"):
        entry["pixel_spacing_mm"] = response["pixel_spacing_mm"]
    return entry


def export_labels(settings: Settings, store: HistoryStore, out: Path, *, since: str | None = None,
                  dataset: str | None = None) -> dict:
    """Write the corrected runs under ``out``; returns ``{"written", "skipped", "out"}``."""
    out = Path(out)
    entries, skipped = [], 0
    for run, record in Corrections(settings, store).latest(dataset=dataset, since=since):
        try:  # the catalog's own names (a row from an import could name anything)
            known = catalog.find_dataset(str(run.get("task")), str(run.get("dataset_name")))
        except UUSICError:
            skipped += 1
            continue
        folder = f"{known.task}/{known.name}"
        rel_img = f"{folder}/imgs/run_{int(run['id'])}.png"
        try:
            pixels = _image(settings, run)
            mask = load_corrected_mask(settings, record) if record["kind"] == "mask" else None
        except (UUSICError, OSError, ValueError):
            skipped += 1
            continue
        if mask is not None and mask.shape != pixels.shape[:2]:
            skipped += 1
            continue
        entry = _entry(run, record, rel_img, (pixels.shape[1], pixels.shape[0]))
        (out / rel_img).parent.mkdir(parents=True, exist_ok=True)
        (out / rel_img).write_bytes(_png(pixels))
        if mask is not None:
            rel_mask = f"{folder}/masks/run_{int(run['id'])}.png"
            (out / rel_mask).parent.mkdir(parents=True, exist_ok=True)
            (out / rel_mask).write_bytes(_png(mask.astype(np.uint8) * 255))
            entry.update(mask_name=Path(rel_mask).name, mask_path_relative=rel_mask)
        else:
            entry["class_label_index"] = int(record["class_index"])
        entries.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ground_truth.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    return {"written": len(entries), "skipped": skipped, "out": str(out)}


ZIP_BUDGET_BYTES = 256 << 20  # the largest labels ZIP the dashboard builds in memory
_ZIP_ENTRY_BYTES = 30 + 46  # a stored entry's local header and central directory record, besides its name twice
_ZIP_END_BYTES = 22  # the end of central directory record


def zip_size(files: list[tuple[str, int]]) -> int:
    """The exact size of an uncompressed (stored) ZIP of ``files`` = (name, size) pairs, known before writing it."""
    return sum(size + _ZIP_ENTRY_BYTES + 2 * len(name.encode("utf-8")) for name, size in files) + _ZIP_END_BYTES


def export_zip(settings: Settings, store: HistoryStore, *, dataset: str | None = None, since: str | None = None,
               budget: int | None = None) -> dict:
    """:func:`export_labels` into a temporary folder of the workspace, then as one stored ZIP in memory when its size
    (:func:`zip_size`, computed first) is within ``budget`` (default :data:`ZIP_BUDGET_BYTES`). Returns
    ``{"written", "skipped", "size", "zip"}``; ``zip`` is None when nothing was written or the size is over the
    budget."""
    import tempfile
    import zipfile

    budget = ZIP_BUDGET_BYTES if budget is None else budget
    settings.ensure_workspace()
    with tempfile.TemporaryDirectory(dir=settings.workspace, prefix=".labels-") as folder:
        root = Path(folder) / "labels"
        report = export_labels(settings, store, root, since=since, dataset=dataset)
        files = sorted((path.relative_to(root).as_posix(), path.stat().st_size)
                       for path in root.rglob("*") if path.is_file())
        size = zip_size(files)
        result = {"written": report["written"], "skipped": report["skipped"], "size": size, "zip": None}
        if not report["written"] or size > budget:
            return result
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, _ in files:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # no time of the export inside
                archive.writestr(info, (root / name).read_bytes())
        result["zip"] = buffer.getvalue()
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core history export-labels",
                                     description="write the corrected runs as a UUSIC-layout training set")
    parser.add_argument("--out", required=True, type=Path, help="folder for imgs/, masks/ and ground_truth.json")
    parser.add_argument("--since", default=None, help="only corrections saved at or after this UTC ISO time")
    parser.add_argument("--dataset", default=None, help="only this dataset (e.g. DDTI)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print("error: --out must be a new or empty folder", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        store = HistoryStore.from_settings(settings)
        report = export_labels(settings, store, args.out, since=args.since, dataset=args.dataset)
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(f"{report['written']} corrected case(s) written to {report['out']}"
          + (f"; {report['skipped']} skipped (image or mask no longer available)" if report["skipped"] else ""))
    return 0
