"""The structure of a source tree's ``core/`` (issue 21's before/after), from the AST alone (nothing is imported).

Prints: modules and lines in core/; the largest classes (lines) and every function over 60 lines; the import graph of
core-internal imports (lazy ones too, ``if TYPE_CHECKING`` blocks excluded, the same reading as tests/test_spine.py):
its floors (the longest chain of imports, a circle counted as one floor), its circles, and its upward imports (the
imports that close a circle: back edges of a depth-first walk in name order).

    .venv/bin/python bench/structure.py [TREE ...]     # default: this repository
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse(path: Path) -> ast.Module:
    """The AST of a source file. CPython 3.11's AST builder keeps its recursion depth in shared state, so a compile in
    another thread (an import compiling a module, a traceback's caret) can make ``ast.parse`` raise "AST constructor
    recursion depth mismatch" (fixed in later Pythons); the parse is deterministic, so it is simply tried again."""
    source = path.read_text()
    for _ in range(4):
        try:
            return ast.parse(source, str(path))
        except SystemError as error:
            if "recursion depth mismatch" not in str(error):
                raise
    return ast.parse(source, str(path))


def modules(tree: Path) -> dict[str, Path]:
    found = {}
    for path in sorted((tree / "core").rglob("*.py")):
        found[".".join(path.relative_to(tree).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imports(module: ast.Module, known: dict[str, Path], typing: bool = False) -> set[str]:
    """The core modules a module imports anywhere, except under ``if TYPE_CHECKING`` (as tests/test_spine.py) unless
    ``typing``."""
    typing_only = set() if typing else {id(sub) for node in ast.walk(module) if isinstance(node, ast.If)
                                        and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}
    targets: set[str] = set()
    for node in ast.walk(module):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("core"):
            targets.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return {target for target in targets if target in known}


def back_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The imports that close a circle (depth-first, names in order)."""
    state: dict[str, int] = {}
    found: list[tuple[str, str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append((node, nxt))
            elif nxt not in state:
                visit(nxt)
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: groups of two or more modules that reach each other."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        reach[start] = seen
    groups = {tuple(sorted(m for m in graph if m in reach[n] and n in reach[m])) for n in graph}
    return sorted(list(group) for group in groups if len(group) > 1)


def floors(graph: dict[str, set[str]], upward: list[tuple[str, str]]) -> tuple[int, list[str]]:
    """The number of floors (modules on the longest import chain, upward imports left out) and that chain."""
    down = {node: graph[node] - {b for a, b in upward if a == node} for node in graph}

    @cache
    def chain(node: str) -> tuple[str, ...]:
        longest = max((chain(nxt) for nxt in sorted(down[node])), key=len, default=())
        return (node, *longest)

    best = max((chain(node) for node in sorted(graph)), key=len)
    return len(best), list(best)


def sizes(known: dict[str, Path]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    classes, functions = [], []
    for name, path in known.items():
        for node in ast.walk(parse(path)):
            lines = (getattr(node, "end_lineno", 0) or 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                classes.append((lines, f"{name}.{node.name}"))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines > 60:
                functions.append((lines, f"{name}.{node.name}"))
    return sorted(classes, reverse=True), sorted(functions, reverse=True)


def report(tree: Path, top: int) -> None:
    known = modules(tree)
    graph = {name: imports(parse(path), known) - {name} for name, path in known.items()}
    lines = sum(len(path.read_text().splitlines()) for path in known.values())
    classes, functions = sizes(known)
    upward = back_edges(graph)
    count, chain = floors(graph, upward)
    print(f"== {tree}")
    print(f"core/: {len(known)} modules, {lines} lines; {len(classes)} classes, "
          f"{sum(1 for n, _ in classes if n > 250)} over 250 lines; {len(functions)} functions over 60 lines")
    print(f"largest classes: {', '.join(f'{name} {n}' for n, name in classes[:top])}")
    print(f"functions over 60: {', '.join(f'{name} {n}' for n, name in functions) or 'none'}")
    print(f"import floors: {count} ({' -> '.join(chain)})")
    print(f"circles: {len(circles(graph))}" + "".join(f"\n  {' <-> '.join(c)}" for c in circles(graph)))
    typed = {name: imports(parse(path), known, True) - {name} for name, path in known.items()}
    print(f"circles counting `if TYPE_CHECKING` imports too: {len(circles(typed))}"
          + "".join(f"\n  {' <-> '.join(c)}" for c in circles(typed)))
    print(f"upward imports (close a circle): {len(upward)}" + "".join(f"\n  {a} -> {b}" for a, b in upward))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--top", type=int, default=5, help="how many of the largest classes")
    args = parser.parse_args(argv)
    for tree in args.trees:
        report(tree.resolve(), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
