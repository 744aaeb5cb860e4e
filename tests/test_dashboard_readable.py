"""Issue 23 items 6-7: the history CSV people download (readable headers with units in the UI's language, the user's
file name first, one value per cell, no server paths, the target named), local time with the zone named on History
and in the PDF (the ``timezone`` setting, UUSIC_TIMEZONE), and the API's machine CSV left as it was."""

from __future__ import annotations

import csv
import io
import json

import pytest
from test_dashboard_history import _open, _sample

from core import i18n
from core.history import COLUMN_NAMES, HistoryStore, record_run
from core.runs_table import history_csv, measurement_header, readable_csv

SEG = {
    "task": "segmentation", "dataset_name": "Fetal_HC", "organ": "Head", "img_path_relative": "api_in/a-1f2e.png",
    "pixel_spacing_mm": 0.15, "pixel_spacing_source": "user", "frame_index": 3, "frame_count": 10,
    "mask_path": "/srv/uusic/workspace/api_out/a-1f2e_mask.png", "mask_path_relative": "api_out/a-1f2e_mask.png",
    "measurements": {"area_px": 1200, "area_mm2": 27.0, "head_circumference_px": 130.5,
                     "head_circumference_mm": 19.575, "pixel_spacing_mm": 0.15, "ellipse": {"a": 1}},
}


@pytest.fixture()
def analysis(dashboard_env):
    from core.client import open_service

    return open_service(dashboard_env)


def _rows(tmp_path) -> list[dict]:
    store = HistoryStore(tmp_path / "history.db")
    record_run(store, {"task": "segmentation", "dataset_name": "Fetal_HC", "original_name": "Patient scan.png"}, SEG,
               source="api")
    record_run(store, {"task": "classification", "dataset_name": "BUSI", "original_name": "=cmd|calc"},
               {"task": "classification", "dataset_name": "BUSI", "organ": "Breast", "prediction": 1,
                "label_name": "malignant", "probability": [0.25, 0.75], "img_path_relative": "api_in/b.png"},
               source="dashboard")
    rows = store.list()
    store.close()
    for row in rows:
        row["timestamp"] = "2026-01-31T23:30:00.000+00:00"
    return rows


def _table(text: str) -> list[dict]:
    assert text.startswith("\ufeff")  # spreadsheets read the Chinese headers as UTF-8
    return list(csv.DictReader(io.StringIO(text[1:], newline="")))


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_readable_csv_headers_units_names_and_no_paths(tmp_path, lang):
    text = readable_csv(_rows(tmp_path), lang, "Asia/Shanghai")
    header = next(csv.reader(io.StringIO(text[1:])))
    assert header[0] == ("文件名" if lang == "zh" else "File name")  # the user's name first
    assert header[1] == ("时间（Asia/Shanghai）" if lang == "zh" else "Time (Asia/Shanghai)")
    assert measurement_header("area_px", lang) in header and measurement_header("area_mm2", lang) in header
    assert ("面积（px²）" if lang == "zh" else "Area (px²)") in header
    assert all(name not in header for name in ("measurements", "mask_path", "request", "response"))
    seg, cls = sorted(_table(text), key=lambda row: int(row[header[2]]))  # by run id
    assert seg[header[0]] == "Patient scan.png" and cls[header[0]] == "'=cmd|calc"  # never a formula
    assert seg[header[1]] == "2026-02-01 07:30:00 CST"  # local time, zone named
    target = "胎儿头部" if lang == "zh" else "fetal head"
    assert seg["分割目标" if lang == "zh" else "Segmented target"] == target
    assert seg[measurement_header("area_mm2", lang)] == "27.0"
    assert seg["帧" if lang == "zh" else "Frame"] == "4 / 10"  # numbered from 1
    assert seg["掩膜文件" if lang == "zh" else "Mask file"] == "a-1f2e_mask.png"  # a name, never a server path
    assert cls["预测" if lang == "zh" else "Prediction"] == ("恶性" if lang == "zh" else "malignant")
    for cell in (v for row in (seg, cls) for v in row.values()):
        assert "/srv/" not in cell and "{" not in cell and "api_out/" not in cell  # one plain value per cell


def test_the_api_csv_keeps_its_machine_columns(tmp_path):
    header = next(csv.reader(io.StringIO(history_csv(_rows(tmp_path)))))
    assert header[: len(COLUMN_NAMES)] == list(COLUMN_NAMES)  # /v1/history.csv: unchanged, snake_case


def test_report_prints_local_time_once_with_utc_and_area_in_px2(analysis, monkeypatch):
    from core.report import _dates

    assert _dates("2026-01-31T23:30:00.000+00:00", "Asia/Shanghai") == \
        "2026-02-01 07:30:00 CST  (UTC 2026-01-31 23:30:00)"
    response = analysis.analyze(_sample(analysis, "segmentation", "DDTI"), source="dashboard")
    pytest.importorskip("pypdf")
    from test_report import pdf_text

    text = pdf_text(analysis.report_pdf(response.run_id, "en"))
    assert text.count("(UTC ") == 1 and "local" not in text
    assert f"{response.measurements['area_px']:,} px²" in text


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_history_page_names_the_zone_of_the_setting(analysis, monkeypatch, lang):
    monkeypatch.setenv("UUSIC_TIMEZONE", "Asia/Shanghai")
    analysis.analyze(_sample(analysis, "classification", "BUSI", "my scan.png"), source="api")
    at = _open(lang)
    prefix = i18n.t("h_time_zone", lang, zone="|").split("|")[0]
    assert any(c.value.startswith(prefix) and "Asia/Shanghai" in c.value for c in at.caption)
    assert all(str(t).endswith("CST") for t in at.dataframe[0].value["timestamp_shown"])
    assert not any("UTC" in c.value or "服务器" in c.value for c in at.caption)
    assert [b for b in at.get("download_button") if b.proto.label == i18n.t("download_csv", lang)]
    json.dumps(at.session_state["lang"])  # the page ran in that language


def test_every_error_type_has_words_in_both_languages():
    """Issue 23 item 6: the Chinese UI translates errors by type (and field), never shows the English text alone."""
    from core import errors

    kinds = [c.__name__ for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.UUSICError)]
    for kind in kinds:
        zh, en = i18n.error_text(kind, None, "zh"), i18n.error_text(kind, None, "en")
        assert zh and en and zh != en, kind
    text = i18n.error_text("RequestError", "pixel_spacing_mm", "zh", band="0.01–2 mm/像素")
    assert text and "0.01–2 mm" in text and "像素间距" in text
    assert i18n.error_text("RequestError", "some_other_field", "zh") == i18n.error_text("RequestError", None, "zh")


@pytest.mark.parametrize("value", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\t=x", "\r=x"])
def test_readable_csv_never_carries_a_formula(value):
    text = readable_csv([{"id": 1, "img_name": value, "model_name": value, "error": value}], "en")
    [row] = _table(text)
    for header in ("File name", "Model", "Error"):
        assert row[header].startswith("'"), (header, row[header])
    numbers = readable_csv([{"id": 2, "img_name": "a.png", "inference_time_sec": -1.5}], "en")
    assert _table(numbers)[0]["Inference time (s)"] == "-1.5"  # numbers stay numbers
