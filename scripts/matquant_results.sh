#!/usr/bin/env bash
# Section 3 of docs/results.md: MatQuant on SmolLM2-135M, trained on a 2-core CPU (about 2.5 hours).
# Needs the assets of scripts/real_assets.py. Each job makes one model and evaluates it into
# assets/results/NAME.json; a job whose result exists is skipped, so the script can be stopped
# and started again. Jobs take a lock, so two copies can share the work (on 2 cores, two
# copies with OMP_NUM_THREADS=1 finish sooner than one with two threads):
#   OMP_NUM_THREADS=1 bash scripts/matquant_results.sh & OMP_NUM_THREADS=1 bash scripts/matquant_results.sh; wait
# Then `python scripts/matquant_table.py assets/results --write` puts the table into docs/results.md.
set -euo pipefail
M=assets/smollm2-135m
TRAIN=assets/text/wiki_train.txt
HELD=assets/text/wiki_heldout.txt
W=assets/work
R=assets/results
mkdir -p "$W" "$R"
# Every QAT run (and the dense fine-tuning baseline): 100 steps of 4 x 128 tokens (51k tokens),
# AdamW, warmup 20 then cosine to 0, peak lr 1e-4, FFN weights in groups of 64, the same seed
# and batch order: recipes/smollm2-135m-qat-cpu.yaml.
QAT="--recipe recipes/smollm2-135m-qat-cpu.yaml --data $TRAIN -q --force"
ALL="--bits 8,6,4,3,2"

# job NAME "EVAL FLAGS" COMMAND...: unless $R/NAME.json exists or another copy holds the job,
# run COMMAND (which writes $W/NAME, atomically) if $W/NAME is not there yet, then evaluate it.
held=""
trap 'for lock in $held; do rmdir "$lock" 2>/dev/null || true; done' EXIT
job() {
  local name=$1 flags=$2 lock=$R/$1.lock; shift 2
  [ -s "$R/$name.json" ] && return 0
  if ! mkdir "$lock" 2>/dev/null; then echo "== $name: locked by another copy (a stale $lock after a kill: rmdir it)"; return 0; fi
  held="$held $lock"
  if [ -s "$R/$name.json" ]; then rmdir "$lock"; return 0; fi  # finished while we looked
  if [ -n "$*" ] && [ ! -f "$W/$name/config.json" ]; then echo "== $(date +%T) $name: $*"; "$@"; fi
  echo "== $(date +%T) eval $name"
  local model=$W/$name; [ -z "$*" ] && model=$M
  # shellcheck disable=SC2086
  matcli eval "$model" $flags --data "$HELD" --max-tokens 8192 --json > "$R/$name.json.tmp"
  mv "$R/$name.json.tmp" "$R/$name.json"
  rmdir "$lock"
}

job q-dense ""
job q-rtn-g64 "$ALL" matcli quantize $M -o $W/q-rtn-g64 --group-size 64 -q --force
job q-matquant "$ALL" matcli quantize $M -o $W/q-matquant $QAT
job q-int2-only "" matcli quantize $M -o $W/q-int2-only $QAT --bits 2 --train-bits 2
job q-int4-only "" matcli quantize $M -o $W/q-int4-only $QAT --bits 4 --train-bits 4
job q-omniquant "$ALL" matcli quantize $M -o $W/q-omniquant --recipe recipes/smollm2-135m-omniquant-cpu.yaml --data $TRAIN -q --force
job q-omniquant-lr5e-2 "$ALL" matcli quantize $M -o $W/q-omniquant-lr5e-2 --recipe recipes/smollm2-135m-omniquant-cpu.yaml --data $TRAIN --lr 5e-2 -q --force
job q-dense-ft "" python scripts/finetune_dense.py $M $W/q-dense-ft --data $TRAIN --steps 100 --seq-len 128 --batch-size 4 --lr 1e-4 --warmup-steps 20
job q-single-precision "$ALL" matcli quantize $M -o $W/q-single-precision $QAT --train-bits 2
job q-extra-precision "$ALL --extra-precision" matcli quantize $M -o $W/q-extra-precision $QAT --extra-precision --loss-weights 1,1,1
echo "== $(date +%T) done"
python scripts/matquant_table.py "$R"
