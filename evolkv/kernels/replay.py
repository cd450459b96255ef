"""KVzip's replay scores without the attention matrix: for each prefill token of a chunk, the largest softmax
probability any reconstruction query gives it (``evolkv.replay``).

The torch form (``reference.replay_scores``) builds the [G, Q, S] float32 logits of every KV head a block of queries at
a time and takes the softmax: about five passes over that matrix per block, ~1,100 blocks per 8k prompt of an
8B model. Here two passes read only queries and keys:

1. ``_lse_kernel``: each query row's log-sum-exp over the keys it sees (the sinks, the chunk, and the
   reconstruction tokens up to itself), by an online max and sum (flash attention without values);
2. ``_max_kernel``: for a block of the chunk's keys, every query row's logit minus its log-sum-exp, exponentiated,
   the maximum over the rows and the GQA group kept.

Both accumulate in float32 from the model's dtype (tensor cores on bfloat16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(q, k, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(q, tl.trans(k), input_precision="ieee")
    return tl.dot(q, tl.trans(k))


@triton.jit
def _lse_kernel(Q, K, LSE, stride_qr, stride_qg, stride_qm, stride_kr, stride_kn, stride_lr, stride_lg,
                num_q, num_keys, first_own, scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    row, g, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    row_ok = m < num_q
    q = tl.load(Q + row * stride_qr + g * stride_qg + m[:, None] * stride_qm + d[None, :], mask=row_ok[:, None],
                other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    end = tl.minimum(num_keys, first_own + (block + 1) * BLOCK_M)  # no row of the block sees a later own token
    for start in range(0, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        k = tl.load(K + row * stride_kr + n[:, None] * stride_kn + d[None, :], mask=(n < num_keys)[:, None],
                    other=0.0)
        s = _dot(q, k, IEEE) * scale
        visible = (n[None, :] < num_keys) & (n[None, :] - first_own <= m[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    tl.store(LSE + row * stride_lr + g * stride_lg + m, m_i + tl.log(l_i), mask=row_ok)


@triton.jit
def _max_kernel(Q, K, LSE, OUT, stride_qr, stride_qg, stride_qm, stride_kr, stride_kn, stride_lr, stride_lg,
                stride_or, num_q, first, count, scale,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IEEE: tl.constexpr):
    row, block = tl.program_id(0), tl.program_id(1)
    n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    key_ok = n < count
    k = tl.load(K + row * stride_kr + (first + n)[:, None] * stride_kn + d[None, :], mask=key_ok[:, None],
                other=0.0)
    best = tl.zeros([BLOCK_N], tl.float32)
    for g in range(GROUP):
        for start in range(0, num_q, BLOCK_M):
            m = start + tl.arange(0, BLOCK_M)
            row_ok = m < num_q
            q = tl.load(Q + row * stride_qr + g * stride_qg + m[:, None] * stride_qm + d[None, :],
                        mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + row * stride_lr + g * stride_lg + m, mask=row_ok, other=float("inf"))
            p = tl.exp(_dot(q, k, IEEE) * scale - lse[:, None])  # every query sees every chunk key
            best = tl.maximum(best, tl.max(tl.where(row_ok[:, None], p, 0.0), 0))
    tl.store(OUT + row * stride_or + n, best, mask=key_ok)


def replay_scores(query: torch.Tensor, keys: torch.Tensor, scaling: float, sink: int, count: int,
                  block_m: int = 64, block_n: int = 64, num_warps: int = 4) -> torch.Tensor:
    """query [B, H_kv, G, Q, D] (the reconstruction tokens' queries by KV head), keys [B, H_kv, S, D] (``sink``
    sink tokens, the chunk's ``count`` tokens, then the Q reconstruction tokens, which see each other causally).
    Returns [B, H_kv, count] float32: each chunk token's largest probability over the queries and the group."""
    batch, num_kv, group, num_q, dim = query.shape
    num_keys = keys.shape[2]
    if keys.shape[:2] != (batch, num_kv) or keys.shape[3] != dim or num_keys != sink + count + num_q:
        raise ValueError("unsupported shapes for replay scores")
    q = query.reshape(batch * num_kv, group, num_q, dim)
    k = keys.reshape(batch * num_kv, num_keys, dim)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    rows = batch * num_kv
    lse = torch.empty(rows, group, num_q, device=query.device, dtype=torch.float32)
    out = torch.empty(rows, count, device=query.device, dtype=torch.float32)
    ieee = query.dtype == torch.float32
    _lse_kernel[(rows, group, triton.cdiv(num_q, block_m))](
        q, k, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), lse.stride(0), lse.stride(1),
        num_q, num_keys, sink + count, scaling,
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=ieee, num_warps=num_warps)
    if count:
        _max_kernel[(rows, triton.cdiv(count, block_n))](
            q, k, lse, out, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), lse.stride(0),
            lse.stride(1), out.stride(0), num_q, sink, count, scaling,
            GROUP=group, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, IEEE=ieee, num_warps=num_warps)
    return out.view(batch, num_kv, count)
