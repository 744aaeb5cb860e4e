"""Request validation: clear messages naming the field."""

from __future__ import annotations

import json

import pytest

from core.errors import RequestError, UUSICError
from core.schema import PredictRequest, parse_request_list

GOOD = {"img_path_relative": "segmentation/BUSI/imgs/a.jpg", "task": "segmentation", "dataset_name": "BUSI"}


def _error(obj) -> RequestError:
    with pytest.raises(RequestError) as info:
        PredictRequest.parse(obj)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UUSICError)
    assert info.value.status_code == 422
    return info.value


def test_minimal_request_gets_defaults():
    request = PredictRequest.parse(GOOD)
    assert request.organ == "Breast" and request.img_name == "a.jpg"
    assert request.dataset.head == "seg" and request.pixel_spacing_mm is None


def test_full_challenge_entry_with_extras():
    entry = {**GOOD, "img_name": "a.jpg", "img_size_bytes": 100, "img_dimensions": [640, 480], "img_format": "jpg",
             "organ": "Breast", "data_partition_group": "public_train", "mask_name": "a.png",
             "mask_path_relative": "segmentation/BUSI/masks/a.png", "seg_target_info": "lesion",
             "class_label_index": None, "class_label_name": None, "pixel_spacing_mm": 0.1, "scanner": "X"}
    request = PredictRequest.parse(json.dumps(entry))
    assert request.img_dimensions == (640, 480)
    assert request.extras == {"scanner": "X"}
    assert request.to_dict()["scanner"] == "X" and request.to_dict()["img_dimensions"] == [640, 480]


def test_missing_fields_named():
    error = _error({"task": "segmentation"})
    assert "img_path_relative: required field is missing" in error.message
    assert "dataset_name: required field is missing" in error.message
    assert error.field == "img_path_relative"


def test_wrong_types():
    assert "img_dimensions" in _error({**GOOD, "img_dimensions": "640x480"}).message
    assert "img_size_bytes" in _error({**GOOD, "img_size_bytes": "big"}).message
    assert "img_dimensions" in _error({**GOOD, "img_dimensions": [0, 10]}).message
    assert "pixel_spacing_mm" in _error({**GOOD, "pixel_spacing_mm": -1}).message
    assert "img_path_relative" in _error({**GOOD, "img_path_relative": 7}).message
    assert "JSON object" in _error([GOOD]).message
    assert "not valid JSON" in _error("{oops").message


def test_unknown_task_and_dataset():
    error = _error({**GOOD, "task": "detection"})
    assert error.field == "task" and "unknown task 'detection'" in error.message
    error = _error({**GOOD, "dataset_name": "MadeUp"})
    assert error.field == "dataset_name" and "unknown dataset 'MadeUp'" in error.message


def test_task_the_dataset_does_not_have():
    error = _error({**GOOD, "dataset_name": "CAMUS", "task": "classification"})
    assert "has no classification task" in error.message


def test_organ_contradicting_catalog():
    error = _error({**GOOD, "organ": "Heart"})
    assert error.field == "organ" and "contradicts the catalog" in error.message
    assert PredictRequest.parse({**GOOD, "organ": "breast"}).organ == "Breast"


def test_dataset_names_canonicalised_and_label_range():
    request = PredictRequest.parse({**GOOD, "task": "classification", "dataset_name": "private_breast_luminal"})
    assert request.dataset_name == "private_Breast_luminal" and request.dataset.head == "cls4"
    error = _error({**GOOD, "task": "classification", "dataset_name": "BUSI", "class_label_index": 2})
    assert "out of range" in error.message


def test_request_list_shapes():
    assert parse_request_list([GOOD]) == [GOOD]
    assert parse_request_list({"data": [GOOD]}) == [GOOD]
    assert parse_request_list(GOOD) == [GOOD]
    with pytest.raises(RequestError):
        parse_request_list("nope")
