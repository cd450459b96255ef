#!/usr/bin/env bash
# Every method at once: on both packaged real models, at 5% and 10%, one search per budget that
# lets every layer pick its scorer among all of evolkv's (--scorers), so the run reports each scorer as a
# uniform baseline (uniform:NAME) beside pyramid, AdaKV, StreamingLLM and the four per-prompt allocators,
# and the searched per-layer scorers and budgets against the best of them, on held-out KL and exact match.
#   DEVICE=cpu OUT=methods-out bash benchmarks/acceptance/methods.sh
#   python3 benchmarks/acceptance/methods_table.py methods-out     # the tables
set -uo pipefail
DEVICE=${DEVICE:-cpu}; OUT=${OUT:-methods-out}; LENGTH=${LENGTH:-800}; SAMPLES=${SAMPLES:-2}
POP=${POP:-8}; GENS=${GENS:-5}; BUDGETS=${BUDGETS:-5% 10%}; SEED=${SEED:-0}
SCORERS=${SCORERS:-snapkv,tova,h2o,keynorm,keydiff,criticalkv,defensivekv,rkv,mixkv,compresskv,expected_attention,kvzip}
mkdir -p "$OUT"
for model in smollm2-135m gemma-3-270m; do
  per_head=$([ "$model" = smollm2-135m ] && echo --per-head || true)
  for budget in $BUDGETS; do
    tag="$model-${budget%\%}"
    /usr/bin/time -f "$tag %e s" python3 -m evolkv search --model "$model" --device "$DEVICE" --budget "$budget" \
      $per_head --length "$LENGTH" --samples "$SAMPLES" --validation-samples "$SAMPLES" --population "$POP" \
      --generations "$GENS" --tasks passkey,vartrack,prose,code --scorers "$SCORERS" --seed "$SEED" \
      --db "sqlite:///$OUT/$tag.db" --json > "$OUT/$tag.json" 2> "$OUT/$tag.err"
    tail -1 "$OUT/$tag.err"
  done
done
