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

from evolkv.kernels.gathered_attention import _load_query_rows, _online_block


@triton.jit
def _decode_partial_kernel(
    Q, K, V, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_pb, stride_ph,
    stride_mb, stride_mh, stride_mt,
    stride_ab, stride_ah, stride_at, stride_as,
    num_kv, t_q, length, split_len, scale,
    GROUP: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // num_kv
    h = pid % num_kv
    split = tl.program_id(1)
    q, i, head, row_ok = _load_query_rows(Q, b * stride_qb, stride_qh, stride_qt, h, tl.program_id(2), t_q,
                                          GROUP, HEAD_DIM, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q_pos = tl.load(QPOS + i, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    begin = split * split_len
    end = tl.minimum(begin + split_len, length)
    for start in range(begin, end, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        inside = offs < end
        pos = tl.load(KPOS + b * stride_pb + h * stride_ph + offs, mask=inside, other=-1)
        base = b * stride_kb + h * stride_kh + offs[:, None] * stride_kt + d[None, :]
        k = tl.load(K + base, mask=inside[:, None], other=0.0)
        v = tl.load(V + base, mask=inside[:, None], other=0.0)
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
    batch, num_q, t_q, dim = query.shape
    num_kv, length = keys.shape[1], keys.shape[2]
    if num_q % num_kv or dim not in (16, 32, 64, 128, 256) or key_pos.shape != keys.shape[:3]:
        raise ValueError("unsupported shapes for decode attention")
    if values.shape != keys.shape or query.dtype != keys.dtype or values.dtype != keys.dtype:
        raise ValueError("keys and values must match each other and the query's dtype")
    query, keys, values = query.contiguous(), keys.contiguous(), values.contiguous()
    if key_pos.dtype != torch.int32 or not key_pos.is_contiguous():
        key_pos = key_pos.to(torch.int32).contiguous()
    query_pos = query_pos.to(device=query.device, dtype=torch.int32)
    if splits is None:  # enough programs to fill the GPU, chunks of at least a few blocks
        splits = max(1, min(triton.cdiv(length, 4 * block_n), triton.cdiv(264, batch * num_kv)))
    split_len = triton.cdiv(triton.cdiv(length, splits), block_n) * block_n
    splits = triton.cdiv(length, split_len) if length else 1
    group = num_q // num_kv
    m = torch.empty(batch, num_q, t_q, splits, dtype=torch.float32, device=query.device)
    lsum = torch.empty_like(m)
    acc = torch.empty(batch, num_q, t_q, splits, dim, dtype=torch.float32, device=query.device)
    block_m = max(16, min(block_m, triton.next_power_of_2(group * t_q)))
    grid = (batch * num_kv, splits, triton.cdiv(group * t_q, block_m))
    _decode_partial_kernel[grid](
        query, keys, values, key_pos, query_pos, m, lsum, acc,
        query.stride(0), query.stride(1), query.stride(2),
        keys.stride(0), keys.stride(1), keys.stride(2),
        key_pos.stride(0), key_pos.stride(1),
        m.stride(0), m.stride(1), m.stride(2),
        acc.stride(0), acc.stride(1), acc.stride(2), acc.stride(3),
        num_kv, t_q, length, split_len, scaling,
        GROUP=group, WINDOW=sliding_window or 0, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        IEEE=query.dtype == torch.float32,
    )
    if splits == 1:
        return (acc[..., 0, :] / lsum[..., 0, None]).to(query.dtype), m[..., 0] + torch.log(lsum[..., 0])
    top = m.amax(dim=-1, keepdim=True)  # [B, H_q, T_q, 1]
    weight = torch.exp(m - top).nan_to_num(0.0)  # chunks with nothing visible weigh 0
    total = (lsum * weight).sum(-1)  # [B, H_q, T_q]
    out = (acc * weight[..., None]).sum(-2) / total[..., None]
    return out.to(query.dtype), top.squeeze(-1) + torch.log(total)
