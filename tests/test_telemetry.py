"""No usage statistics leave a hospital: Ray's telemetry is off unless the operator turns it on."""

from __future__ import annotations

import os
import subprocess
import sys

from core.settings import PROJECT_ROOT

PRINT = "import os, core.cluster; print(os.environ['RAY_USAGE_STATS_ENABLED'], os.environ['RAY_DATA_USAGE_DISABLED'])"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", PRINT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def test_ray_usage_statistics_are_off_before_ray_is_imported():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_USAGE", "RAY_DATA_USAGE"))}
    assert _run(env) == ["0", "1"]


def test_an_operator_may_turn_them_on():
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "1", "RAY_DATA_USAGE_DISABLED": "0"}
    assert _run(env) == ["1", "0"]
