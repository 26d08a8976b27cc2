#!/usr/bin/env bash
# Section 3 of docs/results.md: MatQuant on SmolLM2-135M, trained on a 2-core CPU (about 3 hours).
# Needs the assets of scripts/real_assets.py. Each result is written to assets/results/*.json.
set -euo pipefail
M=assets/smollm2-135m
TRAIN=assets/text/wiki_train.txt
HELD=assets/text/wiki_heldout.txt
W=assets/work
R=assets/results
mkdir -p "$W" "$R"
# Every QAT run: 200 steps of 4 x 128 tokens (102k tokens), AdamW, warmup 20 then cosine to 0,
# peak lr 1e-4, FFN weights in groups of 64, the same seed and batch order.
QAT="--method qat --data $TRAIN --steps 200 --seq-len 128 --batch-size 4 --lr 1e-4 --warmup-steps 20 --group-size 64 -q --force"
EVAL="--data $HELD --max-tokens 16384 --json"

run() { echo "== $(date +%T) $*"; "$@"; }

run matcli eval $M $EVAL > $R/q-dense.json
run matcli quantize $M -o $W/q-rtn-g64 --group-size 64 -q --force
run matcli eval $W/q-rtn-g64 --bits 8,6,4,3,2 $EVAL > $R/q-rtn-g64.json
run matcli quantize $M -o $W/q-matquant $QAT
run matcli eval $W/q-matquant --bits 8,6,4,3,2 $EVAL > $R/q-matquant.json
run matcli quantize $M -o $W/q-int2-only $QAT --bits 2 --train-bits 2
run matcli eval $W/q-int2-only $EVAL > $R/q-int2-only.json
run matcli quantize $M -o $W/q-int4-only $QAT --bits 4 --train-bits 4
run matcli eval $W/q-int4-only $EVAL > $R/q-int4-only.json
run python scripts/finetune_dense.py $M $W/q-dense-ft --data $TRAIN --steps 200 --seq-len 128 --batch-size 4 --lr 1e-4 --warmup-steps 20 > /dev/null
run matcli eval $W/q-dense-ft $EVAL > $R/q-dense-ft.json
run matcli quantize $M -o $W/q-omniquant --method omniquant --data $TRAIN --seq-len 256 --samples 32 --epochs 2 --group-size 64 -q --force
run matcli eval $W/q-omniquant --bits 8,6,4,3,2 $EVAL > $R/q-omniquant.json
run matcli quantize $M -o $W/q-single-precision $QAT --train-bits 2
run matcli eval $W/q-single-precision --bits 8,6,4,3,2 $EVAL > $R/q-single-precision.json
run matcli quantize $M -o $W/q-extra-precision $QAT --extra-precision --loss-weights 1,1,1
run matcli eval $W/q-extra-precision --bits 8,6,4,3,2 --extra-precision $EVAL > $R/q-extra-precision.json
echo "== $(date +%T) done"
