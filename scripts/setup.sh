#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent and quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# requirements.txt plus every optional requirements-*.txt (fast CPU backends, cluster, ...); the stamp covers them all
stamp=.venv/.requirements.sha256
reqs=(requirements.txt)
args=(-r requirements.txt)
for extra in requirements-*.txt; do
  if [ -f "$extra" ]; then reqs+=("$extra"); args+=(-r "$extra"); fi
done
want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "${args[@]}"
  echo "$want" > "$stamp"
fi
# Issue 27: convert the default model for the CPU backend here, once (a cached conversion is only checked), so the
# first `make run` / `make serve` answers at once; UUSIC_SKIP_CONVERT=1 skips it (then the first start serves eager torch while it converts in the background).
if [ -z "${UUSIC_SKIP_CONVERT:-}" ]; then
  .venv/bin/python -c 'from core.engine import prepare_backend; print(prepare_backend())' \
    || echo "note: the model was not converted now; the first start serves eager torch while it converts in the background" >&2
fi
