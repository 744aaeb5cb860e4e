"""What several bench scripts share: a free loopback port, stopping a started server, a deterministic pick of
ground-truth entries, the load average, the CPU's name and the ``--tree`` arguments of the old-vs-new benches."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """End a started server: terminate, then kill if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def pick_entries(data_root: Path, served: Callable[[str, str], bool] | None, count: int) -> list[dict]:
    """``count`` ground-truth entries of ``data_root`` whose ``(task, dataset)`` is ``served`` (None: all),
    round-robin over those datasets (deterministic)."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for e in json.loads((data_root / "ground_truth.json").read_text()):
        key = (e["task"], e["dataset_name"])
        if served is None or served(*key):
            by_key.setdefault(key, []).append(e)
    picked: list[dict] = []
    i = 0
    while len(picked) < count and any(i < len(v) for v in by_key.values()):
        for key in sorted(by_key):
            if i < len(by_key[key]) and len(picked) < count:
                picked.append(by_key[key][i])
        i += 1
    return picked


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (for a bench's printout and JSON)."""
    return [round(x, 2) for x in os.getloadavg()]


def tree_args(parser: argparse.ArgumentParser) -> None:
    """``--tree LABEL=PATH`` (repeatable; parsed to ``(label, resolved path)``) and ``--skip-this``: older source
    trees measured beside this one, e.g. made by ``git archive <rev> | tar -x -C /tmp/x``."""

    def tree(text: str) -> tuple[str, Path]:
        label, sep, path = text.partition("=")
        if not sep or not label or not path:
            raise argparse.ArgumentTypeError(f"--tree wants LABEL=PATH, got {text!r}")
        return label, Path(path).resolve()

    parser.add_argument("--tree", action="append", default=[], type=tree, metavar="LABEL=PATH",
                        help="another source tree to measure beside this one (same interpreter)")
    parser.add_argument("--skip-this", action="store_true", help="measure only the --tree trees")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :func:`platform.processor` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
