#!/usr/bin/env bash
# One-click reproduction on the embedded default: set up .venv, then execute
# notebooks/reproduce.ipynb through papermill into log/<run>/ (demo data generated if absent).
# Extra arguments are papermill parameters / batch options, e.g.  -p scale small -p epochs 6
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh
export IRKIT_NUM_THREADS="${IRKIT_NUM_THREADS:-$(nproc)}"
exec .venv/bin/python -m irkit batch run notebooks/reproduce.ipynb -p scale full "$@"
