"""A DICOM SEG (highdicom) of a segmentation run's mask, referencing the DICOM it was computed on.

The source DICOM is the run request's ``source_path_relative`` (the original kept for a DICOM upload) or, when it is
itself a DICOM file, its ``img_path_relative``; both resolve through :func:`core.paths.resolve_input`. For a
multi-frame source the segmentation references the analysed frame (the run's ``frame_index``, default 0).

Two things about ultrasound sources that highdicom does not handle itself, and what is done instead:

- A multi-frame image without a frame of reference (an ultrasound cine) can only be segmented one frame at a time:
  the SEG is built against a one-frame view of the header and its references are then pointed at the real SOP class
  and frame number (``ReferencedFrameNumber``).
- Ultrasound images carry no slice thickness, and highdicom cannot read back a pixel-measures item without one: in
  that case the SEG carries no pixel measures of its own (it is pixel-aligned with its source, which has them) and
  the run's spacing is named in the content description.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np

from core import __version__, catalog
from core.errors import ImageError, NotFoundError, PathError, RequestError, UUSICError
from core.settings import Settings

TYPE2_DEFAULTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
SPATIAL = ("FrameOfReferenceUID", "PositionReferenceIndicator", "ImagePositionPatient", "ImageOrientationPatient",
           "PixelSpacing")
MULTI_FRAME_ONLY = ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector",
                    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
SEGMENT_CODES = {  # organ group → (category, type) from pydicom's SNOMED CT code dictionary
    "breast": ("MorphologicallyAbnormalStructure", "Lesion"),
    "thyroid": ("MorphologicallyAbnormalStructure", "ThyroidNodule"),
    "heart": ("AnatomicalStructure", "Heart"),
    "fetal_head": ("AnatomicalStructure", "Head"),
    "kidney": ("AnatomicalStructure", "Kidney"),
}
SERIES_NUMBER = 9901


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def source_dicom(settings: Settings, run: dict) -> Path:
    """The DICOM file a run analysed: its request's ``source_path_relative``, else its image when that is DICOM.

    A run owns its sources: a ``source_path_relative`` other than the analysed file itself is used only when it
    decodes to exactly the pixels the run analysed (its own upload's original), never another upload's file."""
    from core.paths import resolve_input

    request, response = _section(run, "request"), _section(run, "response")
    source = request.get("source_path_relative") or response.get("source_path_relative")
    if isinstance(source, str) and source:
        try:
            path = resolve_input(settings, source)
        except PathError:
            raise NotFoundError(f"the source DICOM of run {run.get('id')} is no longer available",
                                field="run_id") from None
        if is_dicom_file(path):
            if not _is_own_source(settings, path, run):
                raise RequestError(f"run {run.get('id')} names a source DICOM that is not the image it analysed; "
                                   "no DICOM SEG is made from another file", field="run_id")
            return path
    image = run.get("img_path_relative")
    if isinstance(image, str) and image:
        try:
            image_path: Path | None = resolve_input(settings, image)
        except PathError:
            image_path = None
        if image_path is not None and is_dicom_file(image_path):
            return image_path
    raise RequestError(f"run {run.get('id')} did not analyse a DICOM file; a DICOM SEG can only be made for a DICOM "
                       "input (upload the .dcm file itself)", field="run_id")


def _is_own_source(settings: Settings, source: Path, run: dict) -> bool:
    """Whether ``source`` is the run's analysed file, or decodes (at the run's frame) to exactly its pixels."""
    from core.imaging import load_image
    from core.paths import resolve_input

    image = run.get("img_path_relative")
    if not isinstance(image, str) or not image:
        return False
    try:
        analysed = resolve_input(settings, image)
        if analysed.resolve() == source.resolve():
            return True
        request = _section(run, "request")
        frame = request.get("source_frame_index", request.get("frame_index")) or 0
        own = load_image(source, settings=settings, frame_index=int(frame)).rgb
        seen = load_image(analysed, settings=settings).rgb
    except (UUSICError, OSError, TypeError, ValueError):
        return False
    return own.shape == seen.shape and bool(np.array_equal(own, seen))


def _stored_frame_index(run_id: int, request: dict, response: dict) -> int:
    """The analysed frame a stored run names (request first, else response; none: 0); a malformed value: 422."""
    value = request.get("frame_index") if request.get("frame_index") is not None else response.get("frame_index")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"run {run_id} stores a malformed frame_index ({str(value)[:40]!r}); no DICOM SEG is made",
                           field="run_id")
    return value


def _section(run: dict, key: str) -> dict:
    value = run.get(key)
    return value if isinstance(value, dict) else {}


def check_run(run: dict) -> None:
    """A run a DICOM SEG can be made of: successful, a segmentation, on the unedited image."""
    from core.editing import changes_geometry

    run_id = run.get("id")
    if run.get("error") or not isinstance(run.get("response"), dict) or not run["response"]:
        raise RequestError(f"run {run_id} failed; there is no result to export", field="run_id")
    if run.get("task") != "segmentation":
        raise RequestError(f"run {run_id} is a {run.get('task')} run; a DICOM SEG needs a segmentation run",
                           field="run_id")
    if changes_geometry(run.get("edits") if isinstance(run.get("edits"), list) else None):
        raise RequestError(f"run {run_id} analysed an edited (rotated, flipped or cropped) image; its mask is not "
                           "aligned with the source DICOM, so no DICOM SEG is made", field="run_id")


def _one_frame_view(source: Any) -> Any:
    """A header-only copy of ``source`` that highdicom accepts as one single-frame image (see the module doc)."""
    from pydicom.uid import UltrasoundImageStorage

    missing = [name for name in REQUIRED_UIDS if not source.get(name)]
    if missing:
        raise RequestError(f"the source DICOM has no {', '.join(missing)}; a DICOM SEG cannot reference it",
                           field="run_id")
    view = copy.deepcopy(source)
    for name in TYPE2_DEFAULTS:  # type 2: present, possibly empty; many exported files leave them out
        if name not in view:
            setattr(view, name, "")
    if "NumberOfFrames" in view:
        for name in (*MULTI_FRAME_ONLY, *SPATIAL):
            if name in view:
                delattr(view, name)
        view.SOPClassUID = UltrasoundImageStorage
    elif "SliceThickness" not in view:
        for name in SPATIAL:
            if name in view:
                delattr(view, name)
    return view


def _point_at_frame(seg: Any, source: Any, frame_index: int) -> None:
    """Make every reference to the source name its real SOP class and, for a multi-frame source, its frame."""
    uid = source.SOPInstanceUID
    for series in seg.get("ReferencedSeriesSequence", []):
        for item in series.get("ReferencedInstanceSequence", []):
            if item.ReferencedSOPInstanceUID == uid:
                item.ReferencedSOPClassUID = source.SOPClassUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            for item in derivation.get("SourceImageSequence", []):
                if item.ReferencedSOPInstanceUID == uid:
                    item.ReferencedSOPClassUID = source.SOPClassUID
                    item.ReferencedFrameNumber = frame_index + 1


def _segment(group: str | None, label: str, model_name: str, model_sha256: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    category, kind = SEGMENT_CODES.get(group or "", ("AnatomicalStructure", "Organ"))
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name[:64] or "unknown",
                                                   family=codes.DCM.ArtificialIntelligence,
                                                   version=(model_sha256 or "unknown")[:64])
    return hd.seg.SegmentDescription(segment_number=1, segment_label=label[:64],
                                     segmented_property_category=getattr(codes.SCT, category),
                                     segmented_property_type=getattr(codes.SCT, kind),
                                     algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                     algorithm_identification=algorithm)


def build_seg(source: Any, mask: np.ndarray, *, frame_index: int = 0, group: str | None = None,
              label: str = "segmentation", model_name: str = "", model_sha256: str = "",
              description: str = "") -> bytes:
    """The DICOM SEG bytes (binary, one segment) of ``mask`` on ``source`` (a pydicom header, pixels not needed)."""
    import highdicom as hd

    frames = int(source.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame_index < frames:
        raise RequestError(f"frame_index {frame_index} is outside the source DICOM's {frames} frame(s)",
                           field="frame_index")
    rows, columns = int(source.get("Rows", 0) or 0), int(source.get("Columns", 0) or 0)
    if tuple(mask.shape) != (rows, columns):
        raise RequestError(f"the mask is {mask.shape[1]} x {mask.shape[0]} px but the source DICOM is {columns} x "
                           f"{rows} px; they are not aligned", field="run_id")
    view = _one_frame_view(source)
    try:
        seg = hd.seg.Segmentation(
            source_images=[view], pixel_array=np.asarray(mask, dtype=bool)[None], segmentation_type="BINARY",
            segment_descriptions=[_segment(group, label, model_name, model_sha256)],
            series_instance_uid=hd.UID(), series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="UUSIC Viewer", manufacturer_model_name=(model_name or "unknown")[:64],
            software_versions=f"UUSIC Viewer {__version__}", device_serial_number=(model_sha256 or "none")[:16],
            content_description=description[:64] or None, content_label="UUSIC_MASK", omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise RequestError(f"a DICOM SEG cannot be built on this source DICOM: {exc}", field="run_id") from None
    if "NumberOfFrames" in source:
        _point_at_frame(seg, source, frame_index)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()


def _spacing_note(response: dict) -> str:
    spacing = response.get("pixel_spacing_mm")
    if not spacing:
        return "UUSIC mask; not calibrated (px)"
    return f"UUSIC mask; {float(spacing):.4g} mm/px ({response.get('pixel_spacing_source') or 'unknown'})"


def run_dicom_seg(backend: Any, run_id: int) -> bytes:
    """The DICOM SEG of segmentation run ``run_id`` (``backend``: the in-process service)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from core.corrections import corrected_backend

    backend, run, correction = corrected_backend(backend, backend.run(int(run_id)))  # the latest correction's mask
    check_run(run)
    path = source_dicom(backend.settings, run)
    try:
        source = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ImageError(f"the source DICOM of run {run_id} cannot be read ({type(exc).__name__})") from None
    response, request = _section(run, "response"), _section(run, "request")
    frame_index = _stored_frame_index(run_id, request, response)
    try:
        dataset = catalog.find_dataset("segmentation", str(run.get("dataset_name") or ""))
        group, label = dataset.group, dataset.seg_target or "segmentation"
    except UUSICError:
        group, label = None, "segmentation"
    return build_seg(source, backend.run_mask(int(run_id)), frame_index=frame_index, group=group,
                     label=label, model_name=str(run.get("model_name") or ""),
                     model_sha256=str(run.get("model_sha256") or ""),
                     description=(f"corrected v{correction['version']}; " if correction else "")
                     + _spacing_note(response))
