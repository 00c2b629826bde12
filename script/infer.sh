#!/usr/bin/env bash
# Per-gallery top-10 retrieval for test_text.txt (vehicle and person result files).
# Usage: script/infer.sh [options]   (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit infer traffic --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit infer traffic "$@"
