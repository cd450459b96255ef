"""Host time of one packed decode call, eager: the Gluon kernel's launcher against ``folded``'s ``pairs``.

Why ``kernels.gluon_serves`` gives Gluon only to CUDA graphs: an eager decode step is bound by the host, and the
Gluon launcher costs about twice the host time. A small cache (K4V4, batch 1, 8 KV heads, 2k entries), so the GPU
work is negligible; 300 calls each, then a cProfile of the Gluon calls.

    PYTHONPATH=. python benchmarks/bench_decode_host.py     # on a CUDA machine
"""

import time, torch
from evolkv.kernels.gluon_decode import decode_attention_gluon
from evolkv.kernels.folded import decode_attention_folded
from evolkv.kernels.packed import pack
B, H, G, L = 1, 8, 4, 2048
keys = torch.randn(B * H, L, 128, device="cuda", dtype=torch.bfloat16)
packed = pack(keys, torch.randn_like(keys), 4, 4, 128)
pos = torch.arange(L, device="cuda").repeat(B * H, 1).view(B, H, L).int()
q = torch.randn(B, H * G, 1, 128, device="cuda", dtype=torch.bfloat16)
qp = torch.tensor([L], device="cuda", dtype=torch.int32)
for name, f in (("gluon", lambda: decode_attention_gluon(q, packed, pos, qp, 0.08)),
                ("folded pairs", lambda: decode_attention_folded(q, packed, pos, qp, 0.08, unpack=2))):
    for _ in range(5): f()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(300): f()
    host = (time.perf_counter() - t) / 300 * 1e3
    torch.cuda.synchronize(); total = (time.perf_counter() - t) / 300 * 1e3
    print(f"{name}: host {host:.3f} ms/call, wall {total:.3f} ms/call", flush=True)
import cProfile, pstats
cProfile.run("for _ in range(200): decode_attention_gluon(q, packed, pos, qp, 0.08)", "/tmp/prof")
pstats.Stats("/tmp/prof").sort_stats("tottime").print_stats(12)
