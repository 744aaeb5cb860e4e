#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent and quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# requirements.txt plus requirements-cluster.txt (the Ray backends, so their tests run); the stamp covers both
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-cluster.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-cluster.txt
  echo "$want" > "$stamp"
fi
