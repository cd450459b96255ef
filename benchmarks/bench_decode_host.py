"""Host time of one packed decode call, eager: the Gluon kernel's launcher against ``folded``'s ``pairs``.

Why ``kernels.gluon_serves`` gives Gluon only to CUDA graphs: an eager decode step is bound by the host, and the
Gluon launcher costs about twice the host time. A small cache (K4V4, batch 1, 8 KV heads, 2k entries), so the GPU
work is negligible; 300 calls each, then a cProfile of the Gluon calls.

    PYTHONPATH=. python benchmarks/bench_decode_host.py     # on a CUDA machine
"""

from __future__ import annotations

import cProfile
import pstats
import time

import torch

from evolkv.kernels.folded import decode_attention_folded
from evolkv.kernels.gluon_decode import decode_attention_gluon
from evolkv.kernels.packed import pack


def main() -> None:
    batch, heads, group, length = 1, 8, 4, 2048
    keys = torch.randn(batch * heads, length, 128, device="cuda", dtype=torch.bfloat16)
    packed = pack(keys, torch.randn_like(keys), 4, 4, 128)
    pos = torch.arange(length, device="cuda").repeat(batch * heads, 1).view(batch, heads, length).int()
    query = torch.randn(batch, heads * group, 1, 128, device="cuda", dtype=torch.bfloat16)
    query_pos = torch.tensor([length], device="cuda", dtype=torch.int32)
    calls = {"gluon": lambda: decode_attention_gluon(query, packed, pos, query_pos, 0.08),
             "folded pairs": lambda: decode_attention_folded(query, packed, pos, query_pos, 0.08)}
    for name, call in calls.items():
        for _ in range(5):  # compiled, key pairs made
            call()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(300):
            call()
        host = (time.perf_counter() - start) / 300 * 1e3
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 300 * 1e3
        print(f"{name}: host {host:.3f} ms/call, wall {wall:.3f} ms/call", flush=True)
    profile = cProfile.Profile()
    profile.runcall(lambda: [calls["gluon"]() for _ in range(200)])
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
