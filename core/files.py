"""Crash-safe files: every file the product writes appears under its final name complete or not at all.

A file is written to a temporary name in the same folder (``.<name>.<random>.tmp``), flushed and fsync'd, then
renamed into place (atomic on POSIX); the folder is fsync'd so the rename survives a power cut. A crash leaves at
most a temporary file, which :func:`leftover_temporaries` finds and the workspace check cleans.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def temporary_name(target: Path) -> Path:
    """The temporary sibling a write of ``target`` goes through."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(target: Path | str, *, exclusive: bool = False) -> Iterator[IO[bytes]]:
    """A binary handle whose content replaces ``target`` only when the block ends without an error.

    ``exclusive``: refuse (``FileExistsError``) when ``target`` already exists, at the moment of the rename.
    """
    target = Path(target)
    temp = temporary_name(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temp, target)  # fails if target exists; no window where a half file is visible
            temp.unlink()
        else:
            os.replace(temp, target)
        _fsync_folder(target.parent)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path | str, data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_open`)."""
    with atomic_open(target, exclusive=exclusive) as handle:
        handle.write(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str, *, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(target, text.encode(encoding))


def atomic_save_image(image: object, target: Path | str, **save_kwargs: object) -> Path:
    """``PIL.Image.save`` into memory, then :func:`atomic_write_bytes` (a mask or an upload)."""
    buffer = io.BytesIO()
    image.save(buffer, **save_kwargs)  # type: ignore[attr-defined]
    return atomic_write_bytes(target, buffer.getvalue())


def leftover_temporaries(root: Path) -> list[Path]:
    """Temporary files under ``root`` left by writes that never finished (a crash, a kill)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(f".*{TEMP_SUFFIX}") if p.is_file())


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file, read in 1 MiB blocks (never whole into memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
