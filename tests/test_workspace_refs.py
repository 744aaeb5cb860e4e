"""The workspace counts every file a run needs: the kept original of a DICOM upload and the TTA agreement map too
(never reported as orphans, never removed by retention while their run is recent)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import dicom_bytes, ultrasound_dicom

from core import workspace
from core.service import AnalysisService
from core.settings import Settings


def test_row_files_names_source_and_agreement_map(tiny_settings: Settings):
    api_out = Path(tiny_settings.api_out)
    row = {"img_path_relative": "api_in/a.png", "mask_path": str(api_out / "a.png"),
           "request": json.dumps({"source_path_relative": "api_in/a-orig.dcm"}),
           "response": json.dumps({"uncertainty": {"agreement_path": str(api_out / "a_agreement.png")}})}
    keys = workspace.row_files(tiny_settings, row)
    assert keys == [("api_in", "a.png"), ("api_in", "a-orig.dcm"), ("api_out", "a.png"),
                    ("api_out", "a_agreement.png")]


def test_row_files_ignores_bad_json_and_outside_paths(tiny_settings: Settings):
    row = {"img_path_relative": "segmentation/BUSI/imgs/x.png", "request": "{not json",
           "response": json.dumps({"uncertainty": {"agreement_path": "/etc/passwd"}})}
    assert workspace.row_files(tiny_settings, row) == []


def test_dicom_upload_original_is_not_an_orphan(tiny_settings: Settings):
    settings = tiny_settings.model_copy(update={"backend": "torch"})
    service = AnalysisService(settings)
    service.workspace_check.wait()
    skeleton = service.save_upload(dicom_bytes(ultrasound_dicom()), "thyroid.dcm")
    assert skeleton["source_path_relative"] != skeleton["img_path_relative"]
    service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI", "organ": "Thyroid"})
    report = workspace.status(settings, service.store)
    assert report["leftovers"]["orphan_files"] == 0
    result = workspace.collect_garbage(settings, service.store, days=1, max_gb=None)
    assert (Path(settings.workspace) / skeleton["source_path_relative"]).is_file(), result
