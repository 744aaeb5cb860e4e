"""The correction loop: versions of a run's mask or class (core.corrections), its API door, the report / DICOM SEG
hooks, the history flag and CSV, export-labels for core train, and a hostile table for the route."""

from __future__ import annotations

import csv
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dicom_bytes, ultrasound_dicom
from fastapi.testclient import TestClient
from PIL import Image

from core.api.app import create_app
from core.corrections import Corrections, agreement, decode_mask, mask_png
from core.history import HistoryStore, corrections, head_revision, record_run
from core.label_export import export_labels
from core.service import AnalysisService
from core.settings import Settings

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI",
       "organ": "Thyroid", "pixel_spacing_mm": 0.5}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI",
       "organ": "Breast"}
DICOM_REL = "segmentation/DDTI/imgs/us_case.dcm"


@pytest.fixture()
def settings(tiny_settings: Settings) -> Settings:
    (Path(tiny_settings.data_root) / DICOM_REL).write_bytes(dicom_bytes(ultrasound_dicom()))
    return tiny_settings.model_copy(update={"backend": "torch"})


@pytest.fixture()
def service(settings: Settings) -> AnalysisService:
    return AnalysisService(settings)


@pytest.fixture()
def client(service: AnalysisService):
    with TestClient(create_app(service=service)) as test_client:
        yield test_client


def png_of(mask: np.ndarray) -> bytes:
    return mask_png(mask)


def drawn(model: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The model's mask with a 6x6 square added at the top-left and a 5x5 square removed at the centre (what a
    clinician draws), and the exact pixels added / removed."""
    corrected = model.copy()
    h, w = model.shape
    corrected[0:6, 0:6] = True
    centre = (slice(h // 2 - 2, h // 2 + 3), slice(w // 2 - 2, w // 2 + 3))
    corrected[centre] = False
    added = int((~model[0:6, 0:6]).sum())
    removed = int(model[centre].sum())
    return corrected, added, removed


def put_mask(client: TestClient, run_id: int, data: bytes, **params) -> object:
    return client.put(f"/v1/history/{run_id}/correction", content=data, headers={"Content-Type": "image/png"},
                      params=params)


def test_a_drawn_mask_changes_the_stored_mask_area_and_row_by_exactly_what_was_drawn(service, client):
    run_id = service.analyze(SEG, source="api").run_id
    model = service.run_mask(run_id)
    corrected, added, removed = drawn(model)
    assert added > 0 and removed > 0
    answer = put_mask(client, run_id, png_of(corrected), user="dr who", reason="missed the rim")
    assert answer.status_code == 200, answer.text
    version = answer.json()
    area = int(model.sum()) + added - removed
    assert version["version"] == 1 and version["kind"] == "mask" and version["author"] == "dr who"
    assert version["pixels_added"] == added and version["pixels_removed"] == removed
    assert version["area_px"] == area == version["measurements"]["area_px"]
    assert version["area_mm2"] == pytest.approx(area * 0.25)
    both = int((model & corrected).sum())
    assert version["dice"] == pytest.approx(2 * both / (model.sum() + corrected.sum()))
    assert version["mask_path"] == f"corrections/{run_id}/v1.png"
    stored = np.asarray(Image.open(Path(service.settings.workspace) / version["mask_path"])) == 255
    np.testing.assert_array_equal(stored, corrected)
    np.testing.assert_array_equal(service.run_mask(run_id), model)  # the model's result is never overwritten
    row = client.get(f"/v1/history/{run_id}").json()
    assert row["corrected"] is True and row["correction_version"] == 1 and row["corrected_area_px"] == area
    assert row["corrected_area_mm2"] == pytest.approx(area * 0.25) and row["mask_area_px"] == int(model.sum())
    csv_text = client.get("/v1/history.csv").text
    values = next(csv.DictReader(io.StringIO(csv_text)))
    assert values["area_px"] == str(int(model.sum())) and values["corrected_area_px"] == str(area)
    plain = service.analyze(SEG, source="api").run_id
    assert [r["id"] for r in client.get("/v1/history", params={"corrected": "true"}).json()["runs"]] == [run_id]
    assert [r["id"] for r in client.get("/v1/history", params={"corrected": "false"}).json()["runs"]] == [plain]
    assert "corrected" not in client.get(f"/v1/history/{plain}").json()  # only corrected rows carry the keys
    assert client.get("/v1/history.csv", params={"corrected": "true"}).text.count("\n") == 2


def test_versions_are_kept_and_listed(service, client):
    run_id = service.analyze(SEG, source="api").run_id
    model = service.run_mask(run_id)
    first, _, _ = drawn(model)
    assert put_mask(client, run_id, png_of(first)).status_code == 200
    assert put_mask(client, run_id, png_of(np.zeros_like(model))).status_code == 200
    listed = client.get(f"/v1/history/{run_id}/corrections").json()
    assert listed["count"] == 2 and [v["version"] for v in listed["versions"]] == [1, 2]
    assert [v["author"] for v in listed["versions"]] == ["anonymous", "anonymous"]
    assert listed["versions"][1]["area_px"] == 0 and listed["versions"][1]["pixels_removed"] == int(model.sum())
    v1 = client.get(f"/v1/history/{run_id}/corrections/1/mask")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(v1.content))) == 255, first)
    assert client.get(f"/v1/history/{run_id}/corrections/3/mask").status_code == 404
    assert client.get(f"/v1/history/{run_id}").json()["correction_version"] == 2


def test_report_and_seg_use_the_corrected_mask_and_say_so(service, client):
    from pypdf import PdfReader

    run_id = service.analyze({**SEG, "img_path_relative": DICOM_REL}, source="api").run_id
    model = service.run_mask(run_id)
    corrected, _, _ = drawn(model)
    assert put_mask(client, run_id, png_of(corrected)).status_code == 200
    seg = pydicom.dcmread(io.BytesIO(service.dicom_seg(run_id)))
    assert seg.ContentDescription.startswith("corrected v1;")
    np.testing.assert_array_equal(seg.pixel_array.astype(bool).reshape(model.shape), corrected)
    text = "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(service.report_pdf(run_id))).pages)
    assert "Corrected result: mask version 1" in " ".join(text.split())
    assert f"{int(corrected.sum()):,} px" in text  # the measurements of the corrected mask


def test_class_correction_is_a_version_and_reaches_the_report(service, client):
    run = service.analyze(CLS, source="api")
    other = 1 - int(run.to_json()["prediction"])
    answer = client.put(f"/v1/history/{run.run_id}/correction", json={"class_index": other, "reason": "biopsy"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["kind"] == "class" and answer.json()["class_index"] == other
    row = service.run(run.run_id)
    assert row["corrected_prediction"] == other and row["correction_kind"] == "class"
    assert row["prediction"] == 1 - other  # the model's class stays
    from pypdf import PdfReader

    text = " ".join("\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(service.report_pdf(run.run_id)))
                              .pages).split())
    assert f"Corrected result: class {other}" in text


def test_export_labels_loads_with_the_training_loader(service, settings, client, tmp_path, monkeypatch):
    from core import cli
    from core.train import build_pack

    seg_id = service.analyze(SEG, source="api").run_id
    corrected, _, _ = drawn(service.run_mask(seg_id))
    assert put_mask(client, seg_id, png_of(corrected)).status_code == 200
    cls_run = service.analyze(CLS, source="api")
    assert client.put(f"/v1/history/{cls_run.run_id}/correction", json={"class_index": 1}).status_code == 200
    service.analyze(SEG, source="api")  # not corrected: not exported
    report = export_labels(settings, service.store, tmp_path / "labels")
    assert report == {"written": 2, "skipped": 0, "out": str(tmp_path / "labels")}
    entries = json.loads((tmp_path / "labels/ground_truth.json").read_text())
    seg_entry = next(e for e in entries if e["task"] == "segmentation")
    cls_entry = next(e for e in entries if e["task"] == "classification")
    assert seg_entry["mask_path_relative"] == f"segmentation/DDTI/masks/run_{seg_id}.png"
    assert cls_entry["class_label_index"] == 1 and cls_entry["img_path_relative"].endswith(f"run_{cls_run.run_id}.png")
    mask = np.asarray(Image.open(tmp_path / "labels" / seg_entry["mask_path_relative"])) == 255
    np.testing.assert_array_equal(mask, corrected)
    image = Image.open(tmp_path / "labels" / seg_entry["img_path_relative"])
    assert not image.info.get("exif") and set(image.info) <= {"dpi", "gamma", "srgb"}  # pixels only
    pack, _ = build_pack(tmp_path / "labels", 32, progress=False)
    assert len(pack.labels) == 2 and int(pack.is_seg.sum()) == 1 and sorted(pack.labels.tolist()) == [-1, 1]
    assert export_labels(settings, service.store, tmp_path / "none", dataset="BUSI")["written"] == 1
    assert export_labels(settings, service.store, tmp_path / "later", since="2999-01-01")["written"] == 0
    for name, value in (("UUSIC_WORKSPACE", settings.workspace), ("UUSIC_DATA_ROOT", settings.data_root),
                        ("UUSIC_WEIGHTS_DIR", settings.weights_dir)):
        monkeypatch.setenv(name, str(value))
    assert cli.main(["history", "export-labels", "--out", str(tmp_path / "cli")]) == 0
    assert len(json.loads((tmp_path / "cli/ground_truth.json").read_text())) == 2
    assert cli.main(["history", "export-labels", "--out", str(tmp_path / "cli")]) == 2  # not empty: refused


def _ihdr_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16


def _hostile_cases(model: np.ndarray) -> list[tuple[str, dict, int, str]]:
    h, w = model.shape
    grey = model.astype(np.uint8) * 255
    grey[0, 0] = 128
    rgb = np.stack([model.astype(np.uint8) * 255] * 3, axis=2)
    rgb[0, 0] = (255, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(model.astype(np.uint16) * 255).save(buffer, format="PNG")
    sixteen = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(model.astype(np.uint8) * 255).convert("RGB").save(buffer, format="JPEG")
    png = png_of(model)
    raw = {"Content-Type": "image/png"}
    return [
        ("wrong size", {"content": png_of(np.zeros((h + 1, w), bool)), "headers": raw}, 422, "mask"),
        ("transposed", {"content": png_of(np.zeros((w, h), bool)), "headers": raw}, 422, "mask"),
        ("non-binary", {"content": png_of(model)[:0] + mask_png_grey(grey), "headers": raw}, 422, "mask"),
        ("colour", {"content": mask_png_rgb(rgb), "headers": raw}, 422, "mask"),
        ("16-bit", {"content": sixteen, "headers": raw}, 422, "mask"),
        ("huge header", {"content": _ihdr_png(100_000, 100_000), "headers": raw}, 422, "mask"),
        ("huge header, right width", {"content": _ihdr_png(w, 2**31 - 1), "headers": raw}, 422, "mask"),
        ("right header, broken data", {"content": _ihdr_png(w, h), "headers": raw}, 422, "mask"),
        ("truncated", {"content": png[: len(png) // 2], "headers": raw}, 422, "mask"),
        ("not a PNG", {"content": buffer.getvalue(), "headers": raw}, 422, "mask"),
        ("empty body", {"content": b"", "headers": raw}, 422, "mask"),
        ("text body", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "content-type"),
        ("multipart without mask", {"files": {"other": ("m.png", png, "image/png")}}, 422, "mask"),
        ("class on a seg run", {"json": {"class_index": 0}}, 422, "class_index"),
    ]


def mask_png_grey(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png_rgb(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_hostile_table_of_the_correction_route(service, client):
    seg_id = service.analyze(SEG, source="api").run_id
    model = service.run_mask(seg_id)
    for name, kwargs, status, field in _hostile_cases(model):
        answer = client.put(f"/v1/history/{seg_id}/correction", **kwargs)
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["field"] == field, (name, answer.json())
    cls_id = service.analyze(CLS, source="api").run_id
    other = service.analyze({**SEG, "img_path_relative": "segmentation/DDTI/imgs/seg_1.png"}, source="api").run_id
    cases = [
        ("another run's mask", seg_id, {"content": png_of(service.run_mask(other)),
                                        "headers": {"Content-Type": "image/png"}}, 422, "mask"),
        ("unknown id", 999_999, {"json": {"class_index": 0}}, 404, "run_id"),
        ("id out of range", 2**63, {"json": {"class_index": 0}}, 422, "run_id"),
        ("mask on a class run", cls_id, {"content": png_of(model), "headers": {"Content-Type": "image/png"}}, 422,
         "mask"),
        ("class out of range", cls_id, {"json": {"class_index": 2}}, 422, "class_index"),
        ("negative class", cls_id, {"json": {"class_index": -1}}, 422, "class_index"),
        ("class as text", cls_id, {"json": {"class_index": "1"}}, 422, "class_index"),
        ("class as bool", cls_id, {"json": {"class_index": True}}, 422, "class_index"),
        ("class as float", cls_id, {"json": {"class_index": 1.0}}, 422, "class_index"),
        ("NaN", cls_id, {"content": b'{"class_index": NaN}', "headers": {"Content-Type": "application/json"}},
         None, None),
        ("unknown key", cls_id, {"json": {"class_index": 0, "admin": True}}, 422, "admin"),
        ("not an object", cls_id, {"json": [0]}, 422, "class_index"),
        ("long reason", cls_id, {"json": {"class_index": 0, "reason": "x" * 501}}, 422, "reason"),
        ("empty JSON body", cls_id, {"content": b"", "headers": {"Content-Type": "application/json"}}, 422, None),
    ]
    for name, run_id, kwargs, status, field in cases:
        answer = client.put(f"/v1/history/{run_id}/correction", **kwargs)
        assert 400 <= answer.status_code < 500, (name, answer.text)
        assert status is None or answer.status_code == status, (name, answer.text)
        assert field is None or answer.json()["field"] == field, (name, answer.json())
    failed = record_run(service.store, SEG, None, source="api", error="boom", error_type="ImageError")
    assert client.put(f"/v1/history/{failed}/correction", content=png_of(model),
                      headers={"Content-Type": "image/png"}).status_code == 422
    Path(service.run(other)["mask_path"]).unlink()  # purged: nothing to correct against
    gone = client.put(f"/v1/history/{other}/correction", content=png_of(model), headers={"Content-Type": "image/png"})
    assert gone.status_code == 409 and "no longer available" in gone.json()["detail"]
    assert client.get(f"/v1/history/{seg_id}/corrections").json()["count"] == 0  # nothing was saved
    assert client.get("/v1/history/999999/corrections").status_code == 404
    too_big = b"\x89PNG\r\n\x1a\n" + b"\0" * (service.settings.max_upload_mb * 1024 * 1024 + 70_000)
    assert put_mask(client, seg_id, too_big).status_code == 413
    padded = b"\0" * (service.settings.max_json_bytes + 10)  # over the JSON limit, under the upload one: read
    assert put_mask(client, seg_id, padded).json()["field"] == "mask"
    multipart = client.put(f"/v1/history/{seg_id}/correction", files={"mask": ("m.png", png_of(model), "image/png")})
    assert multipart.status_code == 200 and multipart.json()["dice"] == 1.0


def test_concurrent_corrections_each_get_their_own_version(settings, history_target):
    url = history_target if isinstance(history_target, str) else None  # PostgreSQL: SELECT ... FOR UPDATE
    service = AnalysisService(settings.model_copy(update={"history_url": url}))
    run_id = service.analyze(SEG, source="api").run_id
    model = service.run_mask(run_id)
    store, saved, errors = Corrections(service.settings, service.store), [], []
    barrier = threading.Barrier(8)

    def save(worker: int) -> None:
        mask = model.copy()
        mask[worker, :] = True
        barrier.wait(timeout=30)
        try:
            saved.append((worker, store.correct_mask(run_id, png_of(mask), author=f"user {worker}")))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and sorted(v["version"] for _, v in saved) == list(range(1, 9))
    for worker, version in saved:  # each version's file holds its own drawing
        assert store.mask_of(version)[worker].all() and version["author"] == f"user {worker}"


def test_unauthenticated_puts_are_refused_when_a_key_is_set(settings):
    keyed = AnalysisService(settings.model_copy(update={"api_key": "k-123"}))
    run_id = keyed.analyze(SEG, source="api").run_id
    with TestClient(create_app(service=keyed)) as client:
        data = png_of(keyed.run_mask(run_id))
        assert put_mask(client, run_id, data).status_code == 401
        assert client.get(f"/v1/history/{run_id}/corrections").status_code == 401
        ok = client.put(f"/v1/history/{run_id}/correction", content=data,
                        headers={"Content-Type": "image/png", "X-API-Key": "k-123"})
        assert ok.status_code == 200


def test_agreement_per_dataset(service, client):
    seg_id = service.analyze(SEG, source="api").run_id
    service.analyze(SEG, source="api")
    cls = service.analyze(CLS, source="api")
    assert put_mask(client, seg_id, png_of(service.run_mask(seg_id))).status_code == 200
    assert client.put(f"/v1/history/{cls.run_id}/correction",
                      json={"class_index": int(cls.to_json()["prediction"])}).status_code == 200
    rows = {r["dataset_name"]: r for r in client.get("/v1/corrections/agreement").json()["datasets"]}
    assert rows["DDTI"]["runs"] == 2 and rows["DDTI"]["corrected"] == 1 and rows["DDTI"]["mean_dice"] == 1.0
    assert rows["BUSI"]["class_agreement"] == 1.0 and rows["BUSI"]["mean_dice"] is None
    assert agreement(service.store, since="2999-01-01") == []


def test_the_corrections_table_migrates_and_numbers_versions(history_target):
    store = HistoryStore(history_target)
    run_id = store.add({"img_name": "a.png", "task": "segmentation", "dataset_name": "DDTI"})
    assert head_revision() == "0004"
    for expected in (1, 2):
        def insert(connection, version=expected):
            import sqlalchemy as sa

            connection.execute(sa.insert(corrections).values(run_id=run_id, version=version, timestamp="t",
                                                             author="a", kind="class", class_index=1))
        store.write(insert, "test")
    row = store.get(run_id)
    assert row["corrected"] is True and row["correction_version"] == 2 and row["correction"]["class_index"] == 1
    assert [r["id"] for r in store.list({"corrected": "yes"})] == [run_id]
    assert store.list({"corrected": "false"}) == []
    store.close()
    again = HistoryStore(history_target)  # reopened: nothing to migrate, rows kept
    assert again.get(run_id)["correction_version"] == 2
    again.close()


def test_decode_mask_accepts_1_bit_and_rgb_black_and_white():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:25] = True
    buffer = io.BytesIO()
    Image.fromarray(mask).convert("1").save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_mask(buffer.getvalue(), (30, 20)), mask)
    rgb = np.stack([mask.astype(np.uint8) * 255] * 3, axis=2)
    np.testing.assert_array_equal(decode_mask(mask_png_rgb(rgb), (30, 20)), mask)


# ---------------------------------------------------------------------------------------------- dashboard panel
def _history_page(dashboard_env, run_id: int):
    from streamlit.testing.v1 import AppTest

    from core.settings import PROJECT_ROOT

    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.session_state["lang"] = "en"
    at.run()
    at.switch_page("pages/history.py").run()
    at.selectbox(key="h_reopen").set_value(run_id).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_dashboard_panel_places_a_shape_undoes_and_saves_a_version(dashboard_env):
    from core.client import open_service
    from pages.correction import apply_edit, shape_mask

    analysis = open_service(dashboard_env)
    run_id = analysis.analyze(SEG, source="dashboard").run_id
    model = analysis.run_mask(run_id)
    at = _history_page(dashboard_env, run_id)
    assert not at.get("plotly_chart")  # the drawing chart only when editing
    at.toggle(key=f"corr_edit_{run_id}").set_value(True).run()
    h, w = model.shape
    at.slider(key=f"corr_x_{run_id}").set_value((0, 5))
    at.slider(key=f"corr_y_{run_id}").set_value((0, 5))
    at.selectbox(key=f"corr_tool_{run_id}").set_value("rectangle")
    at.button(key=f"corr_apply_{run_id}").click().run()
    expected = apply_edit(model, shape_mask((w, h), "rectangle", [(0, 0), (5, 5)], 1), False)
    added = int((expected & ~model).sum())
    assert any(f"{added} px added" in c.value for c in at.caption), [c.value for c in at.caption]
    at.button(key=f"corr_undo_{run_id}").click().run()
    assert any("0 px added, 0 px removed" in c.value for c in at.caption)
    at.button(key=f"corr_redo_{run_id}").click().run()
    at.button(key=f"corr_save_{run_id}").click().run()
    assert not at.exception and any("Saved as version 1" in s.value for s in at.success)
    versions = Corrections(analysis.settings, analysis.store).versions(run_id)
    assert len(versions) == 1 and versions[0]["pixels_added"] == added and versions[0]["author"] == "anonymous"
    np.testing.assert_array_equal(Corrections(analysis.settings, analysis.store).mask_of(versions[0]), expected)


def test_dashboard_panel_overrides_a_class(dashboard_env):
    from core.client import open_service

    analysis = open_service(dashboard_env)
    run = analysis.analyze(CLS, source="dashboard")
    other = 1 - int(run.prediction)
    at = _history_page(dashboard_env, run.run_id)
    at.selectbox(key=f"corr_class_{run.run_id}").set_value(other).run()
    at.text_input(key=f"corr_creason_{run.run_id}").input("pathology report").run()
    at.button(key=f"corr_csave_{run.run_id}").click().run()
    assert any("Saved as version 1" in s.value for s in at.success)
    row = analysis.run(run.run_id)
    assert row["corrected_prediction"] == other and row["correction"]["reason"] == "pathology report"


def test_shape_mask_brush_and_polygon():
    from pages.correction import shape_mask

    brush = shape_mask((20, 20), "brush", [(2, 10), (17, 10)], 3)
    assert brush[10, 2:18].all() and not brush[0].any()
    polygon = shape_mask((20, 20), "polygon", [(2, 2), (12, 2), (12, 12), (2, 12)], 1)
    assert int(polygon.sum()) == 121


def test_export_labels_hostile_rows_and_files_are_skipped_not_followed(service, settings, client, tmp_path):
    import sqlalchemy as sa

    ids = [service.analyze(SEG, source="api").run_id for _ in range(5)]
    for run_id in ids:
        assert put_mask(client, run_id, png_of(service.run_mask(run_id))).status_code == 200
    cls_id = service.analyze(CLS, source="api").run_id
    assert client.put(f"/v1/history/{cls_id}/correction", json={"class_index": 0}).status_code == 200
    workspace = Path(settings.workspace)
    (workspace / f"corrections/{ids[0]}/v1.png").unlink()  # the corrected mask is gone
    Image.new("L", (7, 9)).save(workspace / f"corrections/{ids[1]}/v1.png")  # replaced by another size

    def tamper(connection):
        connection.execute(sa.update(corrections).where(corrections.c.run_id == ids[2])
                           .values(mask_path="../api_out/masks/seg_0.png"))  # leads out of corrections/
        from core.history import runs

        connection.execute(sa.update(runs).where(runs.c.id == ids[3]).values(dataset_name="../../escape"))
        connection.execute(sa.update(runs).where(runs.c.id == cls_id).values(img_path_relative="../../etc/passwd"))

    service.store.write(tamper, "test")
    report = export_labels(settings, service.store, tmp_path / "out")
    assert report["written"] == 1 and report["skipped"] == 5
    entries = json.loads((tmp_path / "out/ground_truth.json").read_text())
    assert [e["img_name"] for e in entries] == [f"run_{ids[4]}.png"]
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["ground_truth.json", f"segmentation/DDTI/imgs/run_{ids[4]}.png",
                       f"segmentation/DDTI/masks/run_{ids[4]}.png"]
    assert not (tmp_path / "escape").exists()
    assert client.get(f"/v1/history/{ids[2]}/corrections/1/mask").status_code in (403, 404)


# ------------------------------------------------------------------------------ the agreement monitor (Models page)
def test_client_agreement_matches_the_in_process_function(service, client):
    from core.client import ApiClient

    run_id = service.analyze(SEG, source="api").run_id
    corrected, _, _ = drawn(service.run_mask(run_id))
    assert put_mask(client, run_id, png_of(corrected)).status_code == 200
    api = ApiClient(service.settings.with_(api_url="http://testserver"))
    api._http = client  # the TestClient is an httpx.Client on the ASGI app
    assert api.correction_agreement() == agreement(service.store)
    assert api.correction_agreement(since="2999-01-01") == []


MONITOR_WORDS = {  # the page's own words (pages/models.py AGREEMENT_WORDS), not imported: importing runs the page
    "en": {"title": "Agreement with clinicians' corrections", "dataset": "Dataset", "runs": "Runs",
           "corrected": "Corrected", "share": "Corrected %", "mean_dice": "Mean Dice (model vs corrected)",
           "class_agreement": "Class agreement"},
    "zh": {"title": "与临床医生修正的一致性", "dataset": "数据集", "runs": "运行数", "corrected": "已修正",
           "share": "修正比例 %", "mean_dice": "平均 Dice（模型 vs 修正）", "class_agreement": "类别一致率"},
}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_models_page_shows_the_agreement_monitor(dashboard_env, lang):
    from streamlit.testing.v1 import AppTest

    from core.client import open_service
    from core.settings import PROJECT_ROOT

    analysis = open_service(dashboard_env)
    store = Corrections(analysis.settings, analysis.store)
    seg_id = analysis.analyze(SEG, source="dashboard").run_id
    analysis.analyze(SEG, source="dashboard")
    corrected, _, _ = drawn(analysis.run_mask(seg_id))
    store.correct_mask(seg_id, png_of(corrected))
    cls = analysis.analyze(CLS, source="dashboard")
    store.correct_class(cls.run_id, {"class_index": 1 - int(cls.prediction)})
    dice = store.versions(seg_id)[-1]["dice"]
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.session_state["lang"] = lang
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.exception, [e.value for e in at.exception]
    word = MONITOR_WORDS[lang]
    assert any(s.value == word["title"] for s in at.subheader)
    tables = [d.value for d in at.dataframe if word["dataset"] in d.value.columns]
    assert len(tables) == 1
    rows = tables[0].set_index(word["dataset"])
    assert rows.loc["segmentation/DDTI", word["runs"]] == 2 and rows.loc["segmentation/DDTI", word["corrected"]] == 1
    assert rows.loc["segmentation/DDTI", word["share"]] == 50.0
    assert abs(rows.loc["segmentation/DDTI", word["mean_dice"]] - dice) < 1e-3
    assert rows.loc["classification/BUSI", word["class_agreement"]] == 0.0


def test_models_page_says_when_nothing_was_corrected(dashboard_env):
    from streamlit.testing.v1 import AppTest

    from core.settings import PROJECT_ROOT

    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.session_state["lang"] = "en"
    at.run()
    at.switch_page("pages/models.py").run()
    assert not at.exception
    assert any(i.value.startswith("No result has been corrected yet") for i in at.info)
