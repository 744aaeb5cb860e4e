"""The PACS over DICOMweb against a real Orthanc (``UUSIC_TEST_DICOMWEB_URL``; ``scripts/orthanc.sh start``).

Synthetic ultrasound DICOMs made from the shared data (a calibrated ultrasound region; a cine) are stored, found,
retrieved, analysed; SEG + SR + PDF go back into the same study and are read back; watch analyses each instance
once, across a restart; hostile PACS answers are typed errors with nothing written.
"""

from __future__ import annotations

import io
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA, free_port
from PIL import Image

from core import pacs_cli
from core.errors import NotFoundError, PacsError, PacsTimeout, RequestError, UploadError
from core.pacs import Pacs, StudyQuery
from core.pacs_demo import ultrasound_dicom
from core.pacs_results import analyze_instance, find_dataset, pull, store_results
from core.pacs_watch import watch_once
from core.service import AnalysisService
from core.sr import read_values

DDTI = SHARED_DATA / "segmentation" / "DDTI" / "imgs"
REGION_CM = 0.02  # 0.2 mm per pixel


def us_dicom(images: list[Path], *, study_uid: str | None = None, patient_id: str = "PACS-1",
             study_date: str = "20260101") -> pydicom.Dataset:
    """An ultrasound DICOM (multi-frame when several images) of shared-data images, calibrated by one region."""
    frames = [np.asarray(Image.open(path).convert("L").resize((96, 72))) for path in images]
    return ultrasound_dicom(frames, spacing_mm=REGION_CM * 10, study_uid=study_uid, patient_id=patient_id,
                            patient_name="Phantom^Pacs", study_date=study_date, body_part="THYROID")


@pytest.fixture(scope="module")
def backend_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pacs_backends")  # the tiny model converted once for the whole module


@pytest.fixture()
def settings(tiny_settings, dicomweb_url, backend_cache):
    return tiny_settings.with_(dicomweb_url=dicomweb_url, dicomweb_timeout_s=20.0, cache_dir=backend_cache)


@pytest.fixture()
def service(settings):
    return AnalysisService(settings, model="tiny")


@pytest.fixture()
def pacs(settings):
    return Pacs(settings)


def _stored(pacs: Pacs, *datasets: pydicom.Dataset) -> list[pydicom.Dataset]:
    pacs.store(list(datasets), str(datasets[0].StudyInstanceUID))
    return list(datasets)


def _ref(ds: pydicom.Dataset) -> dict:
    return {"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID)}


def _api_in(settings) -> list[Path]:
    return sorted(p for p in settings.api_in.iterdir()) if settings.api_in.exists() else []


# ------------------------------------------------------------------------------------------ round trip
def test_search_pull_analyse_store_and_read_back(service, pacs, settings):
    patient = f"PACS-{uuid.uuid4().hex[:8]}"
    (image,) = _stored(pacs, us_dicom([DDTI / "seg_00000.jpg"], patient_id=patient))
    studies = pacs.search_studies(StudyQuery(patient_id=patient))
    assert [s["StudyInstanceUID"] for s in studies] == [str(image.StudyInstanceUID)]
    assert "US" in studies[0]["ModalitiesInStudy"]
    (series,) = pacs.series(str(image.StudyInstanceUID))
    assert series["SeriesInstanceUID"] == str(image.SeriesInstanceUID)

    line = analyze_instance(service, pacs, _ref(image), dataset=find_dataset("DDTI"), store=True)
    run = service.run(line["run_id"])
    assert run["response"]["pixel_spacing_source"] == "dicom_region"
    assert run["response"]["pixel_spacing_mm"] == pytest.approx(REGION_CM * 10)
    stored = run["response"]["pacs_stored"]
    assert stored == line["stored"] and stored["study_uid"] == str(image.StudyInstanceUID)
    assert sorted(i["modality"] for i in stored["instances"]) == ["DOC", "SEG", "SR"]

    # a second search finds the results in the same study (one study: the PACS's own patient attributes)
    again = pacs.search_studies(StudyQuery(patient_id=patient, modality=None))
    assert len(again) == 1 and {"SEG", "SR", "DOC", "US"} <= set(again[0]["ModalitiesInStudy"])
    listed = {i["SOPInstanceUID"]: i for i in pacs.instances(str(image.StudyInstanceUID))}
    back = {i["modality"]: pydicom.dcmread(io.BytesIO(pacs.retrieve(stored["study_uid"], i["series_uid"],
                                                                     i["sop_instance_uid"])))
            for i in stored["instances"]}
    assert all(i["sop_instance_uid"] in listed for i in stored["instances"])
    _check_results(back, run, image, patient)


def _texts(ds: pydicom.Dataset) -> list[str]:
    """Every value of a data set, nested sequences included, as text (str(ds) shortens long values)."""
    out = []
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                out.extend(_texts(item))
        elif element.tag != 0x7FE00010:
            out.append(str(element.value))
    return out


def _check_results(back: dict, run: dict, image: pydicom.Dataset, patient: str) -> None:
    import highdicom as hd

    for ds in back.values():
        assert ds.PatientID == patient and ds.StudyInstanceUID == image.StudyInstanceUID
    seg = hd.seg.Segmentation.from_dataset(back["SEG"])
    assert seg.get_source_image_uids()[0][2] == str(image.SOPInstanceUID)
    measured = run["measurements"]
    values = {name: (value, unit) for name, value, unit in read_values(back["SR"])}
    assert values["Area"][1] == "mm2" and values["Area"][0] == pytest.approx(measured["area_mm2"], rel=1e-6)
    assert values["Long axis"][1] == "mm"
    assert values["Long axis"][0] == pytest.approx(measured["longest_diameter_mm"], rel=1e-6)
    assert values["Short axis"][0] == pytest.approx(measured["perpendicular_diameter_mm"], rel=1e-6)
    sr_text = " ".join(_texts(back["SR"]))
    assert "dicom_region" in sr_text and run["model_sha256"] in sr_text and str(image.SOPInstanceUID) in sr_text
    assert back["DOC"].MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(back["DOC"].EncapsulatedDocument).startswith(b"%PDF")


def test_a_cine_instance_is_pulled_whole_and_its_frame_referenced(service, pacs):
    cine = us_dicom([DDTI / f"seg_0000{i}.jpg" for i in range(3)])
    _stored(pacs, cine)
    skeleton = pull(service, pacs, *_ref(cine).values())
    assert skeleton["frame_count"] == 3 and skeleton["img_format"] == "dcm"
    line = analyze_instance(service, pacs, _ref(cine), dataset=find_dataset("segmentation/DDTI"), store=True)
    sr = next(i for i in line["stored"]["instances"] if i["modality"] == "SR")
    back = pydicom.dcmread(io.BytesIO(pacs.retrieve(str(cine.StudyInstanceUID), sr["series_uid"],
                                                    sr["sop_instance_uid"])))
    frames = [e.value for e in back.iterall() if e.keyword == "ReferencedFrameNumber"]
    assert frames and all(int(f) == 1 for f in frames) and line["frame_count"] == 3


# ------------------------------------------------------------------------------------------ CLI and watch
def _cli_env(settings, monkeypatch) -> None:
    """The CLI reads the environment: point it at the test's workspace, tiny model and PACS."""
    for key, value in (("UUSIC_WORKSPACE", settings.workspace), ("UUSIC_WEIGHTS_DIR", settings.weights_dir),
                       ("UUSIC_DATA_ROOT", settings.data_root), ("UUSIC_DEVICE", "cpu"), ("UUSIC_MODEL", "tiny"),
                       ("UUSIC_DICOMWEB_URL", settings.dicomweb_url), ("UUSIC_CACHE_DIR", settings.cache_dir)):
        monkeypatch.setenv(key, str(value))


def test_cli_search_and_analyze_print_one_json_line_each(settings, pacs, monkeypatch, capsys):
    import json

    patient = f"CLI-{uuid.uuid4().hex[:8]}"
    (image,) = _stored(pacs, us_dicom([DDTI / "seg_00001.jpg"], patient_id=patient))
    _cli_env(settings, monkeypatch)
    assert pacs_cli.main(["search", "--patient-id", patient]) == 0
    assert json.loads(capsys.readouterr().out)["StudyInstanceUID"] == str(image.StudyInstanceUID)
    assert pacs_cli.main(["analyze", "--study", str(image.StudyInstanceUID), "--dataset", "DDTI", "--store"]) == 0
    lines = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 and lines[0]["sop_instance_uid"] == str(image.SOPInstanceUID)
    assert len(lines[0]["stored"]["instances"]) == 3
    assert pacs_cli.main(["search", "--date", "2026-13"]) == 2
    assert "study_date" in capsys.readouterr().err


def test_watch_analyses_each_instance_once_across_a_restart(settings, service, pacs):
    date = f"2{uuid.uuid4().int % 900 + 100:03d}0{uuid.uuid4().int % 9 + 1}15"  # a study date only this test has
    study = pydicom.uid.generate_uid()
    mine = {str(ds.SOPInstanceUID) for ds in _stored(
        pacs, us_dicom([DDTI / "seg_00002.jpg"], study_uid=study, study_date=date),
        us_dicom([DDTI / "seg_00003.jpg"], study_uid=study, study_date=date))}
    since = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    first = [line for line in watch_once(service, pacs, dataset="DDTI", since=since)
             if line.get("sop_instance_uid") in mine]
    assert {line["sop_instance_uid"] for line in first} == mine and all(line.get("stored") for line in first)
    assert [line for line in watch_once(service, pacs, dataset="DDTI", since=since)
            if line.get("sop_instance_uid") in mine] == []
    restarted = AnalysisService(settings, model="tiny")
    assert [line for line in watch_once(restarted, pacs, dataset="DDTI", since=since)
            if line.get("sop_instance_uid") in mine] == []
    analysed = [restarted.run(r["id"])["request"].get("pacs", {}).get("sop_instance_uid") for r in restarted.runs()]
    assert sorted(uid for uid in analysed if uid in mine) == sorted(mine)  # each once


# ------------------------------------------------------------------------------------------ hostile answers
class _Fake(BaseHTTPRequestHandler):
    """A DICOMweb server that answers badly: garbage DICOM, a non-DICOM type, or never (until released)."""

    mode = "garbage"
    release = threading.Event()

    def do_GET(self) -> None:
        if self.mode == "stall":
            self.release.wait(30)
            return
        body = (b"--B\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 128 + b"DICMnot really"
                + b"\r\n--B--\r\n")
        kind = 'multipart/related; type="application/dicom"; boundary=B' if self.mode == "garbage" else "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_pacs():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    _Fake.release.set()
    server.shutdown()
    server.server_close()
    _Fake.release.clear()


UIDS = ("1.2.3", "1.2.3.4", "1.2.3.4.5")


@pytest.mark.parametrize(("case", "error", "status"), [
    ("missing", NotFoundError, 404), ("non_image", UploadError, 415), ("too_big", UploadError, 413),
    ("malformed", PacsError, 502), ("not_dicom", PacsError, 502), ("down", PacsError, 502),
    ("slow", PacsTimeout, 504)])
def test_hostile_pacs_answers_are_typed_errors_and_write_nothing(case, error, status, service, pacs, settings,
                                                                 fake_pacs, monkeypatch):
    ref = UIDS
    if case == "non_image":  # an Encapsulated PDF stored in the PACS
        from core.pacs_results import encapsulated_pdf

        image = us_dicom([DDTI / "seg_00000.jpg"])
        pdf = encapsulated_pdf(b"%PDF-1.4 test", image, 0)
        _stored(pacs, pdf)
        ref = tuple(_ref(pdf).values())
    elif case == "too_big":
        (image,) = _stored(pacs, us_dicom([DDTI / "seg_00000.jpg"]))
        ref, pacs = tuple(_ref(image).values()), Pacs(settings.with_(max_upload_mb=0))
    elif case in ("malformed", "not_dicom", "slow"):
        monkeypatch.setattr(_Fake, "mode", {"malformed": "garbage", "not_dicom": "html", "slow": "stall"}[case])
        pacs = Pacs(settings, url=fake_pacs, timeout_s=0.5)
    elif case == "down":
        pacs = Pacs(settings, url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    before = _api_in(settings)
    with pytest.raises(error) as caught:
        pull(service, pacs, *ref)
    assert caught.value.status_code == status and "127.0.0.1" not in caught.value.message
    assert _api_in(settings) == before


def test_an_unreadable_search_answer_is_a_502(settings, fake_pacs):
    with pytest.raises(PacsError) as caught:
        Pacs(settings, url=fake_pacs, timeout_s=2).search_studies(StudyQuery())
    assert caught.value.status_code == 502 and "cannot be read" in caught.value.message


def test_store_back_of_a_run_not_from_a_dicom_is_refused(service, pacs):
    response = service.analyze({"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation",
                                "dataset_name": "DDTI", "organ": "Thyroid"})
    with pytest.raises(RequestError) as caught:
        store_results(service, pacs, response.run_id)
    assert caught.value.status_code == 422 and "DICOM" in caught.value.message


def test_credentials_never_show(settings):
    secret = settings.with_(dicomweb_user="u", dicomweb_password="hunter2-pw", dicomweb_token=None)
    assert "hunter2" not in repr(secret) and "hunter2" not in repr(Pacs(secret))


# ------------------------------------------------------------------------------------------ API
def test_api_search_analyse_store_with_the_api_key(settings, service, pacs):
    from fastapi.testclient import TestClient

    from core.api.app import create_app

    patient = f"API-{uuid.uuid4().hex[:8]}"
    (image,) = _stored(pacs, us_dicom([DDTI / "seg_00004.jpg"], patient_id=patient))
    keyed = settings.with_(api_key="k3y")
    with TestClient(create_app(keyed, service=AnalysisService(keyed, model="tiny"))) as client:
        assert client.get("/v1/pacs/studies", params={"patient_id": patient}).status_code == 401
        client.headers["X-API-Key"] = "k3y"
        found = client.get("/v1/pacs/studies", params={"patient_id": patient}).json()
        assert found["count"] == 1 and found["studies"][0]["StudyInstanceUID"] == str(image.StudyInstanceUID)
        listed = client.get(f"/v1/pacs/studies/{image.StudyInstanceUID}/series/{image.SeriesInstanceUID}/instances")
        assert [i["SOPInstanceUID"] for i in listed.json()["instances"]] == [str(image.SOPInstanceUID)]
        answer = client.post("/v1/pacs/analyze", json={**_ref(image), "dataset": "DDTI"})
        assert answer.status_code == 200, answer.text
        run_id = answer.json()["run_id"]
        stored = client.post(f"/v1/pacs/store/{run_id}", json={})  # a POST names its JSON type (CSRF guard)
        assert stored.status_code == 200 and len(stored.json()["stored"]["instances"]) == 3
        assert client.get(f"/v1/history/{run_id}").json()["response"]["pacs_stored"] == stored.json()["stored"]
        bad = client.post("/v1/pacs/analyze", json={**_ref(image), "study_uid": "1.2.x"})
        assert bad.status_code == 422 and bad.json()["field"] == "study_uid"
        assert client.get("/v1/pacs/studies", params={"study_date": "yesterday"}).json()["field"] == "study_date"
        missing = client.post("/v1/pacs/analyze", json={**_ref(image), "sop_instance_uid": "1.2.3", "dataset": "DDTI"})
        assert missing.status_code == 404 and missing.json()["error_type"] == "NotFoundError"


def test_api_without_a_pacs_says_so(tiny_settings):
    from fastapi.testclient import TestClient

    from core.api.app import create_app

    with TestClient(create_app(tiny_settings)) as client:
        answer = client.get("/v1/pacs/studies")
    assert answer.status_code == 503 and "UUSIC_DICOMWEB_URL" in answer.json()["detail"]


def test_demo_load_writes_studies_and_rules_that_analyze_uses(settings, pacs, monkeypatch, capsys):
    import json

    _cli_env(settings, monkeypatch)
    assert pacs_cli.main(["demo-load"]) == 0
    (study,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert study["dataset"] == "DDTI" and (settings.workspace / "pacs" / "rules.json").is_file()
    assert pacs_cli.main(["analyze", "--study", study["study_uid"]]) == 0  # the dataset from the rule file
    (line,) = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert line["dataset_name"] == "DDTI" and line["run_id"]
    assert pacs_cli.main(["analyze", "--study", study["study_uid"], "--instance", "1.2.3"]) == 2
    assert "1.2.3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ dashboard
def test_dashboard_pacs_source_loads_analyses_and_stores_back(dashboard_env, settings, pacs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core import i18n
    from core.settings import PROJECT_ROOT

    patient = f"UI-{uuid.uuid4().hex[:8]}"
    cine = us_dicom([DDTI / f"seg_0000{i}.jpg" for i in range(2)], patient_id=patient)
    _stored(pacs, cine)
    monkeypatch.setenv("UUSIC_DICOMWEB_URL", settings.dicomweb_url)
    monkeypatch.setenv("UUSIC_CACHE_DIR", str(settings.cache_dir))
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.query_params.update(task="segmentation", organ="thyroid", dataset="DDTI")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.radio(key="source").set_value("pacs").run()
    at.text_input(key="pacs_patient_id").set_value(patient)
    next(b for b in at.button if b.label in i18n.STRINGS["pacs_search"]).click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    at.button(key="pacs_load").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.session_state["image"]["pacs"]["sop_instance_uid"] == str(cine.SOPInstanceUID)
    at.button(key="run").click().run()
    run_id = at.session_state["result"]["run_id"]
    at.button(key=f"pacs_store_{run_id}").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.success and "3" in at.success[0].value
