"""What ``python -m core predict`` reports about its own start-up (issue 27): when the first image was done, the
forward time of the batch, and which heavy libraries the process imported.

Printed as one ``startup: {json}`` line on stderr only when ``UUSIC_DEBUG_STARTUP=1``; the bench
(``bench/bench_batch_cli.py --cli``) and ``tests/test_batch_overlap.py`` read it. Imports nothing heavy itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

ENV = "UUSIC_DEBUG_STARTUP"
# libraries a predict run with a cached converted model should not need (issue 27)
HEAVY = ("torch", "ray", "sqlalchemy", "highdicom", "fpdf", "av", "alembic", "scipy", "tqdm")


class FirstResult:
    """A progress object (``update(n)``, like tqdm) that notes when the first image was done and passes the update on
    to ``inner`` (a tqdm bar, or None)."""

    def __init__(self, inner: Any = None):
        self.inner = inner
        self.first_unix: float | None = None

    def update(self, n: int = 1) -> None:
        if self.first_unix is None:
            self.first_unix = time.time()
        if self.inner is not None:
            self.inner.update(n)


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def report(first: FirstResult, responses: list, *, overlap: bool) -> None:
    """The ``startup:`` line on stderr (only when :func:`enabled`)."""
    if not enabled():
        return
    forward = [float((r.timings or {}).get("forward_sec", 0.0)) for r in responses]
    line = {
        "first_result_unix": first.first_unix,
        "end_unix": time.time(),
        "images": len(responses),
        "forward_sec_total": sum(forward),
        "first_forward_sec": forward[0] if forward else None,
        "overlap": overlap,
        "imported": {name: name in sys.modules for name in HEAVY},
    }
    print("startup: " + json.dumps(line), file=sys.stderr)
