"""Decode attention over a static, ragged cache: every (sequence, KV head) row owns a slice of one buffer.

The serving cache (``evolkv.serving``) stores a layer's entries as keys/values [N, D]: row r = b * H_kv + h
starts at ``start[r]`` and holds ``count[r]`` entries kept at prefill, then the tokens decoded since
(``step``, one device counter shared by every layer). Nothing is padded to the longest head, so a per-head
config costs exactly its entries, and nothing in a launch depends on a host value that changes per token:
the grid and split length are fixed by each row's capacity, so a decode step can be captured in a CUDA graph.
Splits past a row's current length exit at once (flash-decoding with a bounded, static grid).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evolkv.kernels.decode_attention import Partials, plan_splits
from evolkv.kernels.gathered_attention import _online_block, _split_start


@triton.jit
def _decode_query(Q, stride_qb, stride_qh, num_kv, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """A split-K decode program's row (b * H_kv + h), sequence, split and query block: the GQA group's
    query rows of KV head h, padded to BLOCK_M (rows past GROUP masked)."""
    row = tl.program_id(0)
    b = row // num_kv
    g = tl.arange(0, BLOCK_M)
    row_ok = g < GROUP
    head = (row % num_kv) * GROUP + g
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)
    return row, b, tl.program_id(1), q, head, row_ok, d


@triton.jit
def _store_partial(M_OUT, L_OUT, ACC_OUT, stride_mb, stride_mh, stride_ab, stride_ah, stride_as, b, head, row_ok,
                   d, slot, m_i, l_i, acc):
    """Write one program's softmax partial (max, sum, weighted values) at split ``slot`` of a ``Partials``."""
    partial = b * stride_mb + head * stride_mh + slot
    tl.store(M_OUT + partial, m_i, mask=row_ok)
    tl.store(L_OUT + partial, l_i, mask=row_ok)
    tl.store(ACC_OUT + b * stride_ab + head[:, None] * stride_ah + slot * stride_as + d[None, :], acc,
             mask=row_ok[:, None])


@triton.jit
def _ragged_rows(q, row, row_ok, d, split, split_len, K, V, START, COUNT, STEP, POS, q_pos, stride_kn, stride_vn,
                 scale, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 IEEE: tl.constexpr):
    """One split of row ``row``'s ragged entries: its softmax partial (max, sum, weighted values)."""
    first = tl.load(START + row).to(tl.int64)
    length = tl.load(COUNT + row) + tl.load(STEP) + 1  # the kept entries, the decoded ones, this token's
    m_i, l_i, acc, begin, end = _split_start(split, split_len, length, BLOCK_M, HEAD_DIM)
    for s in range(begin, end, BLOCK_N):
        offs = s + tl.arange(0, BLOCK_N)
        inside = offs < end
        slot = first + offs
        k = tl.load(K + slot[:, None] * stride_kn + d[None, :], mask=inside[:, None], other=0.0)
        v = tl.load(V + slot[:, None] * stride_vn + d[None, :], mask=inside[:, None], other=0.0)
        visible = inside[None, :] & row_ok[:, None]
        if WINDOW > 0:
            pos = tl.load(POS + slot, mask=inside, other=-1)
            visible = visible & (pos[None, :] > q_pos - WINDOW) & (pos[None, :] >= 0)
        m_i, l_i, acc = _online_block(q, k, v, visible, m_i, l_i, acc, scale, IEEE)
    return m_i, l_i, acc


@triton.jit
def _ragged_partial_kernel(
    Q, K, V, START, COUNT, STEP, POS, QPOS, M_OUT, L_OUT, ACC_OUT,
    stride_qb, stride_qh, stride_kn, stride_vn,
    stride_mb, stride_mh, stride_ab, stride_ah, stride_as,
    num_kv, split_len, first_split, scale,
    GROUP: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    row, b, split, q, head, row_ok, d = _decode_query(Q, stride_qb, stride_qh, num_kv, GROUP, HEAD_DIM, BLOCK_M)
    m_i, l_i, acc = _ragged_rows(q, row, row_ok, d, split, split_len, K, V, START, COUNT, STEP, POS, tl.load(QPOS),
                                 stride_kn, stride_vn, scale, WINDOW, HEAD_DIM, BLOCK_M, BLOCK_N, IEEE)
    _store_partial(M_OUT, L_OUT, ACC_OUT, stride_mb, stride_mh, stride_ab, stride_ah, stride_as, b, head, row_ok, d,
                   first_split + split, m_i, l_i, acc)


def ragged_decode_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
    step: torch.Tensor, capacity: int, scaling: float, pos: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None, sliding_window: int | None = None, splits: int | None = None,
    block_n: int = 64, num_warps: int = 4, num_stages: int = 2, partials: Partials | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """query: [B, H_q, 1, D]; keys, values: [N, D]; start, count: [B * H_kv] int32 (row b * H_kv + h);
    step: [1] int32, the tokens decoded before this one (row r then holds count[r] + step + 1 entries, this
    token's last); capacity: the longest row's slots (fixes the grid); pos: [N] int32 positions and
    query_pos: [1] int32, read only by a sliding layer. Returns (out [B, H_q, 1, D], lse [B, H_q, 1] fp32),
    as ``reference.attend_ragged``; with ``partials``, fills its next splits instead and returns None."""
    batch, num_q, t_q, dim = query.shape
    rows = start.shape[0]
    if t_q != 1 or rows % batch or num_q % (rows // batch) or keys.shape != values.shape or keys.dim() != 2:
        raise ValueError("unsupported shapes for ragged decode attention")
    num_kv = rows // batch
    group = num_q // num_kv
    if sliding_window is not None and (pos is None or query_pos is None):
        raise ValueError("a sliding layer needs the entries' positions and the query's")
    splits, split_len = plan_splits(capacity, rows, block_n, query.device, splits)
    query = query.contiguous()
    own = partials is None
    parts = Partials(query, splits) if own else partials
    first = parts.take(splits)
    m, lsum, acc = parts.m, parts.lsum, parts.acc
    block_m = max(16, triton.next_power_of_2(group))
    _ragged_partial_kernel[(rows, splits)](
        query, keys, values, start, count, step, pos if pos is not None else start,
        query_pos if query_pos is not None else step, m, lsum, acc,
        query.stride(0), query.stride(1), keys.stride(0), values.stride(0),
        m.stride(0), m.stride(1), acc.stride(0), acc.stride(1), acc.stride(3),
        num_kv, split_len, first, scaling,
        GROUP=group, WINDOW=sliding_window or 0, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        IEEE=query.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    return parts.merge() if own else None
