#!/usr/bin/env bash
# Build open_clip's filepath/title training CSV from (augmented) labels.
# Usage: script/build_csv.sh [options]   (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess csv --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess csv "$@"
