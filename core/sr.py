"""A DICOM SR measurement report (TID 1500, highdicom) of a segmentation run's measurements.

One measurement group per run: area, longest and perpendicular diameters and, for a fetal head, head circumference
(HC), biparietal (BPD) and occipito-frontal diameters, each with its UCUM unit: ``mm`` / ``mm2`` when the run was
calibrated, ``{pixel}`` when it was not (pixels only, never a guessed spacing). Every measurement names the pixel
spacing and its source (request, DICOM, ultrasound region, ...) as its method, the model as the algorithm (name,
version, sha256 as a parameter) and references the source image (the analysed frame of a cine). The values are the
run's own (its history row), so the report says exactly what the run said.
"""

from __future__ import annotations

import copy
from typing import Any

from core import __version__
from core.errors import ImageError, RequestError

SERIES_NUMBER = 9902
MM = ("mm", "UCUM", "millimeter")
MM2 = ("mm2", "UCUM", "square millimeter")
PIXEL = ("{pixel}", "UCUM", "pixel")
# measurement key (without _mm / _px / _mm2) → (code value, scheme, meaning)
CONCEPTS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("area", ("42798000", "SCT", "Area")),
    ("longest_diameter", ("103339001", "SCT", "Long axis")),
    ("perpendicular_diameter", ("103340004", "SCT", "Short axis")),
    ("head_circumference", ("11984-2", "LN", "Fetal Head Circumference")),
    ("biparietal_diameter", ("11820-8", "LN", "Biparietal Diameter")),
    ("occipitofrontal_diameter", ("11851-3", "LN", "Occipital-Frontal Diameter")),
)


def _response(run: dict) -> dict:
    value = run.get("response")
    return value if isinstance(value, dict) else {}


def measurement_values(run: dict) -> list[tuple[str, float, str]]:
    """``(name, value, UCUM unit)`` of a run's measurements: mm / mm2 when calibrated, else ``{pixel}``."""
    measurements = run.get("measurements")
    if not isinstance(measurements, dict) or not measurements:
        measurements = _response(run).get("measurements")
    if not isinstance(measurements, dict) or not measurements:
        raise RequestError(f"run {run.get('id')} has no measurements to report", field="run_id")
    calibrated = measurements.get("pixel_spacing_mm") is not None
    values = []
    for name, _ in CONCEPTS:
        key = f"{name}_mm2" if name == "area" and calibrated else f"{name}_mm" if calibrated else f"{name}_px"
        value = measurements.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            unit = (MM2 if name == "area" else MM) if calibrated else PIXEL
            values.append((name, float(value), unit[0]))
    return values


def _method(run: dict) -> Any:
    """The pixel spacing and its source as the measurements' method (a code of this project's private scheme)."""
    from highdicom.sr import CodedConcept

    response = _response(run)
    spacing = response.get("pixel_spacing_mm")
    if not spacing:
        return CodedConcept("UUSIC-PX", "99UUSIC", "not calibrated: pixels only")
    source = str(response.get("pixel_spacing_source") or "unknown")[:20]
    return CodedConcept(f"UUSIC-SPACING-{source.upper()}"[:16], "99UUSIC",
                        f"pixel spacing {float(spacing):.5g} mm from {source}"[:64])


def _algorithm(run: dict) -> Any:
    from highdicom.sr import AlgorithmIdentification

    sha = str(run.get("model_sha256") or "")
    return AlgorithmIdentification(name=str(run.get("model_name") or "uusic")[:64],
                                   version=(sha[:16] or f"uusic-{__version__}"),
                                   parameters=[f"sha256={sha}"] if sha else None)


def _group(run: dict, source: Any, frame_index: int) -> Any:
    from highdicom.sr import (
        CodedConcept,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        SourceImageForMeasurement,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )

    frames = [frame_index + 1] if int(getattr(source, "NumberOfFrames", 1) or 1) > 1 else None
    method, algorithm = _method(run), _algorithm(run)
    units = {unit: CodedConcept(*spec) for spec in (MM, MM2, PIXEL) for unit in (spec[0],)}
    concepts = dict(CONCEPTS)
    measurements = [
        Measurement(name=CodedConcept(*concepts[name]), value=value, unit=units[unit], method=method,
                    algorithm_id=algorithm,
                    referenced_images=[SourceImageForMeasurement.from_source_image(source, frames)])
        for name, value, unit in measurement_values(run)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(identifier=f"UUSIC run {run.get('id')}"),
        algorithm_id=algorithm, measurements=measurements,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source, frames)])


def build_sr(run: dict, source: Any) -> Any:
    """The TID 1500 measurement report (a highdicom ``EnhancedSR``) of ``run`` referencing ``source`` (a header)."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        DeviceObserverIdentifyingAttributes,
        MeasurementReport,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.sr.codedict import codes

    from core.dicom_seg import TYPE2_DEFAULTS

    source = copy.deepcopy(source)
    for keyword in TYPE2_DEFAULTS:  # ultrasound headers often lack them; the SR's patient / study module needs them
        if keyword not in source:
            setattr(source, keyword, "")
    response = _response(run)
    frame_index = int(response.get("frame_index") or 0)
    device = ObserverContext(observer_type=codes.DCM.Device,
                             observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                                 uid=hd.UID(), name=f"UUSIC Viewer {__version__}"[:64]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=CodedConcept("P5-B0000", "SRT", "Diagnostic ultrasonography"),
        imaging_measurements=[_group(run, source, frame_index)])
    try:
        return hd.sr.EnhancedSR(evidence=[source], content=report[0], series_instance_uid=hd.UID(),
                                series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
                                manufacturer="UUSIC Viewer", is_complete=True, is_final=False,
                                series_description=f"UUSIC measurements (run {run.get('id')})"[:64])
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageError(f"no SR can be made for run {run.get('id')}: the source DICOM lacks what it needs "
                         f"({type(exc).__name__})") from None


def run_sr(service: Any, run_id: int) -> Any:
    """The SR of segmentation run ``run_id`` (``service``: the in-process service; public methods only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from core.dicom_seg import check_run, source_dicom

    run = service.run(int(run_id))
    check_run(run)
    try:
        source = pydicom.dcmread(source_dicom(service.settings, run), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ImageError(f"the source DICOM of run {run_id} cannot be read ({type(exc).__name__})") from None
    return build_sr(run, source)


def read_values(dataset: Any) -> list[tuple[str, float, str]]:
    """``(concept meaning, value, unit)`` of every measurement in an SR written by :func:`build_sr` (for tests and
    for checking what a PACS holds)."""
    from highdicom.sr import EnhancedSR

    report = EnhancedSR.from_dataset(dataset).content
    out = []
    for group in report.get_image_measurement_groups():
        for measurement in group.get_measurements():
            out.append((measurement.name.meaning, float(measurement.value), measurement.unit.value))
    return out
