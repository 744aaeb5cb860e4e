"""Backups and moves of the run history: a portable archive (``export`` / ``import``) and an online SQLite copy.

``python -m core history export --out FILE.tar.gz [--with-files] [--force]`` writes a gzip'd tar:

- ``runs.jsonl``: one JSON object per run, every column, exactly as stored (JSON columns as their text);
- ``files/api_in/…``, ``files/api_out/…`` (``--with-files``): the inputs and masks the runs refer to;
- ``corrections.jsonl`` and ``corrections/<run id>/v<N>.png`` (always): the correction versions of the runs and their
  corrected masks (:mod:`core.archive_corrections`); on import they attach to the runs' new ids, and only to runs
  this import adds;
- ``manifest.json`` (last): format, the schema revision, counts, the source workspace, and the sha256 of every
  other member.

``python -m core history import FILE.tar.gz [--with-files]`` checks the whole archive first (every member, its
size, its sha256, every row's column types), then adds the runs to the configured store (SQLite or PostgreSQL) in
one transaction, with new ids. A run already in the store (same run key: timestamp, source, input sha256 and image
name) is skipped, so importing an archive twice adds nothing. Mask paths under the source's ``api_out/`` are
rewritten to this workspace's; with ``--with-files`` the files are written into this ``api_in/`` / ``api_out/``
(never over a different file: a clash goes under ``imported_<export id>/``).

``python -m core history backup --out FILE.sqlite3 [--force]`` copies a SQLite history while the service runs
(:meth:`sqlite3.Connection.backup`, one consistent snapshot); for PostgreSQL use ``pg_dump`` (docs/DEPLOY.md).

Hostile archives (import; :class:`~core.errors.ArchiveError`, ``error: …`` and exit status 2 on the command line):

- the archive is read once, as a stream, un-gzipped in bounded reads: a member's size is checked at its header,
  before any of its bytes are read, and its bytes are counted as they are read. A ``files/…`` member holds at most
  ``max_upload_mb`` MiB (``UUSIC_MAX_UPLOAD_MB``), ``runs.jsonl`` at most :data:`MAX_RUNS_BYTES` (1 GiB) and each
  of its lines (one run) at most ``max(max_json_bytes, 1 MiB)`` (``UUSIC_MAX_JSON_BYTES``), ``manifest.json`` at
  most :data:`MAX_MANIFEST_BYTES` (64 MiB); a member's tar headers (pax records, long names) and padding at most
  :data:`HEADER_BUDGET` (1 MiB). The whole archive un-gzips to at most :data:`MAX_EXPANSION_RATIO` (150) times the
  compressed bytes read so far, plus :data:`EXPANSION_ALLOWANCE` (16 MiB): a bomb is refused after reading at most
  that much, never after un-gzipping all of it;
- members are regular files (no links, devices, folders or sparse files) with safe relative names (no absolute
  path, no ``..``, no control characters, no name twice): ``runs.jsonl``, ``manifest.json`` and
  ``files/api_in/…`` / ``files/api_out/…``, each listed in the manifest with its sha256; the manifest's fields
  have their types (``export_id`` a short name, since it can name a folder);
- every row of ``runs.jsonl`` is checked against the schema's column types (integers, numbers, text, JSON text,
  ISO 8601 timestamps, no NUL characters) before anything is written;
- every row of ``corrections.jsonl`` is typed (no unknown column, measurements JSON text), belongs to a run of the
  same archive, and a mask version names its own run's member, a PNG within the pixel budget (header read only);
- all or nothing: a refused member or row refuses the whole archive, and the message names each of them (the
  first :data:`MAX_LISTED`, then how many more); the files of a failed import are removed again, the runs are one
  transaction.

Export and backup never replace an existing file without ``--force`` (``force=True``), and never the live
history database (nor its ``-wal`` / ``-shm`` / ``-journal`` files), even with it; an empty path, ``.`` or a
folder is refused. Messages name paths only as the user typed them.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import re
import sqlite3
import sys
import tarfile
import tempfile
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from core import archive_corrections as fixes
from core.errors import ArchiveError, UUSICError, as_uusic_error
from core.files import atomic_open, sha256_file
from core.history import COLUMNS, JSON_COLUMNS
from core.history_format import json_dict
from core.workspace import Key, row_files

if TYPE_CHECKING:
    from core.history import HistoryStore
    from core.settings import Settings

FORMAT = "uusic-history"
FORMAT_VERSION = 2  # 2: corrections.jsonl and corrections/… (version 1 archives are read as before)
RUNS_MEMBER = "runs.jsonl"
MANIFEST_MEMBER = "manifest.json"
FILES_PREFIX = "files"
FILE_FOLDERS = ("api_in", "api_out")
RUN_KEY_COLUMNS = ("timestamp", "source", "input_sha256", "img_name")

MAX_RUNS_BYTES = 1 << 30  # runs.jsonl, un-gzipped
MAX_MANIFEST_BYTES = 64 << 20  # manifest.json, un-gzipped
MIN_ROW_BYTES = 1 << 20  # a line of runs.jsonl may hold max(max_json_bytes, this)
HEADER_BUDGET = 1 << 20  # a member's tar headers (pax records, GNU long names) and padding
MAX_EXPANSION_RATIO = 150  # un-gzipped bytes per compressed byte read so far ...
EXPANSION_ALLOWANCE = 16 << 20  # ... plus this
READ_CHUNK = 1 << 16  # one bounded read
MAX_LISTED = 20  # refused members / rows a message names one by one (then: how many more)
MAX_NAME_BYTES = 1024  # a member's name
_EXPORT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT_RANGE = {"id": 2**63, "prediction": 2**31, "mask_area_px": 2**31}  # |value| below; PostgreSQL INTEGER: 2**31
_LIVE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def run_key(row: dict) -> str:
    """A run's identity across stores (ids differ): timestamp, source, input sha256 and image name. The image's
    path is left out on purpose: an import may rewrite it."""
    return json.dumps([row.get(name) for name in RUN_KEY_COLUMNS], ensure_ascii=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    info.mtime = int(mtime if mtime is not None else datetime.now(UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------ output files
def _output_path(out: Path | str, live: Iterable[Path | str | None], *, force: bool) -> Path:
    """``out`` checked as a file to write: not empty / ``.`` / a folder, not the live database (nor its journals;
    resolved paths, even with ``force``), not an existing file without ``force``. Messages show ``out`` as given."""
    shown = str(out)
    if not shown.strip() or Path(shown) == Path(".") or shown.endswith(("/", os.sep)):
        raise UUSICError(f"the output {shown!r} does not name a file", status_code=400)
    path = Path(shown)
    if path.is_dir():
        raise UUSICError(f"the output {shown!r} is a folder, not a file", status_code=400)
    target = os.path.realpath(path)
    for database in live:
        if database is None:
            continue
        real = os.path.realpath(database)
        same = any(target == real + suffix for suffix in _LIVE_SUFFIXES)
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(path, database)
        if same:
            raise UUSICError(f"the output {shown!r} is the live history database: choose another file",
                             status_code=409)
    if (path.exists() or path.is_symlink()) and not force:
        raise UUSICError(f"the output {shown!r} already exists: pass --force to replace it", status_code=409)
    return path


def _live_databases(settings: Settings | None, store: HistoryStore) -> list[Path | None]:
    return [store.path, settings.history_db if settings is not None else None]


@contextlib.contextmanager
def _writing(path: Path, shown: str, *, force: bool) -> Iterator[IO[bytes]]:
    """:func:`atomic_open` of ``path`` (exclusive without ``force``); file-system errors name ``shown`` only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, exclusive=not force) as handle:
            yield handle
    except FileExistsError:
        raise UUSICError(f"the output {shown!r} already exists: pass --force to replace it",
                         status_code=409) from None
    except OSError as exc:
        raise UUSICError(f"cannot write {shown!r}: {exc.strerror or type(exc).__name__}", status_code=400) from None


# ------------------------------------------------------------------------------------------ export
def export_archive(settings: Settings, store: HistoryStore, out: Path | str, *,
                   with_files: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the whole history (and with ``with_files`` its workspace files) to ``out`` (a .tar.gz, written
    atomically; an existing file only with ``force``, never the live database); returns the manifest."""
    shown = str(out)
    out = _output_path(out, _live_databases(settings, store), force=force)
    roots = {"api_in": Path(os.path.abspath(settings.api_in)), "api_out": Path(os.path.abspath(settings.api_out))}
    digests: dict[str, str] = {}
    needed: dict[Key, bool] = {}  # file → whether a successful run needs it (a failed one may name none)
    rows, run_ids = 0, set()
    with tempfile.TemporaryFile() as spool:  # runs.jsonl, hashed as it is written
        digest = hashlib.sha256()
        for row in store.iter_rows():
            line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode()
            spool.write(line)
            digest.update(line)
            rows += 1
            run_ids.add(int(row["id"]))
            if with_files:
                for key in row_files(settings, row, roots):
                    needed[key] = needed.get(key, False) or not row.get("error")
        digests[RUNS_MEMBER] = digest.hexdigest()
        size = spool.tell()
        spool.seek(0)
        with _writing(out, shown, force=force) as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            info = tarfile.TarInfo(RUNS_MEMBER)
            info.size, info.mode, info.mtime = size, 0o644, int(datetime.now(UTC).timestamp())
            tar.addfile(info, spool)
            files, missing = _export_files(tar, roots, needed, digests)
            fixed = _export_corrections(tar, settings, store, run_ids, digests)
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "schema_revision": _head_revision(),
                "export_id": uuid.uuid4().hex[:12], "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": {"backend": store.backend, "workspace": os.path.abspath(settings.workspace),
                           "api_in": str(roots["api_in"]), "api_out": str(roots["api_out"])},
                "with_files": with_files, "run_key": list(RUN_KEY_COLUMNS),
                "counts": {"runs": rows, "files": files, "files_missing": missing, "corrections": len(fixed.lines),
                           "correction_files": len(fixed.masks), "corrections_missing_file": fixed.missing},
                "sha256": digests,
            }
            _add_bytes(tar, MANIFEST_MEMBER, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    return manifest


def _export_corrections(tar: tarfile.TarFile, settings: Settings, store: HistoryStore, run_ids: set[int],
                        digests: dict[str, str]) -> fixes.Exported:
    """Add ``corrections.jsonl`` (the versions of the exported runs) and their corrected masks."""
    done = fixes.export_corrections(Path(settings.workspace), fixes.export_rows(store.read, run_ids))
    data = b"".join(done.lines)
    digests[fixes.CORRECTIONS_MEMBER] = _sha256(data)
    _add_bytes(tar, fixes.CORRECTIONS_MEMBER, data)
    for name, source in done.masks:
        try:
            mask = source.read_bytes()
        except OSError:
            raise UUSICError("a corrected mask was removed while exporting: export again", status_code=409) from None
        digests[name] = _sha256(mask)
        _add_bytes(tar, name, mask, source.stat().st_mtime)
    return done


def _head_revision() -> str:
    from core.history import head_revision

    return head_revision()


def _export_files(tar: tarfile.TarFile, roots: dict[str, Path], needed: dict[Key, bool],
                  digests: dict[str, str]) -> tuple[int, int]:
    """Add the workspace files the runs need (no symlinks); returns (files added, needed files missing)."""
    files = missing = 0
    for (folder, rel), required in needed.items():
        path = roots[folder] / rel
        try:
            if path.is_symlink():
                raise FileNotFoundError(rel)
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError:
            missing += required
            continue
        name = f"{FILES_PREFIX}/{folder}/{rel}"
        digests[name] = _sha256(data)
        _add_bytes(tar, name, data, mtime)
        files += 1
    return files, missing


# ------------------------------------------------------------------------------------------ import: the stream
class _Counted:
    """The archive file as gzip reads it, counting the compressed bytes."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.count = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class _Inflater:
    """The archive un-gzipped in bounded reads as tarfile asks for it, never past its budget: ``allowed`` bytes
    (raised member by member, see :func:`_members`) and :data:`MAX_EXPANSION_RATIO` times the compressed bytes read
    so far plus :data:`EXPANSION_ALLOWANCE`. Every gzip failure is an :class:`ArchiveError`."""

    def __init__(self, raw: BinaryIO, shown: str):
        self.shown, self.expanded, self.allowed, self.trailer = shown, 0, HEADER_BUDGET, False
        self._compressed = _Counted(raw)
        self._gzip = gzip.GzipFile(fileobj=self._compressed, mode="rb")  # type: ignore[call-overload]

    def read(self, size: int = -1) -> bytes:
        want = READ_CHUNK if size is None or size < 0 else min(size, READ_CHUNK)
        try:
            data = self._gzip.read(want)
        except EOFError:
            raise ArchiveError(f"{self.shown!r} is truncated (its gzip stream ends early)") from None
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"{self.shown!r} is not an intact gzip'd tar archive (.tar.gz): {exc}") from None
        except OSError as exc:
            raise ArchiveError(f"cannot read {self.shown!r}: {exc.strerror or type(exc).__name__}") from None
        self.expanded += len(data)
        if self.expanded > self.allowed:
            what = ("what follows the end of its tar data" if self.trailer
                    else "a member's tar header (pax records, long name) or padding")
            raise ArchiveError(f"{self.shown!r} cannot be imported, nothing was imported: {what} is larger than "
                               f"{HEADER_BUDGET} bytes; refused after un-gzipping {self.expanded} bytes")
        if self.expanded > MAX_EXPANSION_RATIO * self._compressed.count + EXPANSION_ALLOWANCE:
            raise ArchiveError(f"{self.shown!r} cannot be imported, nothing was imported: it expands more than "
                               f"{MAX_EXPANSION_RATIO} times (a decompression bomb?); refused after un-gzipping "
                               f"{self.expanded} bytes")
        return data

    def drain(self) -> None:
        """Read what follows the tar's end (padding) to the gzip's end, which checks its length and CRC."""
        self.allowed, self.trailer = self.expanded + HEADER_BUDGET, True
        while self.read(READ_CHUNK):
            pass


@contextlib.contextmanager
def _open_stream(path: Path | str) -> Iterator[tuple[tarfile.TarFile, _Inflater]]:
    """The archive as a tar stream (``r|``) over a budgeted :class:`_Inflater`; tar and file errors come out as
    :class:`ArchiveError` naming ``path`` as given."""
    shown = str(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the ExitStack below
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive {shown!r}: {exc.strerror or type(exc).__name__}") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(raw)
        inflater = _Inflater(raw, shown)
        try:
            tar = stack.enter_context(tarfile.open(fileobj=inflater, mode="r|"))  # type: ignore[call-overload]
            yield tar, inflater
        except tarfile.ReadError as exc:
            truncated = "unexpected end" in str(exc) or "truncated" in str(exc)
            raise ArchiveError(f"{shown!r} is {'truncated' if truncated else 'not a readable tar archive'} "
                               f"({exc})") from None
        except (tarfile.TarError, ValueError, OverflowError) as exc:
            raise ArchiveError(f"{shown!r} is not a readable tar archive ({type(exc).__name__}: {exc})") from None


@dataclass
class _Archive:
    """What an archive holds once streamed: member digests, the manifest, the spooled runs.jsonl and, when asked
    for, the staged files (``files/...`` name → staged copy)."""

    shown: str
    runs: IO[bytes]
    digests: dict[str, str] = field(default_factory=dict)
    staged: dict[str, Path] = field(default_factory=dict)
    manifest_bytes: bytes | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    row_limit: int = MIN_ROW_BYTES  # bytes of one runs.jsonl line
    fixes: IO[bytes] | None = None  # the spooled corrections.jsonl (None: hashed only)
    masks: dict[str, Path] = field(default_factory=dict)  # corrected masks: member name → staged copy
    stage_files: bool = True  # stage files/… members (import --with-files)

    def error(self, problems: list[str]) -> ArchiveError:
        """The error naming every problem (the first :data:`MAX_LISTED` one by one, then how many more)."""
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        return ArchiveError(f"{self.shown!r} cannot be imported, nothing was imported: {listed}{more}")

    def refuse(self, problems: list[str] | None = None) -> None:
        """Raise :meth:`error` when there is any problem (default: the members refused while streaming)."""
        problems = self.problems if problems is None else problems
        if problems:
            raise self.error(problems)


class _LineGuard:
    """Refuses a runs.jsonl line longer than ``limit`` bytes while its bytes stream by (never spooled whole)."""

    def __init__(self, limit: int, member: str = RUNS_MEMBER):
        self.limit, self.run, self.line, self.member = limit, 0, 1, member

    def feed(self, chunk: bytes) -> str | None:
        parts = chunk.split(b"\n")
        for index, part in enumerate(parts):
            if (self.run if index == 0 else 0) + len(part) > self.limit:
                return f"{self.member} line {self.line + index} is longer than {self.limit} bytes"
        self.line += len(parts) - 1
        self.run = (self.run if len(parts) == 1 else 0) + len(parts[-1])
        return None


def _member_name_problem(name: str) -> str | None:
    """Why ``name`` is not a member an archive of ours may hold (None when it may)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    if size > MAX_NAME_BYTES or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "its name is too long or holds control characters"
    if name in (RUNS_MEMBER, MANIFEST_MEMBER, fixes.CORRECTIONS_MEMBER):
        return None
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        return "its name is not a safe relative path (absolute, '..', '.', '\\' or an empty part)"
    if fixes.is_mask_member(name):
        return fixes.member_name_problem(name)
    if len(parts) < 3 or parts[0] != FILES_PREFIX or parts[1] not in FILE_FOLDERS:
        return ("unexpected member (an archive holds runs.jsonl, corrections.jsonl, manifest.json, corrections/... "
                "and files/api_in|api_out/...)")
    if any(len(part.encode("utf-8")) > 255 for part in parts):
        return "a part of its name is longer than 255 bytes"
    return None


def _member_problem(member: tarfile.TarInfo, seen: dict[str, str]) -> str | None:
    kinds = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE: "a folder",
             tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo",
             tarfile.CONTTYPE: "a contiguous file", tarfile.GNUTYPE_SPARSE: "a sparse file"}
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        kind = "a sparse file" if member.sparse is not None else kinds.get(member.type, f"of type {member.type!r}")
        return f"is {kind}, not a regular file"
    if member.name in seen:
        return "appears twice"
    return _member_name_problem(member.name)


def _member_budget(settings: Settings, name: str) -> int:
    if name == RUNS_MEMBER:
        return MAX_RUNS_BYTES
    if name == MANIFEST_MEMBER:
        return MAX_MANIFEST_BYTES
    if name == fixes.CORRECTIONS_MEMBER:
        return fixes.MAX_CORRECTIONS_BYTES
    return int(settings.max_upload_mb) << 20  # files/… and corrections/… (a corrected mask)


def _stream_archive(archive: _Archive, path: Path | str, settings: Settings, staging: Path | None) -> None:
    """Read the whole archive once: every member's header checked (size against its budget before any byte is
    read), its bytes hashed in bounded reads (runs.jsonl spooled, the manifest kept, files staged under
    ``staging`` when given). Refused members go to ``archive.problems``; a budget overrun raises at once."""
    with _open_stream(path) as (tar, inflater):
        while (member := tar.next()) is not None:
            name = member.name
            data_in_stream = member.isreg() or member.type not in tarfile.SUPPORTED_TYPES
            budget = _member_budget(settings, name)
            if data_in_stream and member.size > budget:
                raise archive.error([*archive.problems, f"member {name!r} is {member.size} bytes un-gzipped, over "
                                     f"its limit of {budget} bytes"])
            inflater.allowed = tar.offset + HEADER_BUDGET  # this member's data, then the next header
            problem = _member_problem(member, archive.digests)
            if problem is not None:
                archive.problems.append(f"member {name!r}: {problem}")
                continue  # its data (if any) is skipped, within the budget, by the next tar.next()
            archive.digests[name] = _copy_member(tar, member, archive, budget, staging)
        inflater.drain()


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: _Archive, budget: int,
                 staging: Path | None) -> str:
    """Read one member in bounded chunks (never more than ``budget`` bytes) into its sink; returns its sha256."""
    handle = tar.extractfile(member)
    assert handle is not None, "a regular member has data"
    digest, total, kept = hashlib.sha256(), 0, bytearray()
    jsonl = member.name in (RUNS_MEMBER, fixes.CORRECTIONS_MEMBER)
    lines = _LineGuard(archive.row_limit, member.name) if jsonl else None
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | None = None
        if member.name == RUNS_MEMBER:
            sink = archive.runs
        elif member.name == fixes.CORRECTIONS_MEMBER:
            sink = archive.fixes
        elif staging is not None and member.name != MANIFEST_MEMBER:
            masks = fixes.is_mask_member(member.name)
            if masks or archive.stage_files:
                kept_in = archive.masks if masks else archive.staged
                staged = staging / f"{len(archive.staged) + len(archive.masks)}.part"
                kept_in[member.name] = staged
                sink = stack.enter_context(staged.open("xb"))
        while chunk := handle.read(READ_CHUNK):
            total += len(chunk)
            if total > budget:
                raise archive.error([f"member {member.name!r} holds more than its limit of {budget} bytes"])
            if lines is not None and (problem := lines.feed(chunk)) is not None:
                raise archive.error([problem])
            digest.update(chunk)
            if member.name == MANIFEST_MEMBER:
                kept += chunk
            elif sink is not None:
                sink.write(chunk)
    if member.name == MANIFEST_MEMBER:
        archive.manifest_bytes = bytes(kept)
    return digest.hexdigest()


def _known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from core.history import _alembic_config

    return [script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Each manifest field of the wrong type (the format, version and schema are checked before)."""
    problems = []
    source = manifest.get("source")
    if source is not None and not (isinstance(source, dict) and all(isinstance(v, str) for v in source.values())):
        problems.append("'source' is not an object of texts")
    if not isinstance(manifest.get("export_id", ""), str) or (
            manifest.get("export_id") and not _EXPORT_ID.fullmatch(manifest["export_id"])):
        problems.append("'export_id' is not a short name (letters, digits, '_', '-')")
    if not isinstance(manifest.get("with_files", False), bool):
        problems.append("'with_files' is not true / false")
    counts = manifest.get("counts", {})
    if not isinstance(counts, dict) or not all(_is_int(v) and v >= 0 for v in counts.values()):
        problems.append("'counts' is not an object of counts")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v)
                                                for k, v in digests.items()):
        problems.append("'sha256' is not an object of member names and sha256 digests")
    return [f"manifest.json: {problem}" for problem in problems]


def _check_manifest(archive: _Archive) -> dict[str, Any]:
    """The parsed manifest, checked to be one of ours with fields of the right types."""
    from core.schema import loads_json

    if archive.manifest_bytes is None:
        raise archive.error([*archive.problems, "the archive has no manifest.json (not a history export?)"])
    try:
        manifest = loads_json(archive.manifest_bytes, what="manifest.json")
    except UUSICError as exc:
        raise archive.error([*archive.problems, f"its manifest.json is not JSON ({exc.message})"]) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise archive.error([*archive.problems, "it is not a UUSIC history archive (python -m core history export)"])
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise archive.error([*archive.problems, f"manifest.json: 'format_version' {str(version)[:40]!r} is not a "
                             "version number"])
    if version > FORMAT_VERSION:
        raise archive.error([*archive.problems, f"archive format {version} is newer than this release reads"])
    revision = manifest.get("schema_revision")
    if not isinstance(revision, str) or revision not in _known_revisions():
        raise archive.error([*archive.problems, f"the archive's history schema {str(revision)[:40]!r} is newer "
                             "than this release's (or unknown): upgrade this installation first"])
    archive.refuse(archive.problems + _manifest_problems(manifest))
    return manifest


def _check_digests(archive: _Archive) -> None:
    """Every member listed in the manifest with its sha256, every listed member present, runs.jsonl among them."""
    listed: dict[str, str] = archive.manifest["sha256"]
    problems = []
    for name, digest in archive.digests.items():
        if name == MANIFEST_MEMBER:
            continue
        if name not in listed:
            problems.append(f"member {name!r} is not listed in the manifest")
        elif listed[name] != digest:
            problems.append(f"member {name!r} is damaged (its sha256 differs from the manifest's)")
    for name in listed:
        if name not in archive.digests:
            problems.append(f"the manifest lists {name!r}, which the archive does not hold")
    if RUNS_MEMBER not in archive.digests and RUNS_MEMBER not in listed:
        problems.append("the archive has no runs.jsonl")
    archive.refuse(problems)


def read_manifest(path: Path | str, settings: Settings | None = None) -> dict[str, Any]:
    """The manifest of an archive (the whole archive read within ``settings``' budgets and checked to be ours)."""
    from core.settings import Settings

    settings = settings or Settings.from_env()
    with tempfile.TemporaryFile() as spool:
        archive = _Archive(str(path), spool, row_limit=max(int(settings.max_json_bytes), MIN_ROW_BYTES))
        _stream_archive(archive, path, settings, None)
        archive.manifest = _check_manifest(archive)
        _check_digests(archive)
        return archive.manifest


# ------------------------------------------------------------------------------------------ import: the rows
def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    if isinstance(value, int | float):
        return f"the number {repr(value)[:40]}"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _storable(text: str) -> bool:
    """Text both SQLite and PostgreSQL store as given: valid Unicode (no lone surrogates), no NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _json_problem(name: str, value: Any) -> str | None:
    """Why a JSON column's value cannot be stored (None when it can): JSON text, or an object / list."""
    from core.schema import loads_json

    if isinstance(value, str):
        if not _storable(value):
            return "holds a NUL character or invalid Unicode"
        try:
            value = loads_json(value, what=name)
        except UUSICError:
            return f"is {_kind(value)}, not JSON text"
    elif isinstance(value, dict | list):
        if not _storable(json.dumps(value, ensure_ascii=False)):
            return "holds a NUL character or invalid Unicode"
    else:
        return f"is {_kind(value)}, not JSON text"
    if name in ("request", "response") and not isinstance(value, dict):
        return "is not a JSON object"
    return None


def _value_problem(name: str, sql_type: str, value: Any) -> str | None:
    """Why ``value`` cannot go into column ``name`` of type ``sql_type`` (None when it can)."""
    if name in JSON_COLUMNS:
        return _json_problem(name, value)
    if sql_type.startswith("INTEGER"):
        limit = _INT_RANGE.get(name, 2**31)
        if not _is_int(value):
            return f"is {_kind(value)}, not an integer"
        return None if -limit <= value < limit and (name != "id" or value > 0) else "is out of range"
    if sql_type.startswith("REAL"):
        if not (_is_int(value) or isinstance(value, float)):
            return f"is {_kind(value)}, not a number"
        bound = 2**63 if _is_int(value) else 1e300
        return None if abs(value) < bound and math.isfinite(value) else "is not a finite number in range"
    if not isinstance(value, str):
        return f"is {_kind(value)}, not text"
    if not _storable(value):
        return "holds a NUL character or invalid Unicode"
    if name == "timestamp":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return f"is {_kind(value)}, not an ISO 8601 time"
    return None


def _row_problems(row: Any) -> list[str]:
    """Why an archived run cannot be stored: every column of the wrong type, unknown or missing."""
    if not isinstance(row, dict):
        return [f"is {_kind(row)}, not a JSON object"]
    types = dict(COLUMNS)
    problems = [f"unknown column {str(name)[:40]!r}" for name in row if name not in types]
    for name, sql_type in COLUMNS:
        value = row.get(name)
        if value is None:
            if "NOT NULL" in sql_type:
                problems.append(f"{name} is missing")
            continue
        if (problem := _value_problem(name, sql_type, value)) is not None:
            problems.append(f"{name} {problem}")
    if not problems and not row["source"].strip():
        problems.append("source is empty")
    return problems


def _parse_row(line: bytes) -> tuple[Any, list[str]]:
    """(the run on one line of runs.jsonl, its problems)."""
    from core.schema import loads_json

    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, ["is not UTF-8"]
    try:
        row = loads_json(text, what="the line")
    except UUSICError as exc:
        return None, [exc.message]
    return row, _row_problems(row)


def _read_rows(archive: _Archive) -> list[dict]:
    """Every run of the spooled runs.jsonl, each checked (a line at most ``archive.row_limit`` bytes, read in
    bounded reads); the archive is refused naming every bad line."""
    limit = archive.row_limit
    spool, rows, problems = archive.runs, [], []
    ids: dict[int, int] = {}  # archived id → its line
    spool.seek(0)
    number = 0
    while line := spool.readline(limit + 1):
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := spool.readline(limit + 1)) and not rest.endswith(b"\n"):
                pass  # the rest of the overlong line, bounded reads
            problems.append(f"runs.jsonl line {number} is longer than {limit} bytes")
            continue
        if not line.strip():
            continue
        row, found = _parse_row(line)
        label = f"runs.jsonl line {number}"
        if isinstance(row, dict) and "id" in row:
            label += f" (id {str(row['id'])[:40]!r})"
            if _is_int(row["id"]) and not found and row["id"] in ids:
                found = [f"id {row['id']} repeats line {ids[row['id']]}"]
            if _is_int(row["id"]):
                ids.setdefault(row["id"], number)
        if found:
            problems.append(f"{label}: {', '.join(found)}")
        else:
            rows.append(row)
    expected = (archive.manifest.get("counts") or {}).get("runs", len(rows))
    if not problems and len(rows) != expected:
        problems.append(f"runs.jsonl holds {len(rows)} runs, the manifest says {expected}")
    archive.refuse(problems)
    return rows


# ------------------------------------------------------------------------------------------ import: into the store
class _PathMap:
    """Maps an archived run's workspace paths to this workspace (and to files renamed on import, ``moved``)."""

    def __init__(self, manifest: dict, settings: Settings, moved: dict[Key, Key]):
        source = manifest.get("source") or {}
        self.settings, self.moved = settings, moved
        self.old = {"api_in": Path(str(source.get("api_in") or settings.api_in)),
                    "api_out": Path(str(source.get("api_out") or settings.api_out))}
        self.new = {"api_in": Path(os.path.abspath(settings.api_in)),
                    "api_out": Path(os.path.abspath(settings.api_out))}

    def input(self, rel: Any) -> str | None:
        """``api_in/...`` here for an archived ``api_in/...`` request path; None for other paths."""
        if not isinstance(rel, str) or not rel:
            return None
        keys = row_files(self.settings, {"img_path_relative": rel}, self.old)
        return "api_in/" + self.moved.get(keys[0], keys[0])[1] if keys else None

    def output(self, path: Any) -> str | None:
        """The ``api_out/`` path relative to this workspace's ``api_out/`` for an archived output; else None."""
        if not isinstance(path, str) or not path:
            return None
        keys = (row_files(self.settings, {"mask_path": path}, self.old)
                or row_files(self.settings, {"mask_path": path}, self.new))
        return self.moved.get(keys[0], keys[0])[1] if keys else None


def _rewrite(row: dict, manifest: dict, settings: Settings, moved: dict[Key, Key]) -> dict:
    """``row`` with its workspace paths (row, request and response: input, kept original, mask, agreement map and
    their URLs) pointing into this workspace (and at renamed files, ``moved``)."""
    paths = _PathMap(manifest, settings, moved)
    row = dict(row)
    api_out = paths.new["api_out"]
    if (rel := paths.input(row.get("img_path_relative"))) is not None:
        row["img_path_relative"] = rel
    if (out := paths.output(row.get("mask_path"))) is not None:
        row["mask_path"] = str(api_out / out)
    request, response = dict(json_dict(row.get("request"))), dict(json_dict(row.get("response")))
    for key in ("img_path_relative", "source_path_relative"):
        if (rel := paths.input(request.get(key))) is not None:
            request[key] = rel
    if (out := paths.output(response.get("mask_path"))) is not None:
        response["mask_path"], response["mask_url"] = str(api_out / out), f"/v1/masks/{out}"
    block = response.get("uncertainty")
    if isinstance(block, dict) and (out := paths.output(block.get("agreement_path"))) is not None:
        response["uncertainty"] = {**block, "agreement_path": str(api_out / out),
                                   "agreement_url": f"/v1/masks/{out}"}
    if request:
        row["request"] = request
    if response:
        row["response"] = response
    return row


@dataclass
class _Placed:
    """The files (and folders) an import wrote into the workspace: removed again when the import fails."""

    files: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)

    def mkdir(self, folder: Path) -> None:
        missing = []
        for candidate in (folder, *folder.parents):
            if candidate.exists() or candidate.is_symlink():
                break
            missing.append(candidate)
        folder.mkdir(parents=True, exist_ok=True)
        self.folders.extend(reversed(missing))

    def write(self, staged: Path, target: Path) -> None:
        """Copy ``staged`` to ``target`` atomically, never over an existing file."""
        self.mkdir(target.parent)
        with atomic_open(target, exclusive=True) as handle, staged.open("rb") as source:
            while chunk := source.read(1 << 20):
                handle.write(chunk)
        self.files.append(target)

    def undo(self) -> None:
        for path in reversed(self.files):
            with contextlib.suppress(OSError):
                path.unlink()
        for folder in reversed(self.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _same_file(target: Path, expected: str) -> bool:
    return target.is_file() and not target.is_symlink() and sha256_file(target) == expected


def _place_files(archive: _Archive, settings: Settings, placed: _Placed) -> tuple[dict[Key, Key], Counter]:
    """Write the archive's staged files into this workspace (recorded in ``placed``); returns (renamed files
    old → new, counts)."""
    roots = {"api_in": Path(settings.api_in), "api_out": Path(settings.api_out)}
    moved: dict[Key, Key] = {}
    counts: Counter = Counter()
    export_id = archive.manifest.get("export_id") or "archive"
    for name, staged in sorted(archive.staged.items()):
        _, folder, rel = name.split("/", 2)
        expected, target = archive.digests[name], roots[folder] / rel
        if _same_file(target, expected):
            counts["files_already_there"] += 1
            continue
        if target.exists() or target.is_symlink():
            moved[(folder, rel)] = (folder, f"imported_{export_id}/{rel}")
            target = roots[folder] / moved[(folder, rel)][1]
            if _same_file(target, expected):
                counts["files_already_there"] += 1
                continue
            counts["files_renamed"] += 1
        if not Path(os.path.realpath(target.parent)).is_relative_to(os.path.realpath(roots[folder])):
            raise archive.error([f"member {name!r} would be written through a link leading out of {folder}/"])
        placed.write(staged, target)
        counts["files_written"] += 1
    return moved, counts


def import_archive(settings: Settings, store: HistoryStore, path: Path | str, *,
                   with_files: bool = False) -> dict[str, Any]:
    """Add an archive's runs to ``store`` (new ids, duplicates skipped) and, with ``with_files``, its files to
    this workspace; all or nothing: the whole archive is checked first, a failure removes the files written.
    Returns counts and ``ids`` (archive id → new id)."""
    settings.ensure_workspace()
    with tempfile.TemporaryDirectory(dir=settings.workspace, prefix=".import-") as work, \
            tempfile.TemporaryFile(dir=work) as spool, tempfile.TemporaryFile(dir=work) as fixes_spool:
        archive = _Archive(str(path), spool, row_limit=max(int(settings.max_json_bytes), MIN_ROW_BYTES),
                           fixes=fixes_spool, stage_files=with_files)
        _stream_archive(archive, path, settings, Path(work))
        archive.manifest = manifest = _check_manifest(archive)
        _check_digests(archive)
        if with_files and not manifest.get("with_files"):
            raise ArchiveError("the archive holds no files (it was exported without --with-files)")
        archived = _read_rows(archive)
        versions = _read_corrections(archive, settings, {row["id"] for row in archived})
        fresh = _new_runs(store, archived)
        placed = _Placed()
        try:
            moved, counts = _place_files(archive, settings, placed) if with_files else ({}, Counter())
            new_ids, added = _commit(store, settings, archive, [_rewrite(row, manifest, settings, moved)
                                                                for row in fresh], versions, placed)
        except BaseException:
            placed.undo()
            raise
    return {"runs_in_archive": len(archived), "runs_imported": len(new_ids),
            "runs_already_there": len(archived) - len(new_ids), "files_written": counts["files_written"],
            "files_already_there": counts["files_already_there"], "files_renamed": counts["files_renamed"],
            "corrections_in_archive": len(versions), "corrections_imported": added,
            "schema_revision": manifest.get("schema_revision"),
            "ids": {row["id"]: new_id for row, new_id in zip(fresh, new_ids, strict=True) if "id" in row}}


def _read_corrections(archive: _Archive, settings: Settings, run_ids: set[int]) -> list[fixes.CorrectionRow]:
    """Every row of the spooled corrections.jsonl, typed and checked against the archive's runs and masks; the
    archive is refused naming every bad row or mask."""
    assert archive.fixes is not None, "import spools corrections.jsonl"
    limit, number, lines = archive.row_limit, 0, []
    archive.fixes.seek(0)
    while line := archive.fixes.readline(limit + 1):  # the stream's line guard kept each line within the limit
        number += 1
        lines.append((number, line))
    versions, problems = fixes.parse_rows(iter(lines))
    members = {name for name in archive.digests if fixes.is_mask_member(name)}
    problems += fixes.row_problems(versions, run_ids, members) if not problems else []
    problems += [p for name, staged in sorted(archive.masks.items())
                 if (p := fixes.mask_problem(name, staged, settings)) is not None]
    expected = (archive.manifest.get("counts") or {}).get("corrections", len(versions))
    if not problems and len(versions) != expected:
        problems.append(f"corrections.jsonl holds {len(versions)} corrections, the manifest says {expected}")
    archive.refuse(problems)
    return versions


def _commit(store: HistoryStore, settings: Settings, archive: _Archive, rows: list[dict],
            versions: list[fixes.CorrectionRow], placed: _Placed) -> tuple[list[int], int]:
    """Insert ``rows`` (new ids) and the correction versions of those runs, their masks written under the new ids
    (recorded in ``placed``), in one transaction; returns (new ids, corrections added)."""
    from sqlalchemy import insert as sa_insert

    from core.history import runs, stored_row

    archived_ids = {row["id"] for row in rows if "id" in row}
    if not any(version.run_id in archived_ids for version in versions):
        return store.add_many(rows), 0  # runs only: one transaction of the store's own
    stored = [stored_row(row) for row in rows]
    tag = str(archive.manifest.get("export_id") or "imported")
    workspace = Path(settings.workspace)

    def insert(connection: Any) -> tuple[list[int], int]:
        new_ids: list[int] = []
        for row in stored:
            key = connection.execute(sa_insert(runs).values(row)).inserted_primary_key
            new_ids.append(int(key[0]))
        by_archived = {int(row["id"]): new for row, new in zip(rows, new_ids, strict=True) if "id" in row}
        masks = {}
        for version in versions:
            if version.kind == "mask" and version.run_id in by_archived:
                new = by_archived[version.run_id]
                staged = archive.masks[str(version.mask_path)]
                masks[(new, version.version)] = fixes.place_mask(workspace, staged, new, version.version, tag,
                                                                 placed.write)
        return new_ids, fixes.insert_rows(connection, versions, by_archived, masks)

    return store.write(insert, "import the runs") if stored else ([], 0)


def _new_runs(store: HistoryStore, archived: list[dict]) -> list[dict]:
    """The archived runs the store does not hold yet (by :func:`run_key`, counting repeats)."""
    stamps = [str(row["timestamp"]) for row in archived if row.get("timestamp")]
    existing: Counter = Counter()
    if stamps:
        for row in store.iter_rows(RUN_KEY_COLUMNS, filters={"since": min(stamps), "until": max(stamps)}):
            existing[run_key(row)] += 1
    seen: Counter = Counter()
    fresh = []
    for row in archived:
        key = run_key(row)
        seen[key] += 1
        if seen[key] > existing[key]:
            fresh.append(row)
    return fresh


# ------------------------------------------------------------------------------------------ online SQLite backup
def backup_sqlite(store: HistoryStore, out: Path | str, *, force: bool = False,
                  settings: Settings | None = None) -> dict[str, Any]:
    """A consistent copy of a SQLite history taken while others write to it (``sqlite3`` online backup), as one
    self-contained file (rollback journal, not WAL), written atomically to ``out`` (an existing file only with
    ``force``; never the live database, ``store``'s or ``settings``')."""
    if store.path is None:
        raise UUSICError(f"the history store is {store.backend}, not a SQLite file: back PostgreSQL up with "
                         "pg_dump (docs/DEPLOY.md)", status_code=400)
    shown = str(out)
    out = _output_path(out, _live_databases(settings, store), force=force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder_context = tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-")
    except OSError as exc:
        raise UUSICError(f"cannot write {shown!r}: {exc.strerror or type(exc).__name__}", status_code=400) from None
    with folder_context as folder:
        temp = Path(folder) / "copy.sqlite3"
        source = sqlite3.connect(store.path, timeout=store.timeout)
        target = sqlite3.connect(temp)
        try:
            source.backup(target)  # pages=-1: one read transaction, one snapshot; WAL writers go on meanwhile
            target.execute("PRAGMA journal_mode = DELETE")
            check = target.execute("PRAGMA integrity_check").fetchone()[0]
            rows = target.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            target.close()
            source.close()
        if check != "ok":
            raise UUSICError(f"the backup copy failed its integrity check: {check}")
        with _writing(out, shown, force=force) as handle, temp.open("rb") as copy:
            while chunk := copy.read(1 << 20):
                handle.write(chunk)
    return {"out": shown, "runs": int(rows), "bytes": out.stat().st_size}


# ------------------------------------------------------------------------------------------ command line
def _print(report: dict[str, Any], keys: Iterable[str]) -> None:
    print(", ".join(f"{key.replace('_', ' ')}: {report[key]}" for key in keys if key in report))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core history",
                                     description="back up, move and restore the run history")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a portable archive (.tar.gz) of every run")
    export.add_argument("--out", required=True, help="the archive to write (FILE.tar.gz)")
    export.add_argument("--with-files", action="store_true", help="also the input and mask files of the runs")
    export.add_argument("--force", action="store_true", help="replace --out if it exists (never the live history)")
    restore = commands.add_parser("import", help="add an archive's runs to the configured store (all or nothing)")
    restore.add_argument("archive")
    restore.add_argument("--with-files", action="store_true", help="also write its files into this workspace")
    backup = commands.add_parser("backup", help="online copy of a SQLite history (PostgreSQL: pg_dump)")
    backup.add_argument("--out", required=True, help="the copy to write (FILE.sqlite3)")
    backup.add_argument("--force", action="store_true", help="replace --out if it exists (never the live history)")
    return parser


def _run(args: argparse.Namespace) -> None:
    from core.history import HistoryStore
    from core.settings import Settings

    settings = Settings.from_env()
    with HistoryStore.from_settings(settings) as store:
        if args.command == "export":
            manifest = export_archive(settings, store, args.out, with_files=args.with_files, force=args.force)
            counts = manifest["counts"]
            print(f"exported {counts['runs']} runs and {counts['files']} files ({counts['files_missing']} missing), "
                  f"{counts['corrections']} corrections, to {args.out} (schema {manifest['schema_revision']})")
        elif args.command == "import":
            report = import_archive(settings, store, args.archive, with_files=args.with_files)
            _print(report, ("runs_in_archive", "runs_imported", "runs_already_there", "corrections_imported",
                            "files_written", "files_already_there", "files_renamed"))
        else:
            report = backup_sqlite(store, args.out, force=args.force, settings=settings)
            print(f"copied {report['runs']} runs to {report['out']} ({report['bytes']} bytes)")


def main(argv: list[str] | None = None) -> int:
    """``python -m core history export|import|backup``: one ``error: …`` line and exit status 2 on any failure
    (typed errors say what; anything else is named by its type, never with a traceback or a server path)."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except Exception as exc:  # noqa: BLE001 - the CLI's one-line answer for every failure
        message = as_uusic_error(exc).message
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    return 0
