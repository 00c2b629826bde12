#!/usr/bin/env bash
# Regenerate the README's screenshots best-result-review/report.png (the run report of the best
# reproduction run) and best-result-review/app.png (the search app with that run's model over the
# small demo traffic test gallery, after a text query), taken with headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh --with-browser
export IRKIT_NUM_THREADS="${IRKIT_NUM_THREADS:-2}"
demo=data/app-demo
.venv/bin/python -m irkit data demo --out "$demo" --datasets traffic --scale small --no-progress
if [ ! -d "$demo/collection" ]; then
  .venv/bin/python -m irkit embed images --checkpoint best-result-review/model_fp16.safetensors \
    --images "$demo/traffic/test/test_images" --out "$demo/collection"
fi
.venv/bin/python script/screenshots.py --run best-result-review --collection "$demo/collection" \
  --checkpoint best-result-review/model_fp16.safetensors --out best-result-review
