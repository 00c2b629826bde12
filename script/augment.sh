#!/usr/bin/env bash
# Zero-shot augmentation: fill missing colour/type of vehicle captions with a CLIP model.
# Usage: script/augment.sh [options]   (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess augment --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit preprocess augment "$@"
