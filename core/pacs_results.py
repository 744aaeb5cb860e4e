"""PACS cases end to end: pull an instance into the workspace like an upload, analyse it, store the results (SEG,
SR, Encapsulated PDF) back into its study, and the watch mode's record of what was analysed.

``pull`` retrieves within the PACS budgets (:mod:`core.pacs`), refuses what is no image (an SR, a SEG, a PDF: 415)
or no readable DICOM (502) before anything is written, then hands the bytes to the service's ``save_upload`` (same
size limit, same de-identification). ``store_results`` builds the results of a recorded run through the service's
public methods (``run``, ``dicom_seg``, ``report_pdf``) and :mod:`core.sr`, gives them the patient / study attributes
the PACS itself holds for the study (the workspace copy is de-identified), STOW-RSes them and records what was
stored in the run's history row (``response.pacs_stored``).
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import __version__, catalog
from core.errors import NotFoundError, PacsError, RequestError, UploadError, UUSICError
from core.pacs import IDENTITY, Pacs, check_uid

IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image (retired)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
}
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
PDF_SERIES_NUMBER = 9903
RECORD_NAME = "watch.json"  # under <workspace>/pacs/
RULES_NAME = "rules.json"


def check_instance(data: bytes, sop_uid: str) -> Any:
    """The header of a retrieved instance: a readable DICOM (else 502), an image (else 415), the one asked for."""
    import pydicom

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        sop_class = str(header.SOPClassUID)
        got = str(header.SOPInstanceUID)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom cannot read is a malformed answer
        raise PacsError(f"the PACS sent instance {sop_uid} as a DICOM that cannot be read "
                        f"({type(exc).__name__})") from None
    if got != sop_uid:
        raise PacsError(f"the PACS sent another instance than {sop_uid}")
    if sop_class not in IMAGE_SOP_CLASSES:
        name = getattr(pydicom.uid.UID(sop_class), "name", sop_class)
        raise UploadError(f"instance {sop_uid} is a {name}, not an image to analyse", status_code=415,
                          field="sop_instance_uid")
    return header


def pull(service: Any, pacs: Pacs, study_uid: str, series_uid: str, sop_uid: str) -> dict:
    """Retrieve one instance and store it in ``api_in/`` like an upload; its request skeleton (plus ``pacs``)."""
    data = pacs.retrieve(study_uid, series_uid, sop_uid)
    check_instance(data, sop_uid)
    skeleton = service.save_upload(data, f"pacs_{sop_uid}.dcm")
    return {**skeleton, "pacs": {"study_uid": study_uid, "series_uid": series_uid, "sop_instance_uid": sop_uid}}


def find_dataset(name: str) -> catalog.Dataset:
    """A catalog dataset by ``task/name`` or by a name only one task has (422 naming ``dataset`` otherwise)."""
    task, _, rest = name.partition("/") if "/" in name else ("", "", name)
    tasks = [task] if task else list(catalog.TASKS)
    found = []
    for each in tasks:
        try:
            found.append(catalog.find_dataset(each, rest))
        except UUSICError:
            continue
    if len(found) != 1:
        why = "is in more than one task: write task/name" if found else "is not a known dataset"
        raise RequestError(f"dataset {name!r} {why}", field="dataset")
    return found[0]


def dataset_for(instance: dict, dataset: str | None, workspace: Path) -> catalog.Dataset:
    """``dataset`` when given, else the first rule of ``<workspace>/pacs/rules.json`` whose attributes all equal
    the instance's (``[{"BodyPartExamined": "THYROID", "dataset": "segmentation/DDTI"}]``), else a 422."""
    if dataset:
        return find_dataset(dataset)
    path = workspace / "pacs" / RULES_NAME
    try:
        rules = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, ValueError):
        raise RequestError(f"the PACS rule file {RULES_NAME} cannot be read", field="dataset") from None
    for rule in rules if isinstance(rules, list) else []:
        if isinstance(rule, dict) and rule.get("dataset") and all(
                str(instance.get(key, "")).lower() == str(value).lower()
                for key, value in rule.items() if key != "dataset"):
            return find_dataset(str(rule["dataset"]))
    raise RequestError(f"no dataset for instance {instance.get('SOPInstanceUID')}: give --dataset or add a rule "
                       f"to {RULES_NAME}", field="dataset")


def analyze_instance(service: Any, pacs: Pacs, ref: dict, *, dataset: catalog.Dataset, store: bool = False,
                     source: str = "cli", lang: str = "en") -> dict:
    """Pull, analyse (frame 0 of a cine) and optionally store back one instance; the one-line JSON summary."""
    study, series, sop = (check_uid(ref.get(k), k) for k in ("study_uid", "series_uid", "sop_instance_uid"))
    skeleton = pull(service, pacs, study, series, sop)
    request = {**skeleton, "task": dataset.task, "dataset_name": dataset.name,
               "organ": catalog.ORGAN_GROUPS[dataset.group].organ}
    response = service.analyze(request, source=source)
    line: dict[str, Any] = {"study_uid": study, "series_uid": series, "sop_instance_uid": sop,
                            "run_id": response.run_id, "task": dataset.task, "dataset_name": dataset.name,
                            "frame_count": skeleton.get("frame_count", 1)}
    if store:
        if response.run_id is None:
            raise RequestError("the run was not recorded in the history, so its results cannot be stored back")
        line["stored"] = store_results(service, pacs, int(response.run_id), lang=lang)
    return line


def encapsulated_pdf(pdf: bytes, source: Any, run_id: int) -> Any:
    """The case report as an Encapsulated PDF instance in ``source``'s study (a new series)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    now = datetime.now(UTC)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_PDF, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(ds, keyword, getattr(source, keyword, "") or "")
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), PDF_SERIES_NUMBER, 1
    ds.Modality, ds.Manufacturer = "DOC", "UUSIC Viewer"
    ds.SoftwareVersions = str(__version__)
    ds.SeriesDescription = ds.DocumentTitle = f"UUSIC report (run {run_id})"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ConceptNameCodeSequence = []
    ds.BurnedInAnnotation = "YES"  # the report names the case
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def with_identity(dataset: Any, identity: dict[str, Any]) -> Any:
    """``dataset`` with the PACS's patient / study attributes (so the result joins that patient's study)."""
    for keyword in IDENTITY:
        if keyword in identity:
            setattr(dataset, keyword, identity[keyword])
    return dataset


def _results(service: Any, run: dict, lang: str) -> tuple[Any, list[Any]]:
    """(source header, [SEG, SR, PDF]) of a recorded run: SEG and SR for a segmentation run only."""
    import pydicom

    from core.dicom_seg import source_dicom
    from core.sr import run_sr

    run_id = int(run["id"])
    if run.get("error") or not isinstance(run.get("response"), dict):
        raise RequestError(f"run {run_id} failed; there is no result to store", field="run_id")
    try:
        source = pydicom.dcmread(source_dicom(service.settings, run), stop_before_pixels=True)
    except UUSICError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable source is reported as such
        raise RequestError(f"run {run_id} has no readable source DICOM ({type(exc).__name__})",
                           field="run_id") from None
    results: list[Any] = []
    if run.get("task") == "segmentation":
        results.append(pydicom.dcmread(io.BytesIO(service.dicom_seg(run_id))))
        results.append(run_sr(service, run_id))
    results.append(encapsulated_pdf(service.report_pdf(run_id, lang), source, run_id))
    return source, results


def store_results(service: Any, pacs: Pacs, run_id: int, *, lang: str = "en") -> dict:
    """STOW-RS the SEG, SR and PDF of run ``run_id`` into its source's study; recorded as ``pacs_stored``."""
    run = service.run(int(run_id))
    source, results = _results(service, run, lang)
    study = str(source.StudyInstanceUID)
    identity = pacs.study_identity(study)
    stored = pacs.store([with_identity(ds, identity) for ds in results], study)
    record = {"study_uid": study, "instances": stored, "stored_at": datetime.now(UTC).isoformat(timespec="seconds")}
    history = getattr(service, "store", None)
    if history is None or not history.set_response_key(int(run_id), "pacs_stored", record):
        raise NotFoundError(f"run {run_id} is no longer in the history; its results were stored in the PACS",
                            field="run_id")
    return record
