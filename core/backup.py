"""Backups and moves of the run history: a portable archive (``export`` / ``import``) and an online SQLite copy.

``python -m core history export --out FILE.tar.gz [--with-files]`` writes a gzip'd tar:

- ``runs.jsonl``: one JSON object per run, every column, exactly as stored (JSON columns as their text);
- ``files/api_in/…``, ``files/api_out/…`` (``--with-files``): the inputs and masks the runs refer to;
- ``manifest.json`` (last): format, the schema revision, counts, the source workspace, and the sha256 of every
  other member.

``python -m core history import FILE.tar.gz [--with-files]`` checks every sha256, then adds the runs to the
configured store (SQLite or PostgreSQL) in one transaction, with new ids. A run already in the store (same run key:
timestamp, source, input sha256 and image name) is skipped, so importing an archive twice adds nothing. Mask paths
under the source's ``api_out/`` are rewritten to this workspace's; with ``--with-files`` the files are written into
this ``api_in/`` / ``api_out/`` (never over a different file: a clash goes under ``imported_<export id>/``).

``python -m core history backup --out FILE.sqlite3`` copies a SQLite history while the service runs
(:meth:`sqlite3.Connection.backup`, one consistent snapshot); for PostgreSQL use ``pg_dump`` (docs/DEPLOY.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sqlite3
import sys
import tarfile
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from core.errors import ArchiveError, UUSICError
from core.files import atomic_open, atomic_write_bytes
from core.history import json_dict
from core.workspace import Key, row_files

if TYPE_CHECKING:
    from core.history import HistoryStore
    from core.settings import Settings

FORMAT = "uusic-history"
FORMAT_VERSION = 1
RUNS_MEMBER = "runs.jsonl"
MANIFEST_MEMBER = "manifest.json"
FILES_PREFIX = "files"
RUN_KEY_COLUMNS = ("timestamp", "source", "input_sha256", "img_name")


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


# ------------------------------------------------------------------------------------------ export
def export_archive(settings: Settings, store: HistoryStore, out: Path | str, *,
                   with_files: bool = False) -> dict[str, Any]:
    """Write the whole history (and with ``with_files`` its workspace files) to ``out`` (a .tar.gz, written
    atomically); returns the manifest."""
    from core.history import head_revision

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    roots = {"api_in": Path(os.path.abspath(settings.api_in)), "api_out": Path(os.path.abspath(settings.api_out))}
    digests: dict[str, str] = {}
    needed: dict[Key, bool] = {}  # file → whether a successful run needs it (a failed one may name none)
    rows = 0
    with tempfile.TemporaryFile() as spool:  # runs.jsonl, hashed as it is written
        digest = hashlib.sha256()
        for row in store.iter_rows():
            line = (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode()
            spool.write(line)
            digest.update(line)
            rows += 1
            if with_files:
                for key in row_files(settings, row, roots):
                    needed[key] = needed.get(key, False) or not row.get("error")
        digests[RUNS_MEMBER] = digest.hexdigest()
        size = spool.tell()
        spool.seek(0)
        files = missing = 0
        with atomic_open(out) as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            info = tarfile.TarInfo(RUNS_MEMBER)
            info.size, info.mode, info.mtime = size, 0o644, int(datetime.now(UTC).timestamp())
            tar.addfile(info, spool)
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
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "schema_revision": head_revision(),
                "export_id": uuid.uuid4().hex[:12], "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": {"backend": store.backend, "workspace": os.path.abspath(settings.workspace),
                           "api_in": str(roots["api_in"]), "api_out": str(roots["api_out"])},
                "with_files": with_files, "run_key": list(RUN_KEY_COLUMNS),
                "counts": {"runs": rows, "files": files, "files_missing": missing},
                "sha256": digests,
            }
            _add_bytes(tar, MANIFEST_MEMBER, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    return manifest


# ------------------------------------------------------------------------------------------ import
def _known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from core.history import _alembic_config

    return [script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()]


def _read_member(tar: tarfile.TarFile, name: str, expected: str | None) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise ArchiveError(f"the archive has no {name}") from None
    handle = tar.extractfile(member) if member.isfile() else None
    if handle is None:
        raise ArchiveError(f"{name} in the archive is not a regular file")
    data = handle.read()
    if expected is not None and _sha256(data) != expected:
        raise ArchiveError(f"{name} in the archive is damaged (its sha256 differs from the manifest's)")
    return data


def _file_key(name: str) -> Key | None:
    """(folder, rel) of an archive member ``files/<folder>/<rel>``; None for anything else or anything unsafe."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or parts[0] != FILES_PREFIX or parts[1] not in ("api_in", "api_out"):
        return None
    if PurePosixPath(name).is_absolute() or any(p in ("..", "", ".") for p in parts):
        return None
    return parts[1], PurePosixPath(*parts[2:]).as_posix()


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of an archive (checked to be one of ours)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            return _manifest(tar)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"cannot read the archive: {exc}") from None


def _manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        manifest = json.loads(_read_member(tar, MANIFEST_MEMBER, None))
    except ValueError:
        raise ArchiveError("the archive's manifest.json is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("not a UUSIC history archive (python -m core history export)")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ArchiveError(f"archive format {manifest.get('format_version')} is newer than this release reads")
    if manifest.get("schema_revision") not in _known_revisions():
        raise ArchiveError(f"the archive's history schema {manifest.get('schema_revision')!r} is newer than this "
                           "release's: upgrade this installation first")
    return manifest


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


def _place_files(tar: tarfile.TarFile, manifest: dict, settings: Settings) -> tuple[dict[Key, Key], Counter]:
    """Write the archive's files into this workspace; returns (renamed files old → new, counts)."""
    roots = {"api_in": Path(settings.api_in), "api_out": Path(settings.api_out)}
    moved: dict[Key, Key] = {}
    counts: Counter = Counter()
    digests = manifest.get("sha256") or {}
    for name, expected in sorted(digests.items()):
        key = _file_key(name)
        if key is None:
            continue
        data = _read_member(tar, name, expected)
        folder, rel = key
        target = roots[folder] / rel
        if target.is_file() and _sha256(target.read_bytes()) == expected:
            counts["files_already_there"] += 1
            continue
        if target.exists() or target.is_symlink():
            rel = f"imported_{manifest.get('export_id') or 'archive'}/{rel}"
            target = roots[folder] / rel
            moved[key] = (folder, rel)
            if target.is_file() and _sha256(target.read_bytes()) == expected:
                counts["files_already_there"] += 1
                continue
            counts["files_renamed"] += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data, exclusive=True)
        counts["files_written"] += 1
    return moved, counts


def import_archive(settings: Settings, store: HistoryStore, path: Path | str, *,
                   with_files: bool = False) -> dict[str, Any]:
    """Add an archive's runs to ``store`` (new ids, duplicates skipped) and, with ``with_files``, its files to
    this workspace. Returns counts and ``ids`` (archive id → new id)."""
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 - closed by the with below (its errors differ)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"cannot read the archive: {exc}") from None
    with tar:
        try:
            manifest = _manifest(tar)
            data = _read_member(tar, RUNS_MEMBER, (manifest.get("sha256") or {}).get(RUNS_MEMBER))
            archived = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
            if len(archived) != int((manifest.get("counts") or {}).get("runs", len(archived))):
                raise ArchiveError("runs.jsonl does not hold as many runs as the manifest says")
            if with_files and not manifest.get("with_files"):
                raise ArchiveError("the archive holds no files (it was exported without --with-files)")
            settings.ensure_workspace()
            moved, counts = _place_files(tar, manifest, settings) if with_files else ({}, Counter())
        except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
            raise ArchiveError(f"cannot read the archive: {exc}") from None
    fresh = _new_runs(store, archived)
    new_ids = store.add_many([_rewrite(row, manifest, settings, moved) for row in fresh])
    return {"runs_in_archive": len(archived), "runs_imported": len(new_ids),
            "runs_already_there": len(archived) - len(new_ids), "files_written": counts["files_written"],
            "files_already_there": counts["files_already_there"], "files_renamed": counts["files_renamed"],
            "schema_revision": manifest.get("schema_revision"),
            "ids": {int(row["id"]): new_id for row, new_id in zip(fresh, new_ids, strict=True) if "id" in row}}


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
def backup_sqlite(store: HistoryStore, out: Path | str) -> dict[str, Any]:
    """A consistent copy of a SQLite history taken while others write to it (``sqlite3`` online backup), as one
    self-contained file (rollback journal, not WAL), written atomically to ``out``."""
    if store.path is None:
        raise UUSICError(f"the history store is {store.backend}, not a SQLite file: back PostgreSQL up with "
                         "pg_dump (docs/DEPLOY.md)", status_code=400)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".backup-") as folder:
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
        with atomic_open(out) as handle, temp.open("rb") as copy:
            while chunk := copy.read(1 << 20):
                handle.write(chunk)
    return {"out": str(out), "runs": int(rows), "bytes": out.stat().st_size}


# ------------------------------------------------------------------------------------------ command line
def _print(report: dict[str, Any], keys: Iterable[str]) -> None:
    print(", ".join(f"{key.replace('_', ' ')}: {report[key]}" for key in keys if key in report))


def main(argv: list[str] | None = None) -> int:
    """``python -m core history export|import|backup``."""
    parser = argparse.ArgumentParser(prog="python -m core history",
                                     description="back up, move and restore the run history")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="a portable archive (.tar.gz) of every run")
    export.add_argument("--out", required=True, type=Path, help="the archive to write (FILE.tar.gz)")
    export.add_argument("--with-files", action="store_true", help="also the input and mask files of the runs")
    restore = commands.add_parser("import", help="add an archive's runs to the configured store")
    restore.add_argument("archive", type=Path)
    restore.add_argument("--with-files", action="store_true", help="also write its files into this workspace")
    backup = commands.add_parser("backup", help="online copy of a SQLite history (PostgreSQL: pg_dump)")
    backup.add_argument("--out", required=True, type=Path, help="the copy to write (FILE.sqlite3)")
    args = parser.parse_args(argv)

    from core.history import HistoryStore
    from core.settings import Settings

    try:
        settings = Settings.from_env()
        with HistoryStore.from_settings(settings) as store:
            if args.command == "export":
                manifest = export_archive(settings, store, args.out, with_files=args.with_files)
                counts = manifest["counts"]
                print(f"exported {counts['runs']} runs and {counts['files']} files "
                      f"({counts['files_missing']} missing) to {args.out} (schema {manifest['schema_revision']})")
            elif args.command == "import":
                report = import_archive(settings, store, args.archive, with_files=args.with_files)
                _print(report, ("runs_in_archive", "runs_imported", "runs_already_there", "files_written",
                                "files_already_there", "files_renamed"))
            else:
                report = backup_sqlite(store, args.out)
                print(f"copied {report['runs']} runs to {report['out']} ({report['bytes']} bytes)")
    except UUSICError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
