"""Demo studies for a test PACS: ultrasound DICOMs made from the data root's segmentation images.

``python -m core pacs demo-load`` stores one study per segmentation dataset of the data root (its first image; a
3-frame cine for CAMUS) with ``StudyDescription`` = the dataset, ``BodyPartExamined`` = the organ and, when the
ground truth knows the pixel spacing, one ultrasound region calibrated with it. It also writes the rule file
``<workspace>/pacs/rules.json`` (StudyDescription → dataset) when there is none, so ``pacs watch`` and ``pacs
analyze`` without ``--dataset`` know what each study is. Synthetic patients only (``DEMO^<dataset>``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import UID

from core.files import atomic_write_text
from core.pacs import Pacs
from core.pacs_results import RULES_NAME

US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
US_MULTI_FRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")


def ultrasound_dicom(frames: Sequence[np.ndarray], *, spacing_mm: float | None = None, study_uid: str | None = None,
                     patient_id: str = "DEMO", patient_name: str = "DEMO^PATIENT", study_date: str = "20260101",
                     description: str = "", body_part: str = "") -> Any:
    """An 8-bit MONOCHROME2 ultrasound DICOM of ``frames`` (H x W uint8; several → multi-frame), calibrated by one
    ultrasound region covering the image when ``spacing_mm`` is given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    multi = len(frames) > 1
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTI_FRAME if multi else US_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID, ds.file_meta.TransferSyntaxUID = generate_uid(), ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", patient_name, patient_id
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = study_date, "101500", "1", patient_id[-16:]
    ds.StudyDescription, ds.BodyPartExamined = description[:64], body_part[:16]
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if spacing_mm:
        region = Dataset()
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = ds.Columns - 1, ds.Rows - 1
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # centimetres
        region.PhysicalDeltaX = region.PhysicalDeltaY = float(spacing_mm) / 10
        ds.SequenceOfUltrasoundRegions = [region]
    if multi:
        ds.NumberOfFrames, ds.FrameTime = len(frames), 40.0
    ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    return ds


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def load_demo(pacs: Pacs, data_root: Path, workspace: Path) -> list[dict]:
    """Store one demo study per segmentation dataset of ``data_root``; one summary per study stored."""
    entries = json.loads((data_root / "ground_truth.json").read_text(encoding="utf-8"))
    chosen: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("task") == "segmentation":
            chosen.setdefault(str(entry["dataset_name"]), []).append(entry)
    out, rules = [], []
    for name, items in sorted(chosen.items()):
        count = 3 if name == "CAMUS" and len(items) >= 3 else 1
        frames = [_gray(data_root / item["img_path_relative"]) for item in items[:count]]
        if len({f.shape for f in frames}) > 1:
            frames = frames[:1]
        ds = ultrasound_dicom(frames, spacing_mm=items[0].get("pixel_spacing_mm"), patient_id=f"DEMO-{name}",
                              patient_name=f"DEMO^{name}", description=name, body_part=str(items[0]["organ"]).upper())
        pacs.store([ds], str(ds.StudyInstanceUID))
        rules.append({"StudyDescription": name, "dataset": f"segmentation/{name}"})
        out.append({"dataset": name, "study_uid": str(ds.StudyInstanceUID), "frames": len(frames),
                    "calibrated": bool(items[0].get("pixel_spacing_mm"))})
    rule_file = workspace / "pacs" / RULES_NAME
    if not rule_file.exists():
        rule_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rule_file, json.dumps(rules, indent=1))
    return out
