#!/usr/bin/env bash
# `evolkv generate` through the CLI on the GPU machine (repository root, carry .whl and .gpukit): the
# Llama-3-8B-shaped model, a prompt of ~CONTEXT tokens, the full cache against uniform 10% (each with and
# without --compile); one JSON per run in $OUT. CHOICES ('|'-separated) and COMPILES pick other runs; the configs
# /tmp/k4v4.json and /tmp/k2v2.json (every token packed, key groups of 128) are written for them.
#   CONTEXT=32768 bash benchmarks/gpu/generate_cli.sh
#   CHOICES="--full|--config /tmp/k4v4.json|--config /tmp/k2v2.json" COMPILES=--no-compile bash benchmarks/gpu/generate_cli.sh
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 benchmarks/gpu/make_llama8b.py /tmp/llama8b 2>&1 | tail -1
python3 - <<'PY'
import os
from transformers import AutoTokenizer
from evolkv.evaluators.tasks import FILLER
tok = AutoTokenizer.from_pretrained("/tmp/llama8b")
target = int(os.environ.get("CONTEXT", "32768"))
per = len(tok(FILLER).input_ids)
open("/tmp/prompt.txt", "w").write(FILLER * (target // per) + "The pass key is")
print("prompt tokens", len(tok(open("/tmp/prompt.txt").read()).input_ids))
from transformers import AutoConfig
from evolkv.config import Budget, uniform_config
from evolkv.models import model_spec
spec = model_spec(AutoConfig.from_pretrained("/tmp/llama8b"), "/tmp/llama8b")
for bits in (4, 2):
    uniform_config(spec, Budget.parse("100%"), k_bits=bits, v_bits=bits, group_size=128).save(f"/tmp/k{bits}v{bits}.json")
PY
IFS='|' read -ra CHOICE_LIST <<< "${CHOICES:---full|--budget 10% --baseline uniform}"
for compile in ${COMPILES:---no-compile --compile}; do
  for choice in "${CHOICE_LIST[@]}"; do
    name=$(echo "$choice $compile" | tr -c 'a-z0-9\n' '_' | tr -s _)
    python3 -m evolkv generate --model /tmp/llama8b --prompt-file /tmp/prompt.txt -n 64 --device cuda \
      $choice $compile --json > "$OUT/$name.json" 2> "$OUT/$name.err"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d.pop('text'); print(d)" "$OUT/$name.json" \
      || tail -3 "$OUT/$name.err"
  done
done
