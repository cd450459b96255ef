"""One `decode_attention_gluon` call to profile (batch 8, 8 KV heads x 4 query heads, 32k entries, key groups of 128),
after three warm-up calls, between cudaProfilerStart and Stop, for Nsight Compute:

    PYTHONPATH=. ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        python3 benchmarks/gpu/profile_gluon.py 22 [a copy of gluon_decode.py to profile instead]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_gluon_revisions import decode_case, load_revision


def main() -> None:
    k_bits, v_bits = int(sys.argv[1][0]), int(sys.argv[1][1])
    if len(sys.argv) > 2:  # another revision of the kernel's file (or a copy of it)
        kernel = load_revision(sys.argv[2], Path(tempfile.mkdtemp()))
    else:
        from evolkv.kernels import gluon_decode as kernel
    torch.manual_seed(0)
    query, packed, pos, query_pos = decode_case(k_bits, v_bits, 8, 32768)
    for _ in range(3):
        kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
