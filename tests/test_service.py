"""core.service: the one flow of a case (request → response → history row), on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.api import create_app
from core.client import ApiClient
from core.errors import (
    ImageError,
    ModelUnavailableError,
    NoModelError,
    NotFoundError,
    PathError,
    RequestError,
)
from core.response import AnalysisFailure, AnalysisResponse
from core.service import AnalysisService, write_classification_json
from core.settings import Settings
from tests import tolerances

CLS = {"img_path_relative": "classification/BUSI/imgs/cls_1.png", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_2.png", "task": "segmentation", "dataset_name": "DDTI"}
UNSERVED = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation",
            "dataset_name": "KidneyUS"}


@pytest.fixture()
def settings(tiny_settings: Settings, history_target) -> Settings:
    """The tiny model and data root, with the history on this test's backend (SQLite file or PostgreSQL)."""
    url = f"sqlite:///{history_target}" if isinstance(history_target, Path) else history_target
    return tiny_settings.with_(history_url=url)


@pytest.fixture()
def service(settings: Settings) -> AnalysisService:
    return AnalysisService(settings, model="tiny")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(width: int = 48, height: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_success_is_one_row_with_the_analysed_bytes_and_the_model(service: AnalysisService, settings: Settings):
    response = service.analyze(CLS, source="api")
    assert isinstance(response, AnalysisResponse) and response.run_id is not None
    row = service.run(response.run_id)
    assert row["source"] == "api" and row["error"] is None
    assert row["input_sha256"] == _sha(settings.data_root / CLS["img_path_relative"]) == response.input_sha256
    assert row["model_sha256"] == service.engine().sha256 and row["model_name"] == "tiny"
    assert row["prediction"] == response.prediction and row["probabilities"] == response.probability
    assert service.store.count() == 1


@pytest.mark.parametrize("request_body, error, status", [
    ({**CLS, "img_path_relative": "classification/BUSI/imgs/none.png"}, PathError, 404),
    ({**CLS, "img_path_relative": "../../etc/passwd"}, PathError, 403),
    (UNSERVED, NoModelError, 404),
    ({**CLS, "task": "detection"}, RequestError, 422),
    ("not an object", RequestError, 422),
])
def test_a_failure_raises_its_type_and_is_recorded(service: AnalysisService, request_body, error, status):
    with pytest.raises(error) as raised:
        service.analyze(request_body, source="dashboard")
    assert raised.value.status_code == status
    (row,) = service.runs()
    assert row["source"] == "dashboard" and row["error"] == raised.value.message
    assert row["error_type"] == error.__name__ and row["prediction"] is None


def test_an_undecodable_file_is_recorded_with_its_hash(service: AnalysisService, settings: Settings):
    broken = settings.api_in / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError):
        service.analyze({**CLS, "img_path_relative": "api_in/broken.png"})
    assert service.runs()[0]["input_sha256"] == _sha(broken)


def test_an_edited_upload_is_hashed_as_saved(service: AnalysisService, settings: Settings):
    skeleton = service.save_upload(_png(), "my scan.png")
    edits = [{"op": "rotate", "angle": 90.0}]
    response = service.analyze({**SEG, **skeleton}, source="dashboard", edits=edits)
    saved = settings.workspace / skeleton["img_path_relative"]
    row = service.run(response.run_id)
    assert row["input_sha256"] == _sha(saved) and row["edits"] == edits
    assert response.mask_url == f"/v1/masks/{response.mask_path_relative}"
    assert service.run_mask(response.run_id).shape == (40, 48)
    assert service.run_image(response.run_id).shape == (40, 48, 3)
    assert service.mask_png(response)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_later_run_of_the_same_image_never_overwrites_an_earlier_runs_mask(
        service: AnalysisService, settings: Settings, tmp_path: Path):
    from core.files import leftover_temporaries

    first = service.analyze(SEG)
    kept = Path(first.mask_path)
    before, inode = kept.read_bytes(), kept.stat().st_ino
    assert kept == (settings.api_out / first.mask_path_relative).resolve()  # the first run: the challenge layout
    with ThreadPoolExecutor(4) as pool:
        later = list(pool.map(lambda _: service.analyze(SEG), range(4)))
    assert len({Path(r.mask_path) for r in [first, *later]}) == 5
    assert kept.read_bytes() == before and kept.stat().st_ino == inode
    for response in later:
        inside = Path(response.mask_path).relative_to(settings.api_out.resolve())
        assert inside.parts[0] == "runs" and inside.as_posix().endswith(first.mask_path_relative)
        assert response.mask_path_relative == first.mask_path_relative
        assert response.mask_url == f"/v1/masks/{inside.as_posix()}"
        assert service.run(response.run_id)["mask_path"] == response.mask_path
        assert service.run_mask(response.run_id).shape == service.run_mask(first.run_id).shape
    assert leftover_temporaries(settings.api_out) == []
    for _ in range(2):  # a job's own folder keeps the challenge layout: a rerun rewrites its mask
        service.analyze(SEG, output_dir=tmp_path / "job")
    assert sorted((tmp_path / "job").rglob("*.png")) == [tmp_path / "job" / "segmentation/DDTI/masks/seg_2.png"]


def test_a_batch_keeps_order_records_every_item_and_writes_one_classification_json(
        service: AnalysisService, settings: Settings, tmp_path: Path):
    entries = [CLS, UNSERVED, {"task": "classification"}, SEG, {**SEG, "img_path_relative": "nope/x.png"}]
    seen: list[tuple[int, int]] = []
    result = service.analyze_batch(entries, source="batch", output_dir=tmp_path / "out", batch_size=2,
                                   progress=lambda done, total: seen.append((done, total)))
    kinds = [item.error_type if isinstance(item, AnalysisFailure) else item.task for item in result.items]
    assert kinds == ["classification", "NoModelError", "RequestError", "segmentation", "PathError"]
    assert result.count("NoModelError") == 1 and seen[-1] == (5, 5)
    rows = service.runs()
    assert len(rows) == 5 and {r["batch_id"] for r in rows} == {result.batch_id}
    assert {r["source"] for r in rows} == {"batch"}
    assert sorted(r["run_id"] for r in [i.to_json() for i in result.items]) == sorted(r["id"] for r in rows)
    written = json.loads(write_classification_json(tmp_path / "out", result.items).read_text())
    assert written == {CLS["img_path_relative"]: {"probability": result.items[0].probability,
                                                  "prediction": result.items[0].prediction}}
    assert (tmp_path / "out" / "segmentation/DDTI/masks/seg_2.png").is_file()


def test_a_batch_without_recording_leaves_the_history_alone(service: AnalysisService, tmp_path: Path):
    result = service.analyze_batch([CLS, SEG], source="cli", output_dir=tmp_path, record=False)
    assert len(result.responses) == 2 and service.store.count() == 0


def test_micro_batched_answers_equal_direct_ones(settings: Settings):
    direct = AnalysisService(settings, model="tiny", micro_batch=False)
    batched = AnalysisService(settings, model="tiny", micro_batch=True)
    expected = {b["task"]: direct.analyze(b).to_json() for b in (CLS, SEG)}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: batched.analyze(b).to_json(), [CLS, SEG] * 6))
    for answer in answers:
        reference = expected[answer["task"]]
        if answer["task"] == "classification":
            tolerances.assert_probabilities_close(answer["probability"], reference["probability"])
        else:  # a shared forward pass of another batch size: a tolerance, not the same bits
            assert tolerances.number_close(answer["mask_area_px"], reference["mask_area_px"],
                                           atol=tolerances.MASK_FLIPS)
    assert batched.batcher.items == 12 and batched.store.count() == 14


def test_history_failure_never_hides_a_result(service: AnalysisService):
    class BrokenStore:
        def add(self, record):
            raise RuntimeError("disk on fire")

    service.workspace_check.wait(30)  # the start-up check reads the service's store; let it finish first
    service.recorder.use_store(BrokenStore())  # type: ignore[arg-type]
    response = service.analyze(CLS)
    assert response.run_id is None and response.prediction is not None


def test_runs_and_files_of_a_run(service: AnalysisService):
    with pytest.raises(NotFoundError):
        service.run(999)
    run_id = service.analyze(CLS).run_id
    with pytest.raises(NotFoundError):
        service.run_mask(run_id)  # a classification run has no mask
    assert service.run_image(run_id).shape == (70, 40, 3)  # cls_1.png is 40 x 70
    assert "input_sha256" in service.runs_csv().splitlines()[0]


def test_a_model_that_cannot_load_is_503_and_reported(tiny_settings: Settings, tmp_path: Path):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    service = AnalysisService(tiny_settings.with_(weights_dir=empty))
    with pytest.raises(ModelUnavailableError) as raised:
        service.analyze(CLS)
    assert raised.value.status_code == 503 and str(empty) not in raised.value.message
    assert service.health()["error"] and service.health()["model_loaded"] is False
    assert all(row["served"] is None for row in service.datasets())


def test_the_http_client_is_the_same_service(settings: Settings):
    """ApiClient against the API gives the local service's answers and the same typed errors."""
    local = AnalysisService(settings, model="tiny")
    with TestClient(create_app(settings.with_(default_model="tiny"))) as http:
        remote = ApiClient(settings.with_(api_url="http://testserver"))
        remote._http = http
        for body in (CLS, SEG):
            flip = [{"op": "flip", "axis": "horizontal"}]
            mine, theirs = local.analyze(body), remote.analyze(body, source="dashboard", edits=flip)
            assert np.allclose(mine.probability or [0], theirs.probability or [0], atol=1e-6)
            if body is SEG:
                assert remote.mask_png(theirs) == local.mask_png(mine)
                assert remote.run_mask(theirs.run_id).sum() == mine.mask_area_px
        with pytest.raises(NoModelError):
            remote.analyze(UNSERVED)
        with pytest.raises(RequestError):
            remote.analyze({"task": "classification"})
        with pytest.raises(NotFoundError):
            remote.run(10**6)
        batch = remote.analyze_batch([CLS, UNSERVED, SEG], source="batch", batch_size=2)
        assert [item.ok for item in batch.items] == [True, False, True]
        assert remote.serves("classification", "BUSI") and not remote.serves("segmentation", "KidneyUS")
        sources = [r["source"] for r in remote.runs()]
        # local: 2 api; remote: 2 dashboard, 2 api failures, 3 batch
        assert sources.count("dashboard") == 2 and sources.count("batch") == 3 and sources.count("api") == 4


@pytest.fixture()
def two_models(settings: Settings) -> Settings:
    """A deployment of two models: ``cls_only`` (the default) serves classification/BUSI, ``seg_only`` DDTI."""
    manifest_path = settings.weights_dir / "models.json"
    tiny = json.loads(manifest_path.read_text())[0]
    entries = [{**tiny, "name": "cls_only", "datasets": [["classification", "BUSI"]]},
               {**tiny, "name": "seg_only", "datasets": [["segmentation", "DDTI"]]}]
    manifest_path.write_text(json.dumps(entries))
    return settings


def test_requests_are_routed_to_the_model_that_serves_their_dataset(two_models: Settings):
    service = AnalysisService(two_models)
    cls, seg = service.analyze(CLS), service.analyze(SEG)
    assert cls.model_name == "cls_only" and seg.model_name == "seg_only"
    # a non-default model's masks never land where the default model's go
    assert seg.mask_url == "/v1/masks/models/seg_only/segmentation/DDTI/masks/seg_2.png"
    assert sorted(service.pool.loaded) == ["cls_only", "seg_only"]
    with pytest.raises(NoModelError):
        service.analyze(SEG, model="cls_only")  # a named model must serve the dataset itself
    with pytest.raises(NoModelError):
        service.analyze(CLS, model="no_such_model")
    rows = {r["dataset_name"]: r["served_by"] for r in service.datasets() if r["served"]}
    assert rows == {"BUSI": ["cls_only"], "DDTI": ["seg_only"]}
    models = {m["name"]: m for m in service.models()["models"]}
    assert models["cls_only"]["default"] and models["seg_only"]["loaded"]
    batch = service.analyze_batch([SEG, CLS, SEG], source="batch", output_dir=two_models.workspace / "b")
    assert [item.model_name for item in batch.items] == ["seg_only", "cls_only", "seg_only"]
