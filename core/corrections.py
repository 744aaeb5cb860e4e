"""Corrections of a run's result, kept as versions: a clinician's mask (segmentation) or class (classification).

The model's result is never changed: each save adds version N+1 of the run to the ``corrections`` table (revision
0004) with who (the logged-in user, else ``"anonymous"``), when (UTC ISO), the kind (``mask`` | ``class``), the
pixels added / removed and the Dice of the model's mask against the corrected one, and the measurements recomputed
with the run's pixel spacing (:func:`core.measure.measure_mask`). A corrected mask is re-encoded as a 0/255 PNG at
the original size and written only under ``<workspace>/corrections/<run_id>/v<N>.png`` (outside ``api_in/`` and
``api_out/``, so retention never takes a label).

Versions are numbered inside one write transaction that first locks the run's row (SQLite: the write lock; on
PostgreSQL ``SELECT ... FOR UPDATE``), so concurrent saves get consecutive versions; a unique ``(run_id, version)``
turns anything that slips past into a 409, never a lost save.

A mask arrives as PNG bytes: its IHDR is read first (dimensions must equal the run's; the pixel budget holds), then
it is decoded and must be binary (0 and 255, or a 1-bit PNG). Every refusal is a 4xx naming the field.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from sqlalchemy.engine import Connection

from core import catalog
from core.correction_summary import correction_record
from core.errors import NotFoundError, PathError, RequestError, UUSICError
from core.history import HistoryStore, corrections, decode_row, latest_corrections, runs, utc_now
from core.settings import Settings

FOLDER = "corrections"  # under the workspace
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale + alpha", 6: "RGBA"}
MAX_AUTHOR = 80
MAX_REASON = 500


class ClassCorrection(BaseModel):
    """The JSON body of a classification correction (confirming the model's class is one too)."""

    model_config = ConfigDict(extra="forbid")
    class_index: StrictInt = Field(..., ge=0, le=63)
    reason: str | None = Field(None, max_length=MAX_REASON)
    user: str | None = Field(None, max_length=MAX_AUTHOR)

    @classmethod
    def parse(cls, body: Any) -> ClassCorrection:
        """A validated body; a bad one is a :class:`RequestError` naming its first bad field."""
        if not isinstance(body, dict):
            raise RequestError('the correction body must be a JSON object {"class_index": k, "reason": ...}',
                               field="class_index")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first.get("loc", ())) or "class_index"
            raise RequestError(f"invalid correction: {name}: {first.get('msg', 'invalid')}", field=name) from None


def author_name(value: Any) -> str:
    """Who saved a correction: a printable name of at most :data:`MAX_AUTHOR` characters, else ``"anonymous"``."""
    text = " ".join(str(value).split()) if isinstance(value, str) else ""
    text = "".join(ch for ch in text if ch.isprintable())[:MAX_AUTHOR]
    return text or "anonymous"


def _reason(value: Any) -> str | None:
    if value is None or not str(value).strip():
        return None
    if len(str(value)) > MAX_REASON:
        raise RequestError(f"reason is longer than {MAX_REASON} characters", field="reason")
    return "".join(ch for ch in str(value).strip() if ch.isprintable() or ch == "\n")


# ------------------------------------------------------------------------------------------ the mask PNG
def png_size(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, read before any pixel is decoded."""
    if not data:
        raise RequestError("the mask is empty; send a PNG", field="mask")
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise RequestError("the mask is not a PNG (send a 0/255 greyscale PNG of the original size)", field="mask")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def decode_mask(data: bytes, size: tuple[int, int], settings: Settings | None = None) -> np.ndarray:
    """The boolean mask of PNG ``data`` that must be ``size`` = (width, height) and binary (0 / 255)."""
    from core.imaging import check_size

    width, height, depth, colour = png_size(data)
    if (width, height) != tuple(size):
        raise RequestError(f"the mask is {width} x {height} px but the run's image is {size[0]} x {size[1]} px; "
                           "send the mask at the original size", field="mask")
    try:
        check_size(width, height, settings, what="mask")
    except UUSICError as exc:
        raise RequestError(exc.message, field="mask", status_code=413) from None
    if colour not in (0, 2) or depth not in ((1, 8) if colour == 0 else (8,)):
        kind = PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        raise RequestError(f"the mask is a {depth}-bit {kind} PNG; send an 8-bit (or 1-bit) greyscale PNG with "
                           "values 0 and 255", field="mask")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            pixels = np.asarray(image.convert("L") if image.mode == "1" else image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RequestError(f"the mask PNG cannot be decoded ({type(exc).__name__})", field="mask") from None
    if pixels.ndim == 3:
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
            raise RequestError("the mask has colours; send black (0) and white (255) only", field="mask")
        pixels = pixels[..., 0]
    if pixels.shape != (height, width):
        raise RequestError("the mask's pixels do not match its header", field="mask")
    extra = np.setdiff1d(np.unique(pixels), (0, 255))
    if extra.size:
        raise RequestError(f"the mask is not binary: it has {extra.size} value(s) other than 0 and 255 (e.g. "
                           f"{int(extra[0])})", field="mask")
    return pixels == 255


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask as a 0/255 greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def compare(model: np.ndarray, corrected: np.ndarray) -> dict:
    """Pixels added / removed by the correction and the Dice of the two masks (both empty: 1.0)."""
    model, corrected = np.asarray(model, bool), np.asarray(corrected, bool)
    both = int((model & corrected).sum())
    total = int(model.sum()) + int(corrected.sum())
    return {"pixels_added": int((corrected & ~model).sum()), "pixels_removed": int((model & ~corrected).sum()),
            "dice": 1.0 if total == 0 else 2.0 * both / total}


def run_spacing(run: dict) -> float | None:
    """The run's calibration (mm per pixel) as stored with its response, or None."""
    response: dict = run["response"] if isinstance(run.get("response"), dict) else {}
    measurements: dict = response["measurements"] if isinstance(response.get("measurements"), dict) else {}
    for value in (response.get("pixel_spacing_mm"), measurements.get("pixel_spacing_mm")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _dataset(run: dict) -> catalog.Dataset | None:
    try:
        return catalog.find_dataset(str(run.get("task") or ""), str(run.get("dataset_name") or ""))
    except UUSICError:
        return None


def measurements_of(run: dict, mask: np.ndarray) -> dict:
    """The measurements of ``mask`` with the run's spacing (a fetal head: HC / BPD too), JSON-ready."""
    from core.measure import measure_mask

    dataset = _dataset(run)
    found = measure_mask(mask, pixel_spacing_mm=run_spacing(run),
                         fetal_head=dataset is not None and dataset.group == "fetal_head")
    return json.loads(json.dumps(found, default=float))


# ------------------------------------------------------------------------------------------ the store
class Corrections:
    """Saving and reading the correction versions of the runs in one history store and workspace."""

    def __init__(self, settings: Settings, store: HistoryStore):
        self.settings, self.store = settings, store

    def run(self, run_id: Any) -> dict:
        """The run (JSON decoded); 404 when there is none."""
        row = self.store.get(run_id)
        if row is None:
            raise NotFoundError(f"no run {run_id} in the history", field="run_id")
        return decode_row(row)

    def _correctable(self, run_id: Any, task: str) -> dict:
        run = self.run(run_id)
        if run.get("error") or not isinstance(run.get("response"), dict) or not run["response"]:
            raise RequestError(f"run {run['id']} failed; there is no result to correct", field="run_id")
        if run.get("task") != task:
            wanted = 'a mask PNG' if run.get("task") == "segmentation" else '{"class_index": k}'
            raise RequestError(f"run {run['id']} is a {run.get('task')} run; correct it with {wanted}",
                               field="class_index" if task == "classification" else "mask")
        return run

    def model_mask(self, run: dict) -> np.ndarray:
        """The model's mask of a segmentation run; 409 when its file is gone (purged) or outside ``api_out/``."""
        path = run.get("mask_path")
        api_out = Path(self.settings.api_out).resolve()
        target = Path(str(path)).resolve() if path else None
        if target is None or not target.is_relative_to(api_out) or not target.is_file():
            raise UUSICError(f"the model's mask of run {run['id']} is no longer available; there is nothing to "
                             "correct against", status_code=409, field="run_id")
        with Image.open(target) as image:
            return np.asarray(image.convert("L")) > 127

    def correct_mask(self, run_id: Any, data: bytes, *, author: Any = None, reason: Any = None) -> dict:
        """Save a corrected mask (PNG bytes) of a segmentation run as its next version; returns the version."""
        run = self._correctable(run_id, "segmentation")
        model = self.model_mask(run)
        corrected = decode_mask(data, (model.shape[1], model.shape[0]), self.settings)
        measured = measurements_of(run, corrected)
        fields = {"kind": "mask", "reason": _reason(reason), **compare(model, corrected),
                  "area_px": int(corrected.sum()), "area_mm2": measured.get("area_mm2"),
                  "measurements": json.dumps(measured)}
        return self._save(run, fields, author, mask_png(corrected))

    def correct_class(self, run_id: Any, body: Any, *, author: Any = None) -> dict:
        """Save a confirmed or overridden class of a classification run as its next version."""
        correction = ClassCorrection.parse(body)
        run = self._correctable(run_id, "classification")
        dataset = _dataset(run)
        count = len(run.get("probabilities") or []) or (dataset.num_classes if dataset else 0)
        if not 0 <= correction.class_index < count:
            raise RequestError(f"class_index {correction.class_index} is outside this run's {count} classes "
                               f"(0..{count - 1})", field="class_index")
        model_class = run.get("prediction")
        fields = {"kind": "class", "class_index": correction.class_index, "reason": _reason(correction.reason),
                  "model_class": int(model_class) if isinstance(model_class, int) else None}
        return self._save(run, fields, correction.user if author is None else author, None)

    def _save(self, run: dict, fields: dict, author: Any, png: bytes | None) -> dict:
        run_id = int(run["id"])
        row = {"run_id": run_id, "timestamp": utc_now(), "author": author_name(author), **fields}

        def insert(connection: Connection) -> dict:
            lock = sa.select(runs.c.id).where(runs.c.id == run_id)
            connection.execute(lock.with_for_update() if connection.dialect.name == "postgresql" else lock)
            newest = connection.execute(sa.select(sa.func.max(corrections.c.version))
                                        .where(corrections.c.run_id == run_id)).scalar()
            version = int(newest or 0) + 1
            if png is not None:  # a file left by a save whose commit failed is this version's: replaced
                row["mask_path"] = self._write_mask(run_id, version, png)
            try:
                connection.execute(sa.insert(corrections).values({**row, "version": version}))
            except sa.exc.IntegrityError:
                raise UUSICError(f"another correction of run {run_id} was saved at the same moment; reload the run "
                                 "and save again", status_code=409, field="run_id") from None
            return {**row, "version": version}

        saved = self.store.write(insert, "save the correction")
        return correction_record(saved)

    def _write_mask(self, run_id: int, version: int, png: bytes) -> str:
        from core.files import atomic_write_bytes
        from core.paths import output_path

        relative = f"{FOLDER}/{run_id}/v{version}.png"
        target = output_path(Path(self.settings.workspace), relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, png)
        return relative

    # -------------------------------------------------------------------------------------- reading
    def versions(self, run_id: Any) -> list[dict]:
        """Every correction version of a run, oldest first (404 for an unknown run)."""
        run = self.run(run_id)
        query = sa.select(corrections).where(corrections.c.run_id == int(run["id"])).order_by(corrections.c.version)
        return self.store.read(lambda c: [correction_record(r) for r in c.execute(query).mappings()],
                               "read the corrections")

    def mask_of(self, record: dict) -> np.ndarray:
        """The stored corrected mask of a version (``mask`` kind)."""
        return load_corrected_mask(self.settings, record)

    def latest(self, dataset: str | None = None, since: str | None = None) -> list[tuple[dict, dict]]:
        """(run row, its latest correction) of every corrected run, optionally of one dataset and corrected at or
        after ``since`` (UTC ISO), oldest run first."""
        rows = list(self.store.iter_rows(filters={"corrected": True, "dataset_name": dataset}))
        latest = self.store.read(lambda c: latest_corrections(c, [int(r["id"]) for r in rows]),
                                 "read the corrections")
        return [(decode_row(row), latest[int(row["id"])]) for row in rows if int(row["id"]) in latest
                and (not since or str(latest[int(row["id"])]["timestamp"]) >= str(since))]


def load_corrected_mask(settings: Settings, record: dict) -> np.ndarray:
    """The mask file of a correction record, read only from ``<workspace>/corrections/``."""
    relative = record.get("mask_path")
    parts = PurePosixPath(str(relative or "")).parts
    if not relative or not parts or parts[0] != FOLDER or ".." in parts:
        raise NotFoundError("this correction has no mask file", field="version")
    root = (Path(settings.workspace) / FOLDER).resolve()
    target = (Path(settings.workspace) / PurePosixPath(*parts)).resolve()
    if not target.is_relative_to(root):
        raise PathError("the correction's mask file is outside the workspace", field="version")
    if not target.is_file():
        raise NotFoundError("the correction's mask file is no longer available", field="version")
    with Image.open(target) as image:
        return np.asarray(image.convert("L")) > 127


def agreement(store: HistoryStore, *, since: str | None = None) -> list[dict]:
    """Per (task, dataset): successful runs, corrected runs, mean Dice model vs corrected (latest mask versions)
    and the class agreement (share of latest class versions that kept the model's class)."""
    counts = sa.select(runs.c.task, runs.c.dataset_name, sa.func.count().label("n")).where(runs.c.error.is_(None))
    if since:
        counts = counts.where(runs.c.timestamp >= str(since))
    counts = counts.group_by(runs.c.task, runs.c.dataset_name)

    def fetch(connection: Connection) -> tuple[list, dict]:
        totals = [dict(r) for r in connection.execute(counts).mappings()]
        pairs = connection.execute(sa.select(runs.c.id, runs.c.task, runs.c.dataset_name)
                                   .where(runs.c.id.in_(sa.select(corrections.c.run_id)))).mappings().all()
        latest = latest_corrections(connection, [int(p["id"]) for p in pairs])
        return totals, {(p["task"], p["dataset_name"], int(p["id"])): latest.get(int(p["id"])) for p in pairs}

    totals, corrected = store.read(fetch, "read the correction agreement")
    return [_agreement_row(t, [r for (task, ds, _), r in corrected.items()
                               if r and (task, ds) == (t["task"], t["dataset_name"])]) for t in totals]


def _agreement_row(total: dict, records: Iterable[dict]) -> dict:
    records = list(records)
    dice = [float(r["dice"]) for r in records if r["kind"] == "mask" and r.get("dice") is not None]
    classes = [r for r in records if r["kind"] == "class"]
    agreed = [r for r in classes if r.get("model_class") is not None and r["model_class"] == r["class_index"]]
    return {"task": total["task"], "dataset_name": total["dataset_name"], "runs": int(total["n"]),
            "corrected": len(records), "mean_dice": float(np.mean(dice)) if dice else None,
            "class_agreement": len(agreed) / len(classes) if classes else None}


def correction_note(record: dict | None) -> str | None:
    """One line saying that a result shown is a correction (the report prints it), or None."""
    if not record:
        return None
    who = f"version {record['version']} by {record['author']} at {record['timestamp']}"
    if record.get("kind") == "class":
        return f"Corrected result: class {record['class_index']} (model: {record.get('model_class')}), {who}."
    return (f"Corrected result: mask {who}; Dice vs the model's mask {float(record.get('dice') or 0):.3f}, "
            f"{record.get('pixels_added')} px added, {record.get('pixels_removed')} px removed.")


class CorrectedBackend:
    """A backend (the service or its run reader) whose ``run`` and ``run_mask`` of one run give its latest
    correction; everything else is the backend's own."""

    def __init__(self, backend: Any, run: dict, mask: np.ndarray | None):
        self._backend, self._run, self._mask = backend, run, mask

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def run(self, run_id: int) -> dict:
        return self._run if int(run_id) == int(self._run["id"]) else self._backend.run(run_id)

    def run_mask(self, run_id: int) -> np.ndarray:
        if self._mask is not None and int(run_id) == int(self._run["id"]):
            return self._mask
        return self._backend.run_mask(run_id)


def corrected_backend(backend: Any, run: dict) -> tuple[Any, dict, dict | None]:
    """(backend, run, latest correction) as the report and the DICOM SEG use them: with a correction, the run's
    response carries the corrected class or the corrected mask's measurements and ``run_mask`` gives that mask;
    without one (or when its mask file is gone) the three come back unchanged, the correction None."""
    record = run.get("correction") if isinstance(run.get("correction"), dict) else None
    settings = getattr(backend, "settings", None)
    if record is None or settings is None:
        return backend, run, None
    response = dict(run["response"]) if isinstance(run.get("response"), dict) else {}
    mask = None
    if record.get("kind") == "class":
        response["prediction"] = record["class_index"]
    else:
        try:
            mask = load_corrected_mask(settings, record)
        except (UUSICError, OSError, ValueError):
            return backend, run, None
        if isinstance(record.get("measurements"), dict):
            response["measurements"] = record["measurements"]
    corrected = {**run, "response": response}
    return CorrectedBackend(backend, corrected, mask), corrected, record
