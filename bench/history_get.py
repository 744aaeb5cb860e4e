"""Benchmark (a script, not a test): 200 ``HistoryStore.get()`` calls on SQLite, this tree against a git revision.

    .venv/bin/python bench/history_get.py [--baseline HEAD] [--calls 200] [--runs 2000] [--rounds 5]

Both stores read the same temporary SQLite file (``--runs`` runs, every third one corrected twice); the two are
timed in alternating rounds and the best round of each is printed with their ratio (this tree / baseline). No
assert: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import history  # noqa: E402


def _baseline(revision: str) -> types.ModuleType:
    """``core/history.py`` as it was at ``revision``, loaded as its own module (it finds ``core/migrations``)."""
    source = subprocess.run(["git", "show", f"{revision}:core/history.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("history_baseline")
    module.__file__ = str(ROOT / "core" / "history.py")
    sys.modules[module.__name__] = module  # dataclass-style lookups of the module by name
    exec(compile(source, f"{revision}:core/history.py", "exec"), module.__dict__)
    return module


def _fill(store: Any, runs: int) -> list[int]:
    ids = store.add_many([{"source": "api", "task": "segmentation", "dataset_name": "DDTI", "img_name": f"{i}.png",
                           "measurements": {"area_px": i}} for i in range(runs)])

    def corrections(connection: Any) -> None:
        for run_id in ids[::3]:
            for version in (1, 2):
                connection.execute(sa.insert(history.corrections).values(
                    run_id=run_id, version=version, timestamp=history.utc_now(), author="bench", kind="mask",
                    area_px=version, measurements='{"area_px": 1}'))

    store.write(corrections, "add corrections")
    return ids


def _time(store: Any, ids: list[int], calls: int) -> float:
    chosen = [ids[(i * 7919) % len(ids)] for i in range(calls)]
    start = time.perf_counter()
    for run_id in chosen:
        assert store.get(run_id) is not None
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    old = _baseline(args.baseline)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.db"
        new_store, old_store = history.HistoryStore(db), old.HistoryStore(db)
        ids = _fill(new_store, args.runs)
        assert new_store.get(ids[0]) == old_store.get(ids[0]), "the two revisions answer differently"
        best = {"this tree": float("inf"), args.baseline: float("inf")}
        for _ in range(args.rounds):
            best[args.baseline] = min(best[args.baseline], _time(old_store, ids, args.calls))
            best["this tree"] = min(best["this tree"], _time(new_store, ids, args.calls))
        new_store.close()
        old_store.close()
    for name, seconds in best.items():
        print(f"{name:>10}: {args.calls} get() in {seconds * 1000:.1f} ms ({seconds / args.calls * 1e6:.0f} µs each)")
    print(f"ratio this tree / {args.baseline}: {best['this tree'] / best[args.baseline]:.2f}")


if __name__ == "__main__":
    main()
