#!/usr/bin/env bash
# Augmentation on/off grid of the reproduce notebook (each run also scores every prompt
# variant); writes log/<name>/comparison.{csv,md}.  Extra arguments: more -p / --grid options.
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh
export IRKIT_NUM_THREADS="${IRKIT_NUM_THREADS:-$(nproc)}"
exec .venv/bin/python -m irkit batch grid notebooks/reproduce.ipynb --grid augment=true,false \
  -p scale full --name "ablation-$(date +%Y_%m_%d-%H_%M_%S)" \
  --columns "trained.official_mAP@10,trained.standard_mAP@10,trained.R@1,trained.R@10,prompt_ablation.suffix.official_mAP@10,prompt_ablation.strip.official_mAP@10,prompt_ablation.none.official_mAP@10,before_training.official_mAP@10" \
  "$@"
