#!/bin/bash
# The committed demo model (workbench/assets/demo-model) from the committed stage-4 checkpoint
# (bench/demo-start), in one command on one GPU (~20 min on an H200; the session that made it ran
# each stage as one ≤10-minute call of bench/demo_stage.sh):
#   bash bench/demo_reproduce.sh runs/demo-repro
# Stages 1–4 (the 4-layer model from a random init) are in bench/results/demo_train-2026-11-25-h100.json.
# Every stage is a background job of recipes/demo-train.yaml, tracked in MLflow (experiment demo-model).
set -eu
out=$(realpath -m "${1:-runs/demo-repro}")
mkdir -p "$out"
demo() { python3 -m workbench.demo "$@"; }
bf16() { demo bf16 "$1" "$2" --processor-from bench/demo-start; }  # each stage hands its checkpoint on in bf16
# stage 5: 8 language and 6 vision layers (the added ones start as the identity); hard multi-shape cases
demo grow bench/demo-start "$out/s5-init" --text-layers 8 --vision-layers 6
demo train --out "$out/s5" --workers 14 --train 100000 --init "$out/s5-init" --hard 0.5 \
  --set max_steps=2200 learning_rate=0.0005 dtype=bf16-mixed save_steps=500
bf16 "$out/s5/run/final" "$out/s5-bf16"
# stage 6: more data, lower learning rate
demo train --out "$out/s6" --workers 14 --train 150000 --init "$out/s5-bf16" --hard 0.5 \
  --set max_steps=2300 learning_rate=0.0004 dtype=bf16-mixed save_steps=500
bf16 "$out/s6/run/final" "$out/s6-bf16"
# stage 7: the call's deadline stopped it at step ~1720 of 1800; its last checkpoint, 1200, is the demo model
demo train --out "$out/s7" --workers 14 --train 150000 --init "$out/s6-bf16" --hard 0.5 \
  --set max_steps=1800 learning_rate=0.0003 dtype=bf16-mixed save_steps=600
bf16 "$out/s7/run/checkpoint-1200" "$out/demo-model"
demo eval "$out/demo-model" --data "$out/s7/data" > "$out/demo-model-scores.json"
cat "$out/demo-model-scores.json"
