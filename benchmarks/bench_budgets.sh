#!/usr/bin/env bash
# One search for every budget: `evolkv search --budgets A,B,C` against one `--budget` search per
# budget with the same settings, side by side in one run; prints each wall time and the ratio.
#   MODEL=smollm2-135m DEVICE=cpu bash benchmarks/bench_budgets.sh
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}; DEVICE=${DEVICE:-cpu}; BUDGETS=${BUDGETS:-5%,10%,20%}
ARGS=(--model "$MODEL" --device "$DEVICE" --length ${LENGTH:-500} --samples ${SAMPLES:-1} --population ${POP:-4}
      --generations ${GENS:-2} --tasks ${TASKS:-mix} ${PER_HEAD:---per-head} --json)
OUT=$(mktemp -d)
now() { date +%s.%N; }
echo "$MODEL $DEVICE budgets $BUDGETS ${ARGS[*]}"
t0=$(now)
python3 -m evolkv search "${ARGS[@]}" --budgets "$BUDGETS" --db "sqlite:///$OUT/one.db" > "$OUT/one.json" 2>/dev/null
t1=$(now)
for b in ${BUDGETS//,/ }; do
  python3 -m evolkv search "${ARGS[@]}" --budget "$b" --db "sqlite:///$OUT/each.db" > "$OUT/each-${b%\%}.json" 2>/dev/null
done
t2=$(now)
python3 - "$OUT" "$t0" "$t1" "$t2" <<'PY'
import glob, json, sys
out, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
one = {d["budget"]: d for d in json.load(open(f"{out}/one.json"))}
each = {d["budget"]: d for d in (json.load(open(p)) for p in sorted(glob.glob(f"{out}/each-*.json")))}
print(f"--budgets (one process): {t1 - t0:.1f} s   separate searches: {t2 - t1:.1f} s   ratio {(t1 - t0) / (t2 - t1):.2f}")
stage = lambda d, name: sum(s["seconds"] for s in d["timings"]["stages"] if s["stage"].startswith(name))
for b in one:
    print(f"  {b}: load+prefill {stage(one[b], 'model load') + stage(one[b], 'prefill'):.1f} s vs "
          f"{stage(each[b], 'model load') + stage(each[b], 'prefill'):.1f} s; held-out KL of the winner "
          f"{one[b]['winner']['heldout_objective']:.4f} ({one[b]['winner']['source']}) vs "
          f"{each[b]['winner']['heldout_objective']:.4f} ({each[b]['winner']['source']})")
PY
