# The quantized-attention benchmark on the lent GPU: correctness first (the kernel tests on CUDA), then the
# timings. Usage (device machine, repository root): bash benchmarks/run_gpu_quantized.sh
set -x
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
PYTHONPATH=. timeout 200 python -m pytest -q -x tests/kernels tests/test_runtime.py tests/test_evaluator.py tests/test_allocation.py 2>&1 | tail -5
PYTHONPATH=. timeout 380 python benchmarks/bench_quantized.py "$@" 2>&1 | tee $OUT/bench_quantized.txt
