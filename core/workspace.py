"""The workspace's files and the history's rows, kept consistent and bounded.

``api_in/`` (uploads, edited images) and ``api_out/`` (masks, batch folders) hold the files the history rows point
at. Three things can drift apart, and this module finds them:

- **temporary files** (``.<name>.<random>.tmp``, :mod:`core.files`) left by a write that never finished (a crash, a
  kill): always safe to delete once no writer can still be using them (:data:`TEMP_GRACE_S`);
- **orphan files**: files under ``api_in/`` / ``api_out/`` that no history row refers to (an upload never analysed,
  a mask whose run was not recorded): reported, never deleted by the check;
- **rows whose files are missing**: reported, and marked (``purged_at``) so they are not reported again.

:class:`StartupCheck` runs all three once when an :class:`core.service.AnalysisService` is created, in a background
thread, with a bounded scan (:data:`STARTUP_SCAN_LIMIT` files), and reports in the logs (counts only, never file
names) and in ``/healthz`` (``workspace``).

Retention (:func:`collect_garbage`, ``python -m core workspace gc``): files older than ``UUSIC_RETENTION_DAYS``
are removed, then the oldest files until ``api_in/`` + ``api_out/`` fit in ``UUSIC_RETENTION_GB``; a file's age
is the newer of its mtime and the newest run that uses it. The runs keep their rows, marked ``purged_at``. Nothing
is removed without a policy, and nothing outside ``api_in/`` and ``api_out/`` ever is.

Retention never takes what is in use: a file written or used less than ``UUSIC_RETENTION_GRACE_S`` seconds ago
(an upload not yet analysed, a mask whose row is being written) is spared by both policies, and so is every file a
run in flight holds with :func:`in_use` (a lease file under ``<workspace>/.leases/``, seen by every process that
shares the workspace; a lease older than :data:`LEASE_MAX_S` belongs to a run that died and is ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from core.files import TEMP_SUFFIX

if TYPE_CHECKING:
    from core.history import HistoryStore
    from core.settings import Settings

log = logging.getLogger("uusic.workspace")
FOLDERS = ("api_in", "api_out")
TEMP_GRACE_S = 15.0  # a temporary file this old belongs to no running write (they take milliseconds)
STARTUP_SCAN_LIMIT = 200_000  # files the start-up check looks at; a bigger workspace is checked in part
BATCH_PREFIX = "batch_"  # api_out/batch_<batch_id>/: a Batch run's masks and classification.json
LEASES = ".leases"  # <workspace>/.leases/<pid>-<random>.json: the files a run in flight uses (gc spares them)
LEASE_MAX_S = 6 * 3600.0  # an older lease belongs to a run that died (a kill): ignored, and removed by gc
GB = 1024**3
Key = tuple[str, str]  # (folder, path relative to it, POSIX): how a file is named here


@dataclass(frozen=True)
class FileEntry:
    folder: str  # "api_in" | "api_out"
    rel: str  # POSIX path under the folder
    size: int
    mtime: float

    @property
    def key(self) -> Key:
        return self.folder, self.rel

    @property
    def temporary(self) -> bool:
        name = PurePosixPath(self.rel).name
        return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _roots(settings: Settings) -> dict[str, Path]:
    return {"api_in": Path(os.path.abspath(settings.api_in)), "api_out": Path(os.path.abspath(settings.api_out))}


def scan(settings: Settings, limit: int | None = None) -> tuple[list[FileEntry], bool]:
    """The regular files under ``api_in/`` and ``api_out/`` (symlinks are neither followed nor listed), at most
    ``limit`` of them; returns (files, whether the limit cut the scan short)."""
    files: list[FileEntry] = []
    for folder, root in _roots(settings).items():
        if not root.is_dir():
            continue
        for directory, subdirs, names in os.walk(root, followlinks=False):
            subdirs.sort()
            for name in sorted(names):
                if limit is not None and len(files) >= limit:
                    return files, True
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:  # removed meanwhile
                    continue
                if not _is_regular(info.st_mode):
                    continue
                rel = Path(path).relative_to(root).as_posix()
                files.append(FileEntry(folder, rel, info.st_size, info.st_mtime))
    return files, False


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


# ------------------------------------------------------------------------------------------ rows → files
def row_files(settings: Settings, row: dict, roots: dict[str, Path] | None = None) -> list[Key]:
    """The workspace files a run needs: its input and the kept original (``source_path_relative``: a DICOM upload's
    original, a cine's container) when they lie in ``api_in/``, its mask and TTA agreement map when they lie in
    ``api_out/`` (files elsewhere, e.g. the data root or a CLI output folder, are not the workspace's)."""
    from core.history_format import json_dict  # imported only when rows are read

    roots = roots or _roots(settings)
    request, response = json_dict(row.get("request")), json_dict(row.get("response"))
    block = response.get("uncertainty")
    uncertainty: dict = block if isinstance(block, dict) else {}
    inputs = (row.get("img_path_relative"), request.get("source_path_relative"))
    outputs = (row.get("mask_path"), uncertainty.get("agreement_path"))
    keys = [key for rel in inputs if (key := _input_key(rel, roots))]
    keys += [key for path in outputs
             if isinstance(path, str) and path and (key := _key_of(Path(path), roots, only="api_out"))]
    return list(dict.fromkeys(keys))


def _input_key(rel: Any, roots: dict[str, Path]) -> Key | None:
    """The ``api_in/`` key of a request path (``api_in/x.png`` or an absolute path inside it), else None."""
    if not isinstance(rel, str) or not rel:
        return None
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if len(parts) > 1 and parts[0] == "api_in" and ".." not in parts:
        return "api_in", PurePosixPath(*parts[1:]).as_posix()
    if PurePosixPath(rel).is_absolute():
        return _key_of(Path(rel), roots, only="api_in")
    return None


def _key_of(path: Path, roots: dict[str, Path], only: str) -> Key | None:
    """(folder, rel) of an absolute ``path`` inside ``roots[only]`` (lexically, or through resolved symlinks)."""
    if not path.is_absolute():
        return None
    root = roots[only]
    candidate = Path(os.path.normpath(path))
    for base in {root, Path(os.path.realpath(root))}:
        if candidate.is_relative_to(base) and candidate != base:
            return only, candidate.relative_to(base).as_posix()
    return None


def _epoch(timestamp: Any) -> float | None:
    try:
        parsed = datetime.fromisoformat(str(timestamp))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass
class References:
    """What the history says about the workspace: which runs use which file, and when they were last used."""

    users: dict[Key, list[int]] = field(default_factory=dict)  # file → the ids of the runs that need it
    last_used: dict[Key, float] = field(default_factory=dict)  # file → newest run timestamp (epoch)
    batches: dict[str, float] = field(default_factory=dict)  # batch_id → newest run timestamp
    unpurged: dict[int, list[Key]] = field(default_factory=dict)  # run id → its files (successful, not purged)
    rows: int = 0
    purged: int = 0

    def is_referenced(self, key: Key) -> bool:
        return key in self.users or self.batch_of(key) in self.batches

    @staticmethod
    def batch_of(key: Key) -> str | None:
        folder, rel = key
        first = rel.split("/", 1)[0]
        if folder == "api_out" and "/" in rel and first.startswith(BATCH_PREFIX):
            return first[len(BATCH_PREFIX):]
        return None

    def last_use(self, entry: FileEntry) -> float:
        """The newer of the file's mtime and the newest run that uses it (or, in a batch folder, the batch's)."""
        newest = entry.mtime
        for candidate in (self.last_used.get(entry.key), self.batches.get(self.batch_of(entry.key) or "")):
            if candidate is not None:
                newest = max(newest, candidate)
        return newest


def read_references(settings: Settings, store: HistoryStore) -> References:
    """Every run's workspace files, read in chunks (a few columns only)."""
    refs = References()
    roots = _roots(settings)
    for row in store.iter_rows(["timestamp", "img_path_relative", "mask_path", "batch_id", "purged_at", "error",
                                  "request", "response"]):
        refs.rows += 1
        when = _epoch(row.get("timestamp")) or 0.0
        keys = row_files(settings, row, roots)
        for key in keys:
            refs.users.setdefault(key, []).append(int(row["id"]))
            refs.last_used[key] = max(refs.last_used.get(key, 0.0), when)
        batch = row.get("batch_id")
        if batch:
            refs.batches[str(batch)] = max(refs.batches.get(str(batch), 0.0), when)
        if row.get("purged_at"):
            refs.purged += 1
        elif keys and not row.get("error"):  # a failed run may name a file that never existed
            refs.unpurged[int(row["id"])] = keys
    return refs


def _exists(settings: Settings, key: Key, roots: dict[str, Path] | None = None) -> bool:
    roots = roots or _roots(settings)
    return (roots[key[0]] / key[1]).is_file()


def missing_rows(settings: Settings, refs: References, present: set[Key] | None = None) -> list[int]:
    """Ids of runs (not yet purged) with a workspace file that does not exist. ``present``: files known to
    exist (a scan); a file not in it is looked at on disk before it counts as missing."""
    roots = _roots(settings)
    missing = []
    for run_id, keys in refs.unpurged.items():
        if any((present is None or key not in present) and not _exists(settings, key, roots) for key in keys):
            missing.append(run_id)
    return sorted(missing)


# ------------------------------------------------------------------------------------------ runs in flight
def _lease_key(path: Any, roots: dict[str, Path]) -> Key | None:
    """The workspace key of a path a run names (``api_in/x.png``, ``api_out/...`` or an absolute path), else None."""
    if isinstance(path, Path):
        path = str(path)
    key = _input_key(path, roots)
    if key is not None or not isinstance(path, str) or not path:
        return key
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if len(parts) > 1 and parts[0] == "api_out" and ".." not in parts:
        return "api_out", PurePosixPath(*parts[1:]).as_posix()
    return _key_of(Path(path), roots, only="api_out") if PurePosixPath(path).is_absolute() else None


@contextmanager
def in_use(settings: Settings, paths: Iterable[Any]) -> Iterator[list[Key]]:
    """Hold the workspace files ``paths`` (request paths such as ``api_in/x.png``, or absolute paths) for a run in
    flight: ``workspace gc`` in any process spares them until the block ends. Yields the keys held; paths outside
    ``api_in/`` / ``api_out/`` are ignored. A lease that cannot be written (read-only workspace) holds nothing."""
    roots = _roots(settings)
    keys = list(dict.fromkeys(key for path in paths if (key := _lease_key(path, roots))))
    lease: Path | None = None
    if keys:
        folder = Path(settings.workspace) / LEASES
        target = folder / f"{os.getpid()}-{uuid.uuid4().hex}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_text(json.dumps({"pid": os.getpid(), "files": keys}), encoding="utf-8")
            os.replace(temporary, target)
            lease = target
        except OSError as exc:
            log.warning("could not write a lease for a run in flight: %s", exc.strerror or type(exc).__name__)
    try:
        yield keys
    finally:
        if lease is not None:
            with suppress(OSError):
                lease.unlink()


def held_files(settings: Settings, *, now: float | None = None, prune: bool = False) -> set[Key]:
    """The files that runs in flight hold (:func:`in_use`), from every lease younger than :data:`LEASE_MAX_S`;
    ``prune``: remove the older ones (their runs died) and unreadable ones."""
    now = time.time() if now is None else now
    folder = Path(settings.workspace) / LEASES
    held: set[Key] = set()
    try:
        leases = sorted(folder.glob("*.json"))
    except OSError:
        return held
    for lease in leases:
        try:
            stale = now - lease.stat().st_mtime > LEASE_MAX_S
            files = [] if stale else json.loads(lease.read_text(encoding="utf-8")).get("files", [])
            held.update((str(folder_), str(rel)) for folder_, rel in files if folder_ in FOLDERS)
        except (OSError, ValueError, TypeError, AttributeError):
            stale = True  # a lease being written is a temporary file, never *.json: this one is damaged
        if stale and prune:
            with suppress(OSError):
                lease.unlink()
    return held


# ------------------------------------------------------------------------------------------ removing files
def _remove(settings: Settings, key: Key) -> bool:
    """Delete one file of ``api_in/`` / ``api_out/``; False when it was not there or is not one to remove.

    Only a regular file (never a symlink, never a folder) whose real folder lies inside its root is removed."""
    root = _roots(settings)[key[0]]
    path = root / key[1]
    real_root, real_parent = os.path.realpath(root), os.path.realpath(path.parent)
    if ".." in PurePosixPath(key[1]).parts or os.path.commonpath([real_root, real_parent]) != real_root:
        log.error("refused to remove a file outside %s/", key[0])
        return False
    try:
        if not _is_regular(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _prune_batch_folders(settings: Settings, keys: Iterable[Key]) -> None:
    """Remove the ``api_out/batch_<id>/`` folders (and their subfolders) that a removal left empty. Other folders
    (``api_in/``, ``api_out/masks/``...) stay: writers expect them."""
    root = _roots(settings)["api_out"]
    for folder, rel in keys:
        if folder != "api_out" or References.batch_of((folder, rel)) is None:
            continue
        top = root / rel.split("/", 1)[0]
        current = (root / rel).parent
        while current.is_relative_to(top):
            try:
                current.rmdir()  # only when empty
            except OSError:
                break
            current = current.parent


def remove_temporaries(settings: Settings, files: Iterable[FileEntry], *, grace: float = TEMP_GRACE_S,
                       now: float | None = None) -> tuple[int, list[FileEntry]]:
    """Delete the temporary files older than ``grace`` seconds; returns (how many, the younger ones)."""
    now = time.time() if now is None else now
    removed, young = 0, []
    for entry in files:
        if not entry.temporary:
            continue
        if now - entry.mtime < grace:
            young.append(entry)
            continue
        try:
            removed += _remove(settings, entry.key)
        except OSError as exc:
            log.warning("could not remove a temporary file in %s: %s", entry.folder, exc.strerror)
    return removed, young


# ------------------------------------------------------------------------------------------ the start-up check
def check(settings: Settings, store: HistoryStore | None, *, limit: int | None = STARTUP_SCAN_LIMIT,
          grace: float | None = None, mark_missing: bool = True, wait_for_young: bool = True) -> dict[str, Any]:
    """Delete leftover temporary files, find orphan files and runs whose files are missing (marked purged when
    ``mark_missing``). ``store`` None: only the temporaries. ``grace``: a temporary file younger than this may
    belong to a write in progress (another process): with ``wait_for_young`` it is removed once it is that old.
    Returns counts (no names)."""
    grace = TEMP_GRACE_S if grace is None else grace
    start = time.monotonic()
    files, truncated = scan(settings, limit)
    removed, young = remove_temporaries(settings, files, grace=grace)
    report: dict[str, Any] = {"files": sum(1 for f in files if not f.temporary),
                              "bytes": sum(f.size for f in files if not f.temporary), "truncated": truncated,
                              "temporaries_removed": removed, "orphan_files": None, "rows": None,
                              "rows_missing_files": None, "rows_marked_purged": 0}
    if store is not None:
        refs = read_references(settings, store)
        present = {f.key for f in files if not f.temporary}
        report["orphan_files"] = sum(1 for key in present if not refs.is_referenced(key))
        missing = missing_rows(settings, refs, present)
        report["rows"], report["rows_missing_files"] = refs.rows, len(missing)
        if missing and mark_missing:
            report["rows_marked_purged"] = store.mark_purged(missing)
    if young and wait_for_young:  # a temporary file still there after the grace period is a leftover too
        time.sleep(max(0.0, grace - (time.time() - max(f.mtime for f in young))) + 0.05)
        later, _ = remove_temporaries(settings, young, grace=0.0)
        report["temporaries_removed"] += later
    elif young:
        report["temporaries_pending"] = len(young)
    report["seconds"] = round(time.monotonic() - start, 3)
    report["checked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


class SkippedCheck:
    """No workspace check: a process that records nothing and leaves the workspace alone (the batch CLI without
    ``--record``) does not pay for opening the history."""

    def summary(self) -> dict[str, Any]:
        return {"state": "skipped"}

    def wait(self, timeout: float | None = None) -> bool:
        return True


class StartupCheck:
    """:func:`check` once, in a background thread, for a service's settings; :meth:`summary` is its ``/healthz``
    entry. ``store``: the history store handed to the service, else the check opens (and closes) its own, so the
    service's own (opened on its first use) is left alone."""

    def __init__(self, settings: Settings, store: HistoryStore | None = None, *, background: bool = True):
        self._settings, self._store = settings, store
        self._summary: dict[str, Any] = {"state": "running"}
        self._done = threading.Event()
        if background:
            threading.Thread(target=self.run, name="uusic-workspace-check", daemon=True).start()
        else:
            self.run()

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def run(self) -> None:
        from core.history import HistoryStore

        settings, given = self._settings, self._store
        own: HistoryStore | None = None
        try:
            try:
                store = given if given is not None else (own := HistoryStore.from_settings(settings))
            except Exception as exc:  # noqa: BLE001 - the files are still checked without the history
                log.warning("workspace check without the history: %s", getattr(exc, "message", type(exc).__name__))
                report = check(settings, None)
                self._summary = {"state": "partial", "error_type": type(exc).__name__, **report}
                return
            report = check(settings, store)
            self._summary = {"state": "done", **report}
            problems = report["orphan_files"] or report["rows_missing_files"]
            (log.warning if problems else log.info)(
                "workspace check: %d files, %d temporary files removed, %d orphan files (no history row), "
                "%d runs whose files are missing (%d marked purged)%s", report["files"],
                report["temporaries_removed"], report["orphan_files"], report["rows_missing_files"],
                report["rows_marked_purged"], " (scan limit reached)" if report["truncated"] else "")
        except Exception as exc:  # noqa: BLE001 - a check must never take the service down
            log.warning("workspace check failed: %s", getattr(exc, "message", None) or type(exc).__name__)
            self._summary = {"state": "failed", "error_type": type(exc).__name__}
        finally:
            if own is not None:
                own.close()
            self._done.set()


# ------------------------------------------------------------------------------------------ status and gc
def status(settings: Settings, store: HistoryStore) -> dict[str, Any]:
    """Usage per folder, the history (its store as :func:`core.redact.redact_url` shows it: never a password) and
    its rows, the leftovers, the files runs in flight hold, and the policy (changes nothing)."""
    from core.redact import redact_url

    files, _ = scan(settings)
    refs = read_references(settings, store)
    folders = {}
    for folder in FOLDERS:
        mine = [f for f in files if f.folder == folder and not f.temporary]
        folders[folder] = {"files": len(mine), "bytes": sum(f.size for f in mine)}
    present = {f.key for f in files if not f.temporary}
    return {
        "workspace": str(settings.workspace), "folders": folders, "history_store": redact_url(store.url),
        "bytes": sum(f.size for f in files), "history": {"rows": refs.rows, "purged": refs.purged},
        "held_by_runs_in_flight": len(held_files(settings)),
        "leftovers": {"temporaries": sum(1 for f in files if f.temporary),
                      "orphan_files": sum(1 for key in present if not refs.is_referenced(key)),
                      "rows_missing_files": len(missing_rows(settings, refs, present))},
        "policy": {"days": settings.retention_days, "max_gb": settings.retention_gb,
                   "grace_s": settings.retention_grace_s},
    }


def plan_garbage(settings: Settings, files: list[FileEntry], refs: References, *, days: float | None,
                 max_gb: float | None, now: float | None = None, grace: float = 0.0,
                 held: Iterable[Key] = ()) -> list[tuple[FileEntry, str]]:
    """The files retention removes, each with why (``"age"`` / ``"size"`` / ``"temporary"``), oldest first.

    Never chosen: a file written or used less than ``grace`` seconds ago, a file in ``held`` (runs in flight), a
    temporary file younger than :data:`TEMP_GRACE_S` (a write in progress); they still count towards ``max_gb``."""
    now = time.time() if now is None else now
    held = set(held)
    chosen: list[tuple[FileEntry, str]] = []
    kept: list[tuple[float, FileEntry, bool]] = []  # (last use, file, whether the size policy may take it)
    for entry in files:
        if entry.temporary:
            if now - entry.mtime >= TEMP_GRACE_S:
                chosen.append((entry, "temporary"))
            else:
                kept.append((entry.mtime, entry, False))
            continue
        used = refs.last_use(entry)
        spared = entry.key in held or now - used < grace
        if days is not None and used < now - days * 86400 and not spared:
            chosen.append((entry, "age"))
        else:
            kept.append((used, entry, not spared))
    if max_gb is not None:
        chosen += _over_budget(kept, max_gb * GB)
    return chosen


def _over_budget(kept: list[tuple[float, FileEntry, bool]], budget: float) -> list[tuple[FileEntry, str]]:
    """The least recently used removable files of ``kept`` to remove until the rest fits in ``budget`` bytes."""
    total = sum(entry.size for _, entry, _ in kept)
    chosen: list[tuple[FileEntry, str]] = []
    for _, entry, removable in sorted(kept, key=lambda item: (item[0], item[1].key)):
        if total <= budget:
            break
        if removable:
            chosen.append((entry, "size"))
            total -= entry.size
    return chosen


def collect_garbage(settings: Settings, store: HistoryStore, *, days: float | None = None,
                    max_gb: float | None = None, dry_run: bool = False, now: float | None = None,
                    grace: float | None = None) -> dict[str, Any]:
    """Apply the retention policy (``days`` / ``max_gb`` / ``grace``; None: the settings'): remove the expired
    files of ``api_in/`` and ``api_out/`` and mark the runs that used them purged (the rows stay); files used in
    the last ``grace`` seconds and files of runs in flight (:func:`in_use`) stay. ``dry_run``: only say."""
    days = settings.retention_days if days is None else days
    max_gb = settings.retention_gb if max_gb is None else max_gb
    grace = settings.retention_grace_s if grace is None else grace
    files, _ = scan(settings)
    refs = read_references(settings, store)
    held = held_files(settings, now=now, prune=not dry_run)  # read last: a run that started during the scan too
    plan = plan_garbage(settings, files, refs, days=days, max_gb=max_gb, now=now, grace=grace, held=held)
    run_ids = sorted({run_id for entry, _ in plan for run_id in refs.users.get(entry.key, ())})
    report: dict[str, Any] = {
        "dry_run": dry_run, "policy": {"days": days, "max_gb": max_gb, "grace_s": grace},
        "files_removed": len(plan), "bytes_freed": sum(entry.size for entry, _ in plan),
        "by_reason": {reason: sum(1 for _, r in plan if r == reason) for reason in ("age", "size", "temporary")},
        "runs_marked_purged": len(run_ids), "files_kept": len(files) - len(plan),
        "bytes_kept": sum(f.size for f in files) - sum(entry.size for entry, _ in plan),
    }
    if dry_run or not plan:
        return report
    # Rows first: a crash between the two leaves marked rows whose files are still there (removed next time),
    # never unmarked rows pointing at removed files.
    report["runs_marked_purged"] = store.mark_purged(run_ids)
    freed = sum(entry.size for entry, _ in plan if _remove(settings, entry.key))
    report["bytes_freed"] = freed
    _prune_batch_folders(settings, [entry.key for entry, _ in plan])
    log.info("workspace gc: %d files removed (%d bytes), %d runs marked purged", len(plan), freed,
             report["runs_marked_purged"])
    return report


# ------------------------------------------------------------------------------------------ command line
def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"  # pragma: no cover


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core workspace",
                                     description="usage of api_in/ and api_out/, and retention (gc)")
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser("status", help="files and bytes per folder, history rows, leftovers")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    gc_parser = commands.add_parser("gc", help="remove expired inputs and masks (rows kept, marked purged)")
    gc_parser.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    gc_parser.add_argument("--days", type=float, default=None, help="keep files used in the last N days "
                                                                    "(default: UUSIC_RETENTION_DAYS)")
    gc_parser.add_argument("--max-gb", type=float, default=None, help="keep at most G GB, oldest removed first "
                                                                      "(default: UUSIC_RETENTION_GB)")
    gc_parser.add_argument("--grace-s", type=float, default=None,
                           help="never remove a file written or used in the last S seconds "
                                "(default: UUSIC_RETENTION_GRACE_S, 3600); files of runs in flight always stay")
    gc_parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _gc(settings: Settings, store: HistoryStore, args: argparse.Namespace) -> dict[str, Any] | int:
    """``workspace gc``: its report, or an exit status (2: a bad option, 0: no policy, nothing to do)."""
    for name in ("days", "max_gb"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    if args.grace_s is not None and not args.grace_s >= 0:
        print("error: --grace-s must be zero or more", file=sys.stderr)
        return 2
    days = args.days if args.days is not None else settings.retention_days
    max_gb = args.max_gb if args.max_gb is not None else settings.retention_gb
    if days is None and max_gb is None:
        print("nothing to do: no retention policy (set UUSIC_RETENTION_DAYS / UUSIC_RETENTION_GB, "
              "or pass --days / --max-gb); nothing is removed by default", file=sys.stderr)
        return 0
    return collect_garbage(settings, store, days=days, max_gb=max_gb, dry_run=args.dry_run, grace=args.grace_s)


def main(argv: list[str] | None = None) -> int:
    """``python -m core workspace status|gc [--dry-run] [--days N] [--max-gb G] [--grace-s S] [--json]``."""
    args = _parser().parse_args(argv)

    from core.errors import UUSICError
    from core.history import HistoryStore
    from core.redact import redact_text
    from core.settings import Settings

    try:
        settings = Settings.from_env()
        with HistoryStore.from_settings(settings) as store:
            report = status(settings, store) if args.command == "status" else _gc(settings, store, args)
    except UUSICError as exc:
        print(f"error: {redact_text(exc.message)}", file=sys.stderr)
        return 2
    if isinstance(report, int):
        return report
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.command == "status":
        _print_status(report)
    else:
        _print_gc(report)
    return 0


def _print_status(report: dict) -> None:
    print(f"workspace {report['workspace']}")
    for folder, usage in report["folders"].items():
        print(f"  {folder + '/':<9}{usage['files']:>8} files  {_size(usage['bytes']):>10}")
    history, left = report["history"], report["leftovers"]
    print(f"history: {report.get('history_store') or '?'}: {history['rows']} runs ({history['purged']} purged)")
    print(f"leftovers: {left['temporaries']} temporary files, {left['orphan_files']} orphan files (no run), "
          f"{left['rows_missing_files']} runs whose files are missing")
    policy = report["policy"]
    print(f"retention: days={policy['days'] or 'forever'}, max_gb={policy['max_gb'] or 'unlimited'}, "
          f"grace_s={policy.get('grace_s', 0):g} (files used more recently, and "
          f"{report.get('held_by_runs_in_flight', 0)} files of runs in flight, are never removed)")


def _print_gc(report: dict) -> None:
    verb = "would remove" if report["dry_run"] else "removed"
    reasons = ", ".join(f"{n} {r}" for r, n in report["by_reason"].items() if n)
    print(f"{verb} {report['files_removed']} files ({_size(report['bytes_freed'])}"
          f"{'; ' + reasons if reasons else ''}); {report['runs_marked_purged']} runs "
          f"{'would be' if report['dry_run'] else ''} marked purged; kept {report['files_kept']} files "
          f"({_size(report['bytes_kept'])})".replace("  ", " "))
