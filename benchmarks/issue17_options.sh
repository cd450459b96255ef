#!/usr/bin/env bash
# The search options that crashed (issue 17's table), each run as a user types it on the embedded model.
# Usage: bash benchmarks/issue17_options.sh > benchmarks/results/DATE-cpu-issue17-options.txt
set -uo pipefail
DB=${DB:-/tmp/evolkv-issue17.db}
SMALL="--generations 3 --population 6 --samples 2 --length 600"
while IFS= read -r args; do
  echo "## evolkv search $args --db $DB --json"
  start=$(date +%s)
  out=$(evolkv search $args --db "$DB" --json 2>/tmp/issue17.err); rc=$?
  echo "exit $rc in $(( $(date +%s) - start )) s; stderr tail: $(tail -c 300 /tmp/issue17.err | tr '\r\n' '  ' | sed 's/.*\(error:.*\)/\1/' | tail -c 200)"
  [ $rc -eq 0 ] && echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin); r = d['results']
get = lambda k, s: (r.get(k, {}).get(s) or {}).get('objective')
print(f\"status {d['status']}  generations {len(d['generations'])}  failed {sum(g['failed'] for g in d['generations'])}\")
for k in sorted(r, key=lambda k: k != 'winner'):
    print(f'  {k:22s} search KL {get(k, \"search\")}  held-out KL {get(k, \"heldout\")}')"
done <<ARGS
--budget 1.5% --optimizer ga $SMALL
--budget 50% --optimizer de $SMALL
--budget 30% --optimizer optuna-tpe $SMALL
--budget 3% --optimizer optuna-cmaes --per-head $SMALL
--budget 64 --groups 3 $SMALL
--budget 90% --per-head $SMALL
--budget 5% --scorer keynorm --query-agnostic $SMALL
--budget 10% --tasks kvretrieval --per-head --optimizer ga $SMALL
--budget 20% --length 800 --generations 8 --population 10 --samples 4
ARGS
