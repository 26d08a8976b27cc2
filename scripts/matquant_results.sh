#!/usr/bin/env bash
# Section 3 of docs/results.md: MatQuant on SmolLM2-135M, trained on a 2-core CPU (about 4 hours).
# Needs the assets of scripts/real_assets.py. Every run writes assets/results/q-*.json and is
# skipped when its result exists, so the script can be stopped and started again. At the end
# scripts/matquant_table.py prints the table (and --write puts it into docs/results.md).
set -euo pipefail
M=assets/smollm2-135m
TRAIN=assets/text/wiki_train.txt
HELD=assets/text/wiki_heldout.txt
W=assets/work
R=assets/results
mkdir -p "$W" "$R"
# Every QAT run (and the dense fine-tuning baseline): 200 steps of 4 x 128 tokens (102k tokens),
# AdamW, warmup 20 then cosine to 0, peak lr 1e-4, FFN weights in groups of 64, the same seed
# and batch order: recipes/smollm2-135m-qat-cpu.yaml.
QAT="--recipe recipes/smollm2-135m-qat-cpu.yaml --data $TRAIN -q --force"
EVAL="--data $HELD --max-tokens 16384 --json"
ALL="--bits 8,6,4,3,2"

# make_model FOLDER COMMAND...: run the command unless FOLDER holds a finished model (outputs
# are written atomically, so a config.json means complete). evaluate NAME FOLDER [FLAGS]: its
# perplexities go to $R/NAME.json.
make_model() { local out=$1; shift; [ -f "$out/config.json" ] && return 0; echo "== $(date +%T) $*"; "$@"; }
evaluate() { local name=$1 model=$2; shift 2; [ -s "$R/$name.json" ] && return 0; echo "== $(date +%T) eval $name"; matcli eval "$model" "$@" $EVAL > "$R/$name.json.tmp"; mv "$R/$name.json.tmp" "$R/$name.json"; }

evaluate q-dense $M
make_model $W/q-rtn-g64 matcli quantize $M -o $W/q-rtn-g64 --group-size 64 -q --force
evaluate q-rtn-g64 $W/q-rtn-g64 $ALL
make_model $W/q-matquant matcli quantize $M -o $W/q-matquant $QAT
evaluate q-matquant $W/q-matquant $ALL
make_model $W/q-int2-only matcli quantize $M -o $W/q-int2-only $QAT --bits 2 --train-bits 2
evaluate q-int2-only $W/q-int2-only
make_model $W/q-int4-only matcli quantize $M -o $W/q-int4-only $QAT --bits 4 --train-bits 4
evaluate q-int4-only $W/q-int4-only
make_model $W/q-dense-ft python scripts/finetune_dense.py $M $W/q-dense-ft --data $TRAIN --steps 200 --seq-len 128 --batch-size 4 --lr 1e-4 --warmup-steps 20
evaluate q-dense-ft $W/q-dense-ft
make_model $W/q-omniquant matcli quantize $M -o $W/q-omniquant --recipe recipes/smollm2-135m-omniquant-cpu.yaml --data $TRAIN -q --force
evaluate q-omniquant $W/q-omniquant $ALL
make_model $W/q-single-precision matcli quantize $M -o $W/q-single-precision $QAT --train-bits 2
evaluate q-single-precision $W/q-single-precision $ALL
make_model $W/q-extra-precision matcli quantize $M -o $W/q-extra-precision $QAT --extra-precision --loss-weights 1,1,1
evaluate q-extra-precision $W/q-extra-precision $ALL --extra-precision
echo "== $(date +%T) done"
python scripts/matquant_table.py "$R"
