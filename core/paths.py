"""Where request paths may point, and where masks are written.

``img_path_relative`` values resolve only inside two roots: ``api_in/...`` under the workspace, anything else
under the data root (or the CLI's ``--input-dir``). ``..`` components, absolute paths outside those roots and
symlinks that lead out are refused with :class:`~core.errors.PathError`; so are paths that name no file at all
(``.``, ``./``, ``api_in``, ``api_in/``).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path, PurePosixPath

from core.errors import PathError
from core.settings import Settings

API_IN_PREFIX = "api_in"


def _parts(rel: str) -> tuple[str, ...]:
    if not isinstance(rel, str) or not rel.strip():
        raise PathError("image path is empty", field="img_path_relative", status_code=400)
    if "\x00" in rel:
        raise PathError("image path contains a NUL byte", field="img_path_relative", status_code=400)
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if ".." in parts:
        raise PathError(f"image path {rel!r} contains '..'; paths must stay inside the data root or api_in/",
                        field="img_path_relative")
    if not parts:  # ".", "./", "./." (PurePosixPath drops the dots)
        raise PathError(f"image path {rel[:80]!r} names a folder, not an image file", field="img_path_relative",
                        status_code=400)
    return parts


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_input(settings: Settings, rel: str, *, input_dir: Path | None = None, must_exist: bool = True) -> Path:
    """The real file a request's ``img_path_relative`` names; raises :class:`PathError` when it is not allowed.

    ``api_in/<name>`` → ``<workspace>/api_in/<name>``; anything else → ``<input_dir or data_root>/<rel>``.
    An absolute path is accepted only when it already lies inside one of those roots. Symlinks are followed
    and the target must still be inside the root.
    """
    parts = _parts(rel)
    data_root = Path(input_dir if input_dir is not None else settings.data_root).expanduser().resolve()
    api_in = Path(settings.api_in).expanduser().resolve()
    roots = (data_root, api_in)
    if PurePosixPath(rel.replace("\\", "/")).is_absolute() or Path(rel).is_absolute():
        candidate = Path(rel).expanduser()
        lexical_roots = [r for r in roots if _inside(Path(candidate.as_posix()), r)]
        if not lexical_roots:
            raise PathError(f"absolute path {rel!r} is outside the data root and the workspace api_in/",
                            field="img_path_relative")
        root = lexical_roots[0]
    elif parts[0] == API_IN_PREFIX:
        if len(parts) == 1:
            raise PathError(f"image path {rel[:80]!r} names the upload folder itself; name a file in it "
                            "(api_in/<name>)", field="img_path_relative", status_code=400)
        root, candidate = api_in, api_in.joinpath(*parts[1:])
    else:
        root, candidate = data_root, data_root.joinpath(*parts)
    resolved = candidate.resolve()
    if not _inside(resolved, root):
        raise PathError(f"image path {rel!r} leads outside its root (symlink?)", field="img_path_relative")
    if must_exist and not resolved.is_file():
        where = "the workspace api_in/" if root == api_in else "the data root"  # no server paths in replies
        raise PathError(f"no image file at {rel!r} (looked in {where})", field="img_path_relative", status_code=404)
    return resolved


def mask_relative_path(img_path_relative: str) -> str:
    """Where a prediction mask goes, relative to the output dir: ``imgs`` → ``masks`` and extension ``.png``.

    ``segmentation/BUSI/imgs/x.jpg`` → ``segmentation/BUSI/masks/x.png`` (the challenge layout); ``api_in/x.jpg`` →
    ``masks/x.png`` (upload names are unique); an absolute path → ``masks/<digest>/x.png``, where ``<digest>`` is a
    short sha256 of the whole path, so two inputs of the same name in different folders never share a mask file.
    """
    parts = list(_parts(img_path_relative))
    posix = PurePosixPath(img_path_relative.replace("\\", "/"))
    if posix.is_absolute():
        digest = hashlib.sha256(str(posix).encode("utf-8", "surrogatepass")).hexdigest()[:12]
        parts = ["masks", digest, parts[-1]]
    elif parts[0] == API_IN_PREFIX:
        parts = ["masks", *parts[1:]]
    else:
        parts = ["masks" if p == "imgs" else p for p in parts]
    return str(PurePosixPath(*parts).with_suffix(".png"))


def output_path(output_dir: Path, relative: str) -> Path:
    """``output_dir / relative`` with the guarantee that the result stays inside ``output_dir``."""
    _parts(relative)
    root = Path(output_dir).expanduser().resolve()
    target = (root / relative).resolve()
    if not _inside(target, root):
        raise PathError(f"output path {relative!r} leads outside {root}")
    return target


RUNS_FOLDER = "runs"


def is_shared_output(output_dir: Path, api_out: Path) -> bool:
    """True for the workspace's shared mask folders (``api_out/`` and ``api_out/models/<name>/``), where single
    analyses of every door accumulate; False for a job's own folder (a CLI ``--output-dir``, ``api_out/batch_<id>``)."""
    folder, shared = Path(output_dir).expanduser().resolve(), Path(api_out).expanduser().resolve()
    return folder == shared or folder.parent == shared / "models"


def write_new_output(output_dir: Path, relative: str, data: bytes) -> Path:
    """Write ``data`` to ``output_dir/relative`` unless a file is there, else to ``output_dir/runs/<random>/relative``;
    never replaces a file (a history row's mask stays the run's own), crash-safe (:func:`core.files.atomic_open`:
    a kill leaves at most a temporary file), and two concurrent runs of one image never share a file."""
    from core.files import atomic_write_bytes

    for candidate in (relative, *(f"{RUNS_FOLDER}/{secrets.token_hex(6)}/{relative}" for _ in range(3))):
        target = output_path(output_dir, candidate)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            return atomic_write_bytes(target, data, exclusive=True)
        except FileExistsError:
            continue
    raise PathError(f"no free output path for {relative!r} under {output_dir}")
