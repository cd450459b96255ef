"""Decode attention over a compressed, per-head variable-length cache, split along the sequence.

The runtime's caches hold keys/values [B, H_kv, L, D] and each entry's token position [B, H_kv, L]
(-1 = empty slot), heads keeping different numbers of tokens. With one (or a few) query tokens per sequence,
one program per (sequence, KV head) would leave most of the GPU idle, so the cache is cut into ``splits``
chunks (flash-decoding): each program reduces one chunk to a partial (max, sum, weighted values), and a
small reduction merges the chunks. Same function as ``reference.attend``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evolkv.kernels.gathered_attention import _load_query_rows, _online_block, _split_start
from evolkv.kernels.packed import PackedKV, kernel_path, value_group
from evolkv.kernels.quantize import load_entries


@triton.jit
def _decode_partial_kernel(
    Q, K, V, KS, KZ, VS, VZ, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ksb, stride_ksh, stride_kst, stride_vsb, stride_vsh, stride_vst,
    stride_pb, stride_ph,
    stride_mb, stride_mh, stride_mt,
    stride_ab, stride_ah, stride_at, stride_as,
    num_kv, t_q, length, split_len, scale,
    GROUP: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_GROUP: tl.constexpr, V_GROUP: tl.constexpr,
    COMPACT: tl.constexpr, QUANT: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // num_kv
    h = pid % num_kv
    split = tl.program_id(1)
    q, i, head, row_ok = _load_query_rows(Q, b * stride_qb, stride_qh, stride_qt, h, tl.program_id(2), t_q,
                                          GROUP, HEAD_DIM, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q_pos = tl.load(QPOS + i, mask=row_ok, other=0)
    k_row, v_row = b * stride_kb + h * stride_kh, b * stride_vb + h * stride_vh
    ks_row, vs_row = b * stride_ksb + h * stride_ksh, b * stride_vsb + h * stride_vsh

    m_i, l_i, acc, begin, end = _split_start(split, split_len, length, BLOCK_M, HEAD_DIM)
    for start in range(begin, end, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        inside = offs < end
        pos = tl.load(KPOS + b * stride_pb + h * stride_ph + offs, mask=inside, other=-1)
        k = load_entries(K + k_row, KS + ks_row, KZ + ks_row, offs, inside, stride_kt, stride_kst,
                         K_BITS, K_GROUP, HEAD_DIM, True, BLOCK_N, start, COMPACT, QUANT).to(q.dtype)
        v = load_entries(V + v_row, VS + vs_row, VZ + vs_row, offs, inside, stride_vt, stride_vst,
                         V_BITS, V_GROUP, HEAD_DIM, False, BLOCK_N, start, COMPACT, QUANT).to(q.dtype)
        visible = (pos[None, :] >= 0) & (pos[None, :] <= q_pos[:, None]) & row_ok[:, None]
        if WINDOW > 0:
            visible = visible & (pos[None, :] > q_pos[:, None] - WINDOW)
        m_i, l_i, acc = _online_block(q, k, v, visible, m_i, l_i, acc, scale, IEEE)

    partial = b * stride_mb + head * stride_mh + i * stride_mt + split  # m and l share one layout
    tl.store(M_OUT + partial, m_i, mask=row_ok)
    tl.store(L_OUT + partial, l_i, mask=row_ok)
    tl.store(ACC_OUT + b * stride_ab + head[:, None] * stride_ah + i[:, None] * stride_at + split * stride_as
             + d[None, :], acc, mask=row_ok[:, None])


def decode_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_pos: torch.Tensor,
    query_pos: torch.Tensor, scaling: float, sliding_window: int | None = None, splits: int | None = None,
    block_m: int = 16, block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query: [B, H_q, T_q, D]; keys, values: [B, H_kv, L, D]; key_pos: [B, H_kv, L] (-1 = empty);
    query_pos: [T_q]. Returns (out [B, H_q, T_q, D], lse [B, H_q, T_q] fp32), as ``reference.attend``."""
    if values.shape != keys.shape or query.dtype != keys.dtype or values.dtype != keys.dtype:
        raise ValueError("keys and values must match each other and the query's dtype")
    if keys.dim() != 4 or key_pos.shape != keys.shape[:3]:
        raise ValueError("unsupported shapes for decode attention")
    keys, values = keys.contiguous(), values.contiguous()
    k_strides = [keys.stride(0), keys.stride(1), keys.stride(2)]
    return _launch(query, [keys, values, keys, keys, keys, keys], k_strides + k_strides + [0] * 6, key_pos,
                   query_pos, scaling, sliding_window, splits, block_m, block_n,
                   dict(K_BITS=16, V_BITS=16, K_GROUP=1, V_GROUP=1, COMPACT=False, QUANT=0))


def decode_attention_packed(
    query: torch.Tensor, packed: PackedKV, key_pos: torch.Tensor, query_pos: torch.Tensor, scaling: float,
    sliding_window: int | None = None, splits: int | None = None, block_m: int = 16, block_n: int = 64,
    compact_scales: bool = True, num_warps: int = 4, num_stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same over a packed cache: ``packed`` holds B * H_kv rows (row b * H_kv + h) of L entries, each
    dequantized as it is read; key_pos: [B, H_kv, L]."""
    batch, num_kv, length = key_pos.shape
    if packed.rows != batch * num_kv or packed.length != length or packed.dim != query.shape[-1]:
        raise ValueError("packed cache rows/length disagree with key_pos and the query")
    parts = [packed.k, packed.v, *packed.key_scales(), packed.v_scale, packed.v_zero]
    parts = [p if p is not None else packed.k for p in parts]  # 16-bit halves have no scales: never read
    strides = []
    for tensor in (parts[0], parts[1], parts[2], parts[4]):  # rows split into (sequence, head)
        strides += [tensor.stride(0) * num_kv, tensor.stride(0), tensor.stride(1)]
    if packed.k_bits == 16 and query.dtype != packed.k.dtype or packed.v_bits == 16 and query.dtype != packed.v.dtype:
        raise ValueError("full-precision halves of the packed cache must have the query's dtype")
    bits = dict(K_BITS=packed.k_bits, V_BITS=packed.v_bits, K_GROUP=packed.group,
                V_GROUP=value_group(packed.group, packed.dim), COMPACT=compact_scales, QUANT=kernel_path(packed))
    return _launch(query, parts, strides, key_pos, query_pos, scaling, sliding_window, splits, block_m, block_n,
                   bits, num_warps, num_stages)


@triton.jit
def _merge_splits_kernel(M, L, ACC, OUT, LSE, splits, stride_row, stride_arow, stride_as,
                         HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """One query row: merge the chunks' partial softmaxes (max, sum, weighted values) into output and lse."""
    row = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    inside = s < splits
    m = tl.load(M + row * stride_row + s, mask=inside, other=float("-inf"))
    lsum = tl.load(L + row * stride_row + s, mask=inside, other=0.0)
    top = tl.max(m, axis=0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - top_safe))  # chunks with nothing visible weigh 0
    total = tl.sum(lsum * weight, axis=0)
    acc = tl.load(ACC + row * stride_arow + s[:, None] * stride_as + d[None, :], mask=inside[:, None], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / tl.maximum(total, 1e-30)
    tl.store(OUT + row * HEAD_DIM + d, out.to(OUT.dtype.element_ty))
    tl.store(LSE + row, tl.where(total > 0, top + tl.log(tl.maximum(total, 1e-30)), float("-inf")))  # none: -inf


SPLIT_PROGRAMS_PER_SM = 8


def default_splits(length: int, rows: int, block_n: int, device) -> int:
    """Chunks per (sequence, KV head): enough programs to give every SM several (memory latency is hidden
    by programs in flight), but chunks of at least two blocks."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if torch.device(device).type == "cuda" else 4
    return max(1, min(triton.cdiv(length, 2 * block_n), triton.cdiv(SPLIT_PROGRAMS_PER_SM * sms, rows)))


class Partials:
    """Per-split softmax partials (max, sum, weighted values) [B, H_q, T_q, S(, D)] of split-K decode launches,
    merged into (out, lse) by one launch. Several launches over disjoint sets of entries can fill one set side
    by side (``take`` hands each its splits): attention over a serving cache's full-precision part and its
    packed tiers without a merge per tier."""

    def __init__(self, query: torch.Tensor, splits: int) -> None:
        batch, num_q, t_q, dim = query.shape
        self.query, self.used = query, 0
        self.m = torch.empty(batch, num_q, t_q, splits, dtype=torch.float32, device=query.device)
        self.lsum = torch.empty_like(self.m)
        self.acc = torch.empty(batch, num_q, t_q, splits, dim, dtype=torch.float32, device=query.device)

    def take(self, splits: int) -> int:
        first, self.used = self.used, self.used + splits
        if self.used > self.m.shape[3]:
            raise ValueError("more splits taken than the partials hold")
        return first

    def merge(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(out [B, H_q, T_q, D] in the query's dtype, lse [B, H_q, T_q] fp32) over every split taken; a row
        with nothing visible gets output 0 (as the reference) and lse -inf."""
        batch, num_q, t_q, dim = self.query.shape
        out = torch.empty_like(self.query)
        lse = torch.empty(batch, num_q, t_q, dtype=torch.float32, device=self.query.device)
        _merge_splits_kernel[(batch * num_q * t_q,)](
            self.m, self.lsum, self.acc, out, lse, self.used, self.m.stride(2), self.acc.stride(2),
            self.acc.stride(3), HEAD_DIM=dim, BLOCK_S=max(2, triton.next_power_of_2(self.used)))
        return out, lse


def plan_splits(length: int, rows: int, block_n: int, device, splits: int | None = None) -> tuple[int, int]:
    """(splits, entries per split) for ``rows`` rows of at most ``length`` entries (splits of whole blocks)."""
    if splits is None:
        splits = default_splits(length, rows, block_n, device)
    split_len = triton.cdiv(triton.cdiv(max(length, 1), splits), block_n) * block_n
    return triton.cdiv(max(length, 1), split_len), split_len


def _launch(query, parts, strides, key_pos, query_pos, scaling, sliding_window, splits, block_m, block_n, bits,
            num_warps=4, num_stages=3):
    batch, num_q, t_q, dim = query.shape
    num_kv, length = key_pos.shape[1], key_pos.shape[2]
    if num_q % num_kv or dim not in (16, 32, 64, 128, 256) or key_pos.shape[0] != batch:
        raise ValueError("unsupported shapes for decode attention")
    query = query.contiguous()
    if key_pos.dtype != torch.int32 or not key_pos.is_contiguous():
        key_pos = key_pos.to(torch.int32).contiguous()
    query_pos = query_pos.to(device=query.device, dtype=torch.int32)
    splits, split_len = plan_splits(length, batch * num_kv, block_n, query.device, splits)
    group = num_q // num_kv
    partials = Partials(query, splits)
    partials.take(splits)
    m, lsum, acc = partials.m, partials.lsum, partials.acc
    block_m = max(16, min(block_m, triton.next_power_of_2(group * t_q)))
    grid = (batch * num_kv, splits, triton.cdiv(group * t_q, block_m))
    _decode_partial_kernel[grid](
        query, *parts, key_pos, query_pos, m, lsum, acc,
        query.stride(0), query.stride(1), query.stride(2),
        *strides,
        key_pos.stride(0), key_pos.stride(1),
        m.stride(0), m.stride(1), m.stride(2),
        acc.stride(0), acc.stride(1), acc.stride(2), acc.stride(3),
        num_kv, t_q, length, split_len, scaling,
        GROUP=group, WINDOW=sliding_window or 0, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        IEEE=query.dtype == torch.float32, **bits, num_warps=num_warps, num_stages=num_stages,
    )
    return partials.merge()
