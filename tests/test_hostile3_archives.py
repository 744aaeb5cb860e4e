"""Hardening III (issue 22), class 7: history archives cannot hurt (``core.backup``).

- ``history import`` refuses every malformed archive whole (a typed :class:`ArchiveError`; on the command line one
  ``error: …`` line and exit status 2, never a traceback): nothing reaches the history, no file is left in the
  workspace, and the message names each refused member or row;
- members are budgeted while the archive streams: a bomb is refused after reading at most its budget (checked
  here by counting the un-gzipped bytes and with tracemalloc), never after un-gzipping all of it;
- ``history export`` / ``backup`` never replace a file without ``--force``, never the live database.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core import backup
from core.cli import main
from core.errors import ArchiveError, HistoryError, UUSICError
from core.history import HistoryStore
from core.settings import Settings

MiB = 1 << 20


# ------------------------------------------------------------------------------------------ archives to spoil
def _source_history(settings: Settings) -> None:
    """Two runs (one with an input and a mask in the workspace, one failed) in ``settings``' SQLite history."""
    settings.ensure_workspace()
    (settings.api_in / "scan.png").write_bytes(b"input bytes")
    mask = settings.api_out / "segmentation" / "DDTI" / "masks" / "scan.png"
    mask.parent.mkdir(parents=True)
    mask.write_bytes(b"mask bytes")
    with HistoryStore(settings.history_db) as store:
        store.add({"source": "api", "img_name": "scan.png", "img_path_relative": "api_in/scan.png",
                   "task": "segmentation", "dataset_name": "DDTI", "mask_path": str(mask.resolve()),
                   "mask_area_px": 12, "inference_time_sec": 0.5, "input_sha256": "ab" * 32,
                   "request": {"img_path_relative": "api_in/scan.png", "task": "segmentation"},
                   "response": {"mask_path": str(mask.resolve()), "mask_url": "/v1/masks/x"}})
        store.add({"source": "cli", "img_name": "none.png", "error": "not found", "error_type": "PathError"})


class Kit:
    """A sound exported archive, taken apart: rebuild it with changes (digests and counts kept right unless asked)."""

    def __init__(self, archive: Path):
        with tarfile.open(archive, "r:gz") as tar:
            self.members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        self.manifest = json.loads(self.members["manifest.json"])
        self.lines = self.members["runs.jsonl"].splitlines(keepends=True)

    def rows(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def pack(self, members: dict[str, bytes] | None = None, manifest: dict | None = None, *,
             extra: tuple | list = (), fix: bool = True) -> bytes:
        """A .tar.gz of ``members`` (default: the sound ones), ``extra`` entries, then the manifest (digests and
        the run count fixed to match with ``fix``)."""
        members = dict(self.members if members is None else members)
        members.pop("manifest.json", None)
        manifest = dict(self.manifest if manifest is None else manifest)
        if fix:
            manifest["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
            manifest["counts"] = {**manifest["counts"],
                                  "runs": len(members.get("runs.jsonl", b"").splitlines())}
        entries = [(_info(name, len(data)), data) for name, data in members.items()] + list(extra)
        entries.append((_info("manifest.json"), json.dumps(manifest).encode()))
        return _tar_gz(entries)

    def with_rows(self, *rows: Any, raw: bytes | None = None) -> bytes:
        """The archive with runs.jsonl replaced by ``rows`` (JSON-encoded) or ``raw`` bytes; digests fixed."""
        data = raw if raw is not None else b"".join(json.dumps(row).encode() + b"\n" for row in rows)
        return self.pack({**self.members, "runs.jsonl": data})

    def with_row(self, **changes: Any) -> bytes:
        """The archive with its first run changed (``None`` values remove the column)."""
        first, *rest = self.rows()
        changed = {k: v for k, v in {**first, **changes}.items() if v is not None or k not in changes}
        return self.with_rows(changed, *rest)

    def with_manifest(self, **changes: Any) -> bytes:
        return self.pack(manifest={**self.manifest, **changes}, fix=False)


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode = size, kind, linkname, 0o644
    return info


def _tar_gz(entries: list[tuple[tarfile.TarInfo, Any]], *, compress: bool = True, trailer: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if isinstance(data, bytes):
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else data)
    raw = buffer.getvalue() + trailer
    return gzip.compress(raw, compresslevel=6) if compress else raw


class Zeros(io.RawIOBase):
    """``size`` bytes of ``fill`` read in chunks: a large member built without holding it in memory."""

    def __init__(self, size: int, fill: bytes = b"\0"):
        self.left, self.fill = size, fill

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.left if size is None or size < 0 else min(size, self.left)
        self.left -= n
        return self.fill * n


def _file_gz(path: Path, entries: list[tuple[tarfile.TarInfo, Any]]) -> Path:
    """Stream a .tar.gz to ``path`` (large members from :class:`Zeros`)."""
    with gzip.open(path, "wb", compresslevel=6) as handle, tarfile.open(fileobj=handle, mode="w|") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else data)
    return path


def _pax_bomb(kit: Kit) -> bytes:
    info = _info("files/api_in/x.png", 1)
    info.pax_headers = {"comment": "a" * (3 * MiB)}
    return kit.pack(extra=[(info, b"x")])


def _corrupt_crc(kit: Kit) -> bytes:
    data = bytearray(kit.pack())
    data[-8] ^= 0xFF  # the gzip trailer's CRC32
    return bytes(data)


Build = Callable[[Kit], bytes]
HOSTILE: dict[str, tuple[Build, str]] = {
    # the container
    "not gzip": (lambda kit: b"just some text, not an archive", "gzip"),
    "empty file": (lambda kit: b"", "tar"),
    "gzip of text": (lambda kit: gzip.compress(b"hello " * 300), "not a readable tar"),
    "tar not gzip'd": (lambda kit: _tar_gz([(_info("runs.jsonl", 2), b"{}")], compress=False), "gzip"),
    "truncated gzip": (lambda kit: kit.pack()[: len(kit.pack()) // 2], "truncated"),
    "truncated mid-tar": (lambda kit: gzip.compress(gzip.decompress(kit.pack())[:700]), "truncated"),
    "gzip crc wrong": (_corrupt_crc, "gzip"),
    "garbage after the tar": (lambda kit: gzip.compress(gzip.decompress(kit.pack()) + os.urandom(2 * MiB)),
                              "what follows the end"),
    "pax header bomb": (_pax_bomb, "tar header"),
    # the manifest
    "no manifest": (lambda kit: _tar_gz([(_info("runs.jsonl", 0), b"")]), "no manifest.json"),
    "manifest not json": (lambda kit: _tar_gz([(_info("runs.jsonl"), b""), (_info("manifest.json", 5), b"{oops")]),
                          "manifest.json is not JSON"),
    "manifest a list": (lambda kit: _tar_gz([(_info("manifest.json", 2), b"[]")]), "not a UUSIC history archive"),
    "foreign format": (lambda kit: kit.with_manifest(format="zip-of-cats"), "not a UUSIC history archive"),
    "format_version text": (lambda kit: kit.with_manifest(format_version="1"), "format_version"),
    "format_version newer": (lambda kit: kit.with_manifest(format_version=99), "newer"),
    "schema unknown": (lambda kit: kit.with_manifest(schema_revision="9999"), "newer"),
    "schema not text": (lambda kit: kit.with_manifest(schema_revision=["0001"]), "schema"),
    "sha256 a list": (lambda kit: kit.with_manifest(sha256=["x"]), "'sha256'"),
    "sha256 not hex": (lambda kit: kit.with_manifest(sha256={"runs.jsonl": "zz"}), "'sha256'"),
    "counts as text": (lambda kit: kit.with_manifest(counts={"runs": "2"}), "'counts'"),
    "export_id a path": (lambda kit: kit.with_manifest(export_id="../../../etc"), "'export_id'"),
    "source not texts": (lambda kit: kit.with_manifest(source={"api_out": 5}), "'source'"),
    "with_files text": (lambda kit: kit.with_manifest(with_files="yes"), "'with_files'"),
    "manifest twice": (lambda kit: kit.pack(extra=[(_info("manifest.json", 2), b"{}")]), "appears twice"),
    # members
    "runs damaged": (lambda kit: kit.pack({**kit.members, "runs.jsonl": kit.members["runs.jsonl"] + b" "},
                                          fix=False), "damaged"),
    "file damaged": (lambda kit: kit.pack({**kit.members, "files/api_in/scan.png": b"evil"}, fix=False),
                     "'files/api_in/scan.png' is damaged"),
    "runs missing": (lambda kit: kit.pack({k: v for k, v in kit.members.items() if k != "runs.jsonl"}, fix=False),
                     "lists 'runs.jsonl'"),
    "file missing": (lambda kit: kit.pack({k: v for k, v in kit.members.items() if not k.startswith("files/")},
                                          fix=False), "lists 'files/api_"),
    "member not listed": (lambda kit: kit.pack(extra=[(_info("files/api_in/more.png", 3), b"abc")]),
                          "'files/api_in/more.png' is not listed"),
    "symlink": (lambda kit: kit.pack(extra=[(_info("files/api_in/l.png", 0, tarfile.SYMTYPE, "/etc/passwd"), b"")]),
                "symbolic link"),
    "hard link": (lambda kit: kit.pack(extra=[(_info("files/api_in/h.png", 0, tarfile.LNKTYPE, "runs.jsonl"), b"")]),
                  "hard link"),
    "folder": (lambda kit: kit.pack(extra=[(_info("files/api_in/dir", 0, tarfile.DIRTYPE), b"")]), "a folder"),
    "char device": (lambda kit: kit.pack(extra=[(_info("files/api_in/null", 0, tarfile.CHRTYPE), b"")]), "device"),
    "fifo": (lambda kit: kit.pack(extra=[(_info("files/api_in/pipe", 0, tarfile.FIFOTYPE), b"")]), "fifo"),
    "contiguous file": (lambda kit: kit.pack(extra=[(_info("files/api_in/c.png", 1, tarfile.CONTTYPE), b"c")]),
                        "not a regular file"),
    "absolute name": (lambda kit: kit.pack(extra=[(_info("/etc/cron.d/x", 1), b"x")]), "'/etc/cron.d/x'"),
    "dot-dot name": (lambda kit: kit.pack(extra=[(_info("files/api_in/../../../x", 1), b"x")]), "safe relative"),
    "unexpected member": (lambda kit: kit.pack(extra=[(_info("evil.sh", 1), b"x")]), "unexpected member"),
    "control character": (lambda kit: kit.pack(extra=[(_info("files/api_in/a\nb", 1), b"x")]), "control"),
    "runs twice": (lambda kit: kit.pack(extra=[(_info("runs.jsonl", 0), b"")]), "appears twice"),
    # rows
    "id is text": (lambda kit: kit.with_row(id="abc"), "id is text 'abc', not an integer"),
    "id is negative": (lambda kit: kit.with_row(id=-3), "id is out of range"),
    "ids repeat": (lambda kit: kit.with_rows(kit.rows()[0], kit.rows()[0]), "repeats line 1"),
    "timestamp a number": (lambda kit: kit.with_row(timestamp=1700000000), "timestamp is the number"),
    "timestamp not iso": (lambda kit: kit.with_row(timestamp="yesterday"), "not an ISO 8601 time"),
    "timestamp missing": (lambda kit: kit.with_row(timestamp=None), "timestamp is missing"),
    "source a list": (lambda kit: kit.with_row(source=["api"]), "source is a list"),
    "number as text": (lambda kit: kit.with_row(mask_area_px="12"), "mask_area_px is text '12'"),
    "integer too large": (lambda kit: kit.with_row(prediction=2**40), "prediction is out of range"),
    "real as text": (lambda kit: kit.with_row(inference_time_sec="0.5"), "inference_time_sec is text"),
    "real infinite": (lambda kit: kit.with_rows({**kit.rows()[0], "memory_usage_mb": float("inf")}), "finite"),
    "bool as integer": (lambda kit: kit.with_row(prediction=True), "prediction is true/false"),
    "json column not json": (lambda kit: kit.with_row(request="{not json"), "request is text"),
    "json column a number": (lambda kit: kit.with_row(edits=5), "edits is the number 5, not JSON text"),
    "response not an object": (lambda kit: kit.with_row(response="[1, 2]"), "response is not a JSON object"),
    "json nested too deep": (lambda kit: kit.with_row(measurements="[" * 500 + "]" * 500), "measurements"),
    "text with NUL": (lambda kit: kit.with_row(img_name="a\x00b"), "img_name holds a NUL"),
    "lone surrogate": (lambda kit: kit.with_rows(raw=b'{"timestamp": "2024-01-01T00:00:00", "source": "api", '
                                                      b'"img_name": "\\ud800"}\n'), "invalid Unicode"),
    "unknown column": (lambda kit: kit.with_row(drop_table="runs"), "unknown column 'drop_table'"),
    "row a list": (lambda kit: kit.with_rows([1, 2]), "not a JSON object"),
    "row not json": (lambda kit: kit.with_rows(raw=b"{'single': 'quotes'}\n"), "line 1"),
    "row not utf-8": (lambda kit: kit.with_rows(raw=b'{"source": "\xff\xfe"}\n'), "not UTF-8"),
    "row over budget": (lambda kit: kit.with_rows(raw=b'{"x": "' + b"a" * (2 * MiB) + b'"}\n'), "longer than"),
    "count differs": (lambda kit: kit.with_manifest(counts={**kit.manifest["counts"], "runs": 7}),
                      "the manifest says 7"),
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture()
def kit(tiny_settings: Settings, tmp_path: Path) -> Kit:
    _source_history(tiny_settings)
    archive = tmp_path / "sound.tar.gz"
    with HistoryStore(tiny_settings.history_db) as store:
        backup.export_archive(tiny_settings, store, archive, with_files=True)
    return Kit(archive)


@pytest.fixture()
def dest(tiny_settings: Settings, tmp_path: Path) -> Settings:
    """Another workspace whose history holds one run of its own."""
    settings = tiny_settings.with_(workspace=tmp_path / "dest")
    settings.ensure_workspace()
    with HistoryStore(settings.history_db) as store:
        store.add({"source": "cli", "img_name": "mine.png"})
    return settings


def _workspace_files(settings: Settings) -> set[str]:
    """Every file and folder under the workspace but the history database's own files."""
    root = settings.workspace
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.name.startswith("history.sqlite3")}


def _count(settings: Settings) -> int:
    with HistoryStore(settings.history_db) as store:
        return store.count()


def _cli(argv: list[str], settings: Settings, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("UUSIC_WORKSPACE", str(settings.workspace))
    monkeypatch.delenv("UUSIC_HISTORY_URL", raising=False)
    code = main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the hostile table
def test_the_sound_archive_imports(kit: Kit, dest: Settings, tmp_path: Path):
    """The table's base archive is sound: each case below fails by its one change only."""
    path = tmp_path / "sound.tar.gz"
    path.write_bytes(kit.pack())
    with HistoryStore(dest.history_db) as store:
        report = backup.import_archive(dest, store, path, with_files=True)
    assert report["runs_imported"] == 2 and report["files_written"] == 2 and _count(dest) == 3
    assert backup.read_manifest(path)["counts"]["runs"] == 2
    assert (dest.api_in / "scan.png").read_bytes() == b"input bytes"
    assert not list(dest.workspace.glob(".import-*"))


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_archive_is_refused_whole(case: str, kit: Kit, dest: Settings, tmp_path: Path, monkeypatch,
                                            capsys):
    build, expected = HOSTILE[case]
    path = tmp_path / "hostile.tar.gz"
    path.write_bytes(build(kit))
    before = _workspace_files(dest)
    with HistoryStore(dest.history_db) as store, pytest.raises(ArchiveError) as caught:
        backup.import_archive(dest, store, path, with_files=True)
    message = caught.value.message
    assert expected in message, message
    assert caught.value.status_code == 422
    assert "\n" not in message and str(dest.workspace) not in message
    assert kit.manifest["source"]["workspace"] not in message
    assert _count(dest) == 1 and _workspace_files(dest) == before  # nothing committed, nothing left behind

    code, err = _cli(["history", "import", str(path), "--with-files"], dest, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    assert _count(dest) == 1 and _workspace_files(dest) == before


def test_the_table_has_more_than_seventeen_cases():
    assert len(HOSTILE) > 17


def test_every_refused_member_and_row_is_named(kit: Kit, dest: Settings, tmp_path: Path):
    path = tmp_path / "h.tar.gz"
    links = [(_info(f"files/api_in/l{i}.png", 0, tarfile.SYMTYPE, "/etc/passwd"), b"") for i in range(3)]
    path.write_bytes(kit.pack(extra=[*links, (_info("../up", 1), b"x")]))
    with HistoryStore(dest.history_db) as store, pytest.raises(ArchiveError) as caught:
        backup.import_archive(dest, store, path)
    for name in ("l0.png", "l1.png", "l2.png", "'../up'"):
        assert name in caught.value.message
    first, second = kit.rows()
    path.write_bytes(kit.with_rows({**first, "id": "abc"}, second, {**second, "id": 9, "mask_area_px": "x"}))
    with HistoryStore(dest.history_db) as store, pytest.raises(ArchiveError) as caught:
        backup.import_archive(dest, store, path)
    assert "line 1 (id 'abc')" in caught.value.message and "line 3 (id '9')" in caught.value.message
    assert "line 2" not in caught.value.message and "nothing was imported" in caught.value.message
    many = [{**first, "id": "x"} for _ in range(backup.MAX_LISTED + 5)]
    path.write_bytes(kit.with_rows(*many))
    with HistoryStore(dest.history_db) as store, pytest.raises(ArchiveError, match="and 5 more"):
        backup.import_archive(dest, store, path)


# ------------------------------------------------------------------------------------------ all or nothing
def test_a_bad_row_after_good_ones_commits_nothing(kit: Kit, dest: Settings, tmp_path: Path, monkeypatch, capsys):
    """The issue's case: a run with ``id: "abc"`` after sound runs was committed before a crash."""
    first, second = kit.rows()
    path = tmp_path / "h.tar.gz"
    path.write_bytes(kit.with_rows(first, {**second, "id": "abc"}))
    before = _workspace_files(dest)
    code, err = _cli(["history", "import", str(path), "--with-files"], dest, monkeypatch, capsys)
    assert code == 2 and "id 'abc'" in err and err.count("\n") == 1
    assert _count(dest) == 1 and _workspace_files(dest) == before
    assert not (dest.api_in / "scan.png").exists()


def test_a_failing_store_removes_the_files_already_written(kit: Kit, dest: Settings, tmp_path: Path, monkeypatch):
    path = tmp_path / "h.tar.gz"
    path.write_bytes(kit.pack())
    before = _workspace_files(dest)
    written: list[bool] = []

    def failing_add_many(self, records):
        written.append((dest.api_in / "scan.png").is_file())  # the files are in place when the rows go in
        raise HistoryError("history store could not record runs: disk I/O error")

    monkeypatch.setattr(HistoryStore, "add_many", failing_add_many)
    with HistoryStore(dest.history_db) as store, pytest.raises(HistoryError):
        backup.import_archive(dest, store, path, with_files=True)
    monkeypatch.undo()
    assert written == [True]
    assert _count(dest) == 1 and _workspace_files(dest) == before  # files and the folders made for them: gone


def test_a_clash_written_meanwhile_rolls_the_import_back(kit: Kit, dest: Settings, tmp_path: Path, monkeypatch):
    """A file appearing under a target name between the check and the write is never replaced: the import fails
    and removes what it wrote."""
    path = tmp_path / "h.tar.gz"
    path.write_bytes(kit.pack())
    real_write = backup._Placed.write

    def racing_write(self, staged, target):
        if target.name == "scan.png" and target.parent == dest.api_out / "segmentation" / "DDTI" / "masks":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"someone else's")
        return real_write(self, staged, target)

    monkeypatch.setattr(backup._Placed, "write", racing_write)
    with HistoryStore(dest.history_db) as store, pytest.raises(FileExistsError):
        backup.import_archive(dest, store, path, with_files=True)
    assert _count(dest) == 1 and not (dest.api_in / "scan.png").exists()
    assert (dest.api_out / "segmentation" / "DDTI" / "masks" / "scan.png").read_bytes() == b"someone else's"


# ------------------------------------------------------------------------------------------ streaming budgets
def _measured_import(dest: Settings, path: Path, monkeypatch) -> tuple[str, int, int]:
    """Import ``path``; returns (the error message, the most bytes un-gzipped, the traced peak memory)."""
    expanded: list[int] = [0]
    real_read = backup._Inflater.read

    def counting_read(self, size=-1):
        try:
            return real_read(self, size)
        finally:
            expanded[0] = max(expanded[0], self.expanded)

    monkeypatch.setattr(backup._Inflater, "read", counting_read)
    with HistoryStore(dest.history_db) as store:
        tracemalloc.start()
        try:
            with pytest.raises(ArchiveError) as caught:
                backup.import_archive(dest, store, path, with_files=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return caught.value.message, expanded[0], peak


def test_a_file_bomb_is_refused_at_its_header(dest: Settings, tmp_path: Path, monkeypatch):
    """A small archive whose member expands to 128 MiB: refused before its bytes are read."""
    path = _file_gz(tmp_path / "bomb.tar.gz", [(_info("files/api_in/bomb.png", 128 * MiB), Zeros(128 * MiB))])
    assert path.stat().st_size < 1 * MiB
    message, expanded, peak = _measured_import(dest, path, monkeypatch)
    assert "'files/api_in/bomb.png'" in message and f"over its limit of {dest.max_upload_mb * MiB}" in message
    assert expanded <= backup.HEADER_BUDGET and peak < 8 * MiB
    assert _count(dest) == 1


def test_a_runs_bomb_is_refused_while_it_streams(dest: Settings, tmp_path: Path, monkeypatch):
    """runs.jsonl of 128 MiB without a line end: refused once a line passes its budget, not after reading it all."""
    path = _file_gz(tmp_path / "bomb.tar.gz", [(_info("runs.jsonl", 128 * MiB), Zeros(128 * MiB, b"a"))])
    message, expanded, peak = _measured_import(dest, path, monkeypatch)
    limit = max(dest.max_json_bytes, backup.MIN_ROW_BYTES)
    assert f"runs.jsonl line 1 is longer than {limit} bytes" in message
    assert expanded < limit + 2 * MiB and peak < 8 * MiB


def test_many_small_members_are_refused_by_the_expansion_budget(dest: Settings, tmp_path: Path, monkeypatch):
    """200 members of 1 MiB each (every one under its own budget): the archive's expansion is what refuses it."""
    entries = [(_info(f"files/api_in/f{i}.png", MiB), Zeros(MiB)) for i in range(200)]
    path = _file_gz(tmp_path / "bomb.tar.gz", entries)
    compressed = path.stat().st_size
    message, expanded, peak = _measured_import(dest, path, monkeypatch)
    assert "expands more than" in message
    assert expanded <= backup.MAX_EXPANSION_RATIO * compressed + backup.EXPANSION_ALLOWANCE + backup.READ_CHUNK
    assert expanded < 100 * MiB and peak < 8 * MiB
    assert _workspace_files(dest) == {"api_in", "api_out"}  # the staged members went with the failed import


def test_a_pax_header_bomb_is_refused_within_the_header_budget(dest: Settings, tmp_path: Path, monkeypatch):
    info = _info("files/api_in/x.png", 1)
    info.pax_headers = {"comment": "a" * (16 * MiB)}
    path = tmp_path / "pax.tar.gz"
    path.write_bytes(_tar_gz([(info, b"x")]))
    message, expanded, peak = _measured_import(dest, path, monkeypatch)
    assert "tar header" in message and expanded <= 2 * backup.HEADER_BUDGET and peak < 8 * MiB


def test_the_file_budget_follows_max_upload_mb(kit: Kit, dest: Settings, tmp_path: Path):
    path = tmp_path / "h.tar.gz"
    path.write_bytes(kit.pack({**kit.members, "files/api_in/big.png": bytes(3 * MiB)}))
    with HistoryStore(dest.history_db) as store:
        with pytest.raises(ArchiveError, match="over its limit"):
            backup.import_archive(dest.with_(max_upload_mb=2), store, path)
        assert backup.import_archive(dest.with_(max_upload_mb=4), store, path)["runs_imported"] == 2


# ------------------------------------------------------------------------------------------ export / backup outputs
def test_export_and_backup_never_overwrite_without_force(tiny_settings: Settings, tmp_path: Path):
    _source_history(tiny_settings)
    with HistoryStore(tiny_settings.history_db) as store:
        for write in (lambda out, **kw: backup.export_archive(tiny_settings, store, out, **kw),
                      lambda out, **kw: backup.backup_sqlite(store, out, settings=tiny_settings, **kw)):
            out = tmp_path / "existing.bin"
            out.write_bytes(b"precious")
            with pytest.raises(UUSICError, match="already exists: pass --force") as caught:
                write(out)
            assert caught.value.status_code == 409 and out.read_bytes() == b"precious"
            write(out, force=True)
            assert out.read_bytes() != b"precious" and out.stat().st_size > 100
            out.unlink()


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_export_and_backup_never_touch_the_live_database(tiny_settings: Settings, tmp_path: Path, force: bool):
    _source_history(tiny_settings)
    db = tiny_settings.history_db
    link = tmp_path / "link.sqlite3"
    link.symlink_to(db)
    hard = tmp_path / "hard.sqlite3"
    os.link(db, hard)
    sneaky = tiny_settings.workspace / "api_in" / ".." / db.name
    targets = [db, link, hard, sneaky, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")]
    before = db.read_bytes()
    with HistoryStore(tiny_settings.history_db) as store:
        for target in targets:
            for write in (lambda out: backup.export_archive(tiny_settings, store, out, force=force),
                          lambda out: backup.backup_sqlite(store, out, force=force, settings=tiny_settings)):
                with pytest.raises(UUSICError, match="live history database") as caught:
                    write(target)
                assert str(target) in caught.value.message
        assert store.count() == 2
    assert db.read_bytes() == before


@pytest.mark.parametrize("out", ["", ".", "folder", "folder/", "missing/"], ids=["empty", "dot", "folder",
                                                                                 "folder-slash", "missing-slash"])
def test_export_and_backup_need_a_file_name(tiny_settings: Settings, tmp_path: Path, monkeypatch, out: str):
    work = tmp_path / "cwd"
    (work / "folder").mkdir(parents=True)
    monkeypatch.chdir(work)
    with HistoryStore(tiny_settings.history_db) as store:
        for write in (lambda: backup.export_archive(tiny_settings, store, out, force=True),
                      lambda: backup.backup_sqlite(store, out, force=True)):
            with pytest.raises(UUSICError, match=r"does not name a file|is a folder") as caught:
                write()
            assert str(tmp_path) not in caught.value.message
    assert sorted(p.name for p in work.iterdir()) == ["folder"]


def test_the_cli_refuses_outputs_in_one_line(tiny_settings: Settings, tmp_path: Path, monkeypatch, capsys):
    _source_history(tiny_settings)
    monkeypatch.chdir(tiny_settings.workspace)
    archive = tmp_path / "h.tar.gz"
    assert _cli(["history", "export", "--out", str(archive)], tiny_settings, monkeypatch, capsys)[0] == 0
    for argv in (["history", "export", "--out", str(archive)],
                 ["history", "backup", "--out", str(archive)],
                 ["history", "export", "--out", "history.sqlite3", "--force"],
                 ["history", "backup", "--out", "./history.sqlite3", "--force"],
                 ["history", "export", "--out", "", "--force"],
                 ["history", "backup", "--out", ".", "--force"],
                 ["history", "export", "--out", "api_in", "--force"]):
        code, err = _cli(argv, tiny_settings, monkeypatch, capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
        assert str(tiny_settings.workspace) not in err  # only what was typed
    assert _count(tiny_settings) == 2
    code, err = _cli(["history", "export", "--out", str(archive), "--force"], tiny_settings, monkeypatch, capsys)
    assert code == 0


def test_import_errors_name_no_password_nor_server_path(kit: Kit, dest: Settings, tmp_path: Path, monkeypatch,
                                                        capsys):
    path = tmp_path / "h.tar.gz"
    path.write_bytes(kit.with_row(id="abc"))
    monkeypatch.setenv("UUSIC_WORKSPACE", str(dest.workspace))
    monkeypatch.setenv("UUSIC_HISTORY_URL", "postgresql+psycopg://u:s3cr3t-pw@127.0.0.1:1/x")
    assert main(["history", "import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "s3cr3t-pw" not in err and err.startswith("error: ") and err.count("\n") == 1
    monkeypatch.delenv("UUSIC_HISTORY_URL")
    assert main(["history", "import", str(tmp_path / "absent.tar.gz")]) == 2
    err = capsys.readouterr().err
    assert "absent.tar.gz" in err and str(dest.workspace) not in err and err.count("\n") == 1
    source_workspace = kit.manifest["source"]["workspace"]
    path.write_bytes(kit.pack({**kit.members, "files/api_in/scan.png": b"evil"}, fix=False))
    assert main(["history", "import", str(path), "--with-files"]) == 2
    assert source_workspace not in capsys.readouterr().err
