"""The one dataset table: lookups, heads, prompts identical to the UUSIC25 baseline's."""

from __future__ import annotations

import pytest

from core import catalog


def test_every_dataset_is_consistent():
    for d in catalog.DATASETS:
        assert d.task in catalog.TASKS and d.group in catalog.ORGAN_GROUPS
        assert catalog.find_dataset(d.task, d.name) is d
        if d.task == "classification":
            assert d.head == ("cls4" if "luminal" in d.name.lower() else "cls2")
            assert d.num_classes == (4 if d.head == "cls4" else 2)
        else:
            assert d.head == "seg" and d.seg_target
        assert len(d.class_names("zh")) == len(d.class_names("en")) == d.num_classes
    assert len({d.key for d in catalog.DATASETS}) == len(catalog.DATASETS)


def test_lookup_is_case_and_dash_insensitive():
    assert catalog.find_dataset("classification", "private_breast_luminal").name == "private_Breast_luminal"
    assert catalog.find_dataset("classification", "bus_bra").name == "BUS-BRA"


def test_lookup_errors_are_readable():
    with pytest.raises(catalog.UnknownDataset, match="has no classification task"):
        catalog.find_dataset("classification", "CAMUS")
    with pytest.raises(catalog.UnknownDataset, match="unknown task"):
        catalog.find_dataset("detection", "BUSI")
    with pytest.raises(catalog.UnknownDataset, match="known:"):
        catalog.find_dataset("segmentation", "Nope")


def test_prompts_match_the_baseline_vectors():
    """The baseline's model.py one-hot tables: position 8, task 2, type 3, nature 2."""
    p = catalog.prompts_for("Breast", "segmentation")
    assert p.position == [1, 0, 0, 0, 0, 0, 0, 0] and p.task == [1, 0] and p.type == [1, 0, 0] and p.nature == [1, 0]
    p = catalog.prompts_for("Head", "segmentation")
    assert p.position == [0, 0, 0, 1, 0, 0, 0, 0] and p.nature == [0, 1]
    p = catalog.prompts_for("Liver", "classification")
    assert p.position == [0, 0, 0, 0, 0, 0, 1, 0] and p.task == [0, 1] and p.nature == [0, 1]
    p = catalog.prompts_for("Spleen", "classification")  # unknown organ: the baseline's `indis` fallback
    assert p.position == [0, 0, 0, 0, 0, 0, 0, 1] and p.nature == [0, 1]
    assert catalog.find_dataset("segmentation", "DDTI").prompts().nature == [1, 0]  # thyroid: tumor


def test_organ_groups_and_defaults():
    assert [g.key for g in catalog.groups_for("classification")] == ["appendix", "breast", "liver", "breast_luminal"]
    assert catalog.default_dataset("segmentation", "fetal_head").name == "Fetal_HC"
    assert catalog.default_dataset("classification", "breast").name == "BUS-BRA"
    assert catalog.ORGAN_GROUPS["heart"].name("zh") == "心脏"
    with pytest.raises(catalog.UnknownDataset):
        catalog.default_dataset("classification", "heart")
