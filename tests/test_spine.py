"""The spine (issue 21): the import graph has no circle, classes and functions stay small, an analysis decodes its
image once, and every door reaches the same validators (parse, edit plan, "is this served?")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import random_png
from fastapi.testclient import TestClient

from bench.structure import imports, parse  # the one reading of a module's core imports (also the structure bench)
from core import editing, routing, schema
from core.api import create_app
from core.errors import NoModelError
from core.service import AnalysisService
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CLS = {"img_path_relative": "classification/BUSI/imgs/cls_1.png", "task": "classification", "dataset_name": "BUSI"}
SEG = {"img_path_relative": "segmentation/DDTI/imgs/seg_2.png", "task": "segmentation", "dataset_name": "DDTI"}
UNSERVED = {**SEG, "dataset_name": "KidneyUS"}
# Larger than the rule, with the reason (each is one object of one job whose parts share its state).
ALLOWED_SIZE = {
    ("core.train", "train"): "the training loop reads top to bottom: data, epochs, validation, the checkpoint",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "core").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of modules), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_import_graph_has_no_circle():
    known = _modules()
    graph = {name: imports(parse(path), known) - {name} for name, path in known.items()}
    assert _cycle(graph) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself finds one


def _sizes(tree: ast.Module) -> Iterator[tuple[str, int, int]]:
    """(name, lines, limit) of every class (250) and function (60)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            limit = 250 if isinstance(node, ast.ClassDef) else 60
            yield node.name, (node.end_lineno or 0) - node.lineno + 1, limit


def test_no_class_over_250_lines_and_no_function_over_60_without_a_reason():
    sizes = {(module, name): (size, limit) for module, path in _modules().items()
             for name, size, limit in _sizes(parse(path))}
    found = {key: size for key, (size, limit) in sizes.items() if size > limit}
    assert set(found) <= set(ALLOWED_SIZE), {key: found[key] for key in set(found) - set(ALLOWED_SIZE)}
    assert sizes[("core.service", "AnalysisService")][0] < 250


@pytest.fixture()
def service(tiny_settings: Settings) -> AnalysisService:
    return AnalysisService(tiny_settings, model="tiny")


def test_an_upload_is_decoded_once_per_analysis(service: AnalysisService, decodes: list[str]):
    skeleton = service.save_upload(random_png(), "scan.png")
    decodes.clear()  # storing the upload decodes it once (to check and re-encode it); analysing it, once more
    service.analyze({**skeleton, "task": "segmentation", "dataset_name": "DDTI"})
    assert len(decodes) == 1
    decodes.clear()
    result = service.analyze_batch([CLS, SEG, {**skeleton, "task": "segmentation", "dataset_name": "DDTI"}],
                                   source="batch")
    assert len(result.responses) == 3 and len(decodes) == 3
    decodes.clear()
    service.analyze_batch([UNSERVED, {"task": "nope"}], source="batch")  # refused before any decode
    assert decodes == []


@pytest.fixture()
def spies(monkeypatch) -> dict[str, int]:
    """How often the one request parser, the one edit-plan parser and the one "is this served?" check ran."""
    calls = {"parse": 0, "edits": 0, "serving": 0}

    def spy(owner, name, key, static=False):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, staticmethod(counted) if static else counted)

    spy(schema.PredictRequest, "parse", "parse", static=True)
    spy(routing.ModelPool, "serving", "serving")
    import core.analysis
    import core.cine_analysis

    for module in (editing, core.analysis, core.cine_analysis):
        if hasattr(module, "parse_edits"):
            original = module.parse_edits

            def counted_edits(*args, _original=original, **kwargs):
                calls["edits"] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, "parse_edits", counted_edits)
    return calls


def test_every_door_reaches_the_same_validators(tiny_settings: Settings, spies: dict[str, int]):
    service = AnalysisService(tiny_settings, model="tiny")
    edits = [{"op": "flip", "axis": "horizontal"}]
    service.analyze(SEG, edits=edits)  # the in-process door (dashboard, CLI single)
    assert spies["edits"] == 1 and spies["serving"] == 1 and spies["parse"] >= 1
    with TestClient(create_app(settings=tiny_settings, service=service)) as client:  # the HTTP door
        before = dict(spies)
        answer = client.post("/v1/predict", json={"request": SEG, "edits": edits})
        assert answer.status_code == 200, answer.text
        assert spies["edits"] == before["edits"] + 1 and spies["serving"] == before["serving"] + 1
        before = dict(spies)
        refused = client.post("/v1/predict", json=UNSERVED)
        assert refused.status_code == 404 and refused.json()["error_type"] == NoModelError.__name__
        assert spies["serving"] == before["serving"] + 1
    before = dict(spies)
    service.analyze_batch([CLS, SEG], source="batch")  # the batch door (CLI predict, Batch page)
    assert spies["serving"] == before["serving"] + 2


# Pages that still name the data-root setting, with the reason (they never open it).
PAGE_DATA_ROOT_ALLOWED = {
    ("pages.models", "paths_table"): "shows the setting's folder name in the paths table; never opens it",
}


def _page_data_root_uses() -> set[tuple[str, str]]:
    """(page module, enclosing function or "<module>") of every ``….data_root`` read in ``pages/`` and every import
    of what reads the data root itself (core.samples, core.paths, core.reference's loader)."""
    found: set[tuple[str, str]] = set()
    for path in sorted((ROOT / "pages").glob("*.py")):
        module, tree = f"pages.{path.stem}", parse(path)
        owners = {id(sub): node.name for node in ast.walk(tree)
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) for sub in ast.walk(node)}
        for node in ast.walk(tree):
            reads = isinstance(node, ast.Attribute) and node.attr == "data_root"
            reads |= isinstance(node, ast.ImportFrom) and node.module in ("core.samples", "core.paths")
            reads |= isinstance(node, ast.ImportFrom) and any(a.name == "load_reference_mask" for a in node.names)
            if reads:
                found.add((module, owners.get(id(node), "<module>")))
    return found


def test_no_page_reads_the_data_root_itself():
    """Pages reach the data root only through the service (so remote mode, :class:`core.client.ApiClient`, works)."""
    found = _page_data_root_uses()
    assert found <= set(PAGE_DATA_ROOT_ALLOWED), sorted(found - set(PAGE_DATA_ROOT_ALLOWED))


def test_the_http_client_has_every_method_of_the_backend_interface():
    import inspect

    from core.client import ApiClient
    from core.service import AnalysisBackend

    wanted = {name for name, _ in inspect.getmembers(AnalysisBackend, inspect.isfunction) if not name.startswith("_")}
    assert {"input_file", "json_files", "json_entries", "known_names", "batch_metrics"} <= wanted
    for backend in (ApiClient, AnalysisService):
        assert not {name for name in wanted if not callable(getattr(backend, name, None))}, backend
