"""Attention over KIVI-packed caches: the kernels (dequantize as they read) vs. the torch path.

1. Gathered (evaluator): Llama-3-8B attention shapes (32 query heads, 8 KV heads, head_dim 128), one layer,
   32 answer tokens, a population of candidates each keeping ``--budget`` of the context per head (heads
   differ) of one shared prefill packed at K{b}V{b} in ranking order (groups of 32, no residual window).
   Torch path: dequantize the packed cache, gather each candidate's prefix, SDPA (what the evaluator does
   without the kernel). The bf16 kernel over the unquantized cache is timed beside it.
2. Decode (runtime): batch 8, one query token, a packed per-head cache of ``--decode-budget`` (default: all)
   of the context.
   Torch path: dequantize, then attend.

"deq-once" dequantizes the packed prefill once (Triton) and runs the kernel over the dense rows, as the
evaluator does for a population. "per-elem" times the same kernel loading every scale per element (``compact_scales=False``) instead of once
per group and broadcasting it. Bandwidth = bytes the kernel must move (codes, scales and zero points of the kept entries, queries, new
tokens, output) / median time, as a fraction of the measured device-to-device copy bandwidth.

    PYTHONPATH=. python benchmarks/bench_quantized.py
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
import triton.testing

from benchmarks.bench_kernels import copy_bandwidth, decode_inputs, torch_path
from evolkv.kernels.decode_attention import decode_attention_packed
from evolkv.kernels.gathered_attention import gathered_attention
from evolkv.kernels.packed import (attend_packed_ref, densify, gathered_attention_packed_ref, pack, pack_ranked,
                                  unpack)
from evolkv.kernels.quantize import load_entries

TILES = [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 1), (128, 32, 8, 1)]


def bench(fn, rep=200):
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def tile_times(launch):
    """(median ms, tile) for every tile that fits the device (shared memory)."""
    for bm, bn, w, st in TILES:
        try:
            yield bench(lambda: launch(block_m=bm, block_n=bn, num_warps=w, num_stages=st)), f"{bm}x{bn}/{w}w/{st}s"
        except triton.runtime.errors.OutOfResources:
            continue


def packed_bytes_per_entry(bits: int, dim: int, group: int, keys: bool) -> float:
    scales = 2 * 2 * dim / group if keys else 2 * 2 * (dim // min(group, dim))
    return dim * bits / 8 + scales


def gathered_section(bandwidth, contexts, populations, bit_widths, budget, answer, group, peak=0.0):
    device, dtype, num_q, num_kv, dim = "cuda", torch.bfloat16, 32, 8, 128
    scaling = dim ** -0.5
    print(f"\ngathered attention over a packed prefill: {budget:.0%} kept per head, {answer} answer tokens, "
          f"group {group}")
    print(f"{'context':>8} {'pop':>4} {'bits':>5} {'kernel ms':>10} {'torch ms':>9} {'speed-up':>9} "
          f"{'bf16 kernel':>11} {'per-elem':>9} {'deq-once':>9} {'GB/s':>6} {'of copy':>8} {'FLOP/B':>7} "
          f"{'ceiling':>8} {'TFLOP/s':>7} {'rel err':>8} {'tile':>14}")
    print("ceiling = the most of copy bandwidth the kernel could reach when bound by the measured bf16 GEMM "
          "rate at its FLOP/byte")
    for context in contexts:
        for cands in populations:
            gen = torch.Generator(device=device).manual_seed(context + cands)
            rand = lambda *s: torch.randn(*s, device=device, generator=gen, dtype=dtype)  # noqa: E731
            q = rand(cands, num_q, answer, dim)
            keys, values = rand(num_kv, context, dim), rand(num_kv, context, dim)
            new_k, new_v = rand(cands, num_kv, answer, dim), rand(cands, num_kv, answer, dim)
            order = torch.argsort(torch.rand(1, num_kv, context, device=device, generator=gen), dim=-1)
            order = order.to(torch.int32)
            counts = (budget * context * (0.5 + torch.rand(cands, num_kv, device=device, generator=gen)))
            counts = counts.to(torch.int32)
            bf16_ms = bench(lambda: gathered_attention(q, keys, values, order, counts, new_k, new_v, scaling))
            identity = torch.arange(context, device=device, dtype=torch.int32).expand(1, num_kv, context)
            for bits in bit_widths:
                packed = pack_ranked(keys, values, order[0], bits, bits, group)
                args = (q, keys, values, order, counts, new_k, new_v, scaling)
                out, _ = gathered_attention(*args, packed=packed)
                ref, _ = gathered_attention_packed_ref(*args, packed=packed)
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                kernel_ms, tile = min(tile_times(lambda **tile: gathered_attention(*args, packed=packed, **tile)))
                per_element_ms, _ = min(tile_times(lambda **tile: gathered_attention(
                    *args, packed=packed, compact_scales=False, **tile)))
                once_ms = bench(lambda: gathered_attention(*args, packed=densify(packed, dtype)))
                dense_out, _ = gathered_attention(*args, packed=densify(packed, dtype))
                err_once = ((dense_out.float() - ref.float()).norm() / ref.float().norm()).item()
                err = max(err, err_once)

                def torch_quantized():
                    dense_k, dense_v = unpack(packed, dtype)  # [H_kv, T, D] in ranking order
                    return torch_path(q, dense_k, dense_v, identity.long(), counts.long(), new_k, new_v, scaling)

                torch_ms = bench(torch_quantized, rep=100)
                kept = int(counts.sum())
                must_move = (kept * (packed_bytes_per_entry(bits, dim, group, True)
                                     + packed_bytes_per_entry(bits, dim, group, False))
                             + 2 * q.numel() * 2 + 2 * new_k.numel() * 2 + q.numel() // dim * 4)
                achieved = must_move / (kernel_ms * 1e-3)
                # QK^T and PV over the kept entries and the answer tokens, for every query row
                flops = 4 * dim * (num_q // num_kv) * answer * (kept + cands * num_kv * answer)
                ceiling = min(1.0, peak / (flops / must_move) / bandwidth) if peak else float("nan")
                print(f"{context:>8} {cands:>4} {f'K{bits}V{bits}':>5} {kernel_ms:>10.3f} {torch_ms:>9.3f} "
                      f"{torch_ms / kernel_ms:>8.1f}x {bf16_ms:>11.3f} {per_element_ms:>9.3f} {once_ms:>9.3f} "
                      f"{achieved / 1e9:>6.0f} "
                      f"{achieved / bandwidth:>7.0%} {flops / must_move:>7.0f} {ceiling:>8.0%} "
                      f"{flops / (kernel_ms * 1e-3) / 1e12:>7.0f} {err:>8.1e} {tile:>14}", flush=True)


DECODE_TILES = [(64, 4, 3), (128, 4, 3), (128, 8, 3), (256, 8, 3), (32, 4, 3), (64, 2, 4)]  # block_n, warps, stages
SPLIT_SCALES = [0.5, 1, 2, 4]  # times the default number of chunks


def decode_times(args, rows, length):
    """(median ms, setting) for each block/warps/stages and number of chunks around the default."""
    from evolkv.kernels.decode_attention import default_splits

    for block_n, warps, stages in DECODE_TILES:
        base = default_splits(length, rows, block_n, "cuda")
        for factor in SPLIT_SCALES:
            splits = max(1, int(base * factor))
            try:
                ms = bench(lambda: decode_attention_packed(*args, splits=splits, block_n=block_n, num_warps=warps,
                                                           num_stages=stages), rep=100)
            except triton.runtime.errors.OutOfResources:
                continue
            yield ms, f"{block_n}/{warps}w/{stages}s/{splits}sp"


def decode_section(bandwidth, contexts, bit_widths, budget, group):
    device, dtype, batch, num_q, num_kv, dim = "cuda", torch.bfloat16, 8, 32, 8, 128
    print(f"\ndecode over a packed per-head cache: batch {batch}, 1 query token, {budget:.0%} of the context")
    print("'kernel ms' = the launcher's defaults; 'best ms' = the fastest of a sweep of block/warps/stages/chunks")
    print(f"{'context':>8} {'bits':>5} {'kernel ms':>10} {'torch ms':>9} {'speed-up':>9} {'per-elem':>9} "
          f"{'GB/s':>6} {'of copy':>8} {'best ms':>8} {'of copy':>8} {'rel err':>8} {'best setting':>20}")
    for context in contexts:
        keys, values, pos, query, query_pos = decode_inputs(context, budget, batch, num_q, num_kv, dim, dtype, device)
        keys, values = keys.flatten(0, 1), values.flatten(0, 1)  # packed rows: b * H_kv + h
        length = keys.shape[1]
        for bits in bit_widths:
            packed = pack(keys, values, bits, bits, group)
            args = (query, packed, pos, query_pos, dim ** -0.5)
            out, _ = decode_attention_packed(*args)
            ref, _ = attend_packed_ref(*args)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            kernel_ms = bench(lambda: decode_attention_packed(*args))
            per_element_ms = bench(lambda: decode_attention_packed(*args, compact_scales=False))
            torch_ms = bench(lambda: attend_packed_ref(*args), rep=100)
            must_move = (keys.shape[0] * length * (packed_bytes_per_entry(bits, dim, group, True)
                                                   + packed_bytes_per_entry(bits, dim, group, False))
                         + pos.numel() * 4 + query.numel() * 2 * 2)
            achieved = must_move / (kernel_ms * 1e-3)
            best_ms, best = min(decode_times(args, keys.shape[0], length))
            print(f"{context:>8} {f'K{bits}V{bits}':>5} {kernel_ms:>10.3f} {torch_ms:>9.3f} "
                  f"{torch_ms / kernel_ms:>8.1f}x {per_element_ms:>9.3f} {achieved / 1e9:>6.0f} "
                  f"{achieved / bandwidth:>7.0%} {best_ms:>8.3f} {must_move / (best_ms * 1e-3) / bandwidth:>7.0%} "
                  f"{err:>8.1e} {best:>20}", flush=True)


@triton.jit
def _dequantize_sum_kernel(P, S, Z, OUT, length, stride_pr, stride_pt, stride_sr, stride_st,
                           BITS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, PER_CHANNEL: tl.constexpr,
                           BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """Read and dequantize a chunk of packed rows, keep only a column sum: the ceiling of any kernel that
    dequantizes as it reads (no attention arithmetic at all)."""
    r = tl.program_id(0)
    first = tl.program_id(1) * CHUNK
    total = tl.zeros([DIM], tl.float32)
    for start in range(first, first + CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < length
        x = load_entries(P + r * stride_pr, S + r * stride_sr, Z + r * stride_sr, offs, ok, stride_pt, stride_st,
                         BITS, GROUP, DIM, PER_CHANNEL, BLOCK, start, True)
        total += tl.sum(x, axis=0)
    tl.store(OUT + (r * tl.num_programs(1) + tl.program_id(1)) * DIM + tl.arange(0, DIM), total)


@triton.jit
def _sliced_sum_kernel(P, S, Z, OUT, length, stride_pr, stride_pt, stride_sr, stride_st,
                       BITS: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """The same read + dequantize (values: one scale per entry, group = DIM), unpacked bit-slice by bit-slice:
    slice j of every word holds channels w * PER_WORD + j, so no register reshape is needed."""
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = DIM // PER_WORD
    r = tl.program_id(0)
    first = tl.program_id(1) * CHUNK
    w = tl.arange(0, WORDS)
    totals = tl.zeros([PER_WORD, WORDS], tl.float32)
    j = tl.arange(0, PER_WORD)
    for start in range(first, first + CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < length
        words = tl.load(P + r * stride_pr + offs[:, None] * stride_pt + w[None, :], mask=ok[:, None], other=0)
        scale = tl.load(S + r * stride_sr + offs * stride_st, mask=ok, other=0.0).to(tl.float32)
        zero = tl.load(Z + r * stride_sr + offs * stride_st, mask=ok, other=0.0).to(tl.float32)
        words = words.to(tl.uint32, bitcast=True)
        for k in tl.static_range(PER_WORD):
            codes = ((words >> (k * BITS)) & (2**BITS - 1)).to(tl.float32)  # [BLOCK, WORDS]
            part = tl.sum(codes * scale[:, None] + zero[:, None], axis=0)  # [WORDS]
            totals += tl.where(j[:, None] == k, part[None, :], 0.0)
    tl.store(OUT + (r * tl.num_programs(1) + tl.program_id(1)) * DIM + j[:, None] * WORDS + w[None, :], totals)


def roofline_section(bandwidth, group):
    """What bounds attention over a packed cache: tensor-core throughput (measured bf16 GEMM), and how fast
    the GPU can merely read + dequantize packed codes (no attention work)."""
    m = 8192
    a, b = (torch.randn(m, m, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    gemm_ms = bench(lambda: a @ b, rep=100)
    peak = 2 * m ** 3 / (gemm_ms * 1e-3)
    print(f"\nroofline: bf16 GEMM {m}^3: {peak / 1e12:.0f} TFLOP/s measured; ridge at copy bandwidth "
          f"{peak / bandwidth:.0f} FLOP/byte")
    rows, length, dim = 64, 32768, 128
    print(f"read + dequantize only ({rows} rows x {length} entries x {dim}, group {group}, column sums out):")
    print(f"{'bits':>5} {'half':>6} {'ms':>8} {'GB/s':>6} {'of copy':>8} {'setting':>10}")
    for bits in (8, 4, 2):
        keys = torch.randn(rows, length, dim, device="cuda", dtype=torch.bfloat16)
        packed = pack(keys, keys, bits, bits, group)
        for half, codes, scale, zero, per_channel, g in (
                ("keys", packed.k, packed.k_scale, packed.k_zero, True, group),
                ("values", packed.v, packed.v_scale, packed.v_zero, False, min(group, dim))):
            best = None
            for block, warps in ((32, 4), (64, 4), (128, 4), (128, 8), (256, 8)):
                chunk = 2048
                out = torch.empty(rows, length // chunk, dim, device="cuda")
                grid = (rows, length // chunk)
                run = lambda: _dequantize_sum_kernel[grid](  # noqa: E731
                    codes, scale, zero, out, length, codes.stride(0), codes.stride(1), scale.stride(0),
                    scale.stride(1), BITS=bits, GROUP=g, DIM=dim, PER_CHANNEL=per_channel, BLOCK=block,
                    CHUNK=chunk, num_warps=warps)
                ms = bench(run, rep=100)
                if best is None or ms < best[0]:
                    best = (ms, f"{block}/{warps}w")
            moved = codes.numel() * 4 + scale.numel() * 2 * 2
            print(f"{f'{bits}':>5} {half:>6} {best[0]:>8.3f} {moved / (best[0] * 1e-3) / 1e9:>6.0f} "
                  f"{moved / (best[0] * 1e-3) / bandwidth:>7.0%} {best[1]:>10}", flush=True)
            if per_channel or g != dim:
                continue
            best = None  # the bit-sliced unpack of the same values
            for block, warps in ((32, 4), (64, 4), (128, 4), (128, 8), (256, 8)):
                chunk = 2048
                out = torch.empty(rows, length // chunk, dim, device="cuda")
                run = lambda: _sliced_sum_kernel[(rows, length // chunk)](  # noqa: E731
                    codes, scale, zero, out, length, codes.stride(0), codes.stride(1), scale.stride(0),
                    scale.stride(1), BITS=bits, DIM=dim, BLOCK=block, CHUNK=chunk, num_warps=warps)
                ms = bench(run, rep=100)
                if best is None or ms < best[0]:
                    best = (ms, f"{block}/{warps}w")
            print(f"{f'{bits}':>5} {'sliced':>6} {best[0]:>8.3f} {moved / (best[0] * 1e-3) / 1e9:>6.0f} "
                  f"{moved / (best[0] * 1e-3) / bandwidth:>7.0%} {best[1]:>10}", flush=True)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,16384,32768")
    parser.add_argument("--populations", default="16,64")
    parser.add_argument("--bits", default="8,4,2")
    parser.add_argument("--budget", type=float, default=0.10)
    parser.add_argument("--decode-budget", type=float, default=1.0, help="share of the context in the decode cache")
    parser.add_argument("--answer", type=int, default=32)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--decode-only", action="store_true", help="skip the gathered (evaluator) section")
    parser.add_argument("--roofline-only", action="store_true", help="only the GEMM and read + dequantize ceilings")
    args = parser.parse_args()
    bandwidth = copy_bandwidth("cuda")
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {bandwidth / 1e12:.2f} TB/s (read + write); "
          f"triton {triton.__version__}, torch {torch.__version__}")
    contexts = [int(c) for c in args.contexts.split(",")]
    bits = [int(b) for b in args.bits.split(",")]
    peak = roofline_section(bandwidth, args.group)
    if args.roofline_only:
        return
    if not args.decode_only:
        gathered_section(bandwidth, contexts, [int(p) for p in args.populations.split(",")], bits, args.budget,
                         args.answer, args.group, peak)
    decode_section(bandwidth, contexts, bits, args.decode_budget, args.group)


if __name__ == "__main__":
    main()
