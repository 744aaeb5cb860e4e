"""The analysis service on a Ray cluster (optional: ``pip install -r requirements-cluster.txt``).

Two doors, the same service:

- :mod:`core.cluster.serve` — ``python -m core serve --backend ray``: the HTTP API of :func:`core.api.create_app`
  (same routes, JSON, API key, limits) in every replica of a Ray Serve deployment; each replica holds one
  :class:`core.service.AnalysisService` with its loaded model, and concurrent ``/v1/predict`` calls share forward
  passes through Ray Serve's ``@serve.batch``.
- :mod:`core.cluster.batch` — ``python -m core predict --backend ray``: the batch CLI over Ray Data (decode +
  preprocess in parallel tasks, forward + masks in a pool of engine actors), with the same outputs as the local
  backend; the history is written from the driver.

Shared state on several nodes: the history must be a database every node reaches (``UUSIC_HISTORY_URL``, e.g.
PostgreSQL), and the workspace, weights and data root must be paths every node mounts. A multi-node deployment
with the SQLite history is refused (:func:`check_shared_history`). Ray itself is imported only in this package,
and only when a Ray backend is asked for.
"""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any

from core.errors import ClusterError, ConfigError
from core.settings import PROJECT_ROOT, Settings

INSTALL_HINT = "pip install -r requirements-cluster.txt (or pip install -e .[cluster])"
# Ray's usage statistics (sent to the Ray project by default) and Ray Data's per-run usage poller stay off in a
# hospital unless the operator sets these variables; the workers a local Ray starts inherit them.
TELEMETRY_OFF = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_USAGE_DISABLED": "1"}
for _name, _off in TELEMETRY_OFF.items():  # set on import of this package, before any of its modules imports Ray
    os.environ.setdefault(_name, _off)


def import_ray() -> ModuleType:
    """The ``ray`` module (its telemetry off: :data:`TELEMETRY_OFF`); :class:`ClusterError` naming the install
    command when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"the Ray backend needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from None
    return ray


def runtime_env() -> dict[str, Any]:
    """What every Ray worker of ours gets: the project on ``PYTHONPATH`` (nodes run the same checkout path or an
    installed package; a missing folder on ``PYTHONPATH`` is harmless)."""
    paths = [str(PROJECT_ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False) -> bool:
    """Join the cluster at ``address``, or start a local Ray (``num_cpus``: default, this machine's cores).

    Returns whether this call started the connection (then the caller calls ``ray.shutdown()`` when done); an
    already connected process (a test, a notebook) is left as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"runtime_env": runtime_env(), "logging_level": "warning", "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # "local": always a new Ray of our own, never one another program left running on this machine
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=dashboard,
                     **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ClusterError(f"cannot start or join {where}: {exc}") from None
    return True


def parse_replicas(text: str | int | None) -> tuple[int, int]:
    """``--replicas``: ``N`` (a fixed count) or ``MIN-MAX`` (Ray Serve scales with the load) → ``(min, max)``;
    :class:`ConfigError` for anything else."""
    raw = str(1 if text is None else text).strip()
    low, dash, high = raw.partition("-")
    try:
        lo, hi = int(low), int(high if dash else low)
    except ValueError:
        lo = hi = 0
    if lo < 1 or hi < lo:
        raise ConfigError(f"--replicas must be a count N >= 1 or a range MIN-MAX with 1 <= MIN <= MAX, got {raw!r}")
    return lo, hi


def alive_nodes() -> list[dict]:
    """The cluster's live nodes (``ray.nodes()`` entries)."""
    return [node for node in import_ray().nodes() if node.get("Alive")]


def history_is_shared(settings: Settings) -> bool:
    """Whether the history is a database server (every node reaches it), not a SQLite file."""
    url = settings.history_url
    return bool(url) and not str(url).lower().startswith("sqlite")


def check_shared_history(settings: Settings, nodes: int) -> None:
    """Refuse (``ConfigError``, exit status 2 at the CLI) a deployment over ``nodes`` > 1 with the SQLite history."""
    if nodes <= 1 or history_is_shared(settings):
        return
    raise ConfigError(
        f"refusing to serve on a Ray cluster of {nodes} nodes with the SQLite history {settings.history_db}: "
        "replicas on other nodes would each write their own file (or one file over a network mount, which SQLite "
        "does not support), so runs would be lost or the file corrupted. Set UUSIC_HISTORY_URL to a database every "
        "node reaches, e.g. postgresql+psycopg://user:password@db-host:5432/uusic, and put UUSIC_WORKSPACE on a "
        "path every node mounts (see docs/DEPLOY.md)."
    )


def _amount(name: str, value: float) -> str:
    """``2 CPUs``, ``0.5 GPU``, ``1.0 GiB of memory`` (Ray counts memory in bytes)."""
    if name == "memory":
        return f"{value / (1 << 30):.1f} GiB of memory"
    count = f"{value:g}"
    return f"{count} {name}{'s' if value != 1 else ''}"


def _short(need: dict[str, float], have: dict[str, float]) -> list[str]:
    """``need`` resources that ``have`` lacks, as ``"1 CPU of the 3 CPUs"`` phrases (empty: enough of each)."""
    return [f"{_amount(name, have.get(name, 0.0))} of the {_amount(name, value)}"
            for name, value in need.items() if value > 0 and have.get(name, 0.0) + 1e-9 < value]


def require_resources(need: dict[str, float], purpose: str, *, wait_s: float, can_grow: bool,
                      poll_s: float = 0.25) -> None:
    """Before any work on the connected cluster (Ray itself would wait for ever): wait up to ``wait_s`` for the
    ``need`` resources (``CPU``, ``GPU``, ``memory`` bytes) to be free, then :class:`ClusterError` naming what is
    missing: too few in all (at once where the cluster cannot grow: a local Ray this command started), or held by
    other work (a Serve deployment, another job)."""
    ray = import_ray()
    fewer = _short(need, ray.cluster_resources())
    deadline = time.monotonic() + (wait_s if can_grow or not fewer else 0.0)
    while short := _short(need, ray.available_resources()):
        if time.monotonic() >= deadline:
            fewer = _short(need, ray.cluster_resources())
            if fewer:
                raise ClusterError(f"the Ray cluster has {', '.join(fewer)} that {purpose} needs: ask for less, "
                                   "or add nodes")
            raise ClusterError(f"other work on the Ray cluster has held its resources for {wait_s:g} s: only "
                               f"{', '.join(short)} that {purpose} needs is free")
        time.sleep(poll_s)
