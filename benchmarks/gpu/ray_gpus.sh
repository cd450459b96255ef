#!/usr/bin/env bash
# The Ray scaling benchmark on a lent multi-GPU machine (repository root there; carry .whl, .gpukit and .raywhl, staged here by
# benchmarks/gpu/stage_wheels.sh and benchmarks/gpu/stage_ray.sh: ~59 MiB with the tree, one call):
#   bash benchmarks/gpu/ray_gpus.sh start "local,ray:1,ray:2,ray:4,kill:2" [SECONDS]
#   bash benchmarks/gpu/ray_gpus.sh wait SECONDS      # later calls, while the machine stays warm
# start installs the wheels, copies the tree to /tmp/repo, builds the Llama-3-8B-shaped model and runs
# benchmarks/bench_ray_gpus.py in the background (setsid: it outlives the call); wait follows its log for up
# to SECONDS and copies the records and the report to $OUT. BENCH_ARGS passes more options to the benchmark.
set -uo pipefail
OUT=${OUT:-ray-gpu-out}; mkdir -p "$OUT"
RES=/tmp/raygpu
follow() {
  local deadline=$((SECONDS + ${1:-540}))
  while [ $SECONDS -lt $deadline ] && [ ! -e $RES/done ]; do sleep 5; done
  tail -c 6000 $RES/bench.log
  cp $RES/*.json $RES/bench.log "$OUT"/ 2>/dev/null
  [ -e $RES/done ] && echo "== finished" || echo "== still running"
}
case ${1:-} in
  start)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .raywhl/*.whl || exit 1
    rm -rf /tmp/repo $RES && mkdir -p $RES && cp -r . /tmp/repo && rm -rf /tmp/repo/.whl /tmp/repo/.raywhl
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee $RES/device.txt
    cd /tmp/repo
    export PYTHONPATH=/tmp/site:/tmp/repo PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    setsid nohup bash -c "python3 benchmarks/gpu/make_llama8b.py /tmp/llama8b && \
      python3 benchmarks/bench_ray_gpus.py --model /tmp/llama8b --runs '$2' --out $RES ${BENCH_ARGS:-}; \
      touch $RES/done" > $RES/bench.log 2>&1 < /dev/null &
    cd - > /dev/null
    follow "${3:-540}" ;;
  wait) follow "${2:-540}" ;;
  *) echo "usage: $0 start RUNS [SECONDS] | wait SECONDS" >&2; exit 2 ;;
esac
