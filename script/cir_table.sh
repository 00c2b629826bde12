#!/usr/bin/env bash
# The CIR comparison table (baselines, LinCIR, SEARLE, fusion / Combiner / re-ranking rows) on the
# demo FashionIQ / CIRR / CIRCO, resumable: re-running the same command continues a killed run.
#   bash script/cir_table.sh [NAME] [extra `irkit batch cir-table` options]
# Defaults: data in data/cir-demo (generated when absent), run folder log/<NAME> (default
# cir-table-full), demo CIR CLIP model continued from best-result-review/model_fp16.safetensors
# (the traffic demo model) when present. Examples:
#   bash script/cir_table.sh zs --skip-fusion
#   bash script/cir_table.sh real --data-root /data/cir --model ViT-B-32 --pretrained openai --no-clip-training
set -euo pipefail
cd "$(dirname "$0")/.."
bash script/setup.sh
NAME="${1:-cir-table-full}"
shift || true
ARGS=(--data-root data/cir-demo --scale full --out "log/$NAME")
if [[ " $* " != *" --checkpoint "* && " $* " != *" --pretrained "* && -f best-result-review/model_fp16.safetensors ]]; then
  ARGS+=(--checkpoint best-result-review/model_fp16.safetensors)
fi
# Later options win (argparse), so "$@" may override --data-root / --scale.
exec nice -n "${IRKIT_NICE:-0}" .venv/bin/python -m irkit batch cir-table "${ARGS[@]}" --threads "${IRKIT_NUM_THREADS:-$(nproc)}" "$@"
