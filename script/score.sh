#!/usr/bin/env bash
# Score a traffic submission.json (official mAP@10 beside standard AP@10, R@1/5/10).
# Usage: script/score.sh --root R --predictions submission.json [--ground-truth GT]
#        (see: "${IRKIT_PY:-.venv/bin/python}" -m irkit eval --help)
set -euo pipefail
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit eval traffic "$@"
