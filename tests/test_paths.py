"""Request paths resolve only inside the data root and the workspace's api_in/."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from core.errors import PathError
from core.paths import mask_relative_path, output_path, resolve_input
from core.settings import Settings


@pytest.fixture()
def roots(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    (data / "segmentation/BUSI/imgs").mkdir(parents=True)
    (data / "segmentation/BUSI/imgs/a.jpg").write_bytes(b"x")
    settings = Settings(workspace=tmp_path / "ws", data_root=data)
    settings.ensure_workspace()
    (settings.api_in / "up.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    return settings


def test_relative_paths_resolve_in_their_roots(roots: Settings):
    assert resolve_input(roots, "segmentation/BUSI/imgs/a.jpg") == (roots.data_root / "segmentation/BUSI/imgs/a.jpg")
    assert resolve_input(roots, "api_in/up.png") == roots.api_in / "up.png"
    assert resolve_input(roots, "segmentation\\BUSI\\imgs\\a.jpg").name == "a.jpg"


def test_dotdot_refused(roots: Settings):
    for rel in ("../secret.txt", "segmentation/../../secret.txt", "api_in/../../secret.txt", "a/./../b.png"):
        with pytest.raises(PathError, match=re.escape("'..'")):
            resolve_input(roots, rel)


def test_absolute_paths(roots: Settings):
    with pytest.raises(PathError, match="outside"):
        resolve_input(roots, str(roots.data_root.parent / "secret.txt"))
    with pytest.raises(PathError, match="outside"):
        resolve_input(roots, "/etc/passwd")
    inside = roots.data_root / "segmentation/BUSI/imgs/a.jpg"
    assert resolve_input(roots, str(inside)) == inside


def test_symlink_out_refused(roots: Settings):
    link = roots.data_root / "segmentation/BUSI/imgs/link.jpg"
    os.symlink(roots.data_root.parent / "secret.txt", link)
    with pytest.raises(PathError, match="outside its root"):
        resolve_input(roots, "segmentation/BUSI/imgs/link.jpg")
    dir_link = roots.api_in / "sub"
    os.symlink(roots.data_root.parent, dir_link)
    with pytest.raises(PathError, match="outside its root"):
        resolve_input(roots, "api_in/sub/secret.txt")


def test_missing_empty_and_nul(roots: Settings):
    with pytest.raises(PathError) as missing:
        resolve_input(roots, "segmentation/BUSI/imgs/none.jpg")
    assert missing.value.status_code == 404
    for bad in ("", "   ", "a\x00.png"):
        with pytest.raises(PathError):
            resolve_input(roots, bad)
    assert resolve_input(roots, "segmentation/BUSI/imgs/none.jpg", must_exist=False).name == "none.jpg"


def test_input_dir_overrides_data_root(roots: Settings, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.png").write_bytes(b"x")
    assert resolve_input(roots, "b.png", input_dir=other) == other / "b.png"
    with pytest.raises(PathError):
        resolve_input(roots, "segmentation/BUSI/imgs/a.jpg", input_dir=other)


def test_mask_paths():
    assert mask_relative_path("segmentation/BUSI/imgs/x.jpg") == "segmentation/BUSI/masks/x.png"
    assert mask_relative_path("api_in/up.jpeg") == "masks/up.png"
    assert mask_relative_path("segmentation/imgset/imgs/img_1.bmp") == "segmentation/imgset/masks/img_1.png"


def test_output_path_stays_inside(tmp_path: Path):
    assert output_path(tmp_path, "masks/a.png") == (tmp_path / "masks/a.png").resolve()
    with pytest.raises(PathError):
        output_path(tmp_path, "../a.png")
