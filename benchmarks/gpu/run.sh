#!/usr/bin/env bash
# Everything the GPU machine runs, in one command (device machine, repository root, carry .whl and .gpukit,
# staged here by benchmarks/gpu/stage_wheels.sh):
#   bash benchmarks/gpu/run.sh [tests] [search8k] [search32k] [profile] [headline]
# Installs the staged wheels, builds the Llama-3-8B-shaped model directory, runs the GPU tests and the
# benchmarks; logs go to $OUT (or ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
steps=${*:-tests search8k}
for step in $steps; do
  case $step in
    tests)
      timeout 420 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/kernels \
        2>&1 | tee "$OUT/gpu_tests.txt" | tail -15 ;;
    search8k|search32k)
      python3 benchmarks/gpu/make_llama8b.py /tmp/llama8b 2>&1 | tail -1
      length=$([ "$step" = search8k ] && echo 8000 || echo 32000)
      timeout ${T_SEARCH:-560} python3 benchmarks/bench_search_gpu.py --model /tmp/llama8b --length "$length" ${BENCH_ARGS:-} \
        2>&1 | tee "$OUT/bench_search_gpu_$length.txt" ;;
    profile)  # where one prefill and one batch of scoring spend their time (torch.profiler)
      python3 benchmarks/gpu/make_llama8b.py /tmp/llama8b 2>&1 | tail -1
      timeout ${T_PROFILE:-300} python3 benchmarks/gpu/profile_prefill.py --model /tmp/llama8b --length ${LENGTH:-8000} \
        2>&1 | tee "$OUT/profile_prefill.txt" ;;
    serving-tests)
      timeout ${T_TESTS:-300} python3 -m pytest -q -p no:cacheprovider tests/test_serving.py tests/kernels/test_ragged.py \
        2>&1 | tee "$OUT/serving_tests.txt" | tail -15 ;;
    serving)
      timeout ${T_SERVING:-560} python3 benchmarks/bench_serving.py ${SERVING_ARGS:-} --json "$OUT/serving.json" \
        2>&1 | tee "$OUT/bench_serving.txt" ;;
    headline)
      for ctx in ${HEADLINE_CONTEXTS:-8192 32768}; do
        timeout ${T_HEADLINE:-240} python3 benchmarks/bench_gpu.py --context "$ctx" 2>&1 | tee "$OUT/bench_gpu_$ctx.txt" | tail -8
      done ;;
  esac
done
