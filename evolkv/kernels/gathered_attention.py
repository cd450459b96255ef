"""Attention of many candidates' answer tokens over their compressed caches, gathered on the fly.

Every candidate ``c`` keeps, per KV head ``h``, the first ``counts[c, h]`` entries of that head's token
ranking ``order[c, h]`` (indices into the shared prefill cache of one sample). The kernel reads those rows
of the shared keys/values by index (no gathered copy is made), then the candidate's own new tokens
(causal), with an online softmax. One program handles one (candidate, KV head) and a block of query rows,
the rows of a GQA group folded together so each gathered key row is read once per block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evolkv.kernels.packed import PackedKV, kernel_path, value_group
from evolkv.kernels.quantize import load_entries
from evolkv.kernels.reference import gathered_attention_ref  # noqa: F401  (re-exported beside the kernel)


@triton.jit
def _split_start(split, split_len, length, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A split-K program's empty softmax state (max, sum, weighted values) and its range [begin, end)."""
    begin = split * split_len
    return (tl.full([BLOCK_M], float("-inf"), tl.float32), tl.zeros([BLOCK_M], tl.float32),
            tl.zeros([BLOCK_M, HEAD_DIM], tl.float32), begin, tl.minimum(begin + split_len, length))


@triton.jit
def _softmax_step(s, m_i, l_i):
    """The online softmax over one block of (masked) logits s [M, N] with running max m_i and sum l_i [M]:
    (the new max, the factor that rescales the old state, the block's weights p [M, N], the new sum)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    return m_new, alpha, p, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _online_block(q, k, v, visible, m_i, l_i, acc, scale, IEEE: tl.constexpr):
    """One block of the online softmax: q [M, D], k/v [N, D], visible [M, N]."""
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        s = tl.dot(q, tl.trans(k)) * scale
    s = tl.where(visible, s, float("-inf"))
    m_new, alpha, p, l_i = _softmax_step(s, m_i, l_i)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _load_query_rows(Q, q_base, stride_qh, stride_qt, h, m_block, t_q,
                     GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """A block of query rows of KV head ``h``: its GQA group's heads and the t_q queries, folded together.

    Returns (q [BLOCK_M, D], query index i, query head, row_ok) for rows = (group head, query) flattened.
    """
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * t_q
    i = rows % t_q
    head = h * GROUP + rows // t_q
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + q_base + head[:, None] * stride_qh + i[:, None] * stride_qt + d[None, :],
                mask=row_ok[:, None], other=0.0)
    return q, i, head, row_ok


@triton.jit
def _gathered_attention_kernel(
    Q, K, V, ORDER, COUNTS, KN, VN, OUT, LSE,
    KP, KS, KZ, VP, VS, VZ,
    stride_qc, stride_qh, stride_qt,
    stride_kh, stride_kt,
    stride_oc, stride_oh,
    stride_cc,
    stride_nc, stride_nh, stride_nt,
    stride_outc, stride_outh, stride_outt,
    stride_lc, stride_lh,
    stride_kph, stride_kpt, stride_ksh, stride_kst, stride_vph, stride_vpt, stride_vsh, stride_vst,
    num_kv, t_q, new_len, context, residual, scale,
    GROUP: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    PACKED: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_GROUP: tl.constexpr,
    V_GROUP: tl.constexpr, COMPACT: tl.constexpr, NEW: tl.constexpr, QUANT: tl.constexpr,
):
    pid = tl.program_id(0)
    c = pid // num_kv
    h = pid % num_kv
    q, i, head, row_ok = _load_query_rows(Q, c * stride_qc, stride_qh, stride_qt, h, tl.program_id(1), t_q,
                                          GROUP, HEAD_DIM, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q_pos = context + new_len - t_q + i  # queries are the last t_q of the new tokens

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    count = tl.minimum(tl.load(COUNTS + c * stride_cc + h), context)
    full_end = tl.minimum(count, residual) if PACKED else count
    for start in range(0, full_end, BLOCK_N):  # the kept prefix of this head's ranking, full precision
        offs = start + tl.arange(0, BLOCK_N)
        kept = offs < full_end
        idx = tl.load(ORDER + c * stride_oc + h * stride_oh + offs, mask=kept, other=0)
        k = tl.load(K + h * stride_kh + idx[:, None] * stride_kt + d[None, :], mask=kept[:, None], other=0.0)
        v = tl.load(V + h * stride_kh + idx[:, None] * stride_kt + d[None, :], mask=kept[:, None], other=0.0)
        visible = kept[None, :] & row_ok[:, None]
        if WINDOW > 0:
            visible = visible & (idx[None, :] > q_pos[:, None] - WINDOW)
        m_i, l_i, acc = _online_block(q, k, v, visible, m_i, l_i, acc, scale, IEEE)

    if PACKED:  # ranks [residual, count): stored packed in ranking order from the residual on: contiguous
        for start in range(residual, count, BLOCK_N):
            offs = start + tl.arange(0, BLOCK_N)
            kept = offs < count
            at = offs - residual  # entry index in the packed rows (key groups start at the residual)
            k = load_entries(KP + h * stride_kph, KS + h * stride_ksh, KZ + h * stride_ksh, at, kept,
                             stride_kpt, stride_kst, K_BITS, K_GROUP, HEAD_DIM, True, BLOCK_N, start - residual,
                             COMPACT, QUANT)
            v = load_entries(VP + h * stride_vph, VS + h * stride_vsh, VZ + h * stride_vsh, at, kept,
                             stride_vpt, stride_vst, V_BITS, V_GROUP, HEAD_DIM, False, BLOCK_N, start - residual,
                             COMPACT, QUANT)
            visible = kept[None, :] & row_ok[:, None]
            if WINDOW > 0:
                idx = tl.load(ORDER + c * stride_oc + h * stride_oh + offs, mask=kept, other=0)
                visible = visible & (idx[None, :] > q_pos[:, None] - WINDOW)
            m_i, l_i, acc = _online_block(q, k.to(q.dtype), v.to(q.dtype), visible, m_i, l_i, acc, scale, IEEE)

    if NEW:
        base = c * stride_nc + h * stride_nh
        for start in range(0, new_len, BLOCK_N):  # the candidate's own new tokens, causal
            j = start + tl.arange(0, BLOCK_N)
            new_ok = j < new_len
            k = tl.load(KN + base + j[:, None] * stride_nt + d[None, :], mask=new_ok[:, None], other=0.0)
            v = tl.load(VN + base + j[:, None] * stride_nt + d[None, :], mask=new_ok[:, None], other=0.0)
            visible = new_ok[None, :] & ((context + j)[None, :] <= q_pos[:, None]) & row_ok[:, None]
            if WINDOW > 0:
                visible = visible & ((context + j)[None, :] > q_pos[:, None] - WINDOW)
            m_i, l_i, acc = _online_block(q, k, v, visible, m_i, l_i, acc, scale, IEEE)

    # rows past the end are never stored; a row that saw nothing gets output 0 and lse -inf
    l_safe = tl.where(row_ok & (l_i > 0), l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(OUT + c * stride_outc + head[:, None] * stride_outh + i[:, None] * stride_outt + d[None, :],
             out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + c * stride_lc + head * stride_lh + i, m_i + tl.log(l_safe), mask=row_ok)


def gathered_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, counts: torch.Tensor,
    new_keys: torch.Tensor, new_values: torch.Tensor, scaling: float, sliding_window: int | None = None,
    block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
    out: torch.Tensor | None = None, lse: torch.Tensor | None = None,
    packed: PackedKV | None = None, residual: int = 0, compact_scales: bool = True, include_new: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel (into ``out`` / ``lse`` when given).

    query: [C, H_q, T_q, D]; keys, values: [H_kv, T, D] (the shared prefill cache of one sample);
    order: [C or 1, H_kv, T] integer ranking; counts: [C, H_kv]; new_keys, new_values: [C, H_kv, N, D]
    (tokens after the prefill, at positions T..T+N-1; the queries are the last T_q of them, N >= T_q).
    With ``packed`` (ranks ``residual`` to ``T - 1`` of the same cache quantized in the ranking's order, one
    row per KV head, as ``pack_ranked(..., start=residual)`` makes it; every candidate shares that one
    ranking), ranks from ``residual`` on are read from it, dequantized on the fly. ``include_new=False``
    attends over the ranking prefix alone (the new tokens only place the queries): one part of a softmax
    merged by log-sum-exp, such as the MiKV tier. A query that sees nothing gets output 0 and lse -inf.
    Returns (out [C, H_q, T_q, D], lse [C, H_q, T_q] fp32).
    """
    cands, num_q, t_q, dim = query.shape
    num_kv, context, _ = keys.shape
    if num_q % num_kv or dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"unsupported shapes: {num_q} query heads over {num_kv} KV heads, head_dim {dim}")
    new_len = new_keys.shape[2]
    if (values.shape != keys.shape or new_keys.shape != (cands, num_kv, new_len, dim) or new_len < t_q
            or new_values.shape != new_keys.shape):
        raise ValueError("keys/values/new_keys/new_values shapes disagree with the query")
    if order.shape[-2:] != (num_kv, context) or counts.shape != (cands, num_kv):
        raise ValueError("order must be [C or 1, H_kv, T] and counts [C, H_kv]")
    if not (query.dtype == keys.dtype == values.dtype == new_keys.dtype == new_values.dtype):
        raise ValueError("query, keys and values must share one dtype")
    keys, values = keys.contiguous(), values.contiguous()
    query, new_keys, new_values = query.contiguous(), new_keys.contiguous(), new_values.contiguous()
    # int32, contiguous inputs pass through untouched (callers convert once per sample, not per launch)
    order = order.to(torch.int32).expand(cands, -1, -1)
    if order.stride(-1) != 1:
        order = order.contiguous()
    counts = counts.to(torch.int32)
    if not counts.is_contiguous():
        counts = counts.contiguous()
    out = torch.empty_like(query) if out is None else out
    lse = torch.empty(cands, num_q, t_q, dtype=torch.float32, device=query.device) if lse is None else lse
    if out.shape != query.shape or lse.shape != (cands, num_q, t_q) or not (out.is_contiguous() and lse.is_contiguous()):
        raise ValueError("out must be contiguous like query and lse [C, H_q, T_q]")
    group = num_q // num_kv
    block_m = max(16, min(block_m, triton.next_power_of_2(group * t_q)))
    grid = (cands * num_kv, triton.cdiv(group * t_q, block_m))
    if packed is not None:
        shared_ranking = order.shape[0] == 1 or bool((order == order[:1]).all())
        if (packed.rows != num_kv or packed.length != context - residual or packed.dim != dim
                or not shared_ranking):
            raise ValueError("packed cache must hold ranks [residual, T) of this cache's KV heads in the one "
                             "shared ranking")
        parts = [packed.k, *packed.key_scales(), packed.v, packed.v_scale, packed.v_zero]
        parts = [p if p is not None else keys for p in parts]  # 16-bit halves have no scales: never read
        strides = [parts[0].stride(0), parts[0].stride(1), parts[1].stride(0), parts[1].stride(1),
                   parts[3].stride(0), parts[3].stride(1), parts[4].stride(0), parts[4].stride(1)]
        bits = dict(K_BITS=packed.k_bits, V_BITS=packed.v_bits, K_GROUP=packed.group,
                    V_GROUP=value_group(packed.group, dim), COMPACT=compact_scales, QUANT=kernel_path(packed))
    else:
        parts, strides = [keys] * 6, [0] * 8
        bits = dict(K_BITS=16, V_BITS=16, K_GROUP=1, V_GROUP=1, COMPACT=False, QUANT=0)
    _gathered_attention_kernel[grid](
        query, keys, values, order, counts, new_keys, new_values, out, lse, *parts,
        query.stride(0), query.stride(1), query.stride(2),
        keys.stride(0), keys.stride(1),
        order.stride(0), order.stride(1),
        counts.stride(0),
        new_keys.stride(0), new_keys.stride(1), new_keys.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), *strides,
        num_kv, t_q, new_len, context, residual, scaling,
        GROUP=group, WINDOW=sliding_window or 0, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n,
        IEEE=query.dtype == torch.float32, PACKED=packed is not None, NEW=include_new, **bits,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse
