#!/usr/bin/env bash
# The acceptance through the CLI, as a user runs it. On the GPU machine (after benchmarks/gpu/run.sh
# has installed the staged wheels) or on a CPU:
#   MODEL=smollm2-135m DEVICE=cuda PER_HEAD=--per-head bash benchmarks/acceptance/run.sh [search] [transfer] [jsonl] [quant] [joint]
# 1. search: budgets 5%, 10%, 20% x seeds 0, 1, 2 on every task kind (needles, tracking, prose, code);
# 2. transfer: leave one task kind out of the search (10%, three seeds), score the winner and uniform on it;
# 3. jsonl: the 10% winners and the baselines on a JSONL task kept out of every tuning decision;
# 4. quant / joint: precision fronts (target 4 bits; joint at 20%) against the uniform precisions, three seeds.
# 5. accept : one search per suite in $SUITES (ruler, code) and budget, seed 0;
# 6. explore : the 10% search on a JSONL task of look-ups in prose, as is and with each
#    exploration fix ($EXPLORE: --step 0.15, --restarts 2, --samples 8), seeds $SEEDS;
# 7. precision : quant fronts at --target-bits $TARGET, per layer and per head, seeds $SEEDS;
# 8. matrix : the acceptance matrix, $MATRIX_SUITES (ruler, code, prose look-ups, a JSONL task of order look-ups
#    kept out of every tuning decision) x $MATRIX_BUDGETS, with the search's own defaults for the device (effort,
#    samples, racing, arms; $MATRIX_ARGS adds options), $PAR at a time; benchmarks/acceptance/picks.py then judges
#    each pick on held-out data.
# The seeds of one setting run side by side (PAR processes; each its own SQLite file, so no writer waits on
# another). Every command's JSON lands in $OUT; benchmarks/acceptance/summarize.py makes the tables.
set -uo pipefail
MODEL=${MODEL:-smollm2-135m}; DEVICE=${DEVICE:-cuda}; OUT=${OUT:-acc-out}; PER_HEAD=${PER_HEAD:-}
LENGTH=${LENGTH:-2000}; SAMPLES=${SAMPLES:-4}; POOL=${POOL:-12}; VAL=${VAL:-4}; HELD=${HELD:-0}
POP=${POP:-16}; GENS=${GENS:-10}; BUDGETS=${BUDGETS:-5% 10% 20%}; SEEDS=${SEEDS:-0 1 2}; AGG=${AGG:-guarded}
TAG=${TAG:-search}  # file prefix of the search step (another for a side-by-side variant)
TARGET=${TARGET:-4}; FRONT_GENS=${FRONT_GENS:-8}; LEFT=${LEFT:-needle tracking prose code}
SUITES=${SUITES:-ruler code}
CHOOSE=${CHOOSE:-mean}  # --choose of every search (metric: the validation task-metric check)
BASELINES=${BASELINES:-}  # --baselines, spaces or commas (the CLI's default list when empty)
SCORERS=${SCORERS:-}  # --scorers, spaces or commas (each layer's scorer searched among them; none when empty)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
EVOLKV="python3 -m evolkv"
ALL="passkey,multikey,vartrack,prose,code"
COMMON=(--model "$MODEL" --device "$DEVICE" --length "$LENGTH")
SEARCH=(--samples "$SAMPLES" --validation-samples "$VAL" --heldout-samples "$HELD" --population "$POP" --generations "$GENS"
        --choose "$CHOOSE" ${BASELINES:+--baselines "${BASELINES// /,}"} ${SCORERS:+--scorers "${SCORERS// /,}"})
echo "$MODEL $DEVICE length $LENGTH samples $SAMPLES pool $POOL validation $VAL held-out $HELD population $POP generations $GENS aggregate $AGG choose $CHOOSE baselines ${BASELINES:-default} scorers ${SCORERS:-none} $PER_HEAD ($*)" \
  | tee -a "$OUT/settings.txt"

search() {  # search TAG ARGS...: one search, its JSON and exported winner in $OUT
  local tag=$1; shift
  /usr/bin/time -f "$tag %e s" $EVOLKV search "${COMMON[@]}" --db "sqlite:///$OUT/$tag.db" "$@" --json \
    > "$OUT/$tag.json" 2> "$OUT/$tag.err"; tail -1 "$OUT/$tag.err"
  $EVOLKV export "$(python3 -c "import json;print(json.load(open('$OUT/$tag.json'))['id'])")" \
    --db "sqlite:///$OUT/$tag.db" --out "$OUT/$tag.cfg.json" 2>/dev/null
}

transfer() {  # transfer KIND HELD REST SEED
  local left=$1 held=$2 rest=$3 seed=$4 tag="transfer-$1-$4"
  search "$tag" "${SEARCH[@]}" --pool "$POOL" --aggregate "$AGG" $PER_HEAD --budget 10% --seed "$seed" --tasks "$rest"
  $EVOLKV eval "${COMMON[@]}" --config "$OUT/$tag.cfg.json" --tasks "$held" --samples 8 --seed "$seed" \
    --json > "$OUT/$tag.eval.json" 2>/dev/null
  for base in uniform pyramid adakv; do
    $EVOLKV eval "${COMMON[@]}" --baseline $base --budget 10% --tasks "$held" --samples 8 --seed "$seed" \
      --json > "$OUT/$tag.$base.json" 2>/dev/null
  done
}

steps=${*:-search transfer jsonl}
for step in $steps; do
  case $step in
    search)
      for budget in $BUDGETS; do for seed in $SEEDS; do
        search "$TAG-${budget%\%}-$seed" "${SEARCH[@]}" --pool "$POOL" --aggregate "$AGG" $PER_HEAD \
          --budget "$budget" --seed "$seed" --tasks "$ALL" &
      done; wait; done ;;
    transfer)
      for left in $LEFT; do
        case $left in
          needle) held=passkey,multikey; rest=vartrack,prose,code ;;
          tracking) held=vartrack; rest=passkey,multikey,prose,code ;;
          prose) held=prose; rest=passkey,multikey,vartrack,code ;;
          code) held=code; rest=passkey,multikey,vartrack,prose ;;
        esac
        for seed in $SEEDS; do transfer "$left" "$held" "$rest" "$seed" & done; wait
      done ;;
    jsonl)
      python3 benchmarks/acceptance/make_orders_jsonl.py "$OUT/orders.jsonl"
      for seed in $SEEDS; do
        $EVOLKV eval "${COMMON[@]}" --config "$OUT/$TAG-10-$seed.cfg.json" --tasks "$OUT/orders.jsonl" \
          --samples 16 --json > "$OUT/jsonl-winner-$seed.json" 2>/dev/null &
      done
      for base in uniform pyramid adakv streaming; do
        $EVOLKV eval "${COMMON[@]}" --baseline $base --budget 10% --tasks "$OUT/orders.jsonl" --samples 16 \
          --json > "$OUT/jsonl-$base.json" 2>/dev/null &
      done; wait ;;
    accept)
      for suite in $SUITES; do for budget in $BUDGETS; do
        search "accept-$suite-${budget%\%}" "${SEARCH[@]}" --pool "$POOL" $PER_HEAD --budget "$budget" --seed 0 \
          --tasks "$suite" &
      done; done; wait ;;
    explore)
      python3 benchmarks/acceptance/make_orders_jsonl.py "$OUT/orders.jsonl"
      for seed in $SEEDS; do for variant in ${EXPLORE:-base step restarts samples}; do
        case $variant in base) fix=() ;; step) fix=(--step 0.15) ;; restarts) fix=(--restarts 2) ;;
          samples) fix=(--samples 8) ;; both) fix=(--step 0.15 --restarts 2) ;; esac
        search "explore-$variant-$seed" "${SEARCH[@]}" $PER_HEAD --budget 10% --seed "$seed" \
          --tasks "$OUT/orders.jsonl" "${fix[@]}" &
      done; done; wait ;;
    precision)
      for seed in $SEEDS; do
        search "precision-layer-$seed" "${SEARCH[@]}" --mode quant --budget 100% --target-bits "$TARGET" \
          --generations "$FRONT_GENS" --seed "$seed" --tasks "$ALL" &
        search "precision-head-$seed" "${SEARCH[@]}" --mode quant --budget 100% --target-bits "$TARGET" --per-head \
          --generations "$FRONT_GENS" --seed "$seed" --tasks "$ALL" &
      done; wait ;;
    matrix)
      python3 benchmarks/acceptance/make_orders_jsonl.py "$OUT/orders.jsonl" "${ORDERS:-240}" "${ORDERS_CHARS:-5000}"
      for suite in ${MATRIX_SUITES:-ruler code prose orders}; do
        tasks=$suite; [ "$suite" = orders ] && tasks="$OUT/orders.jsonl"
        for budget in ${MATRIX_BUDGETS:-2% 5% 10% 20%}; do
          while [ "$(jobs -rp | wc -l)" -ge "${PAR:-3}" ]; do sleep 2; done  # each a GPU process; ruler
          # cells hold 288 prefilled samples: 16 such processes on one H100 ran out of its 80 GB
          search "matrix-$suite-${budget%\%}" $PER_HEAD --budget "$budget" --seed 0 --tasks "$tasks" ${MATRIX_ARGS:-} &
        done
      done; wait
      python3 benchmarks/acceptance/picks.py "$OUT" --out "$OUT/picks.md" --json "$OUT/picks.json" ;;
    quant|joint)
      for seed in $SEEDS; do
        if [ "$step" = quant ]; then extra=(--mode quant --budget 100%); else extra=(--mode joint --budget 20% $PER_HEAD); fi
        search "$step-$seed" "${SEARCH[@]}" "${extra[@]}" --target-bits "$TARGET" --generations "$FRONT_GENS" \
          --seed "$seed" --tasks "$ALL" &
      done; wait ;;
  esac
done
