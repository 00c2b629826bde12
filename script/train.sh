#!/usr/bin/env bash
# Contrastive CLIP training / fine-tuning through open_clip_train: irkit train clip --help
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${IRKIT_PY:-.venv/bin/python}" -m irkit train clip "$@"
