#!/usr/bin/env bash
# Copy the best reproduce run under the given folders (default: log/) into best-result-review/:
# params.txt, out.log, metrics.json, submission.json, the executed notebook and the final
# checkpoint as fp16 safetensors (when <= 25 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit batch best "${@:-log}" --out best-result-review
