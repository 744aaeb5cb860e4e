"""core.samples: samples from a data root (json or folder layout) and safe, metadata-free uploads."""

from __future__ import annotations

import errno
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ImageError
from core.samples import UploadError, list_samples, random_sample, safe_stem, save_upload
from core.settings import Settings
from tests.conftest import SHARED_DATA, write_image


def _png(width=40, height=30, *, seed=0, mode="RGB", fmt="PNG", **save) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_random_sample_from_ground_truth(tiny_data_root: Path):
    sample = random_sample(tiny_data_root, "segmentation", "ddti", rng=random.Random(1))
    assert sample["dataset_name"] == "DDTI" and sample["organ"] == "Thyroid"
    assert sample["img_path_relative"].startswith("segmentation/DDTI/imgs/")
    assert sample["mask_path_relative"].startswith("segmentation/DDTI/masks/")
    assert sample["img_size_bytes"] == (tiny_data_root / sample["img_path_relative"]).stat().st_size
    assert sample["img_dimensions"] == list(Image.open(tiny_data_root / sample["img_path_relative"]).size)
    assert sample["seg_target_info"] == "thyroid nodule"
    cls = random_sample(tiny_data_root, "classification", "BUSI")
    assert cls["class_label_index"] in (0, 1) and cls["class_label_name"] in ("benign", "malignant")
    assert len(list_samples(tiny_data_root, "classification", "BUSI")) == 3
    assert random_sample(tiny_data_root, "segmentation", "BUSI") is None  # no such images there
    assert random_sample(tiny_data_root, "segmentation", "NoSuchSet") is None


def test_random_sample_skips_entries_without_files(tiny_data_root: Path):
    for path in (tiny_data_root / "segmentation/DDTI/imgs").glob("seg_[01].png"):
        path.unlink()
    for seed in range(5):
        assert random_sample(tiny_data_root, "segmentation", "DDTI", rng=random.Random(seed))["img_name"] == "seg_2.png"


def test_scan_layout_without_json(tmp_path: Path):
    write_image(tmp_path / "segmentation/CAMUS/imgs/p1.png", 20, 16)
    (tmp_path / "segmentation/CAMUS/masks").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / "segmentation/CAMUS/masks/p1.png")
    write_image(tmp_path / "classification/Appendix/1/a.png", 20, 20)
    (tmp_path / "classification/Appendix/1/notes.txt").write_text("not an image")
    seg = random_sample(tmp_path, "segmentation", "CAMUS")
    assert seg["mask_path_relative"] == "segmentation/CAMUS/masks/p1.png" and seg["img_dimensions"] == [20, 16]
    cls = list_samples(tmp_path, "classification", "Appendix")
    assert len(cls) == 1 and cls[0]["class_label_index"] == 1
    assert random_sample(tmp_path, "classification", "Appendix")["class_label_name"] == "abnormal"


@pytest.mark.skipif(not (SHARED_DATA / "ground_truth.json").is_file(), reason="shared data not present")
def test_shared_data_root_fetal_head_has_spacing():
    sample = random_sample(SHARED_DATA, "segmentation", "Fetal_HC")
    assert sample["pixel_spacing_mm"] > 0 and sample["organ"] == "Head"
    assert random_sample(SHARED_DATA, "segmentation", "KidneyUS") is None


def test_safe_stem():
    assert safe_stem("测试 图片 (1).JPG") == "测试_图片_1"
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("..\\..\\win.ini") == "win"
    assert safe_stem(".hidden") == "hidden"
    assert safe_stem("....") == "image" and safe_stem("") == "image"
    assert len(safe_stem("x" * 300 + ".png")) == 40


def test_upload_png_stays_png_jpeg_stays_jpeg_unique_names(tiny_settings: Settings):
    data = _png()
    first = save_upload(tiny_settings, data, "scan one.png")
    second = save_upload(tiny_settings, data, "scan one.png")
    assert first["img_path_relative"] != second["img_path_relative"]
    assert first["img_name"].startswith("scan_one-") and first["img_format"] == "png"
    stored = tiny_settings.workspace / first["img_path_relative"]
    assert stored.is_file() and stored.stat().st_size == first["img_size_bytes"]
    assert first["img_dimensions"] == [40, 30]
    assert np.array_equal(np.asarray(Image.open(stored)), np.asarray(Image.open(io.BytesIO(data))))  # lossless
    jpg = save_upload(tiny_settings, _png(fmt="JPEG"), "病人 张三.jpeg")
    assert jpg["img_name"].endswith(".jpg") and jpg["img_format"] == "jpg"
    assert Image.open(tiny_settings.workspace / jpg["img_path_relative"]).format == "JPEG"
    for fmt, name in (("BMP", "x.bmp"), ("TIFF", "x.tiff"), ("GIF", "x.gif")):
        saved = save_upload(tiny_settings, _png(fmt=fmt, mode="RGB" if fmt != "GIF" else "P"), name)
        assert saved["img_format"] == "png" and saved["img_name"].endswith(".png")


def test_upload_strips_exif_and_applies_orientation(tiny_settings: Settings):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    exif[0x010F] = "ScannerCorp"
    exif[0x013B] = "Patient Name"  # Artist
    data = _png(40, 30, fmt="JPEG", exif=exif.tobytes())
    saved = save_upload(tiny_settings, data, "x.jpg")
    stored = Image.open(tiny_settings.workspace / saved["img_path_relative"])
    assert not stored.getexif() and "exif" not in stored.info
    assert stored.size == (30, 40) and saved["img_dimensions"] == [30, 40]
    assert b"Patient Name" not in (tiny_settings.workspace / saved["img_path_relative"]).read_bytes()
    png = Image.new("RGB", (20, 20))
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "Jane Doe")
    buffer = io.BytesIO()
    png.save(buffer, format="PNG", pnginfo=info)
    saved = save_upload(tiny_settings, buffer.getvalue(), "y.png")
    assert b"Jane Doe" not in (tiny_settings.workspace / saved["img_path_relative"]).read_bytes()


def test_upload_refuses_bad_input(tiny_settings: Settings):
    with pytest.raises(ImageError):
        save_upload(tiny_settings, b"%PDF-1.4 not an image", "x.png")
    with pytest.raises(ImageError):
        save_upload(tiny_settings, b"", "x.png")
    small = tiny_settings.with_(max_upload_mb=0)
    with pytest.raises(UploadError) as info:
        save_upload(small, _png(), "x.png")
    assert info.value.status_code == 413 and "limit" in info.value.message
    assert list(tiny_settings.api_in.iterdir()) == []  # nothing half-written


def test_disk_full_is_reported_clearly(tiny_settings: Settings, monkeypatch):
    import os as _os

    real_fdopen = _os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.handle = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.files.os.fdopen", FullDisk)  # save_upload writes through core.files
    with pytest.raises(UploadError) as info:
        save_upload(tiny_settings, _png(), "x.png")
    assert info.value.status_code == 507 and "disk is full" in info.value.message
    assert list(tiny_settings.api_in.iterdir()) == []
