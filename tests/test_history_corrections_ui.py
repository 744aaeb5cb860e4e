"""History's issue 26 controls through ``AppTest``: the "corrected only" filter and the labels export for retraining
(a ZIP in the UUSIC layout, of the dataset filter), in both languages; plus :func:`core.label_export.export_zip`."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import recorded_run
from PIL import Image

from core import i18n
from core.corrections import Corrections, mask_png
from core.history import HistoryStore
from core.label_export import export_zip, zip_size
from core.settings import PROJECT_ROOT, Settings
from pages.common import md_literal

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest

SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_0.png", "task": "segmentation", "dataset_name": "DDTI",
       "organ": "Thyroid", "pixel_spacing_mm": 0.5}
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_0.png", "task": "classification", "dataset_name": "BUSI",
       "organ": "Breast"}


def _run(settings: Settings, store: HistoryStore, request: dict, name: str) -> int:
    """A successful run as the dashboard records one (no model needed: the page is what is tested)."""
    return recorded_run(settings, store, {**request, "original_name": name}, name, source="dashboard")


@pytest.fixture()
def runs(dashboard_env) -> dict:
    """Four runs: a DDTI segmentation corrected (a square added), a BUSI classification overridden, and two
    uncorrected ones."""
    settings = Settings.from_env()
    with HistoryStore.from_settings(settings) as store:
        fixes = Corrections(settings, store)
        seg = _run(settings, store, SEG, "seg-fixed.png")
        drawn = fixes.model_mask(fixes.run(seg)).copy()
        drawn[0:6, 0:6] = True
        fixes.correct_mask(seg, mask_png(drawn), author="dr a")
        cls = _run(settings, store, CLS, "cls-fixed.png")
        fixes.correct_class(cls, {"class_index": 1})
        plain = [_run(settings, store, SEG, "seg-plain.png"), _run(settings, store, CLS, "cls-plain.png")]
    return {"seg": seg, "cls": cls, "plain": plain, "drawn": drawn, "settings": settings}


def _open(lang: str) -> AppTest:
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120)
    at.session_state["lang"] = lang
    at.run()
    at.switch_page("pages/history.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _listed(at: AppTest) -> list[int]:
    table = next(d.value for d in at.dataframe if "id_shown" in d.value.columns)
    return sorted(int(i) for i in table["id_shown"])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_corrected_only_lists_the_corrected_runs(runs, lang):
    at = _open(lang)
    assert _listed(at) == sorted([runs["seg"], runs["cls"], *runs["plain"]])
    toggle = at.toggle(key="h_corrected")
    assert toggle.label == i18n.t("h_corrected_only", lang)
    toggle.set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert _listed(at) == sorted([runs["seg"], runs["cls"]])
    at.selectbox(key="h_dataset").set_value("BUSI").run()  # with the other filters
    assert _listed(at) == [runs["cls"]]
    at.toggle(key="h_corrected").set_value(False).run()
    assert _listed(at) == sorted([runs["cls"], runs["plain"][1]])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_labels_export_of_the_dataset_filter_is_a_uusic_zip(runs, lang):
    at = _open(lang)
    at.selectbox(key="h_dataset").set_value("DDTI").run()
    button = at.button(key="h_labels_make")
    assert button.label == i18n.t("h_labels_make", lang, scope=md_literal("DDTI"))  # a stored name, shown inert
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    made = at.session_state["_h_labels_DDTI"]
    assert made["written"] == 1 and made["skipped"] == 0 and len(made["zip"]) == made["size"]
    assert [b.label for b in at.get("download_button") if b.key == "h_labels_zip"] == \
        [i18n.t("h_labels_download", lang, n=1)]
    with zipfile.ZipFile(io.BytesIO(made["zip"])) as archive:
        names = sorted(archive.namelist())
        entries = json.loads(archive.read("ground_truth.json"))
        mask = np.asarray(Image.open(io.BytesIO(archive.read(f"segmentation/DDTI/masks/run_{runs['seg']}.png"))))
    assert names == ["ground_truth.json", f"segmentation/DDTI/imgs/run_{runs['seg']}.png",
                     f"segmentation/DDTI/masks/run_{runs['seg']}.png"]
    assert [e["dataset_name"] for e in entries] == ["DDTI"] and entries[0]["correction_version"] == 1
    np.testing.assert_array_equal(mask > 127, runs["drawn"])
    assert not list(Path(runs["settings"].workspace).glob(".labels-*"))  # the temporary folder is gone


def test_labels_export_of_all_datasets_and_of_none(runs):
    at = _open("en")
    at.button(key="h_labels_make").click().run()
    assert at.session_state["_h_labels_"]["written"] == 2  # a segmentation and a classification
    at.selectbox(key="h_dataset").set_value("BUSI").run()
    at.toggle(key="h_corrected").set_value(True).run()
    at.button(key="h_labels_make").click().run()
    assert at.session_state["_h_labels_BUSI"]["written"] == 1
    with zipfile.ZipFile(io.BytesIO(at.session_state["_h_labels_BUSI"]["zip"])) as archive:
        entries = json.loads(archive.read("ground_truth.json"))
    assert entries[0]["class_label_index"] == 1


def test_export_zip_budget_is_known_before_building(runs):
    settings = runs["settings"]
    with HistoryStore.from_settings(settings) as store:
        whole = export_zip(settings, store)
        assert whole["zip"] is not None and len(whole["zip"]) == whole["size"]
        over = export_zip(settings, store, budget=whole["size"] - 1)
        assert over["zip"] is None and over["size"] == whole["size"] and over["written"] == 2
        none = export_zip(settings, store, dataset="Fetal_HC")
        assert none["written"] == 0 and none["zip"] is None
    assert zip_size([("a.png", 10), ("b/c.png", 0)]) == 10 + 2 * 76 + 2 * (5 + 7) + 22


def test_too_big_export_is_refused_with_a_message(runs, monkeypatch):
    monkeypatch.setattr("core.label_export.ZIP_BUDGET_BYTES", 10)
    at = _open("en")
    at.button(key="h_labels_make").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("over the page's download limit" in w.value for w in at.warning)
    assert not [b for b in at.get("download_button") if b.key == "h_labels_zip"]
