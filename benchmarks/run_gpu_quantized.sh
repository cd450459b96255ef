set -x
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
PYTHONPATH=. timeout 250 python -m pytest -q -x tests/kernels tests/test_runtime.py tests/test_evaluator.py tests/test_allocation.py 2>&1 | tail -5
PYTHONPATH=. python benchmarks/bench_quantized.py 2>&1 | tee $OUT/bench_quantized.txt
