#!/usr/bin/env bash
# Parse vehicle attributes into car_attribute.json (and split person/vehicle labels).
# Usage: script/parse.sh [options]   (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess attributes --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess attributes "$@"
