"""Quantized decode attention, side by side: the dequantize-as-read kernel against the folded kernel
(``evolkv.kernels.folded``: keys dequantized a channel pair per instruction, values' codes fed to the tensor cores;
``EVOLKV_PACKED_DECODE=pairs``) at a few block shapes, the Gluon kernel with the MMA operands built in registers
(``evolkv.kernels.gluon_decode``) as a call and alone, and the bf16 ragged kernel over the same entries
unquantized. Llama-3-8B attention shapes (8 KV heads x 4 query heads, head_dim 128), one query token, every entry
of the context packed (K4V4 / K2V2, key groups of 128 entries, value groups of the whole head), batch 8.

Prints ms per call (median of ``do_bench`` over replays of a CUDA graph of the call, as the serving path
decodes; ``--eager``: eager calls, Python launch cost included), bytes the call must read (codes, scales, zero points,
positions), their rate as a share of the measured device-to-device copy bandwidth, and the error against
dequantize-then-attend in float32.

    PYTHONPATH=. python benchmarks/bench_packed_decode.py [--contexts 8192,32768] [--batch 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch
import triton
import triton.testing

from evolkv.kernels.decode_attention import decode_attention_packed
from evolkv.kernels.folded import decode_attention_folded
from evolkv.kernels.gluon_decode import decode_attention_gluon, supported as gluon_serves
from evolkv.kernels.packed import attend_packed_ref, pack
from evolkv.kernels.ragged import ragged_decode_attention


def copy_bandwidth() -> float:
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() / (ms / 1000)


def _time(fn, eager: bool) -> float:
    """Median ms of ``fn``: eager calls, or replays of a CUDA graph of one call (``fn`` warmed up already)."""
    if eager:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


KERNEL_REPEATS = 20


def time_kernel_alone(kernel, query, packed, pos, query_pos, scale, splits=None) -> float:
    """Median ms of ``kernel.decode_attention_gluon``'s decode kernel alone: a CUDA graph of ``KERNEL_REPEATS``
    launches filling one set of partials (no merge; the serving path merges once over every tier), its replay time
    divided by the launches."""
    parts = kernel.Partials(query, splits or kernel.splits_for(packed, pos.shape[0] * pos.shape[1], query.device))

    def launches():
        for _ in range(KERNEL_REPEATS):
            parts.used = 0
            kernel.decode_attention_gluon(query, packed, pos, query_pos, scale, splits=splits, partials=parts)
    launches()
    torch.cuda.synchronize()
    return _time(launches, eager=False) / KERNEL_REPEATS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="8192,32768")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bits", default="4,2")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--eager", action="store_true", help="time eager calls (default: replays of a CUDA graph "
                        "of the call, as the serving path decodes: no Python launch cost in the figure)")
    parser.add_argument("--only", default="", help="comma-separated parts of kernel names: run just those rows")
    args = parser.parse_args()
    only = [part for part in args.only.split(",") if part]
    heads, group_q, dim = 8, 4, 128
    bandwidth = copy_bandwidth()
    print(f"# {time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; copy {bandwidth / 1e12:.2f} TB/s (read + write)")
    print(f"# command: {' '.join(sys.argv)}")
    print(f"{'context':>8} {'bits':>5} {'kernel':32} {'ms':>8} {'GB read':>8} {'% copy':>7} {'rel err':>8}")
    for context in [int(c) for c in args.contexts.split(",")]:
        rows = args.batch * heads
        gen = torch.Generator(device="cuda").manual_seed(context)
        keys = torch.randn(rows, context, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
        keys += torch.randn(1, 1, dim, device="cuda", generator=gen, dtype=torch.bfloat16) * 2
        values = torch.randn(rows, context, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
        query = torch.randn(args.batch, heads * group_q, 1, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
        pos = torch.arange(context, device="cuda", dtype=torch.int32).expand(args.batch, heads, context).contiguous()
        query_pos = torch.tensor([context], device="cuda", dtype=torch.int32)
        scale = dim ** -0.5
        # the bf16 baseline: the same entries unquantized, through the serving cache's ragged kernel
        start = (torch.arange(rows, device="cuda") * (context + 1)).to(torch.int32)
        flat_k = torch.zeros(rows * (context + 1), dim, device="cuda", dtype=torch.bfloat16)
        flat_v = torch.zeros_like(flat_k)
        for r in range(rows):
            flat_k[r * (context + 1):r * (context + 1) + context] = keys[r]
            flat_v[r * (context + 1):r * (context + 1) + context] = values[r]
        count = torch.full((rows,), context - 1, dtype=torch.int32, device="cuda")
        step = torch.zeros(1, dtype=torch.int32, device="cuda")
        ragged = lambda: ragged_decode_attention(query, flat_k, flat_v, start, count, step,  # noqa: E731
                                                 context + 1, scale)
        ragged()
        ms = _time(ragged, args.eager)
        nbytes = 2 * rows * context * dim * 2
        print(f"{context:8} {'16':>5} {'bf16 ragged (serving)':32} {ms:8.3f} {nbytes / 1e9:8.3f} "
              f"{nbytes / (ms / 1000) / bandwidth * 100:6.0f}% {'-':>8}")
        del flat_k, flat_v
        for bits in [int(b) for b in args.bits.split(",")]:
            packed = pack(keys, values, bits, bits, args.group)
            nbytes = packed.nbytes() + pos.numel() * 4
            ref, _ = attend_packed_ref(query.float(), packed, pos, query_pos, scale)
            variants = {
                "dequantize as read": lambda: decode_attention_packed(query, packed, pos, query_pos, scale),
            }
            paired = dataclasses.replace(packed)  # its first call keeps its key scales as pairs (packed keeps fp16)
            for block_n, stages in ((128, 2), (128, 1), (64, 2)):
                variants[f"folded, pairs, {block_n}/{stages}s/4w"] = (
                    lambda b=block_n, st=stages: decode_attention_folded(query, paired, pos, query_pos, scale,
                                                                         block_n=b, num_stages=st))
            if gluon_serves(query, packed):
                gluon_cache = dataclasses.replace(packed)
                variants["gluon, operands in registers"] = (
                    lambda: decode_attention_gluon(query, gluon_cache, pos, query_pos, scale))
            if gluon_serves(query, packed) and not args.eager:
                from evolkv.kernels import gluon_decode
                variants["gluon, the kernel alone"] = lambda: (
                    time_kernel_alone(gluon_decode, query, gluon_cache, pos, query_pos, scale), None)
            for name, fn in variants.items():
                if only and not any(part in name for part in only):
                    continue
                try:
                    out, _ = fn()
                    if isinstance(out, float):  # a timer of its own (the kernel alone): its error is the call's
                        ms, err = out, f"{'-':>8}"
                    else:
                        err = f"{float((out.float() - ref).norm() / ref.norm()):8.1e}"
                        ms = _time(fn, args.eager)
                    print(f"{context:8} {f'K{bits}V{bits}':>5} {name:32} {ms:8.3f} {nbytes / 1e9:8.3f} "
                          f"{nbytes / (ms / 1000) / bandwidth * 100:6.0f}% {err}")
                except Exception as error:  # noqa: BLE001
                    print(f"{context:8} {f'K{bits}V{bits}':>5} {name:32} failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:150]}")
            del packed


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
