"""One `decode_attention_gluon` call to profile (batch 8, 8 KV heads x 4 query heads, 32k entries, key groups of 128),
after three warm-up calls, between cudaProfilerStart and Stop, for Nsight Compute:

    PYTHONPATH=. ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        python3 benchmarks/gpu/profile_gluon.py 22 [a copy of gluon_decode.py to profile instead]
"""

from __future__ import annotations

import importlib.util
import sys

import torch

from evolkv.kernels.packed import pack


def main() -> None:
    k_bits, v_bits = int(sys.argv[1][0]), int(sys.argv[1][1])
    if len(sys.argv) > 2:  # another revision of the kernel's file, loaded as a module of its own
        spec = importlib.util.spec_from_file_location("gluon_decode_profiled", sys.argv[2])
        kernel = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = kernel  # Gluon reads the kernels' source through their module
        spec.loader.exec_module(kernel)
    else:
        from evolkv.kernels import gluon_decode as kernel
    batch, heads, group, length = 8, 8, 4, 32768
    torch.manual_seed(0)
    keys = torch.randn(batch * heads, length, 128, device="cuda", dtype=torch.bfloat16)
    packed = pack(keys, torch.randn_like(keys), k_bits, v_bits, 128)
    del keys
    packed.keep_key_pairs()
    pos = torch.arange(length, device="cuda").repeat(batch * heads, 1).view(batch, heads, length).int()
    query = torch.randn(batch, heads * group, 1, 128, device="cuda", dtype=torch.bfloat16)
    query_pos = torch.tensor([length], device="cuda")
    for _ in range(3):
        kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
