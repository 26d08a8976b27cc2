#!/usr/bin/env bash
# docs/results.md section 2, "nest": SmolLM2-135M nested with `matcli nest` (widths 1/4, 1/2,
# 3/4, 1), held-out perplexity at each width after 0 steps (the reordered model) and STEPS steps.
#   nice scripts/nest_results.sh MODEL TRAIN HELD WORK LOG
# Settings (environment): STEPS (10), SEQ (128), BATCH (2), LR (2e-4), CALIBRATION (8192 tokens),
# EVAL_TOKENS (2048 held-out tokens in windows of 512), DEVICE (cpu).
set -euo pipefail
M=$1 TRAIN=$2 HELD=$3 W=$4 LOG=$5
STEPS=${STEPS:-10} SEQ=${SEQ:-128} BATCH=${BATCH:-2} LR=${LR:-2e-4}
CALIBRATION=${CALIBRATION:-8192} EVAL_TOKENS=${EVAL_TOKENS:-2048} DEVICE=${DEVICE:-cpu}
TRAINING="--data $TRAIN --seq-len $SEQ --batch-size $BATCH --lr $LR --device $DEVICE"
TRAINING="$TRAINING --calibration-tokens $CALIBRATION"
EVAL="--data $HELD --json --device $DEVICE --max-tokens $EVAL_TOKENS"
mkdir -p "$W"

run() { echo "== $(date +%T) $*" | tee -a "$LOG" >&2; "$@" 2>&1 | grep -v '^Loading' | tee -a "$LOG"; }

for steps in 0 "$STEPS"; do
  start=$(date +%s)
  run matcli nest "$M" -o "$W/nested-$steps" $TRAINING --steps "$steps" --force
  echo "== nest --steps $steps took $(( $(date +%s) - start )) s" | tee -a "$LOG"
  for ratio in 0.25 0.5 0.75 1; do
    run matcli eval "$W/nested-$steps" --ffn-config "$ratio" $EVAL
  done
done
