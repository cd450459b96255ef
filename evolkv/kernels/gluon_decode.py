"""Decode attention over a KIVI-packed cache with the tensor cores' operands built in registers (Gluon).

The Triton kernels (``kernels.folded``) spend most of a decode step moving the unpacked 16-bit key and value
tiles through shared memory to feed the MMAs (Nsight: the L1 data pipe 62-73% busy, 37% of it bank conflicts;
``benchmarks/results/NOTES-quantized-attention.md``). Gluon (``triton.experimental.gluon``) states layouts
explicitly, so here every operand is made where the MMA reads it:

- scores = q K^T with ``mma.m16n8k16``: lane l holds, for entry l / 4 (+8 i), the key channel pairs
  (2t, 2t + 1) and (2t + 8, 2t + 9) of each 16-channel chunk (t = l % 4). The channel order is free (the query is
  loaded through the same permutation), so those 32 channels are the 4 words lane l loads (16 bytes), and each
  ``lop3`` + ``sub.f16x2`` + ``fma.f16x2`` pair (``folded``'s key PTX, scales from ``PackedKV.keep_key_pairs``)
  is one operand register as it comes out;
- out^T = V^T P^T: the scores' accumulator is already P^T's operand layout (head = l / 4, entries 2t, 2t + 1), so
  the probabilities stay in registers; V^T's operand pairs two entries of a channel, one ``prmt`` a register
  after ``folded``'s value PTX, the output channels permuted back when stored. Heads are the MMA's narrow side,
  8 of them (the query's 16-row tile keeps only its first 8: GQA groups up to 8);
- each of the 4 warps is an independent split of a block's 128 entries (the layouts' first dimension), with its
  own running max and sum, merged once at the end: no shared memory and no barrier inside the loop;
- the next block's codes, scales, positions and value scales are loaded before this block's math (236 registers,
  2 programs an SM: the loads' latency hides behind a block of work instead of behind other warps).

On the H100 (K4V4, batch 8, 32k, key groups of 128) it takes 0.160 ms, 61% of copy bandwidth (0.199 ms without
the loads ahead), against 0.275 ms for ``folded``'s ``pairs`` and 0.334 ms for ``asm``
(``benchmarks/bench_packed_decode.py``). It covers 4-bit keys
and values, head_dim 128, key groups a multiple of 128, value groups of the whole head, up to 8 query heads per
KV head, one query token and no sliding window (``supported``); it is not wired into ``runtime.apply`` or the
serving path yet (2-bit codes and the serving cache's full-precision rows are the next steps).
"""

from __future__ import annotations

import torch

from evolkv.kernels.decode_attention import Partials, plan_splits
from evolkv.kernels.packed import PackedKV, value_group

try:  # Gluon is experimental: a Triton without it serves nothing here
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:  # pragma: no cover
    gluon = None

BLOCK = 128  # entries a program takes per iteration: 32 per warp

if gluon is not None:
    from evolkv.kernels.folded import _asm

    KEYS4 = gl.constexpr(_asm(4, paired=True, keys=True))
    VALS4 = gl.constexpr(_asm(4, paired=True))
    WE = gl.constexpr(BLOCK // 4)  # entries a warp, a block
    NW = gl.constexpr(4)  # warps

    @gluon.jit
    def _in_registers(o):
        """The PTX's 8 outputs (output 2j + e is channel j + 4e of a word, j = 2 jhi + jlo) joined as
        [..., jhi, jlo, e]: the last join is the lowest register bit, as the MMA operands want."""
        return gl.join(gl.join(gl.join(o[0], o[4]), gl.join(o[2], o[6])),
                       gl.join(gl.join(o[1], o[5]), gl.join(o[3], o[7])))

    @gluon.jit
    def _first8(x, L: gl.constexpr):
        """[NW, 16] -> its first 8 columns [NW, 8] in layout L (the 8 heads of the output's narrow side)."""
        y = gl.permute(gl.reshape(x, (NW, 2, 8)), (0, 2, 1))
        return gl.convert_layout(gl.split(y)[0], L)

    @gluon.jit
    def _loads(KW, VW, KP, VS, VZ, KPOS, row, start, end, stride_kr, stride_vr, stride_kpr, stride_kpg, stride_vsr,
               stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP: gl.constexpr):
        """A block's loads: key words, its key group's (scale, zero point) pairs, value words, positions and the
        values' scales and zero points (past ``end``: masked)."""
        ke = start + kw_w[:, None, None] * WE + kw_n[None, :, None]
        kwords = gl.load(KW + row * stride_kr + ke * 16 + kw_i[None, None, :], mask=ke < end, other=0)
        pb = KP + row * stride_kpr + (start // K_GROUP) * stride_kpg + kw_i
        ok = start < end
        pr = (gl.load(pb, mask=ok, other=0), gl.load(pb + 16, mask=ok, other=0),
              gl.load(pb + 32, mask=ok, other=0), gl.load(pb + 48, mask=ok, other=0),
              gl.load(pb + 64, mask=ok, other=0), gl.load(pb + 80, mask=ok, other=0),
              gl.load(pb + 96, mask=ok, other=0), gl.load(pb + 112, mask=ok, other=0))
        ve = start + vw_w[:, None, None] * WE + vw_n[None, :, None]
        vwords = gl.load(VW + row * stride_vr + ve * 16 + vw_i[None, None, :], mask=ve < end, other=0)
        se = start + sw[:, None] * WE + sn[None, :]
        pos = gl.load(KPOS + row * stride_pr + se, mask=se < end, other=-1)
        vs = gl.load(VS + row * stride_vsr + se, mask=se < end, other=0.0)
        vz = gl.load(VZ + row * stride_vsr + se, mask=se < end, other=0.0)
        return kwords, pr, vwords, pos, vs, vz

    @gluon.jit
    def _gluon_decode_kernel(Q, KW, VW, KP, VS, VZ, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT, num_kv, length, split_len,
                             scale, stride_qb, stride_qh, stride_kr, stride_vr, stride_kpr, stride_kpg, stride_vsr,
                             stride_pr, stride_mb, stride_mh, stride_ab, stride_ah, stride_as,
                             GROUP: gl.constexpr, K_GROUP: gl.constexpr):
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1, 1],
                                                      instr_shape=[1, 16, 8])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        # key words [warp, entry, word]: lane t = l % 4 takes words 4t..4t+3 of entries l / 4 + 8 i
        kw_l: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 0, 1], [0, 0, 2], [0, 8, 0], [0, 16, 0]],
            lane_bases=[[0, 0, 4], [0, 0, 8], [0, 1, 0], [0, 2, 0], [0, 4, 0]],
            warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[NW, WE, 16])
        # value words: lane t takes entries 2t, 2t + 1 (+8, +16), lane c = l / 4 words 2c, 2c + 1
        vw_l: gl.constexpr = gl.DistributedLinearLayout(
            reg_bases=[[0, 1, 0], [0, 8, 0], [0, 16, 0], [0, 0, 1]],
            lane_bases=[[0, 2, 0], [0, 4, 0], [0, 0, 2], [0, 0, 4], [0, 0, 8]],
            warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[NW, WE, 16])
        s_l: gl.constexpr = gl.SliceLayout(1, mma)  # [warp, last dim]: the scores' entries, out^T's heads
        r_l: gl.constexpr = gl.SliceLayout(2, mma)  # [warp, head] of the scores

        row = gl.program_id(0)
        split = gl.program_id(1)
        b = row // num_kv
        begin = split * split_len
        end = gl.minimum(begin + split_len, length)
        q_pos = gl.load(QPOS)

        # the query in the keys' channel order: logical k = e + 2t + 8 jlo + 16 jhi + 32 wl is channel
        # 8 (4t + wl) + 2 jhi + jlo + 4e (word 4t + wl, lop3 pair 2 jhi + jlo, half e)
        qk = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(1, a_l)))
        phys_k = 8 * (4 * ((qk // 2) % 4) + qk // 32) + 2 * ((qk // 16) % 2) + (qk // 8) % 2 + 4 * (qk % 2)
        qh = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, a_l)))
        qw = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, a_l)))
        head = (row % num_kv) * GROUP + qh
        q = gl.load(Q + b * stride_qb + head[None, :, None] * stride_qh + phys_k[None, None, :] + 0 * qw[:, None, None],
                    mask=(qh < GROUP)[None, :, None] & (qw >= 0)[:, None, None], other=0.0).to(gl.float16)

        kw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, kw_l)))
        kw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, kw_l)))
        kw_i = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(1, kw_l)))
        vw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, vw_l)))
        vw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, vw_l)))
        vw_i = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(1, vw_l)))
        sw = gl.arange(0, NW, layout=gl.SliceLayout(1, s_l))
        sn = gl.arange(0, WE, layout=gl.SliceLayout(0, s_l))

        m_i = gl.full([NW, 16], float("-inf"), gl.float32, layout=r_l)
        l_i = gl.zeros([NW, 16], gl.float32, layout=r_l)
        extra = gl.zeros([NW, 16], gl.float32, layout=r_l)  # sum_n p[n] z[n] (the values' zero points)
        acc = gl.zeros([NW, 128, 8], gl.float32, layout=mma)  # out^T: [warp, channel (permuted), head]
        nxt = _loads(KW, VW, KP, VS, VZ, KPOS, row, begin, end, stride_kr, stride_vr, stride_kpr, stride_kpg,
                     stride_vsr, stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP)
        for start in range(begin, end, NW * WE):
            kwords, pr, vwords, pos, vs, vz = nxt
            nxt = _loads(KW, VW, KP, VS, VZ, KPOS, row, start + NW * WE, end, stride_kr, stride_vr, stride_kpr,
                         stride_kpg, stride_vsr, stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP)
            ko = gl.inline_asm_elementwise(
                KEYS4, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r,r,r,r,r",
                [kwords, gl.broadcast(pr[0][None, None, :], kwords)[0], gl.broadcast(pr[1][None, None, :], kwords)[0],
                 gl.broadcast(pr[2][None, None, :], kwords)[0], gl.broadcast(pr[3][None, None, :], kwords)[0],
                 gl.broadcast(pr[4][None, None, :], kwords)[0], gl.broadcast(pr[5][None, None, :], kwords)[0],
                 gl.broadcast(pr[6][None, None, :], kwords)[0], gl.broadcast(pr[7][None, None, :], kwords)[0]],
                dtype=(gl.float16,) * 8, is_pure=True, pack=1)
            kx = gl.reshape(_in_registers(ko), (NW, WE, 4, 4, 2, 2, 2))  # [w, n, t, wl, jhi, jlo, e]
            kx = gl.permute(kx, (0, 3, 4, 5, 2, 6, 1))                   # [w, wl, jhi, jlo, t, e, n]
            kt = gl.convert_layout(gl.reshape(kx, (NW, 128, WE)), b_l)
            s = mma_v2(q, kt, gl.zeros([NW, 16, WE], gl.float32, layout=mma)) * scale

            vs = vs.to(gl.float32)
            vz = vz.to(gl.float32)
            s = gl.where(((pos >= 0) & (pos <= q_pos))[:, None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=2))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.exp(m_i - m_safe)
            p = gl.exp(s - m_safe[:, :, None])
            l_i = l_i * alpha + gl.sum(p, axis=2)
            extra = extra * alpha + gl.sum(p * vz[:, None, :], axis=2)
            ps = gl.permute(gl.reshape((p * vs[:, None, :]).to(gl.bfloat16), (NW, 2, 8, WE)), (0, 3, 2, 1))
            pt = gl.convert_layout(gl.split(ps)[0], b_l)                   # P^T [w, n, 8 heads]

            vo = gl.inline_asm_elementwise(VALS4, "=h,=h,=h,=h,=h,=h,=h,=h,r", [vwords], dtype=(gl.bfloat16,) * 8,
                                           is_pure=True, pack=1)
            # logical channel m = c + 8 (e + 2 jlo + 4 jhi + 8 wl) is word 2c + wl, lop3 pair 2 jhi + jlo, half e
            vx = gl.reshape(_in_registers(vo), (NW, WE, 8, 2, 2, 2, 2))   # [w, n, c, wl, jhi, jlo, e]
            vx = gl.permute(vx, (0, 3, 4, 5, 6, 2, 1))                     # [w, wl, jhi, jlo, e, c, n]
            va = gl.convert_layout(gl.reshape(vx, (NW, 128, WE)), a_l)
            acc = acc * _first8(alpha, s_l)[:, None, :] + mma_v2(va, pt, gl.zeros([NW, 128, 8], gl.float32,
                                                                                  layout=mma))
            m_i = m_new
        acc = acc + _first8(extra, s_l)[:, None, :]
        m8 = _first8(m_i, s_l)
        m = gl.max(m8, axis=0)
        wgt = gl.exp(m8 - gl.where(m == float("-inf"), 0.0, m)[None, :])  # the warps' partials merged
        l_tot = gl.sum(_first8(l_i, s_l) * wgt, axis=0)
        out = gl.sum(acc * wgt[:, None, :], axis=0)                        # [128 permuted channels, 8 heads]
        oc = gl.arange(0, 128, layout=gl.SliceLayout(1, gl.SliceLayout(0, mma)))
        oh = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(0, mma)))
        phys_v = 8 * (2 * (oc % 8) + oc // 64) + 2 * ((oc // 32) % 2) + (oc // 16) % 2 + 4 * ((oc // 8) % 2)
        ohead = (row % num_kv) * GROUP + oh
        gl.store(ACC_OUT + b * stride_ab + ohead[None, :] * stride_ah + split * stride_as + phys_v[:, None], out,
                 mask=(oh < GROUP)[None, :])
        mh = gl.arange(0, 8, layout=gl.SliceLayout(0, s_l))
        at = b * stride_mb + ((row % num_kv) * GROUP + mh) * stride_mh + split
        gl.store(M_OUT + at, m, mask=mh < GROUP)
        gl.store(L_OUT + at, l_tot, mask=mh < GROUP)


def supported(query: torch.Tensor, packed: PackedKV, sliding_window: int | None = None) -> bool:
    """Whether ``decode_attention_gluon`` serves this query and cache (see the module's docstring)."""
    if gluon is None or not query.is_cuda or sliding_window:
        return False
    batch, num_q, t_q, dim = query.shape
    rows = packed.rows
    return (packed.quantizer == "kivi" and packed.k_bits == 4 and packed.v_bits == 4 and packed.dim == 128
            and dim == 128 and t_q == 1 and packed.group % BLOCK == 0
            and value_group(packed.group, packed.dim) == packed.dim and query.dtype in (torch.bfloat16, torch.float16)
            and rows % batch == 0 and num_q % (rows // batch) == 0 and num_q // (rows // batch) <= 8)


def decode_attention_gluon(query: torch.Tensor, packed: PackedKV, key_pos: torch.Tensor, query_pos: torch.Tensor,
                           scaling: float, splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, H_q, 1, 128] over ``packed`` (B * H_kv rows) with positions key_pos [B, H_kv, L] (-1 = empty) and
    query_pos [1]: (out [B, H_q, 1, 128], lse [B, H_q, 1] fp32), as ``folded.decode_attention_folded``."""
    batch, num_q, _, dim = query.shape
    _, num_kv, length = key_pos.shape
    if not supported(query, packed) or packed.rows != batch * num_kv or packed.length != length:
        raise ValueError("decode_attention_gluon does not serve this cache (see gluon_decode.supported)")
    rows = batch * num_kv
    splits, split_len = plan_splits(length, rows, BLOCK, query.device, splits)
    query = query.contiguous()
    if key_pos.dtype != torch.int32 or not key_pos.is_contiguous():
        key_pos = key_pos.to(torch.int32).contiguous()
    query_pos = query_pos.to(device=query.device, dtype=torch.int32)
    parts = Partials(query, splits)
    parts.take(splits)
    pairs = packed.keep_key_pairs()
    k, v, vs, vz = packed.k, packed.v, packed.v_scale, packed.v_zero
    _gluon_decode_kernel[(rows, splits)](
        query, k, v, pairs, vs, vz, key_pos.view(rows, length), query_pos, parts.m, parts.lsum, parts.acc,
        num_kv, length, split_len, scaling, query.stride(0), query.stride(1), k.stride(0), v.stride(0),
        pairs.stride(0), pairs.stride(1), vs.stride(0), length, parts.m.stride(0), parts.m.stride(1),
        parts.acc.stride(0), parts.acc.stride(1), parts.acc.stride(3), GROUP=num_q // num_kv, K_GROUP=packed.group,
        num_warps=4)
    return parts.merge()
