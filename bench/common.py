"""What several bench scripts share: a free loopback port, stopping a started server, and a deterministic pick of
ground-truth entries."""

from __future__ import annotations

import json
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
