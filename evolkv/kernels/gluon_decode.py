"""Decode attention over a KIVI-packed cache with the tensor cores' operands built in registers (Gluon).

The Triton kernels (``kernels.folded``) spend most of a decode step moving the unpacked 16-bit key and value
tiles through shared memory to feed the MMAs (Nsight: the L1 data pipe 62-73% busy, 37% of it bank conflicts;
``benchmarks/results/NOTES-quantized-attention.md``). Gluon (``triton.experimental.gluon``) states layouts
explicitly, so here every operand is made where the MMA reads it:

- scores = q K^T with ``mma.m16n8k16``: lane l holds, for entry l / 4 (+8 i), the key channel pairs
  (2t, 2t + 1) and (2t + 8, 2t + 9) of each 16-channel chunk (t = l % 4). The channel order is free (the query is
  loaded through the same permutation), so those 32 channels are the words lane l loads (16 bytes at 4 bits, 8
  at 2), and each ``lop3`` + ``sub.f16x2`` + ``fma.f16x2`` (scales from ``PackedKV.keep_key_pairs``) is one
  operand register as it comes out;
- no shift per pair (``_asm``): a word's pairs in the low byte of each 16-bit half are masked where they lie,
  the others after one ``shr`` by 8, so a pair comes out times a power of two, taken out of the key scales once a
  block (``_down``) and out of the value channels once at the end;
- out^T = V^T P^T: the scores' accumulator is already P^T's operand layout (head = l / 4, entries 2t, 2t + 1), so
  the probabilities stay in registers; V^T's operand pairs two entries of a channel, one ``prmt`` a register
  after the value PTX, the output channels permuted back when stored. Heads are the MMA's narrow side, 8 of them
  (the query's 16-row tile keeps only its first 8: GQA groups up to 8);
- each of the 4 warps is an independent split of a block's 128 entries (the layouts' first dimension), with its
  own running max and sum, merged once at the end: no shared memory and no barrier inside the loop;
- the next block's codes, scales, positions and value scales are loaded before this block's math (2 programs
  an SM: the loads' latency hides behind a block of work instead of behind other warps).

On the H100 (batch 8, 32k, key groups of 128; ``benchmarks/bench_packed_decode.py``, CUDA-graph replays) K4V4
takes 0.161 ms, 60% of copy bandwidth, and K2V2 0.132 ms, 40% (``folded``'s ``pairs``: 0.275 and 0.284 ms). The
time hardly moves with the bit width: a block's work (about 940 instructions a warp for 32 entries, the same at 2
and 4 bits) and its latency bound it, not the bytes (Nsight: issue slots 56% busy, 1.9 warps a scheduler).

Covers 2- and 4-bit keys and values (any pair), head_dim 128, key groups a multiple of 128, value groups of the
whole head, up to 8 query heads per KV head, one query token and no sliding window (``supported``). It is the
default packed decode kernel of CUDA graphs where it serves (``EVOLKV_PACKED_DECODE=gluon``,
``kernels.gluon_serves``: the serving path's decode step, which gives it a ``Partials`` beside the full-precision
rows' ragged launch); eager calls take ``folded``, whose launcher costs half the host time.
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
BITS = (2, 4)  # code widths of keys and of values (either, independently)


def _asm(bits: int, keys: bool) -> str:
    """PTX: one int32 word of ``32 / bits`` codes -> that many float16 halves, output 2k, 2k + 1 the channels k,
    k + half of lop3 pair k (half = 16 / bits). No shift per pair: the pairs of a word's low byte of each
    16-bit half are masked where they lie, those of the high byte after one ``shr`` by 8, so pair k comes out
    as code * 2^(bits (k % (half / 2))) exactly (OR-ed into 1024.0, whose mantissa holds up to 1023, minus
    1024.0). ``keys``: then ``fma.rn.f16x2`` with the pair's scale (already divided by that power of two,
    ``_down``) and zero point, operands ``per_word + 1 + k`` and ``per_word + 1 + half + k``; values keep the
    power of two, taken out of the output channels at the end."""
    per_word = 32 // bits
    half, quarter = per_word // 2, per_word // 4
    base = 0x000F000F if bits == 4 else 0x00030003
    lines = ["{ .reg .b32 t, s, m;", "mov.b32 m, 0x64006400;", f"shr.u32 s, ${per_word}, 8;"]
    for k in range(half):
        src = f"${per_word}" if k < quarter else "s"
        fma = f"fma.rn.f16x2 t, t, ${per_word + 1 + k}, ${per_word + 1 + half + k}; " if keys else ""
        lines.append(f"lop3.b32 t, {src}, {base << bits * (k % quarter):#010x}, m, 0xEA; sub.rn.f16x2 t, t, m; "
                     f"{fma}mov.b32 {{${2 * k}, ${2 * k + 1}}}, t;")
    lines.append("}")
    return "\n".join(lines)


def _scale_asm(shift: int) -> str:
    """PTX: a float16 pair times 2^-shift (exact but where it falls below float16's normal range)."""
    return f"{{ .reg .b32 f; mov.b32 f, {((15 - shift) << 10) * 0x10001:#010x}; mul.rn.f16x2 $0, $1, f; }}"


if gluon is not None:

    def _word_layouts(k_bits: int, v_bits: int):
        """[warp, entry, word] layouts of the key and value words: lane t = l % 4 of a key row takes the words of
        its B fragment's 32 channels (entries l / 4 + 8 i); lane c = l / 4 takes the value words of channels
        c + 8 j, entries 2t, 2t + 1 (+8, +16), A's order."""
        def bases(words_a_lane: int, lanes: int) -> tuple[list, list]:
            return ([[0, 0, 1 << i] for i in range(words_a_lane.bit_length() - 1)],
                    [[0, 0, words_a_lane << i] for i in range(lanes)])

        kr, kl = bases(k_bits, 2)  # 4 * bits words an entry, a quarter each lane of a row
        kw_l = gl.DistributedLinearLayout(reg_bases=kr + [[0, 8, 0], [0, 16, 0]],
                                          lane_bases=kl + [[0, 1, 0], [0, 2, 0], [0, 4, 0]],
                                          warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, 32, 4 * k_bits])
        vr, vl = bases(v_bits // 2, 3)  # an eighth each lane of an entry pair
        vw_l = gl.DistributedLinearLayout(reg_bases=[[0, 1, 0], [0, 8, 0], [0, 16, 0]] + vr,
                                          lane_bases=[[0, 2, 0], [0, 4, 0]] + vl,
                                          warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, 32, 4 * v_bits])
        return kw_l, vw_l

    KEYS4 = gl.constexpr(_asm(4, keys=True))
    KEYS2 = gl.constexpr(_asm(2, keys=True))
    VALS4 = gl.constexpr(_asm(4, keys=False))
    VALS2 = gl.constexpr(_asm(2, keys=False))
    DOWN2 = gl.constexpr(_scale_asm(2))
    DOWN4 = gl.constexpr(_scale_asm(4))
    DOWN6 = gl.constexpr(_scale_asm(6))
    KW4_L, VW4_L = (gl.constexpr(layout) for layout in _word_layouts(4, 4))
    KW2_L, VW2_L = (gl.constexpr(layout) for layout in _word_layouts(2, 2))
    WE = gl.constexpr(BLOCK // 4)  # entries a warp, a block
    NW = gl.constexpr(4)  # warps

    @gluon.jit
    def _in_registers(o, PW: gl.constexpr):
        """The PTX's PW outputs (output 2j + e is channel j + e PW / 2 of a word) joined as [..., j bits high to
        low, e]: the last join is the lowest register bit, as the MMA operands want."""
        if PW == 8:
            return gl.join(gl.join(gl.join(o[0], o[4]), gl.join(o[2], o[6])),
                           gl.join(gl.join(o[1], o[5]), gl.join(o[3], o[7])))
        else:
            return gl.join(gl.join(gl.join(gl.join(o[0], o[8]), gl.join(o[4], o[12])),
                                   gl.join(gl.join(o[2], o[10]), gl.join(o[6], o[14]))),
                           gl.join(gl.join(gl.join(o[1], o[9]), gl.join(o[5], o[13])),
                                   gl.join(gl.join(o[3], o[11]), gl.join(o[7], o[15]))))

    @gluon.jit
    def _down(x, ASM: gl.constexpr):
        """Key scale pairs (int32 holding float16x2) times the power of two ``ASM`` (``_scale_asm``) divides by."""
        return gl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=gl.int32, is_pure=True, pack=1)

    @gluon.jit
    def _keys(kwords, pr, K_BITS: gl.constexpr):
        """Key words [NW, WE, KW] and their group's pairs -> float16 keys [NW, WE, KW, pair bits, e] (the scales of
        the pairs that come out times 2^(bits i) divided by that first: once a block, not once an entry)."""
        if K_BITS == 4:
            pr = (pr[0], _down(pr[1], DOWN4), pr[2], _down(pr[3], DOWN4), pr[4], pr[5], pr[6], pr[7])
            ko = gl.inline_asm_elementwise(
                KEYS4, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r,r,r,r,r",
                [kwords, gl.broadcast(pr[0][None, None, :], kwords)[0], gl.broadcast(pr[1][None, None, :], kwords)[0],
                 gl.broadcast(pr[2][None, None, :], kwords)[0], gl.broadcast(pr[3][None, None, :], kwords)[0],
                 gl.broadcast(pr[4][None, None, :], kwords)[0], gl.broadcast(pr[5][None, None, :], kwords)[0],
                 gl.broadcast(pr[6][None, None, :], kwords)[0], gl.broadcast(pr[7][None, None, :], kwords)[0]],
                dtype=(gl.float16,) * 8, is_pure=True, pack=1)
            return _in_registers(ko, 8)
        else:
            pr = (pr[0], _down(pr[1], DOWN2), _down(pr[2], DOWN4), _down(pr[3], DOWN6),
                  pr[4], _down(pr[5], DOWN2), _down(pr[6], DOWN4), _down(pr[7], DOWN6),
                  pr[8], pr[9], pr[10], pr[11], pr[12], pr[13], pr[14], pr[15])
            ko = gl.inline_asm_elementwise(
                KEYS2, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
                [kwords, gl.broadcast(pr[0][None, None, :], kwords)[0], gl.broadcast(pr[1][None, None, :], kwords)[0],
                 gl.broadcast(pr[2][None, None, :], kwords)[0], gl.broadcast(pr[3][None, None, :], kwords)[0],
                 gl.broadcast(pr[4][None, None, :], kwords)[0], gl.broadcast(pr[5][None, None, :], kwords)[0],
                 gl.broadcast(pr[6][None, None, :], kwords)[0], gl.broadcast(pr[7][None, None, :], kwords)[0],
                 gl.broadcast(pr[8][None, None, :], kwords)[0], gl.broadcast(pr[9][None, None, :], kwords)[0],
                 gl.broadcast(pr[10][None, None, :], kwords)[0], gl.broadcast(pr[11][None, None, :], kwords)[0],
                 gl.broadcast(pr[12][None, None, :], kwords)[0], gl.broadcast(pr[13][None, None, :], kwords)[0],
                 gl.broadcast(pr[14][None, None, :], kwords)[0], gl.broadcast(pr[15][None, None, :], kwords)[0]],
                dtype=(gl.float16,) * 16, is_pure=True, pack=1)
            return _in_registers(ko, 16)

    @gluon.jit
    def _values(vwords, V_BITS: gl.constexpr):
        """Value words [NW, WE, VW] -> float16 codes times 2^(bits (k % (half / 2))) [NW, WE, VW, pair bits, e]."""
        if V_BITS == 4:
            vo = gl.inline_asm_elementwise(VALS4, "=h,=h,=h,=h,=h,=h,=h,=h,r", [vwords],
                                           dtype=(gl.float16,) * 8, is_pure=True, pack=1)
            return _in_registers(vo, 8)
        else:
            vo = gl.inline_asm_elementwise(VALS2, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r", [vwords],
                                           dtype=(gl.float16,) * 16, is_pure=True, pack=1)
            return _in_registers(vo, 16)

    @gluon.jit
    def _first8(x, L: gl.constexpr):
        """[NW, 16] -> its first 8 columns [NW, 8] in layout L (the 8 heads of the output's narrow side)."""
        y = gl.permute(gl.reshape(x, (NW, 2, 8)), (0, 2, 1))
        return gl.convert_layout(gl.split(y)[0], L)

    @gluon.jit
    def _pair_loads(pb, ok, KW: gl.constexpr, K_BITS: gl.constexpr):
        """A key group's (scale, zero point) pairs (``packed.key_pairs``: pair k of every word at k * KW)."""
        if K_BITS == 4:
            return (gl.load(pb, mask=ok, other=0), gl.load(pb + KW, mask=ok, other=0),
                    gl.load(pb + 2 * KW, mask=ok, other=0), gl.load(pb + 3 * KW, mask=ok, other=0),
                    gl.load(pb + 4 * KW, mask=ok, other=0), gl.load(pb + 5 * KW, mask=ok, other=0),
                    gl.load(pb + 6 * KW, mask=ok, other=0), gl.load(pb + 7 * KW, mask=ok, other=0))
        else:
            return (gl.load(pb, mask=ok, other=0), gl.load(pb + KW, mask=ok, other=0),
                    gl.load(pb + 2 * KW, mask=ok, other=0), gl.load(pb + 3 * KW, mask=ok, other=0),
                    gl.load(pb + 4 * KW, mask=ok, other=0), gl.load(pb + 5 * KW, mask=ok, other=0),
                    gl.load(pb + 6 * KW, mask=ok, other=0), gl.load(pb + 7 * KW, mask=ok, other=0),
                    gl.load(pb + 8 * KW, mask=ok, other=0), gl.load(pb + 9 * KW, mask=ok, other=0),
                    gl.load(pb + 10 * KW, mask=ok, other=0), gl.load(pb + 11 * KW, mask=ok, other=0),
                    gl.load(pb + 12 * KW, mask=ok, other=0), gl.load(pb + 13 * KW, mask=ok, other=0),
                    gl.load(pb + 14 * KW, mask=ok, other=0), gl.load(pb + 15 * KW, mask=ok, other=0))

    @gluon.jit
    def _loads(KW, VW, KP, VS, VZ, KPOS, row, start, end, stride_kr, stride_vr, stride_kpr, stride_kpg, stride_vsr,
               stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP: gl.constexpr, K_BITS: gl.constexpr,
               V_BITS: gl.constexpr):
        """A block's loads: key words, its key group's (scale, zero point) pairs, value words, positions and the
        values' scales and zero points (past ``end``: masked)."""
        K_WORDS: gl.constexpr = 4 * K_BITS
        V_WORDS: gl.constexpr = 4 * V_BITS
        ke = start + kw_w[:, None, None] * WE + kw_n[None, :, None]
        kwords = gl.load(KW + row * stride_kr + ke * K_WORDS + kw_i[None, None, :], mask=ke < end, other=0)
        pr = _pair_loads(KP + row * stride_kpr + (start // K_GROUP) * stride_kpg + kw_i, start < end,
                         K_WORDS, K_BITS)
        ve = start + vw_w[:, None, None] * WE + vw_n[None, :, None]
        vwords = gl.load(VW + row * stride_vr + ve * V_WORDS + vw_i[None, None, :], mask=ve < end, other=0)
        se = start + sw[:, None] * WE + sn[None, :]
        pos = gl.load(KPOS + row * stride_pr + se, mask=se < end, other=-1)
        vs = gl.load(VS + row * stride_vsr + se, mask=se < end, other=0.0)
        vz = gl.load(VZ + row * stride_vsr + se, mask=se < end, other=0.0)
        return kwords, pr, vwords, pos, vs, vz

    @gluon.jit
    def _block(loaded, state, q, q_pos, scale, K_BITS: gl.constexpr, V_BITS: gl.constexpr, mma: gl.constexpr,
               a_l: gl.constexpr, b_l: gl.constexpr, s_l: gl.constexpr):
        """One block of a program's entries (``_loads``' tensors) into the running (max, sum, zero-point sum,
        out^T)."""
        kwords, pr, vwords, pos, vs, vz = loaded
        m_i, l_i, extra, acc = state
        # [w, n, t, (word, pair) bits high to low, e] -> [w, chunk bits, p0, t, e, n]: the B operand's order
        kx = gl.permute(gl.reshape(_keys(kwords, pr, K_BITS), (NW, WE, 4, 2, 2, 2, 2, 2)), (0, 3, 4, 5, 6, 2, 7, 1))
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
        ps = gl.permute(gl.reshape((p * vs[:, None, :]).to(gl.float16), (NW, 2, 8, WE)), (0, 3, 2, 1))
        pt = gl.convert_layout(gl.split(ps)[0], b_l)                   # P^T [w, n, 8 heads]

        # [w, n, c, (word, pair) bits, e] -> [w, (word, pair) bits, e, c, n]: logical channel
        # m = c + 8 (e + 2 p + VPW wl) is lane c's word wl, lop3 pair p, half e
        vx = gl.permute(gl.reshape(_values(vwords, V_BITS), (NW, WE, 8, 2, 2, 2, 2)), (0, 3, 4, 5, 6, 2, 1))
        va = gl.convert_layout(gl.reshape(vx, (NW, 128, WE)), a_l)
        acc = acc * _first8(alpha, s_l)[:, None, :] + mma_v2(va, pt, gl.zeros([NW, 128, 8], gl.float32,
                                                                              layout=mma))
        return m_new, l_i, extra, acc

    @gluon.jit
    def _gluon_decode_kernel(Q, KW, VW, KP, VS, VZ, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT, num_kv, length, split_len,
                             first, scale, stride_qb, stride_qh, stride_kr, stride_vr, stride_kpr, stride_kpg,
                             stride_vsr, stride_pr, stride_mb, stride_mh, stride_ab, stride_ah, stride_as,
                             GROUP: gl.constexpr, K_GROUP: gl.constexpr, K_BITS: gl.constexpr,
                             V_BITS: gl.constexpr):
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1, 1],
                                                      instr_shape=[1, 16, 8])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        s_l: gl.constexpr = gl.SliceLayout(1, mma)  # [warp, last dim]: the scores' entries, out^T's heads
        r_l: gl.constexpr = gl.SliceLayout(2, mma)  # [warp, head] of the scores
        kw_l: gl.constexpr = KW4_L if K_BITS == 4 else KW2_L
        vw_l: gl.constexpr = VW4_L if V_BITS == 4 else VW2_L
        K_WORDS: gl.constexpr = 4 * K_BITS  # words an entry's 128 codes take
        V_WORDS: gl.constexpr = 4 * V_BITS
        KPW: gl.constexpr = 32 // K_BITS  # codes a word
        VPW: gl.constexpr = 32 // V_BITS

        row = gl.program_id(0)
        split = gl.program_id(1)
        b = row // num_kv
        begin = split * split_len
        end = gl.minimum(begin + split_len, length)
        q_pos = gl.load(QPOS)

        # the query in the keys' channel order: logical k = e + 2t + 8 p0 + 16 c (MMA chunk c) is channel
        # KPW (K_WORDS / 4 t + wl) + p + KPW / 2 e of lane t's word wl, lop3 pair p = p0 + 2 (c % (KPW / 4))
        qk = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(1, a_l)))
        chunk = qk // 16
        pair = (qk // 8) % 2 + 2 * (chunk % (KPW // 4))
        phys_k = KPW * ((K_WORDS // 4) * ((qk // 2) % 4) + chunk // (KPW // 4)) + pair + (KPW // 2) * (qk % 2)
        qh = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, a_l)))
        qw = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, a_l)))
        head = (row % num_kv) * GROUP + qh
        q = gl.load(Q + b * stride_qb + head[None, :, None] * stride_qh + phys_k[None, None, :] + 0 * qw[:, None, None],
                    mask=(qh < GROUP)[None, :, None] & (qw >= 0)[:, None, None], other=0.0).to(gl.float16)

        kw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, kw_l)))
        kw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, kw_l)))
        kw_i = gl.arange(0, K_WORDS, layout=gl.SliceLayout(0, gl.SliceLayout(1, kw_l)))
        vw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, vw_l)))
        vw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, vw_l)))
        vw_i = gl.arange(0, V_WORDS, layout=gl.SliceLayout(0, gl.SliceLayout(1, vw_l)))
        sw = gl.arange(0, NW, layout=gl.SliceLayout(1, s_l))
        sn = gl.arange(0, WE, layout=gl.SliceLayout(0, s_l))

        m_i = gl.full([NW, 16], float("-inf"), gl.float32, layout=r_l)
        l_i = gl.zeros([NW, 16], gl.float32, layout=r_l)
        extra = gl.zeros([NW, 16], gl.float32, layout=r_l)  # sum_n p[n] z[n] (the values' zero points)
        acc = gl.zeros([NW, 128, 8], gl.float32, layout=mma)  # out^T: [warp, channel (permuted), head]
        state = (m_i, l_i, extra, acc)
        cur = _loads(KW, VW, KP, VS, VZ, KPOS, row, begin, end, stride_kr, stride_vr, stride_kpr, stride_kpg,
                     stride_vsr, stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP, K_BITS, V_BITS)
        for start in range(begin, end, NW * WE):
            nxt = _loads(KW, VW, KP, VS, VZ, KPOS, row, start + NW * WE, end, stride_kr, stride_vr, stride_kpr,
                         stride_kpg, stride_vsr, stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_GROUP,
                         K_BITS, V_BITS)
            state = _block(cur, state, q, q_pos, scale, K_BITS, V_BITS, mma, a_l, b_l, s_l)
            cur = nxt
        m_i, l_i, extra, acc = state
        # the values' powers of two out of each logical channel m = c + 8 (e + 2 p + VPW wl) (lop3 pair p)
        cm = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(2, mma)))
        down = gl.exp2(-(V_BITS * (((cm // 16) % (VPW // 2)) % (VPW // 4))).to(gl.float32))
        acc = acc * down[None, :, None] + _first8(extra, s_l)[:, None, :]
        m8 = _first8(m_i, s_l)
        m = gl.max(m8, axis=0)
        wgt = gl.exp(m8 - gl.where(m == float("-inf"), 0.0, m)[None, :])  # the warps' partials merged
        l_tot = gl.sum(_first8(l_i, s_l) * wgt, axis=0)
        out = gl.sum(acc * wgt[:, None, :], axis=0)                        # [128 permuted channels, 8 heads]
        oc = gl.arange(0, 128, layout=gl.SliceLayout(1, gl.SliceLayout(0, mma)))
        oh = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(0, mma)))
        r = oc // 8
        phys_v = (VPW * ((V_WORDS // 8) * (oc % 8) + (r // 2) // (VPW // 2)) + (r // 2) % (VPW // 2)
                  + (VPW // 2) * (r % 2))
        ohead = (row % num_kv) * GROUP + oh
        at_split = first + split
        gl.store(ACC_OUT + b * stride_ab + ohead[None, :] * stride_ah + at_split * stride_as + phys_v[:, None], out,
                 mask=(oh < GROUP)[None, :])
        mh = gl.arange(0, 8, layout=gl.SliceLayout(0, s_l))
        at = b * stride_mb + ((row % num_kv) * GROUP + mh) * stride_mh + at_split
        gl.store(M_OUT + at, m, mask=mh < GROUP)
        gl.store(L_OUT + at, l_tot, mask=mh < GROUP)


def supported(query: torch.Tensor, packed: PackedKV, sliding_window: int | None = None) -> bool:
    """Whether ``decode_attention_gluon`` serves this query and cache (see the module's docstring)."""
    if gluon is None or not query.is_cuda or sliding_window:
        return False
    batch, num_q, t_q, dim = query.shape
    rows = packed.rows
    return (packed.quantizer == "kivi" and packed.k_bits in BITS and packed.v_bits in BITS and packed.dim == 128
            and dim == 128 and t_q == 1 and packed.group % BLOCK == 0
            and value_group(packed.group, packed.dim) == packed.dim and query.dtype in (torch.bfloat16, torch.float16)
            and rows % batch == 0 and num_q % (rows // batch) == 0 and num_q // (rows // batch) <= 8)


def splits_for(packed: PackedKV, rows: int, device) -> int:
    """How many splits ``decode_attention_gluon`` gives ``packed`` (for a shared ``Partials``)."""
    return plan_splits(packed.length, rows, BLOCK, device)[0]


def decode_attention_gluon(query: torch.Tensor, packed: PackedKV, key_pos: torch.Tensor, query_pos: torch.Tensor,
                           scaling: float, splits: int | None = None, partials: Partials | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """query [B, H_q, 1, 128] over ``packed`` (B * H_kv rows) with positions key_pos [B, H_kv, L] (-1 = empty) and
    query_pos [1]: (out [B, H_q, 1, 128], lse [B, H_q, 1] fp32), as ``folded.decode_attention_folded``; with
    ``partials``, fills its next splits instead and returns None."""
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
    own = partials is None
    parts = Partials(query, splits) if own else partials
    first = parts.take(splits)
    pairs = packed.keep_key_pairs()
    k, v, vs, vz = packed.k, packed.v, packed.v_scale, packed.v_zero
    _gluon_decode_kernel[(rows, splits)](
        query, k, v, pairs, vs, vz, key_pos.view(rows, length), query_pos, parts.m, parts.lsum, parts.acc,
        num_kv, length, split_len, first, scaling, query.stride(0), query.stride(1), k.stride(0), v.stride(0),
        pairs.stride(0), pairs.stride(1), vs.stride(0), length, parts.m.stride(0), parts.m.stride(1),
        parts.acc.stride(0), parts.acc.stride(1), parts.acc.stride(3), GROUP=num_q // num_kv, K_GROUP=packed.group,
        K_BITS=packed.k_bits, V_BITS=packed.v_bits, num_warps=4)
    return parts.merge() if own else None
