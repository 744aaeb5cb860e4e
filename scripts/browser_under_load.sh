#!/usr/bin/env bash
# The browser tests on a busy machine (issue 20): RUNS runs in a row of tests/browser with BURNERS CPU-burning
# processes beside them (default 3 runs, 2 burners: a 2-core machine fully taken). Prints one line per run and a
# closing 'N passed, N failed' line of runs. The burners end with the script (trap), and each stops by itself after
# BURN_LIMIT_S seconds in any case.
#   scripts/browser_under_load.sh            # 3 runs, 2 burners
#   RUNS=1 BURNERS=4 scripts/browser_under_load.sh -k history
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BURNERS=${BURNERS:-2}
BURN_LIMIT_S=${BURN_LIMIT_S:-3600}
PYTHON=${PYTHON:-.venv/bin/python}
burners=()
stop_burners() { for pid in "${burners[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; }
trap stop_burners EXIT
for _ in $(seq "$BURNERS"); do
  timeout "$BURN_LIMIT_S" "$PYTHON" -c 'while True: sum(i * i for i in range(10000))' &
  burners+=($!)
done
passed=0 failed=0
for run in $(seq "$RUNS"); do
  start=$(date +%s)
  if "$PYTHON" -m pytest -q -p no:cacheprovider tests/browser "$@" > "/tmp/browser_under_load.$run.log" 2>&1; then
    passed=$((passed + 1)); verdict=green
  else
    failed=$((failed + 1)); verdict="FAILED (see /tmp/browser_under_load.$run.log)"
  fi
  echo "run $run: $(tail -n 1 "/tmp/browser_under_load.$run.log") — $verdict in $(( $(date +%s) - start )) s with $BURNERS burners"
done
echo "runs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
