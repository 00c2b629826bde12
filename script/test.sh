#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh --with-browser
export IRKIT_NUM_THREADS="${IRKIT_NUM_THREADS:-2}"
set +e
.venv/bin/python -m pytest -q --durations=15 tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "no tests were collected: that is a failure for irkit" >&2
  exit 1
fi
exit "$status"
