#!/usr/bin/env bash
# Section 2 of docs/results.md: MatFormer extraction of SmolLM2-135M (a dense model, not trained as a
# MatFormer) at 3/4, 1/2 and 1/4 FFN width, keeping the first neurons or, after `matcli reorder`, the
# most important ones. Needs the assets of scripts/real_assets.py. Each result is written to
# assets/results/f-*.json, and the section's table is printed at the end.
set -euo pipefail
M=assets/smollm2-135m
TRAIN=assets/text/wiki_train.txt
HELD=assets/text/wiki_heldout.txt
W=assets/work
R=assets/results
mkdir -p "$W" "$R"
# Perplexity: 32,768 held-out tokens in windows of 512 (eval's defaults, as in results.md sections 1 and 2).
EVAL="--data $HELD --json"

run() { echo "== $(date +%T) $*" >&2; "$@"; }

run matcli eval $M $EVAL > $R/f-dense.json
# Neuron importance on the training split (reorder's defaults: windows of 256, 16,384 tokens).
run matcli reorder $M -o $W/f-reordered --data $TRAIN -q --force
run matcli eval $W/f-reordered $EVAL > $R/f-reordered-full.json
for ratio in 0.75 0.5 0.25; do
  run matcli eval $M --ffn-config $ratio $EVAL > $R/f-plain-$ratio.json             # first m neurons, in memory
  run matcli eval $W/f-reordered --ffn-config $ratio $EVAL > $R/f-reordered-$ratio.json  # most important m
done
# The submodel written by `extract --reorder` (1/2 width) is the in-memory one above.
run matcli extract $M -o $W/f-half-reordered --ffn-config 0.5 --reorder --data $TRAIN -q --force
run matcli eval $W/f-half-reordered $EVAL > $R/f-half-reordered-written.json

python - "$R" <<'PY'
import json, sys
from pathlib import Path

R = Path(sys.argv[1])
ppl = lambda name: json.loads((R / f"f-{name}.json").read_text())["results"][0]["perplexity"]
print(f"| 1536 (full) | 100% | {ppl('dense'):,.2f} | {ppl('reordered-full'):,.2f} |")
for ratio in ("0.75", "0.5", "0.25"):
    plain, reordered = ppl(f"plain-{ratio}"), ppl(f"reordered-{ratio}")
    print(f"| {int(1536 * float(ratio))} | {float(ratio):.0%} | {plain:,.2f} | **{reordered:,.2f}** ({plain / reordered:,.0f}x lower) |")
print(f"extract --reorder 0.5, written and evaluated from disk: {ppl('half-reordered-written'):,.2f} (= the 1/2 --reorder row)")
PY
echo "== $(date +%T) done" >&2
