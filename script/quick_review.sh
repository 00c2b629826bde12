#!/usr/bin/env bash
# Checkpoint -> inference -> merge -> score (notebooks/quick-review.ipynb through papermill).
# Usage: script/quick_review.sh -p checkpoint log/<run>/train/checkpoints/epoch_6.pt [-p prompt strip]
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh
exec .venv/bin/python -m irkit batch run notebooks/quick-review.ipynb "$@"
