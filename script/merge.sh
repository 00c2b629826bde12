#!/usr/bin/env bash
# Merge vehicle and person results into submission.json in test_text.txt order.
# Usage: script/merge.sh [options]   (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit infer merge --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit infer merge "$@"
