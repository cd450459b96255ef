"""Gathered attention over many candidates' compressed caches: Triton kernel vs. the torch path.

Llama-3-8B attention shapes (32 query heads, 8 KV heads, head_dim 128), 32 answer tokens, one layer,
contexts 4k/16k/32k, each candidate keeping ``--budget`` of the context per head (heads differ). Prints,
per context and population: median time of the kernel and of the torch path (gather copies + SDPA over the
gathered dense tensors), their ratio, and the kernel's achieved bandwidth (bytes it must move / time) as a
fraction of the measured device-to-device copy bandwidth. Checks the kernel against the reference first.

    PYTHONPATH=. python benchmarks/bench_kernels.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton.testing

from evolkv.kernels.gathered_attention import gathered_attention, gathered_attention_ref
from evolkv.kernels.decode_attention import decode_attention
from evolkv.kernels.reference import attend, gather_kv

TILES = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4), (64, 32, 4, 5),
         (64, 128, 8, 3)]  # (BLOCK_M, BLOCK_N, warps, stages) tried; the best is reported


def copy_bandwidth(device: str) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(256 * 2**20, device=device)  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def torch_path(q, keys, values, order, counts, new_k, new_v, scaling):
    """What the evaluator does without the kernel: gather copies, append new tokens, masked SDPA."""
    cands, num_q, t_q, _ = q.shape
    context = keys.shape[1]
    k, v, pos = gather_kv(keys[None], values[None], order, counts)  # [C, H_kv, L, D]
    k, v = torch.cat([k, new_k], 2), torch.cat([v, new_v], 2)
    new_pos = torch.arange(context, context + t_q, device=q.device)
    pos = torch.cat([pos, new_pos.expand(cands, keys.shape[0], t_q)], 2)  # [C, H_kv, L + T_q]
    visible = (pos[:, :, None, :] >= 0) & (pos[:, :, None, :] <= new_pos[None, None, :, None])
    group = num_q // keys.shape[0]
    mask = visible.repeat_interleave(group, dim=1)  # [C, H_q, T_q, L + T_q]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="4096,16384,32768")
    parser.add_argument("--populations", default="16,64")
    parser.add_argument("--budget", type=float, default=0.10)
    parser.add_argument("--answer", type=int, default=32)
    args = parser.parse_args()
    device, dtype = "cuda", torch.bfloat16
    num_q, num_kv, dim = 32, 8, 128
    scaling = dim ** -0.5
    bandwidth = copy_bandwidth(device)
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {bandwidth / 1e12:.2f} TB/s (read + write)")
    print(f"{'context':>8} {'pop':>4} {'kernel ms':>10} {'torch ms':>9} {'speed-up':>9} {'kernel GB/s':>12} "
          f"{'of copy bw':>10} {'rel err':>8} {'tile':>14}")
    for context in [int(c) for c in args.contexts.split(",")]:
        for cands in [int(p) for p in args.populations.split(",")]:
            gen = torch.Generator(device=device).manual_seed(context + cands)
            rand = lambda *s: torch.randn(*s, device=device, generator=gen, dtype=dtype)  # noqa: E731
            q = rand(cands, num_q, args.answer, dim)
            keys, values = rand(num_kv, context, dim), rand(num_kv, context, dim)
            new_k, new_v = rand(cands, num_kv, args.answer, dim), rand(cands, num_kv, args.answer, dim)
            order = torch.argsort(torch.rand(1, num_kv, context, device=device, generator=gen), dim=-1)
            mean = args.budget * context
            counts = (mean * (0.5 + torch.rand(cands, num_kv, device=device, generator=gen))).long()
            torch_inputs = (q, keys, values, order, counts, new_k, new_v, scaling)
            # the kernel takes int32 indices, converted once per sample (as the evaluator would), not per launch
            inputs = (q, keys, values, order.to(torch.int32), counts.to(torch.int32), new_k, new_v, scaling)
            out, _ = gathered_attention(*inputs)
            ref, _ = gathered_attention_ref(*torch_inputs)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            kernel_ms, tile = min((triton.testing.do_bench(
                lambda: gathered_attention(*inputs, block_m=bm, block_n=bn, num_warps=w, num_stages=st),
                warmup=25, rep=200, return_mode="median"), f"{bm}x{bn}/{w}w/{st}s") for bm, bn, w, st in TILES)
            torch_ms = triton.testing.do_bench(lambda: torch_path(*torch_inputs), warmup=10, rep=100,
                                               return_mode="median")
            kept = int(counts.sum())
            must_move = (kept * dim * 2 * 2 + kept * 4  # gathered K and V rows (bf16) and their int32 indices
                         + 2 * q.numel() * 2 + 2 * new_k.numel() * 2 + q.numel() // dim * 4)
            achieved = must_move / (kernel_ms * 1e-3)
            print(f"{context:>8} {cands:>4} {kernel_ms:>10.3f} {torch_ms:>9.3f} {torch_ms / kernel_ms:>8.1f}x "
                  f"{achieved / 1e9:>12.0f} {achieved / bandwidth:>9.0%} {err:>8.1e} {tile:>14}", flush=True)
    decode_section(bandwidth, [int(c) for c in args.contexts.split(",")] + [131072], args.budget)


def decode_inputs(context, budget, batch, num_q, num_kv, dim, dtype, device):
    """A runtime decode step: keys, values [B, H_kv, L, D] with L = budget * context, positions [B, H_kv, L]
    (heads keep 50-100% of L, random positions < context, -1 past that), one query token at ``context``."""
    gen = torch.Generator(device=device).manual_seed(context)
    length = int(budget * context)
    keys = torch.randn(batch, num_kv, length, dim, device=device, generator=gen, dtype=dtype)
    values = torch.randn_like(keys)
    kept = (length * (0.5 + 0.5 * torch.rand(batch, num_kv, 1, device=device, generator=gen))).long()
    slot = torch.arange(length, device=device)
    pos = torch.where(slot < kept, torch.randint(0, context, (batch, num_kv, length), device=device,
                                                 generator=gen), torch.full_like(slot, -1))
    query = torch.randn(batch, num_q, 1, dim, device=device, generator=gen, dtype=dtype)
    return keys, values, pos, query, torch.tensor([context], device=device)


def decode_section(bandwidth: float, contexts: list[int], budget: float) -> None:
    """Runtime decode: one query token per sequence over a compressed per-head cache (batch 8)."""
    device, dtype, batch, num_q, num_kv, dim = "cuda", torch.bfloat16, 8, 32, 8, 128
    print(f"\ndecode: batch {batch}, 1 query token, {budget:.0%} of the context kept per head (heads differ)")
    print(f"{'context':>8} {'kernel ms':>10} {'torch ms':>9} {'speed-up':>9} {'kernel GB/s':>12} {'of copy bw':>10} "
          f"{'rel err':>8}")
    for context in contexts:
        keys, values, pos, query, query_pos = decode_inputs(context, budget, batch, num_q, num_kv, dim, dtype, device)
        args = (query, keys, values, pos, query_pos, dim ** -0.5)
        out, _ = decode_attention(*args)
        ref, _ = attend(*args)
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        kernel_ms = triton.testing.do_bench(lambda: decode_attention(*args), warmup=25, rep=200, return_mode="median")
        torch_ms = triton.testing.do_bench(lambda: attend(*args), warmup=10, rep=100, return_mode="median")
        must_move = keys.numel() * 2 * 2 + pos.numel() * 4 + query.numel() * 2 * 2
        achieved = must_move / (kernel_ms * 1e-3)
        print(f"{context:>8} {kernel_ms:>10.3f} {torch_ms:>9.3f} {torch_ms / kernel_ms:>8.1f}x "
              f"{achieved / 1e9:>12.0f} {achieved / bandwidth:>9.0%} {err:>8.1e}", flush=True)


if __name__ == "__main__":
    main()
