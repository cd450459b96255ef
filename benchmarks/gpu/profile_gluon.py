"""One `decode_attention_gluon` call to profile (batch 8, 8 KV heads x 4 query heads, 32k entries, key groups of 128),
after three warm-up calls, between cudaProfilerStart and Stop, for Nsight Compute:

    PYTHONPATH=. ncu --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        python3 benchmarks/gpu/profile_gluon.py 22
"""

from __future__ import annotations

import sys

import torch

from evolkv.kernels import gluon_decode
from evolkv.kernels.packed import pack


def decode_case(k_bits: int, v_bits: int, batch: int, length: int, heads: int = 8, group: int = 4):
    """(query, packed, pos, query_pos): random bfloat16 keys, values and query packed as the kernel reads them (key
    groups of 128, the key scales kept as pairs), every entry visible to a query at position ``length``."""
    keys = torch.randn(batch * heads, length, 128, device="cuda", dtype=torch.bfloat16)
    packed = pack(keys, torch.randn_like(keys), k_bits, v_bits, 128)
    del keys
    packed.keep_key_pairs()
    pos = torch.arange(length, device="cuda").repeat(batch * heads, 1).view(batch, heads, length).int()
    query = torch.randn(batch, heads * group, 1, 128, device="cuda", dtype=torch.bfloat16)
    return query, packed, pos, torch.tensor([length], device="cuda")


def main() -> None:
    k_bits, v_bits = int(sys.argv[1][0]), int(sys.argv[1][1])
    torch.manual_seed(0)
    query, packed, pos, query_pos = decode_case(k_bits, v_bits, 8, 32768)
    for _ in range(3):
        gluon_decode.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    gluon_decode.decode_attention_gluon(query, packed, pos, query_pos, 0.08)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
