#!/usr/bin/env bash
# Issue 16's acceptance through the CLI, as a user runs it. On the GPU machine (after benchmarks/gpu/run.sh
# has installed the staged wheels) or on a CPU:
#   MODEL=smollm2-135m DEVICE=cuda PER_HEAD=--per-head bash benchmarks/acceptance/run.sh [search] [transfer] [jsonl]
# 1. search: budgets 5%, 10%, 20% x seeds 0, 1, 2 on every task kind (needles, tracking, prose, code);
# 2. transfer: leave one task kind out of the search (10%, three seeds), score the winner and uniform on it;
# 3. jsonl: the 10% winners and the baselines on a JSONL task kept out of every tuning decision.
# Every command's JSON lands in $OUT; benchmarks/acceptance/summarize.py makes the tables.
set -uo pipefail
MODEL=${MODEL:-smollm2-135m}; DEVICE=${DEVICE:-cuda}; OUT=${OUT:-acc-out}; PER_HEAD=${PER_HEAD:-}
LENGTH=${LENGTH:-2000}; SAMPLES=${SAMPLES:-4}; POOL=${POOL:-12}; VAL=${VAL:-4}
POP=${POP:-16}; GENS=${GENS:-10}; BUDGETS=${BUDGETS:-5% 10% 20%}; SEEDS=${SEEDS:-0 1 2}; AGG=${AGG:-worst}
TAG=${TAG:-search}  # file prefix of the search step (another for a side-by-side variant)
mkdir -p "$OUT"; DB="sqlite:///$(cd "$OUT" && pwd)/acceptance.db"
EVOLKV="python3 -m evolkv"
ALL="passkey,multikey,vartrack,prose,code"
COMMON=(--model "$MODEL" --device "$DEVICE" --length "$LENGTH")
SEARCH=(--db "$DB" --samples "$SAMPLES" --pool "$POOL" --validation-samples "$VAL" --population "$POP" --generations "$GENS"
        --aggregate "$AGG" $PER_HEAD)
echo "$MODEL $DEVICE length $LENGTH samples $SAMPLES pool $POOL validation $VAL population $POP generations $GENS aggregate $AGG $PER_HEAD ($*)" \
  | tee -a "$OUT/settings.txt"
steps=${*:-search transfer jsonl}
for step in $steps; do
  case $step in
    search)
      for budget in $BUDGETS; do for seed in $SEEDS; do
        tag="$TAG-${budget%\%}-$seed"
        /usr/bin/time -f "$tag %e s" $EVOLKV search "${COMMON[@]}" "${SEARCH[@]}" --budget "$budget" --seed "$seed" \
          --tasks "$ALL" --json > "$OUT/$tag.json" 2> "$OUT/$tag.err"; tail -1 "$OUT/$tag.err"
        $EVOLKV export "$(python3 -c "import json;print(json.load(open('$OUT/$tag.json'))['id'])")" --db "$DB" \
          --out "$OUT/$tag.cfg.json" 2>/dev/null
      done; done ;;
    transfer)
      for left in needle tracking prose code; do
        case $left in
          needle) held=passkey,multikey; rest=vartrack,prose,code ;;
          tracking) held=vartrack; rest=passkey,multikey,prose,code ;;
          prose) held=prose; rest=passkey,multikey,vartrack,code ;;
          code) held=code; rest=passkey,multikey,vartrack,prose ;;
        esac
        for seed in $SEEDS; do
          tag="transfer-$left-$seed"
          /usr/bin/time -f "$tag %e s" $EVOLKV search "${COMMON[@]}" "${SEARCH[@]}" --budget 10% --seed "$seed" \
            --tasks "$rest" --json > "$OUT/$tag.json" 2> "$OUT/$tag.err"; tail -1 "$OUT/$tag.err"
          id=$(python3 -c "import json;print(json.load(open('$OUT/$tag.json'))['id'])")
          $EVOLKV export "$id" --db "$DB" --out "$OUT/$tag.cfg.json" 2>/dev/null
          $EVOLKV eval "${COMMON[@]}" --config "$OUT/$tag.cfg.json" --tasks "$held" --samples 8 --seed "$seed" \
            --json > "$OUT/$tag.eval.json" 2>/dev/null
          for base in uniform pyramid adakv; do
            $EVOLKV eval "${COMMON[@]}" --baseline $base --budget 10% --tasks "$held" --samples 8 --seed "$seed" \
              --json > "$OUT/$tag.$base.json" 2>/dev/null
          done
        done
      done ;;
    jsonl)
      python3 benchmarks/acceptance/make_orders_jsonl.py "$OUT/orders.jsonl"
      for seed in $SEEDS; do
        $EVOLKV eval "${COMMON[@]}" --config "$OUT/search-10-$seed.cfg.json" --tasks "$OUT/orders.jsonl" \
          --samples 16 --json > "$OUT/jsonl-winner-$seed.json" 2>/dev/null
      done
      for base in uniform pyramid adakv streaming; do
        $EVOLKV eval "${COMMON[@]}" --baseline $base --budget 10% --tasks "$OUT/orders.jsonl" --samples 16 \
          --json > "$OUT/jsonl-$base.json" 2>/dev/null
      done ;;
  esac
done
