"""The correction versions in a history archive (:mod:`core.backup`): ``corrections.jsonl`` and the corrected masks.

Export: one JSON object per row of the ``corrections`` table (every column as stored, the archive-local ``run_id``
being the run's id in ``runs.jsonl``), and each mask version's PNG as the member ``corrections/<run_id>/v<N>.png``
(the row's ``mask_path`` names it). A mask version whose file is gone is left out (counted), so an archive is always
self-consistent.

Import: every row is a typed :class:`CorrectionRow` (pydantic, no unknown column), its ``run_id`` is a run of the
same archive, ``(run_id, version)`` appears once, a ``mask`` row names its own member (under its own run's folder)
and that member is a PNG within the pixel budget; a member no row names is refused. Only the corrections of runs
this import adds are written (a run already in the store keeps its own), each mask under the run's NEW id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator
from sqlalchemy.engine import Connection

from core.corrections import FOLDER, MAX_AUTHOR, MAX_REASON, png_size
from core.errors import UUSICError
from core.files import sha256_file
from core.history import corrections

CORRECTIONS_MEMBER = "corrections.jsonl"
MASK_PREFIX = FOLDER  # members corrections/<archived run id>/<name>.png
MAX_CORRECTIONS_BYTES = 1 << 30  # corrections.jsonl, un-gzipped
_MASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}\.png")
_INT32 = 2**31 - 1

Number = StrictInt | StrictFloat


class CorrectionRow(BaseModel):
    """One archived ``corrections`` row, as the import accepts it."""

    model_config = ConfigDict(extra="forbid")
    id: StrictInt | None = Field(None, gt=0)  # the source's id: not kept
    run_id: StrictInt = Field(..., gt=0, le=2**63 - 1)
    version: StrictInt = Field(..., ge=1, le=_INT32)
    timestamp: StrictStr = Field(..., min_length=10, max_length=40)
    author: StrictStr = Field(..., min_length=1, max_length=MAX_AUTHOR * 2)
    kind: Literal["mask", "class"]
    mask_path: StrictStr | None = Field(None, max_length=300)
    class_index: StrictInt | None = Field(None, ge=0, le=63)
    model_class: StrictInt | None = Field(None, ge=-_INT32, le=_INT32)
    reason: StrictStr | None = Field(None, max_length=MAX_REASON)
    pixels_added: StrictInt | None = Field(None, ge=0, le=_INT32)
    pixels_removed: StrictInt | None = Field(None, ge=0, le=_INT32)
    dice: Number | None = Field(None, ge=0, le=1)
    area_px: StrictInt | None = Field(None, ge=0, le=_INT32)
    area_mm2: Number | None = Field(None, ge=0, le=1e12)
    measurements: StrictStr | None = Field(None, max_length=1 << 20)

    @field_validator("timestamp")
    @classmethod
    def _iso(cls, value: str) -> str:
        from datetime import datetime

        datetime.fromisoformat(value)  # ValueError: "not an ISO 8601 time"
        return value

    @field_validator("author", "reason", "mask_path", "measurements")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("holds a NUL character")
        return value

    @field_validator("measurements")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is not None and not isinstance(json.loads(value), dict):  # bad JSON: ValueError
            raise ValueError("is not a JSON object")
        return value


def member_name_problem(name: str) -> str | None:
    """Why ``name`` is not a corrected-mask member (``corrections/<run id>/<name>.png``); None when it is one."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != MASK_PREFIX or not parts[1].isdigit() or not _MASK_NAME.fullmatch(parts[2]):
        return "not a corrected mask member (corrections/<run id>/<name>.png)"
    return None


def is_mask_member(name: str) -> bool:
    return name.startswith(MASK_PREFIX + "/")


# ------------------------------------------------------------------------------------------ export
def _mask_file(workspace: Path, relative: Any) -> Path | None:
    """The stored mask file of a row (only under ``<workspace>/corrections/``, no link), else None."""
    parts = PurePosixPath(str(relative or "")).parts
    if not relative or len(parts) < 2 or parts[0] != FOLDER or ".." in parts:
        return None
    root = (workspace / FOLDER).resolve()
    target = workspace / PurePosixPath(*parts)
    if target.is_symlink() or not target.resolve().is_relative_to(root) or not target.is_file():
        return None
    return target


def export_rows(connection_reader: Callable[[Callable[[Connection], Any], str], Any], run_ids: set[int],
                chunk: int = 1000) -> Iterator[dict]:
    """The corrections rows of ``run_ids`` (the runs exported), oldest id first, read ``chunk`` rows at a time."""
    last = 0
    while True:
        query = (sa.select(corrections).where(corrections.c.id > last).order_by(corrections.c.id)
                 .limit(chunk))
        def fetch(connection: Connection, q: sa.Select[Any] = query) -> list[dict]:
            return [dict(r) for r in connection.execute(q).mappings()]

        rows = connection_reader(fetch, "read the corrections")
        yield from (r for r in rows if int(r["run_id"]) in run_ids)
        if len(rows) < chunk:
            return
        last = int(rows[-1]["id"])


@dataclass
class Exported:
    """What :func:`export_corrections` put in the archive."""

    lines: list[bytes] = field(default_factory=list)
    masks: list[tuple[str, Path]] = field(default_factory=list)  # member name, file
    missing: int = 0


def export_corrections(workspace: Path, rows: Iterator[dict]) -> Exported:
    """The ``corrections.jsonl`` lines and the mask members of ``rows`` (a mask version whose file is gone: left
    out and counted in ``missing``)."""
    done = Exported()
    for row in rows:
        if row.get("kind") == "mask":
            source = _mask_file(workspace, row.get("mask_path"))
            if source is None:
                done.missing += 1
                continue
            row = {**row, "mask_path": f"{MASK_PREFIX}/{int(row['run_id'])}/v{int(row['version'])}.png"}
            done.masks.append((row["mask_path"], source))
        done.lines.append((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())
    return done


# ------------------------------------------------------------------------------------------ import: checks
def _validation_problem(exc: ValidationError) -> str:
    found = []
    for error in exc.errors()[:3]:
        name = ".".join(str(p) for p in error.get("loc", ())) or "row"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        found.append(f"{name}: {message}"[:160])
    return "; ".join(found)


def parse_rows(lines: Iterator[tuple[int, bytes]]) -> tuple[list[CorrectionRow], list[str]]:
    """(rows, problems) of the ``corrections.jsonl`` lines (numbered)."""
    from core.schema import loads_json

    rows, problems = [], []
    for number, line in lines:
        if not line.strip():
            continue
        label = f"corrections.jsonl line {number}"
        try:
            data = loads_json(line.decode("utf-8"), what="the line")
        except UnicodeDecodeError:
            problems.append(f"{label}: is not UTF-8")
            continue
        except UUSICError as exc:
            problems.append(f"{label}: {exc.message}")
            continue
        try:
            rows.append(CorrectionRow.model_validate(data))
        except ValidationError as exc:
            problems.append(f"{label}: {_validation_problem(exc)}")
    return rows, problems


def row_problems(rows: list[CorrectionRow], run_ids: set[int], members: set[str]) -> list[str]:
    """Each row that does not belong: a run not in the archive, a version twice, a mask row without its own member
    (or a class row with one), and each mask member no row names."""
    problems, seen, named = [], set(), set()
    for row in rows:
        label = f"correction of run {row.run_id} version {row.version}"
        if row.run_id not in run_ids:
            problems.append(f"{label}: run {row.run_id} is not in this archive's runs.jsonl")
        if (row.run_id, row.version) in seen:
            problems.append(f"{label}: appears twice")
        seen.add((row.run_id, row.version))
        if row.kind == "class":
            if row.class_index is None or row.mask_path is not None:
                problems.append(f"{label}: a class correction needs class_index and no mask_path")
            continue
        path = row.mask_path or ""
        if not path.startswith(f"{MASK_PREFIX}/{row.run_id}/") or member_name_problem(path):
            problems.append(f"{label}: mask_path is not a mask of its own run ({MASK_PREFIX}/{row.run_id}/…)")
        elif path not in members:
            problems.append(f"{label}: its corrected mask {path!r} is missing from the archive")
        named.add(path)
    problems += [f"member {name!r} is not named by any correction" for name in sorted(members - named)]
    return problems


def mask_problem(name: str, staged: Path, settings: Any) -> str | None:
    """Why a staged corrected mask cannot be kept: not a PNG, or its header's size over the pixel budget."""
    from core.imaging import check_size

    with staged.open("rb") as handle:
        head = handle.read(33)
    try:
        width, height, _, _ = png_size(head)
        check_size(width, height, settings, what="corrected mask")
    except UUSICError as exc:
        return f"member {name!r}: {exc.message}"
    return None


# ------------------------------------------------------------------------------------------ import: the writes
def place_mask(workspace: Path, staged: Path, run_id: int, version: int, tag: str,
               write: Callable[[Path, Path], None]) -> str:
    """Write a staged mask as ``corrections/<run_id>/v<version>.png`` (that file, if there and different, stays:
    the mask goes to ``v<version>-<tag>.png``); returns the path relative to the workspace."""
    digest = sha256_file(staged)
    root = os.path.realpath(workspace / FOLDER)
    if not Path(os.path.realpath(workspace / FOLDER / str(run_id))).is_relative_to(root) or \
            not Path(root).is_relative_to(os.path.realpath(workspace)):
        raise UUSICError("the workspace's corrections folder leads out of the workspace (a link?)", status_code=409)
    for relative in (f"{FOLDER}/{run_id}/v{version}.png", f"{FOLDER}/{run_id}/v{version}-{tag}.png"):
        target = workspace / relative
        if target.is_file() and not target.is_symlink() and sha256_file(target) == digest:
            return relative  # already there (e.g. a retried transaction)
        if not (target.exists() or target.is_symlink()):
            write(staged, target)
            return relative
    raise UUSICError(f"the corrected mask of run {run_id} version {version} clashes with files already in the "
                     "workspace's corrections folder", status_code=409)


def insert_rows(connection: Connection, rows: list[CorrectionRow], new_ids: dict[int, int],
                masks: dict[tuple[int, int], str]) -> int:
    """Insert the rows of the runs in ``new_ids`` (archived id → new id), masks at ``masks`` ((new id, version) →
    path); returns how many."""
    added = 0
    for row in rows:
        if row.run_id not in new_ids:
            continue
        run_id = new_ids[row.run_id]
        values = row.model_dump(exclude={"id"})
        values.update(run_id=run_id, mask_path=masks.get((run_id, row.version)) if row.kind == "mask" else None)
        connection.execute(sa.insert(corrections).values(values))
        added += 1
    return added
