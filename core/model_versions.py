"""Fine-tuned model versions: where ``core train --init`` starts from and how its result enters the manifest.

* :func:`resolve_init` turns ``--init`` (a manifest model name, or a demo_unet weights file) into the file to start
  from and, for a name, its manifest entry (verified against its sha256 first: a fine-tune never starts from a
  replaced or truncated file).
* :func:`version_name` is ``<base>-ft-<YYYYMMDD-HHMM>`` (UTC).
* :func:`register_version` appends a NEW entry (own name, file and sha256) to ``models.json``: an existing name is
  refused, the other entries stay as they are, and the file is rewritten atomically under a lock
  (``models.json.lock`` beside it), so two fine-tunes ending together both land.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.models.base import ModelSpec, WeightsError, file_sha256
from core.models.registry import read_manifest, verify_weights
from core.settings import Settings

FINE_TUNABLE = ("demo_unet",)


def resolve_init(settings: Settings, value: str) -> tuple[Path, ModelSpec | None]:
    """(weights file, manifest entry or None) of ``--init``: a manifest model name first, else a file."""
    specs = read_manifest(settings.manifest_path) if settings.manifest_path.is_file() else []
    for spec in specs:
        if spec.name == value:
            if spec.arch not in FINE_TUNABLE:
                raise WeightsError(f"--init: model {value!r} is a {spec.arch!r} model; core train fine-tunes "
                                   f"{', '.join(FINE_TUNABLE)} checkpoints only")
            path, _sha = verify_weights(spec, settings.weights_dir)
            return path, spec
    path = Path(value).expanduser()
    if path.is_file():
        return path, None
    known = ", ".join(s.name for s in specs) or "none"
    raise WeightsError(f"--init: {value!r} is neither a model of the manifest (known: {known}) nor a weights file")


def version_name(base: str, now: datetime | None = None) -> str:
    """The name of a fine-tuned version of ``base``: ``<base>-ft-<YYYYMMDD-HHMM>`` (UTC)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M")
    return f"{base}-ft-{stamp}"


def _raw_manifest(path: Path) -> tuple[Any, list]:
    """The manifest as read (a list, or ``{"models": [...]}``) and its list of entries."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise WeightsError(f"model manifest {path.name} must hold a list of models")
    return data, entries


def check_new_name(settings: Settings, name: str) -> None:
    """Refuse a version name the manifest already has (a fine-tune never replaces an entry)."""
    _data, entries = _raw_manifest(settings.manifest_path)
    if any(isinstance(e, dict) and e.get("name") == name for e in entries):
        raise WeightsError(f"--name: the manifest already has a model named {name!r}; choose another name "
                           "(a fine-tuned version never replaces an entry)")


def _manifest_file(settings: Settings, weights: Path) -> str:
    """The entry's ``file``: relative to the weights folder when inside it, else absolute."""
    try:
        return Path(weights).resolve().relative_to(Path(settings.weights_dir).resolve()).as_posix()
    except ValueError:
        return str(Path(weights).resolve())


@contextlib.contextmanager
def _manifest_lock(manifest: Path) -> Iterator[None]:
    """One writer of ``models.json`` at a time (two fine-tunes ending together both land); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic replace alone
        yield
        return
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest.with_name(manifest.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def register_version(settings: Settings, name: str, weights: Path, *, base: ModelSpec | None,
                     input_size: int, datasets: list[list[str]], facts: dict) -> dict:
    """Append the entry of a fine-tuned ``weights`` file called ``name``; returns the entry written."""
    with _manifest_lock(settings.manifest_path):
        return _append(settings, name, weights, base=base, input_size=input_size, datasets=datasets, facts=facts)


def _append(settings: Settings, name: str, weights: Path, *, base: ModelSpec | None, input_size: int,
            datasets: list[list[str]], facts: dict) -> dict:
    from core.files import atomic_write_text

    check_new_name(settings, name)
    data, entries = _raw_manifest(settings.manifest_path)
    base_fields = asdict(base) if base is not None else {}
    served = [list(d) for d in (base_fields.get("datasets") or [])]
    served += [d for d in datasets if d not in served]
    entry = {"name": name, "arch": "demo_unet", "file": _manifest_file(settings, weights),
             "sha256": file_sha256(Path(weights)), "input_size": int(input_size),
             "preprocessing": base_fields.get("preprocessing") or "letterbox", "datasets": served,
             "description": (f"Fine-tuned from {base.name if base else Path(str(facts.get('init'))).name} on "
                             f"{facts.get('train_images')} corrected case(s). Demonstration only, not for diagnosis."),
             "extra": {"base_model": base.name if base else None,
                       "base_sha256": base.sha256 if base else None, "fine_tune": facts}}
    entries.append(entry)
    atomic_write_text(settings.manifest_path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return entry
