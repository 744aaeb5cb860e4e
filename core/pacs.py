"""A PACS over DICOMweb (``dicomweb-client``): search studies, list series and instances, retrieve one instance
within a byte and time budget, store results (STOW-RS).

``UUSIC_DICOMWEB_URL`` is the DICOMweb root (``http://pacs:8042/dicom-web``); ``UUSIC_DICOMWEB_USER`` +
``UUSIC_DICOMWEB_PASSWORD`` (HTTP basic) or ``UUSIC_DICOMWEB_TOKEN`` (bearer) authenticate; every call is bounded by
``UUSIC_DICOMWEB_TIMEOUT_S`` (a retrieve as a whole, too) and is never retried. What the PACS does wrong becomes a
typed error, never a 500 and never a server address or a credential in its words: not reachable / an unreadable
answer → :class:`PacsError` (502), too slow → :class:`PacsTimeout` (504), an unknown UID → :class:`NotFoundError`
(404), an instance over ``UUSIC_MAX_UPLOAD_MB`` → :class:`UploadError` (413, read no further).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import (
    NotFoundError,
    PacsError,
    PacsTimeout,
    RequestError,
    ServiceUnavailableError,
    UploadError,
    UUSICError,
)
from core.settings import Settings

UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
DICOM_DATE = re.compile(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}")
ACCEPT_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around one instance
MAX_LISTED = 10_000  # most instances one listing pages through
STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber",
                "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedInstances")
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                 "NumberOfSeriesRelatedInstances")
INSTANCE_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
                   "NumberOfFrames", "Modality", "BodyPartExamined", "StudyDate", "StudyDescription")
# What store-back copies from the PACS's own study onto the results, so they join that patient and study
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
            "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription")


def check_uid(value: Any, field: str) -> str:
    """A DICOM UID (digits and dots, at most 64 characters), else a 422 naming ``field``."""
    text = str(value or "").strip()
    if len(text) > 64 or not UID.fullmatch(text):
        raise RequestError(f"{field}: expected a DICOM UID (digits and dots, at most 64 characters)", field=field)
    return text


class StudyQuery(BaseModel):
    """A study search (QIDO-RS); empty fields are not filtered on. Names may use ``*`` wildcards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: str | None = Field(default=None, max_length=64)
    patient_name: str | None = Field(default=None, max_length=64)
    study_date: str | None = Field(default=None, description="YYYYMMDD, or a range YYYYMMDD-YYYYMMDD")
    accession: str | None = Field(default=None, max_length=16)
    modality: str | None = Field(default="US", max_length=16)
    limit: int = Field(default=50, ge=1, le=500)

    @field_validator("study_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value and not DICOM_DATE.fullmatch(value.strip()):
            raise ValueError("expected YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        return value.strip() if value else None

    @classmethod
    def parse(cls, values: Any) -> StudyQuery:
        return parse_model(cls, values)

    def filters(self) -> dict[str, str]:
        pairs = (("PatientID", self.patient_id), ("PatientName", self.patient_name), ("StudyDate", self.study_date),
                 ("AccessionNumber", self.accession), ("ModalitiesInStudy", self.modality))
        return {key: value.strip() for key, value in pairs if value and value.strip()}


class AnalyzeOrder(BaseModel):
    """One instance to analyse (API ``POST /v1/pacs/analyze``): its UIDs, the dataset, whether to store back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    dataset: str | None = Field(default=None, max_length=80, description="task/name or name; default: rules")
    store: bool = False
    lang: Literal["en", "zh"] = "en"

    @field_validator("study_uid", "series_uid", "sop_instance_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        if len(value) > 64 or not UID.fullmatch(value):
            raise ValueError("expected a DICOM UID (digits and dots, at most 64 characters)")
        return value

    @classmethod
    def parse(cls, values: Any) -> AnalyzeOrder:
        return parse_model(cls, values)


_M = TypeVar("_M", bound=BaseModel)


def parse_model(cls: type[_M], values: Any) -> _M:
    """``cls`` from a door's values; a bad one → :class:`RequestError` (422) naming the field."""
    from pydantic import ValidationError

    if not isinstance(values, dict):
        raise RequestError("expected a JSON object")
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "body"
        raise RequestError(f"{field}: {str(error['msg']).removeprefix('Value error, ')}", field=field) from None


def summary(item: Any, fields: Sequence[str]) -> dict[str, Any]:
    """The named attributes of one DICOM JSON answer item as plain values (names as text, lists kept)."""
    import pydicom

    try:
        dataset = pydicom.Dataset.from_json(item)
        out: dict[str, Any] = {}
        for keyword in fields:
            value = dataset.get(keyword)
            if isinstance(value, pydicom.multival.MultiValue):
                out[keyword] = [str(v) for v in value]
            elif value is not None and value != "":
                out[keyword] = value if isinstance(value, (int, float)) else str(value)
        return out
    except Exception as exc:  # noqa: BLE001 - any unreadable answer item is the PACS's fault
        raise PacsError(f"the PACS sent a search answer that cannot be read ({type(exc).__name__})") from None


class Pacs:
    """One DICOMweb PACS (``settings.dicomweb_url`` unless ``url``); each call bounded, never retried."""

    def __init__(self, settings: Settings, *, url: str | None = None, timeout_s: float | None = None):
        import requests
        from dicomweb_client.api import DICOMwebClient

        root = (url or settings.dicomweb_url or "").strip().rstrip("/")
        if not root:
            raise ServiceUnavailableError("no PACS is configured: set UUSIC_DICOMWEB_URL", field="dicomweb_url")
        if not root.startswith(("http://", "https://")):
            raise RequestError("UUSIC_DICOMWEB_URL: expected an http:// or https:// URL", field="dicomweb_url")
        self.settings, self.url = settings, root
        self.timeout_s = float(timeout_s or settings.dicomweb_timeout_s)
        self.session = requests.Session()
        self.session.headers["Accept-Encoding"] = "identity"  # sizes are what the wire carries (no inflation)
        if settings.dicomweb_token:
            self.session.headers["Authorization"] = f"Bearer {settings.dicomweb_token}"
        elif settings.dicomweb_user:
            self.session.auth = (settings.dicomweb_user, settings.dicomweb_password or "")
        self.client = DICOMwebClient(root, session=self.session, timeout=(self.timeout_s, self.timeout_s))
        self.client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        from core.redact import redact_url

        return f"Pacs({redact_url(self.url)})"

    @contextmanager
    def _calling(self, doing: str, missing: str = "") -> Iterator[None]:
        """Turns what ``requests`` / ``dicomweb-client`` raise into the typed errors (no URL, no credential)."""
        import requests

        try:
            yield
        except UUSICError:
            raise
        except requests.Timeout:
            raise PacsTimeout(f"the PACS did not answer within {self.timeout_s:g} s ({doing})") from None
        except requests.ConnectionError as exc:
            raise PacsError(f"the PACS cannot be reached ({doing}: {type(exc).__name__})") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 404 and missing:
                raise NotFoundError(f"{missing} is not in the PACS", field="uid") from None
            if status in (401, 403):
                raise PacsError(f"the PACS refused our credentials (HTTP {status}) ({doing})") from None
            raise PacsError(f"the PACS answered HTTP {status} ({doing})") from None
        except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PacsError(f"the PACS sent an answer that cannot be read ({doing}: {type(exc).__name__})") from None

    # ------------------------------------------------------------------------------------------ search (QIDO-RS)
    def search_studies(self, query: StudyQuery) -> list[dict]:
        """Studies matching ``query`` (at most ``query.limit``), each as :data:`STUDY_FIELDS`."""
        with self._calling("search studies"):
            found = self.client.search_for_studies(search_filters=query.filters(), limit=query.limit,
                                                   fields=list(STUDY_FIELDS))
        return [summary(item, STUDY_FIELDS) for item in found[:query.limit]]

    def series(self, study_uid: str) -> list[dict]:
        study_uid = check_uid(study_uid, "study_uid")
        with self._calling("list series", missing=f"study {study_uid}"):
            found = self.client.search_for_series(study_uid, fields=list(SERIES_FIELDS), limit=1000)
        return [summary(item, SERIES_FIELDS) for item in found]

    def instances(self, study_uid: str | None = None, series_uid: str | None = None, *,
                  filters: dict[str, str] | None = None) -> list[dict]:
        """Instances of a series, a study, or (neither given) the whole PACS, paged up to :data:`MAX_LISTED`."""
        study = check_uid(study_uid, "study_uid") if study_uid else None
        series = check_uid(series_uid, "series_uid") if series_uid else None
        if series and not study:
            raise RequestError("series_uid needs study_uid", field="study_uid")
        out: list[dict] = []
        while len(out) < MAX_LISTED:
            with self._calling("list instances", missing=f"study {study}" if study else ""):
                page = self.client.search_for_instances(study, series, fields=list(INSTANCE_FIELDS),
                                                        search_filters=dict(filters or {}), limit=500,
                                                        offset=len(out))
            out.extend(summary(item, INSTANCE_FIELDS) for item in page)
            if len(page) < 500:
                break
        return out

    def study_identity(self, study_uid: str) -> dict[str, Any]:
        """The patient / study attributes (:data:`IDENTITY`) the PACS holds for ``study_uid`` (404 without it)."""
        study_uid = check_uid(study_uid, "study_uid")
        with self._calling("find the study"):
            found = self.client.search_for_studies(search_filters={"StudyInstanceUID": study_uid},
                                                   fields=list(IDENTITY), limit=2)
        if not found:
            raise NotFoundError(f"study {study_uid} is not in the PACS", field="study_uid")
        return summary(found[0], IDENTITY)

    # ------------------------------------------------------------------------------------------ retrieve (WADO-RS)
    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The Part 10 bytes of one instance, read at most ``max_upload_mb`` (413 beyond) within the timeout."""
        study, series = check_uid(study_uid, "study_uid"), check_uid(series_uid, "series_uid")
        sop = check_uid(sop_uid, "sop_instance_uid")
        limit = int(self.settings.max_upload_mb) * 1024 * 1024
        url = f"{self.url}/studies/{study}/series/{series}/instances/{sop}"
        deadline = time.monotonic() + self.timeout_s
        with (self._calling("retrieve an instance", missing=f"instance {sop}"),
              self.session.get(url, headers={"Accept": ACCEPT_INSTANCE}, stream=True,
                               timeout=(self.timeout_s, self.timeout_s)) as answer):
            answer.raise_for_status()
            body = self._bounded_body(answer, limit + MULTIPART_SLACK, sop, deadline)
            content_type = answer.headers.get("Content-Type", "")
        data = part10(dicom_part(body, content_type, sop))
        if len(data) > limit:
            raise _too_big(sop, len(data), self.settings.max_upload_mb)
        return data

    def _bounded_body(self, answer: Any, most: int, sop: str, deadline: float) -> bytes:
        """The answer's body, refused (413) past ``most`` bytes and (504) past ``deadline``."""
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > most:
            raise _too_big(sop, int(declared), self.settings.max_upload_mb)
        body = bytearray()
        for chunk in answer.iter_content(256 * 1024):
            body += chunk
            if len(body) > most:
                raise _too_big(sop, len(body), self.settings.max_upload_mb)
            if time.monotonic() > deadline:
                raise PacsTimeout(f"the PACS took longer than {self.timeout_s:g} s to send instance {sop}")
        return bytes(body)

    # ------------------------------------------------------------------------------------------ store (STOW-RS)
    def store(self, datasets: Sequence[Any], study_uid: str) -> list[dict]:
        """STOW-RS ``datasets`` into ``study_uid``; what was stored (series / SOP instance / SOP class UIDs).
        A PACS that refuses any of them → :class:`PacsError` naming how many."""
        study = check_uid(study_uid, "study_uid")
        with self._calling("store results"):
            answer = self.client.store_instances(list(datasets), study_instance_uid=study)
        failed = list(getattr(answer, "FailedSOPSequence", None) or [])
        if failed:
            reasons = sorted({int(getattr(item, "FailureReason", 0) or 0) for item in failed})
            raise PacsError(f"the PACS refused {len(failed)} of {len(datasets)} results (failure reasons "
                            f"{', '.join(f'0x{r:04X}' for r in reasons)})")
        return [{"series_uid": str(ds.SeriesInstanceUID), "sop_instance_uid": str(ds.SOPInstanceUID),
                 "sop_class_uid": str(ds.SOPClassUID), "modality": str(getattr(ds, "Modality", ""))}
                for ds in datasets]


def _too_big(sop: str, size: int, limit_mb: int) -> UploadError:
    return UploadError(f"instance {sop} is over {size / 1048576:.1f} MB; the limit is {limit_mb} MB "
                       "(UUSIC_MAX_UPLOAD_MB)", status_code=413, field="sop_instance_uid")


def part10(data: bytes) -> bytes:
    """A DICOM file with its 128-byte preamble and ``DICM`` (a PACS may send the meta group without them)."""
    if data[128:132] == b"DICM":
        return data
    if data[:4] == b"DICM":
        return b"\0" * 128 + data
    if data[:2] == b"\x02\x00":  # group 0002 first: the file meta information without the preamble
        return b"\0" * 128 + b"DICM" + data
    return data


def dicom_part(body: bytes, content_type: str, sop: str) -> bytes:
    """The one DICOM part of a WADO-RS answer (``multipart/related``), or the body itself (``application/dicom``)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/dicom":
        return body
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.I)
    if kind != "multipart/related" or not match:
        raise PacsError(f"the PACS sent instance {sop} as {kind or 'an unnamed type'}, not DICOM")
    boundary = b"--" + match.group(1).encode("latin-1")
    start = body.find(boundary)
    head_end = body.find(b"\r\n\r\n", start) if start >= 0 else -1
    end = body.find(b"\r\n" + boundary, head_end + 4) if head_end >= 0 else -1
    if start < 0 or head_end < 0 or end < 0:
        raise PacsError(f"the PACS sent instance {sop} in a malformed multipart answer")
    return body[head_end + 4:end]
