"""De-identification of what an upload keeps on disk: a DICOM original (PS3.15 Annex E basic profile, with the
Retain UIDs option so that a DICOM SEG or SR still refers to the study it came from) and a video's container
metadata (title, comment, author, ...: a cine is stored re-muxed without them, pixels untouched).

A research team must not keep identities by accident, so uploads are de-identified by default; the setting
``keep_identity`` (``UUSIC_KEEP_IDENTITY=1``) stores originals exactly as uploaded instead.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

from core.errors import ImageError
from core.imaging import check_inflated_size

METHOD = "UUSIC Viewer: PS3.15 basic profile, retain UIDs"  # recorded in DeidentificationMethod
BASIC_PROFILE_OPTIONS = (  # (0012,0064) codes: basic profile, retain UIDs option
    ("113100", "Basic Application Confidentiality Profile"),
    ("113110", "Retain UIDs Option"),
)
# Attributes of PS3.15 Table E.1-1 that identify a person, an institution or a device (UIDs are retained): emptied
# when the IOD needs them (type 2), removed otherwise. Private tags and curves / overlays comments are removed too.
EMPTIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID",
           "AccessionNumber", "StudyDate", "StudyTime", "ContentDate", "ContentTime")
REMOVED = (
    "PatientAge", "PatientAddress", "PatientBirthName", "PatientBirthTime", "PatientMotherBirthName",
    "PatientTelephoneNumbers", "PatientWeight", "PatientSize", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation", "PatientComments",
    "AdditionalPatientHistory", "PatientReligiousPreference", "MedicalRecordLocator", "ResponsiblePerson",
    "ResponsibleOrganization", "PatientInsurancePlanCodeSequence", "CountryOfResidence", "RegionOfResidence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "OperatorsName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StudyDescription",
    "SeriesDescription", "AdmittingDiagnosesDescription", "RequestAttributesSequence", "ImageComments",
    "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "SeriesDate", "SeriesTime", "InstanceCreationDate",
    "InstanceCreationTime", "IssuerOfPatientID", "PatientBirthDateInAlternativeCalendar", "ProtocolName",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "RequestedProcedureDescription",
    "TextComments", "PersonName", "ContentCreatorName", "InstitutionCodeSequence", "DerivationDescription",
    "FrameComments", "PatientState", "PregnancyStatus", "LastMenstrualDate", "SmokingStatus", "Allergies",
)


def deidentify_dicom(data: bytes, *, name: str = "upload", max_bytes: int = 1 << 30) -> bytes:
    """The DICOM file ``data`` with the basic profile applied (UIDs kept; private tags removed). A deflated file is
    first measured by streaming: more than ``max_bytes`` once inflated is refused (413) before pydicom reads it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        check_inflated_size(data, name, max_bytes)
        dataset = pydicom.dcmread(io.BytesIO(data), force=False)
    except ImageError:
        raise
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, KeyError, zlib.error,
            IndexError) as exc:
        raise ImageError(f"{name}: the DICOM file cannot be de-identified ({type(exc).__name__})") from None
    _clean(dataset)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = METHOD
    dataset.DeidentificationMethodCodeSequence = [_code(value, meaning) for value, meaning in BASIC_PROFILE_OPTIONS]
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _clean(dataset: Any) -> None:
    """Empty / remove the identifying attributes of ``dataset`` and its sequences, and its private tags."""
    dataset.remove_private_tags()
    for keyword in REMOVED:
        if keyword in dataset:
            delattr(dataset, keyword)
    for keyword in EMPTIED:
        if keyword in dataset:
            dataset.data_element(keyword).value = ""
    for element in list(dataset):
        if element.VR == "SQ":
            for item in element.value or []:
                _clean(item)
        elif element.VR == "PN" and element.keyword not in EMPTIED:  # any other person's name
            element.value = ""


def _code(value: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def strip_video_metadata(data: bytes, fmt: str, *, name: str = "upload") -> bytes:
    """The video ``data`` re-muxed into the same container without its metadata (title, comment, author, GPS ...):
    the same packets, the pixels untouched."""
    import av

    container_format = {"mkv": "matroska", "m4v": "mp4"}.get(fmt, fmt)
    output = io.BytesIO()
    try:
        with av.open(io.BytesIO(data), "r") as source, av.open(output, "w", format=container_format) as target:
            video = source.streams.video[0]
            stream = target.add_stream_from_template(video)
            stream.metadata.clear()
            for packet in source.demux(video):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = stream
                target.mux(packet)
    except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise ImageError(f"{name}: the video's metadata cannot be removed ({type(exc).__name__})") from None
    return output.getvalue()
