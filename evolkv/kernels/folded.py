"""Decode attention over a KIVI-packed cache with the scales folded out of the inner loop.

A key group shares one scale s[d] and zero point z[d] per channel, so over a block inside one group

    q . k_n = sum_d q[d] (c[n, d] s[d] + z[d]) = (q * s) . c_n + q . z

and a value (one scale and zero point per entry when the value group is the whole head) gives

    sum_n p[n] v_n = sum_n (p[n] s[n]) c_n + (sum_n p[n] z[n]) 1.

The values are never dequantized: the kernel scales the probabilities once per block and feeds the raw
codes to the tensor cores. Codes become bfloat16 without a conversion instruction: OR-ing a code c < 128 into
the mantissa of 128.0 (0x4300) gives the bfloat16 128 + c exactly; inline PTX does that two codes per ``lop3``
(mask and OR at once, as Marlin / FasterTransformer convert int4 pairs), subtracts 128 from both halves in one
``sub.bf16x2`` and splits the 32-bit result into its two bfloat16 halves for free (``mov.b32 {lo, hi}``).

The keys are dequantized a channel pair per instruction, in float16 (codes OR-ed into 1024.0, then
``fma.rn.f16x2`` with the pair's (scale, zero point): from the first call on, the cache keeps its key scales as
those pairs, ``PackedKV.keep_key_pairs``, in the same bytes). The query (taken to float16: its range, not
bfloat16's) then needs no per-group scaling and no bias. The PTX leaves each pair as it comes out of the lop3
(channels k and k + 32 / bits / 2 of a word side by side), so the tiles' channels are permuted (``_paired``):
the query is loaded, and the output stored, through the same permutation, and no register is reordered. Against
folding the key scales into the query instead (the same bytes read), this takes fewer instructions and
registers and keeps float16 keys: on the H100 at batch 8, 32k, 1.20x faster at K4V4 and 1.06-1.09x at K2V2,
relative error 4.8e-3 vs 6.9e-3 (``benchmarks/bench_packed_decode.py``). This is what eager calls run, and CUDA
graphs for the layouts ``kernels.gluon_decode`` does not read.

Covers 2- and 4-bit keys and values, value groups of the whole head, key groups a multiple of the block,
16-bit queries, one query token; ``supported`` says whether a cache qualifies (else ``decode_attention``'s
dequantize-as-read path runs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from evolkv.kernels.gathered_attention import _softmax_step, _split_start
from evolkv.kernels.decode_attention import Partials, plan_splits
from evolkv.kernels.ragged import _decode_query, _ragged_rows, _store_partial
from evolkv.kernels.packed import PackedKV, value_group

BLOCK_N = 128  # entries a block (H100, batch 8, 32k: the fastest of 32-128)

# (s & mask) | 0x4300 on two codes at once, minus 128.0 on both halves (exact): the pair of codes as bfloat16
_LOP3 = "lop3.b32 t, s, {mask}, 0x43004300, 0xEA; sub.rn.bf16x2 t, t, m; mov.b32 {{${lo}, ${hi}}}, t;"


def _asm(bits: int, keys: bool = False) -> str:
    """PTX: one int32 word of ``32 / bits`` codes -> that many bfloat16 codes, output 2k, 2k + 1 being channels k,
    k + half (one lop3's pair, no reordering); ``keys``: float16 codes * scale + zero, with pair k's float16x2
    scale and zero point as operands ``per_word + 1 + k`` and ``per_word + 1 + half + k`` (OR-ing into 1024.0,
    0x6400, where the mantissa has room for any code)."""
    per_word = 32 // bits
    half = per_word // 2
    mask = "0x000F000F" if bits == 4 else "0x00030003"
    magic = "0x64006400" if keys else "0x43004300"
    lines = ["{ .reg .b32 t, s, m;", f"mov.b32 m, {magic};", f"mov.b32 s, ${per_word};"]
    for k in range(half):
        if k:
            lines.append(f"shr.u32 s, ${per_word}, {bits * k};")
        lo, hi = 2 * k, 2 * k + 1
        if keys:
            lines.append(f"lop3.b32 t, s, {mask}, {magic}, 0xEA; sub.rn.f16x2 t, t, m; "
                         f"fma.rn.f16x2 t, t, ${per_word + 1 + k}, ${per_word + 1 + half + k}; "
                         f"mov.b32 {{${lo}, ${hi}}}, t;")
        else:
            lines.append(_LOP3.format(mask=mask, lo=lo, hi=hi))
    lines.append("}")
    return "\n".join(lines)


PAIRED4 = tl.constexpr(_asm(4))
PAIRED2 = tl.constexpr(_asm(2))
KEYS4 = tl.constexpr(_asm(4, keys=True))
KEYS2 = tl.constexpr(_asm(2, keys=True))


@triton.jit
def _paired(d, BITS: tl.constexpr):
    """Tile position -> channel: position 2k + h of a word's codes holds channel k + h * half."""
    PER_WORD: tl.constexpr = 32 // BITS
    t = d % PER_WORD
    return d - t + t // 2 + (t % 2) * (PER_WORD // 2)


@triton.jit
def _in_order(o, BITS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The asm's outputs (32 / bits [BLOCK, W] tensors) as [BLOCK, HEAD_DIM]: output j of word w at
    32 / bits * w + j (joined so the flattened index is j: the leaves split on j's top bit)."""
    if BITS == 4:
        x = tl.join(tl.join(tl.join(o[0], o[4]), tl.join(o[2], o[6])),
                    tl.join(tl.join(o[1], o[5]), tl.join(o[3], o[7])))
    else:
        x = tl.join(tl.join(tl.join(tl.join(o[0], o[8]), tl.join(o[4], o[12])),
                            tl.join(tl.join(o[2], o[10]), tl.join(o[6], o[14]))),
                    tl.join(tl.join(tl.join(o[1], o[9]), tl.join(o[5], o[13])),
                            tl.join(tl.join(o[3], o[11]), tl.join(o[7], o[15]))))
    return tl.reshape(x, (BLOCK, HEAD_DIM))


@triton.jit
def _pairs_ahead(KP, at, ok, BITS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """A key group's (scale, zero point) float16 pairs from ``PackedKV.k_pairs`` at ``at``: [W] int32 each, the scales
    of pairs 0.. then their zero points (``ok`` False: zeros, past the split)."""
    W: tl.constexpr = HEAD_DIM * BITS // 32
    w = at + tl.arange(0, W)
    if BITS == 4:
        return (tl.load(KP + w, mask=ok, other=0), tl.load(KP + w + W, mask=ok, other=0),
                tl.load(KP + w + 2 * W, mask=ok, other=0), tl.load(KP + w + 3 * W, mask=ok, other=0),
                tl.load(KP + w + 4 * W, mask=ok, other=0), tl.load(KP + w + 5 * W, mask=ok, other=0),
                tl.load(KP + w + 6 * W, mask=ok, other=0), tl.load(KP + w + 7 * W, mask=ok, other=0))
    else:
        return (tl.load(KP + w, mask=ok, other=0), tl.load(KP + w + W, mask=ok, other=0),
                tl.load(KP + w + 2 * W, mask=ok, other=0), tl.load(KP + w + 3 * W, mask=ok, other=0),
                tl.load(KP + w + 4 * W, mask=ok, other=0), tl.load(KP + w + 5 * W, mask=ok, other=0),
                tl.load(KP + w + 6 * W, mask=ok, other=0), tl.load(KP + w + 7 * W, mask=ok, other=0),
                tl.load(KP + w + 8 * W, mask=ok, other=0), tl.load(KP + w + 9 * W, mask=ok, other=0),
                tl.load(KP + w + 10 * W, mask=ok, other=0), tl.load(KP + w + 11 * W, mask=ok, other=0),
                tl.load(KP + w + 12 * W, mask=ok, other=0), tl.load(KP + w + 13 * W, mask=ok, other=0),
                tl.load(KP + w + 14 * W, mask=ok, other=0), tl.load(KP + w + 15 * W, mask=ok, other=0))


@triton.jit
def _rows(x, BLOCK: tl.constexpr):
    """[W] -> [BLOCK, W], the same in every row (an operand of the asm beside [BLOCK, W] words)."""
    return tl.broadcast_to(x[None, :], (BLOCK, x.shape[0]))


@triton.jit
def _dequantized_keys(words, pr, BITS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """int32 words [BLOCK, W] -> the keys [BLOCK, HEAD_DIM] float16 in ``_paired`` order, with the pairs ``pr``."""
    if BITS == 4:
        o = tl.inline_asm_elementwise(
            KEYS4, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r,r,r,r,r",
            [words, _rows(pr[0], BLOCK), _rows(pr[1], BLOCK), _rows(pr[2], BLOCK), _rows(pr[3], BLOCK),
             _rows(pr[4], BLOCK), _rows(pr[5], BLOCK), _rows(pr[6], BLOCK), _rows(pr[7], BLOCK)],
            dtype=(tl.float16,) * 8, is_pure=True, pack=1)
    else:
        o = tl.inline_asm_elementwise(
            KEYS2, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h" + ",r" * 17,
            [words, _rows(pr[0], BLOCK), _rows(pr[1], BLOCK), _rows(pr[2], BLOCK), _rows(pr[3], BLOCK),
             _rows(pr[4], BLOCK), _rows(pr[5], BLOCK), _rows(pr[6], BLOCK), _rows(pr[7], BLOCK),
             _rows(pr[8], BLOCK), _rows(pr[9], BLOCK), _rows(pr[10], BLOCK), _rows(pr[11], BLOCK),
             _rows(pr[12], BLOCK), _rows(pr[13], BLOCK), _rows(pr[14], BLOCK), _rows(pr[15], BLOCK)],
            dtype=(tl.float16,) * 16, is_pure=True, pack=1)
    return _in_order(o, BITS, BLOCK, HEAD_DIM)


@triton.jit
def _value_codes(words, BITS: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """int32 words [BLOCK, HEAD_DIM * BITS / 32] -> the codes as bfloat16 [BLOCK, HEAD_DIM], in ``_paired``
    order."""
    if BITS == 4:
        o = tl.inline_asm_elementwise(PAIRED4, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words],
                                      dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
    else:
        o = tl.inline_asm_elementwise(PAIRED2, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r", [words],
                                      dtype=(tl.bfloat16,) * 16, is_pure=True, pack=1)
    return _in_order(o, BITS, BLOCK, HEAD_DIM)


@triton.jit
def _folded_rows(q_in, row, row_ok, d, q_pos, split, split_len, length, KW, VW, KS, KZ, VS, VZ, KPOS,
                 stride_kr, stride_kt, stride_ksr, stride_kst, stride_vr, stride_vt, stride_vsr, stride_vst,
                 stride_pr, scale, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_GROUP: tl.constexpr):
    """One split of row ``row``'s packed entries: its softmax partial (max, sum, weighted values); ``q_in`` is
    in ``_paired(d, K_BITS)`` order, ``acc`` in ``_paired(d, V_BITS)`` order and ``KS`` the ``k_pairs`` tensor
    (strides ``stride_ksr``, ``stride_kst``)."""
    q_keys = q_in.to(tl.float16)
    kw = tl.arange(0, HEAD_DIM * K_BITS // 32)
    vw = tl.arange(0, HEAD_DIM * V_BITS // 32)

    m_i, l_i, acc, begin, end = _split_start(split, split_len, length, BLOCK_M, HEAD_DIM)
    extra = tl.zeros([BLOCK_M], tl.float32)  # sum_n p[n] z[n], rescaled as acc is
    # the next block's codes, positions and value scales are loaded before this block's math (the codes feed
    # integer work before any dot, so Triton's pipeliner would not overlap them with it)
    offs = begin + tl.arange(0, BLOCK_N)
    inside = offs < end
    k_words = tl.load(KW + row * stride_kr + offs[:, None] * stride_kt + kw[None, :], mask=inside[:, None], other=0)
    v_words = tl.load(VW + row * stride_vr + offs[:, None] * stride_vt + vw[None, :], mask=inside[:, None], other=0)
    pos = tl.load(KPOS + row * stride_pr + offs, mask=inside, other=-1)
    v_scale = tl.load(VS + row * stride_vsr + offs * stride_vst, mask=inside, other=0.0)
    v_zero = tl.load(VZ + row * stride_vsr + offs * stride_vst, mask=inside, other=0.0)
    # the key group's pairs, also loaded a block ahead
    pairs = _pairs_ahead(KS, row * stride_ksr + (begin // K_GROUP) * stride_kst, begin < end, K_BITS, HEAD_DIM)
    for start in range(begin, end, BLOCK_N):
        cur_k, cur_v, cur_pos, cur_vs, cur_vz = k_words, v_words, pos, v_scale.to(tl.float32), v_zero.to(tl.float32)
        cur_pairs = pairs
        pairs = _pairs_ahead(KS, row * stride_ksr + ((start + BLOCK_N) // K_GROUP) * stride_kst,
                             start + BLOCK_N < end, K_BITS, HEAD_DIM)
        offs = start + BLOCK_N + tl.arange(0, BLOCK_N)
        inside = offs < end
        k_words = tl.load(KW + row * stride_kr + offs[:, None] * stride_kt + kw[None, :], mask=inside[:, None],
                          other=0)
        v_words = tl.load(VW + row * stride_vr + offs[:, None] * stride_vt + vw[None, :], mask=inside[:, None],
                          other=0)
        pos = tl.load(KPOS + row * stride_pr + offs, mask=inside, other=-1)
        v_scale = tl.load(VS + row * stride_vsr + offs * stride_vst, mask=inside, other=0.0)
        v_zero = tl.load(VZ + row * stride_vsr + offs * stride_vst, mask=inside, other=0.0)

        visible = (cur_pos[None, :] >= 0) & (cur_pos[None, :] <= q_pos) & row_ok[:, None]
        if WINDOW > 0:
            visible = visible & (cur_pos[None, :] > q_pos - WINDOW)
        s = tl.dot(q_keys, tl.trans(_dequantized_keys(cur_k, cur_pairs, K_BITS, BLOCK_N, HEAD_DIM))) * scale
        s = tl.where(visible, s, float("-inf"))
        m_new, alpha, p, l_i = _softmax_step(s, m_i, l_i)
        p_scaled = (p * cur_vs[None, :]).to(tl.bfloat16)
        acc = acc * alpha[:, None] + tl.dot(p_scaled, _value_codes(cur_v, V_BITS, BLOCK_N, HEAD_DIM))
        extra = extra * alpha + tl.sum(p * cur_vz[None, :], axis=1)
        m_i = m_new
    acc += extra[:, None]
    return m_i, l_i, acc


@triton.jit
def _folded_partial_kernel(
    Q, KW, VW, KS, KZ, VS, VZ, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT,
    stride_qb, stride_qh, stride_kr, stride_kt, stride_ksr, stride_kst, stride_vr, stride_vt, stride_vsr,
    stride_vst, stride_pr, stride_mb, stride_mh, stride_ab, stride_ah, stride_as,
    num_kv, length, split_len, first_split, scale,
    RK, RV, RSTART, RCOUNT, STEP, RPOS, stride_rkn, stride_rvn, ragged_splits, ragged_split_len,
    GROUP: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, K_BITS: tl.constexpr, V_BITS: tl.constexpr, K_GROUP: tl.constexpr,
):
    """The first ``ragged_splits`` splits of the launch take the serving cache's full-precision rows (0 when
    there are none: the branch is compiled, over placeholders, and never taken), the rest the packed ones."""
    row, b, split, q_in, head, row_ok, d = _decode_query(Q, stride_qb, stride_qh, num_kv, GROUP, HEAD_DIM, BLOCK_M)
    q_pos = tl.load(QPOS)
    if split < ragged_splits:
        m_i, l_i, acc = _ragged_rows(q_in, row, row_ok, d, split, ragged_split_len, RK, RV, RSTART, RCOUNT, STEP,
                                     RPOS, q_pos, stride_rkn, stride_rvn, scale, WINDOW, HEAD_DIM, BLOCK_M, 32, False)
        d_out = d
    else:
        # the tiles' channels are in _paired order: the query's and the output's follow
        q_in = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + _paired(d, K_BITS)[None, :],
                       mask=row_ok[:, None], other=0.0)
        d_out = _paired(d, V_BITS)
        m_i, l_i, acc = _folded_rows(q_in, row, row_ok, d, q_pos, split - ragged_splits, split_len, length, KW, VW,
                                     KS, KZ, VS, VZ, KPOS, stride_kr, stride_kt, stride_ksr, stride_kst, stride_vr,
                                     stride_vt, stride_vsr, stride_vst, stride_pr, scale, WINDOW, HEAD_DIM, BLOCK_M,
                                     BLOCK_N, K_BITS, V_BITS, K_GROUP)
    _store_partial(M_OUT, L_OUT, ACC_OUT, stride_mb, stride_mh, stride_ab, stride_ah, stride_as, b, head, row_ok,
                   d_out, first_split + split, m_i, l_i, acc)


def supported(query: torch.Tensor, packed: PackedKV) -> bool:
    """Whether ``decode_attention_folded`` serves this query and cache."""
    return (packed.quantizer == "kivi" and packed.k_bits in (2, 4) and packed.v_bits in (2, 4)
            and value_group(packed.group, packed.dim) == packed.dim and packed.group % 16 == 0
            and query.dtype in (torch.bfloat16, torch.float16) and query.shape[2] == 1
            and packed.dim in (64, 128, 256))


def decode_attention_folded(query: torch.Tensor, packed: PackedKV, key_pos: torch.Tensor, query_pos: torch.Tensor,
                            scaling: float, sliding_window: int | None = None, splits: int | None = None,
                            block_n: int | None = None, num_warps: int = 4, num_stages: int = 2,
                            partials: Partials | None = None, ragged: dict | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """query [B, H_q, 1, D] (16-bit) over ``packed`` (B * H_kv rows, row b * H_kv + h) with positions key_pos
    [B, H_kv, L] (-1 = empty) and query_pos [1]: (out [B, H_q, 1, D], lse [B, H_q, 1] fp32), as
    ``decode_attention_packed``; with ``partials``, fills its next splits instead and returns None. ``ragged``
    (``ragged_decode_attention``'s keys, values, start, count, step, capacity and pos) adds the serving
    cache's full-precision rows to the same launch: attention over both, one launch and one merge."""
    batch, num_q, _, dim = query.shape
    _, num_kv, length = key_pos.shape
    if not supported(query, packed) or packed.rows != batch * num_kv or packed.length != length:
        raise ValueError("decode_attention_folded does not serve this cache (see folded.supported)")
    block_n = min(block_n or BLOCK_N, packed.group)
    rows = batch * num_kv
    splits, split_len = plan_splits(length, rows, block_n, query.device, splits)
    extra, extra_len = plan_splits(ragged["capacity"], rows, 64, query.device) if ragged else (0, 0)
    splits += extra
    query = query.contiguous()
    if key_pos.dtype != torch.int32 or not key_pos.is_contiguous():
        key_pos = key_pos.to(torch.int32).contiguous()
    query_pos = query_pos.to(device=query.device, dtype=torch.int32)
    group = num_q // num_kv
    own = partials is None
    parts = Partials(query, splits) if own else partials
    first = parts.take(splits)
    m, lsum, acc = parts.m, parts.lsum, parts.acc
    k, v, vs, vz = packed.k, packed.v, packed.v_scale, packed.v_zero
    # the pairs replace the cache's fp16 key scales on the first call (a serving tier's: before graph capture)
    ks = kz = packed.keep_key_pairs()
    _folded_partial_kernel[(rows, splits)](
        query, k, v, ks, kz, vs, vz, key_pos.view(rows, length), query_pos, m, lsum, acc,
        query.stride(0), query.stride(1), k.stride(0), k.stride(1), ks.stride(0), ks.stride(1),
        v.stride(0), v.stride(1), vs.stride(0), vs.stride(1), length,
        m.stride(0), m.stride(1), acc.stride(0), acc.stride(1), acc.stride(3),
        num_kv, length, split_len, first, scaling,
        *_ragged_args(ragged, query, key_pos, extra, extra_len),
        GROUP=group, WINDOW=sliding_window or 0, HEAD_DIM=dim, BLOCK_M=max(16, triton.next_power_of_2(group)),
        BLOCK_N=block_n, K_BITS=packed.k_bits, V_BITS=packed.v_bits, K_GROUP=packed.group,
        num_warps=num_warps, num_stages=num_stages,
    )
    return parts.merge() if own else None


def _ragged_args(ragged: dict | None, query: torch.Tensor, key_pos: torch.Tensor, splits: int, split_len: int
                 ) -> list:
    """The ragged rows' kernel arguments, or placeholders of the right types (16-bit entries, int32 indices)."""
    if ragged is None:
        return [query, query] + [key_pos] * 4 + [0, 0, 0, 0]
    keys, values = ragged["keys"], ragged["values"]
    pos = ragged.get("pos")
    return [keys, values, ragged["start"], ragged["count"], ragged["step"], pos if pos is not None else ragged["start"],
            keys.stride(0), values.stride(0), splits, split_len]


def splits_for(packed: PackedKV, rows: int, device) -> int:
    """How many splits ``decode_attention_folded`` gives ``packed`` (for a shared ``Partials``)."""
    return plan_splits(packed.length, rows, min(BLOCK_N, packed.group), device)[0]
