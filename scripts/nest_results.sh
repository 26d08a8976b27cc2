#!/usr/bin/env bash
# docs/results.md section 2, "nest": SmolLM2-135M nested with `matcli nest` (widths 1/4, 1/2,
# 3/4, 1), then held-out perplexity of the original and of the nested model at each width.
#   nice scripts/nest_results.sh MODEL TRAIN HELD OUT LOG
# Settings (environment), defaults sized for a shared 2-core CPU: STEPS (8) steps of BATCH (2)
# x SEQ (128) tokens, peak LR (5e-4, warmup 2 steps, cosine), neuron importance on CALIBRATION
# (4096) tokens, perplexity on EVAL_TOKENS (2048) held-out tokens in windows of 512, DEVICE (cpu).
set -euo pipefail
M=$1 TRAIN=$2 HELD=$3 OUT=$4 LOG=$5
STEPS=${STEPS:-8} SEQ=${SEQ:-128} BATCH=${BATCH:-2} LR=${LR:-5e-4}
CALIBRATION=${CALIBRATION:-4096} EVAL_TOKENS=${EVAL_TOKENS:-2048} DEVICE=${DEVICE:-cpu}
EVAL="--data $HELD --json --device $DEVICE --max-tokens $EVAL_TOKENS"

run() { echo "== $(date +%T) $*" >>"$LOG"; "$@" >>"$LOG" 2>&1; }

start=$(date +%s)
run matcli nest "$M" -o "$OUT" --data "$TRAIN" --seq-len "$SEQ" --batch-size "$BATCH" \
  --lr "$LR" --warmup-steps 2 --steps "$STEPS" --calibration-tokens "$CALIBRATION" \
  --device "$DEVICE" --force --json
echo "== nest took $(( $(date +%s) - start )) s" >>"$LOG"
run matcli eval "$M" $EVAL
run matcli eval "$OUT" $EVAL  # full width (`--ffn-config 1` would mean one neuron)
for ratio in 0.25 0.5 0.75; do
  run matcli eval "$OUT" --ffn-config "$ratio" $EVAL
done
# Reorder only (the same importance measurement, no training), for comparison.
run matcli reorder "$M" -o "$OUT-reordered" --data "$TRAIN" --seq-len "$SEQ" \
  --max-tokens "$CALIBRATION" --force --json
for ratio in 0.25 0.5 0.75; do
  run matcli eval "$OUT-reordered" --ffn-config "$ratio" $EVAL
done
