"""Decode attention over a KIVI-packed cache with the tensor cores' operands built in registers (Gluon).

The Triton kernels (``kernels.folded``) spend most of a decode step moving the unpacked 16-bit key and value
tiles through shared memory to feed the MMAs (Nsight: the L1 data pipe 62-73% busy, 37% of it bank conflicts;
``benchmarks/results/NOTES-quantized-attention.md``). Gluon (``triton.experimental.gluon``) states layouts
explicitly, so here every operand is made where the MMA reads it, with heads (up to 8 query heads of a KV
head) always on the MMA's narrow side, so no padding rows:

- scores^T = K q^T with ``mma.m16n8k16``: lane l holds, for entries l / 4 (+8 i), the key channel pairs
  (2t, 2t + 1) and (2t + 8, 2t + 9) of each 16-channel chunk (t = l % 4). The channel order is free (the query is
  loaded through the same permutation), so those 32 channels are the words lane l loads (16 bytes at 4 bits, 8
  at 2), and one ``lop3`` is one operand register: 1024.0 + code * 2^(bits i), the code OR-ed into the mantissa
  where it lies (no shift, no subtraction, no scale);
- the key scales, that power of two and the softmax scale (in log2 units) are in the query instead, once a key
  group: the B operand is q * scale (``_prep``), and the scores' accumulator starts at sum_k q zero - 1024 q *
  scale (four MMAs with constant A operands);
- out^T = V^T P^T: the probabilities stay in registers; V^T's operand pairs two entries of a channel, so one
  ``prmt`` a 16-bit half of two entries' words puts them side by side before the lop3 + ``sub`` (``_values_ptx``);
  the values' powers of two come out of each output channel once, at the end;
- each of the 4 warps is an independent split with its own running max and sum, merged once at the end: no shared
  memory and no barrier inside the loop. A warp takes a key group's 128 entries in a row (``CHUNK``; a program's
  4 warps take 4 groups a round, ``BLOCK``), in blocks of 32 or 64 entries (``TILES``), so the group's scales are
  folded into the query once a group (their loads a round ahead), not once a block; the next block's codes,
  positions and value scales are loaded before this block's math. At 64 entries a block (2-bit values) the
  softmax's per-block cross-lane work is halved, and with K2V2 its sums stay per lane until the end.

A launch is one wave: two programs an SM (what the registers allow), so a long split each (``plan``).

On the H100 (batch 8, 32k, key groups of 128; ``benchmarks/bench_packed_decode.py``, the kernel alone in CUDA-graph
replays) K2V2 takes 0.081 ms, 65% of copy bandwidth, and K4V4 0.116 ms, 84% (with the 4 warps of a program
sharing every key group instead: 0.092 and 0.117 ms); a call timed on its own adds the merge of its splits and the graph's
launch, about 0.012 ms. The time moves little with the bit width: a block's work (about 590 instructions a warp per
32 entries at K2V2, 720 at K4V4) and its latency bound it, not the bytes.

Covers 2- and 4-bit keys and values (any pair), head_dim 128, key groups a multiple of 128, value groups of the
whole head, up to 8 query heads per KV head, one query token and no sliding window (``supported``). It is the
default packed decode kernel of CUDA graphs where it serves (``EVOLKV_PACKED_DECODE=gluon``,
``kernels.gluon_serves``: the serving path's decode step, which gives it a ``Partials`` beside the full-precision
rows' ragged launch); eager calls take ``folded``, whose launcher costs half the host time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evolkv.kernels.decode_attention import Partials, plan_splits
from evolkv.kernels.packed import PackedKV, value_group

try:  # Gluon is experimental: a Triton without it serves nothing here
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:  # pragma: no cover
    gluon = None

CHUNK = 128  # entries a warp takes in a row: one key group (or part of one)
BLOCK = 4 * CHUNK  # entries a program takes per round: a chunk each of its 4 warps
TILES = {(2, 2): (64, True), (4, 2): (64, False)}  # (k, v bits) -> (entries a warp a block, softmax sums per lane)
TILE = (32, False)  # the others: 64 entries spill 4-bit values (benchmarks/bench_packed_decode.py)
BITS = (2, 4)  # code widths of keys and of values (either, independently)
PROGRAMS_PER_SM = 2  # what the kernel's registers (216-254 a thread, 4 warps) let an SM hold


def _lop3_lines(src: str, out: Callable[[int], str], bits: int, sub: bool) -> list[str]:
    """PTX lines: the lop3 pairs of word ``src`` (``s`` holds it shifted right by 8) -> ``out(k)``, the register
    operand pair of pair k. No shift per pair: the pairs of the low byte of each 16-bit half are masked where
    they lie, those of the high byte after the one ``shr``, so pair k comes out as 1024.0 + code *
    2^(bits (k % (half / 2))) exactly (OR-ed into 1024.0, whose mantissa holds up to 1023); ``sub`` takes the
    1024.0 off (register ``m`` holds it)."""
    per_word = 32 // bits
    half, quarter = per_word // 2, per_word // 4
    base = 0x000F000F if bits == 4 else 0x00030003
    return [f"lop3.b32 t, {src if k < quarter else 's'}, {base << bits * (k % quarter):#010x}, 0x64006400, 0xEA; "
            + ("sub.rn.f16x2 t, t, m; " if sub else "") + f"mov.b32 {out(k)}, t;" for k in range(half)]


def _keys_ptx(bits: int) -> str:
    """PTX: one key word of ``32 / bits`` codes -> that many float16 halves, outputs 2k, 2k + 1 the channels k,
    k + half of lop3 pair k (half = 16 / bits), each 1024.0 + code * 2^(bits (k % (half / 2)))."""
    per_word = 32 // bits
    lines = ["{ .reg .b32 t, s;", f"shr.u32 s, ${per_word}, 8;"]
    lines += _lop3_lines(f"${per_word}", lambda k: f"{{${2 * k}, ${2 * k + 1}}}", bits, sub=False)
    return "\n".join(lines + ["}"])


def _values_ptx(bits: int) -> str:
    """PTX: the value words of entries 2j and 2j + 1 ($2 PW, $2 PW + 1, PW = 32 / bits) -> 2 PW float16 halves, code
    * 2^(bits (k % (half / 2))): outputs [0, PW) entry 2j's in ``_keys_ptx``'s order, [PW, 2 PW) entry 2j + 1's.
    One ``prmt`` a 16-bit half of both words puts the two entries' codes of a channel side by side, so each
    lop3 + sub is an MMA operand register (2 entries, 1 channel) with no ``prmt`` of its own."""
    per_word = 32 // bits
    lines = ["{ .reg .b32 t, w, s, m;", "mov.b32 m, 0x64006400;"]
    for e in (0, 1):
        lines.append(f"prmt.b32 w, ${2 * per_word}, ${2 * per_word + 1}, {0x7632 if e else 0x5410:#06x}; "
                     "shr.u32 s, w, 8;")
        lines += _lop3_lines("w", lambda k: f"{{${2 * k + e}, ${per_word + 2 * k + e}}}", bits, sub=True)
    return "\n".join(lines + ["}"])


if gluon is not None:

    def _word_layouts(k_bits: int, v_bits: int, we: int):
        """[warp, entry, word] layouts of the key and value words: lane t = l % 4 of a key row takes the words of
        its A fragment's 32 channels (entries l / 4 + 8 i); lane c = l / 4 takes the value words of channels
        c + 8 j, entries 2t, 2t + 1 (+8, +16), A's order."""
        def bases(words_a_lane: int, lanes: int) -> tuple[list, list]:
            return ([[0, 0, 1 << i] for i in range(words_a_lane.bit_length() - 1)],
                    [[0, 0, words_a_lane << i] for i in range(lanes)])

        kr, kl = bases(k_bits, 2)  # 4 * bits words an entry, a quarter each lane of a row
        rows = [[0, 8 << i, 0] for i in range(we.bit_length() - 4)]  # entries 8, 16 (, 32) apart
        kw_l = gl.DistributedLinearLayout(reg_bases=kr + rows,
                                          lane_bases=kl + [[0, 1, 0], [0, 2, 0], [0, 4, 0]],
                                          warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, we, 4 * k_bits])
        vr, vl = bases(v_bits // 2, 3)  # an eighth each lane of an entry pair
        vw_l = gl.DistributedLinearLayout(reg_bases=[[0, 1, 0]] + rows + vr,
                                          lane_bases=[[0, 2, 0], [0, 4, 0]] + vl,
                                          warp_bases=[[1, 0, 0], [2, 0, 0]], block_bases=[], shape=[4, we, 4 * v_bits])
        return kw_l, vw_l

    KEYS4 = gl.constexpr(_keys_ptx(4))
    KEYS2 = gl.constexpr(_keys_ptx(2))
    VALS4 = gl.constexpr(_values_ptx(4))
    VALS2 = gl.constexpr(_values_ptx(2))
    WORD_LAYOUTS = {(kb, vb, we): _word_layouts(kb, vb, we)  # the launch passes the pair (KW_L, VW_L)
                    for kb in BITS for vb in BITS for we in (32, 64)}
    NW = gl.constexpr(4)  # warps
    CH = gl.constexpr(CHUNK)
    RND = gl.constexpr(BLOCK)

    @gluon.jit
    def _in_registers(o, at: gl.constexpr, PW: gl.constexpr):
        """The PTX's outputs o[at:at + PW] (output at + 2j + e is channel j + e PW / 2 of a word) joined as
        [..., j bits high to low, e]: the last join is the lowest register bit, as the MMA operands want."""
        if PW == 8:
            return gl.join(gl.join(gl.join(o[at + 0], o[at + 4]), gl.join(o[at + 2], o[at + 6])),
                           gl.join(gl.join(o[at + 1], o[at + 5]), gl.join(o[at + 3], o[at + 7])))
        else:
            return gl.join(gl.join(gl.join(gl.join(o[at + 0], o[at + 8]), gl.join(o[at + 4], o[at + 12])),
                                   gl.join(gl.join(o[at + 2], o[at + 10]), gl.join(o[at + 6], o[at + 14]))),
                           gl.join(gl.join(gl.join(o[at + 1], o[at + 9]), gl.join(o[at + 5], o[at + 13])),
                                   gl.join(gl.join(o[at + 3], o[at + 11]), gl.join(o[at + 7], o[at + 15]))))

    @gluon.jit
    def _halves(x):
        """int32 holding float16x2 -> (low, high) float16."""
        return gl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [x], dtype=(gl.float16, gl.float16),
                                         is_pure=True, pack=1)

    @gluon.jit
    def _channels(pr, first: gl.constexpr, K_BITS: gl.constexpr):
        """Pairs ``pr[first:first + half]`` ([K_WORDS] each: word w's pair p holds channels KPW w + p and that +
        half) -> float16 [128] in the query's logical channel order k = e + 2t + 8 p0 + 16 c."""
        if K_BITS == 4:
            a0, b0 = _halves(pr[first])
            a1, b1 = _halves(pr[first + 1])
            a2, b2 = _halves(pr[first + 2])
            a3, b3 = _halves(pr[first + 3])
            x = gl.join(gl.join(gl.join(a0, a1), gl.join(a2, a3)), gl.join(gl.join(b0, b1), gl.join(b2, b3)))
            # joins make [warp, w, p0, p1, e] -> [warp, t, wl (2 bits), ph, p0, e]
            x = gl.reshape(gl.permute(x, (0, 1, 3, 2, 4)), (NW, 4, 4, 2, 2, 2))
            x = gl.permute(x, (0, 2, 3, 4, 1, 5))
            return gl.reshape(x, (NW, 128))
        else:
            a0, b0 = _halves(pr[first])
            a1, b1 = _halves(pr[first + 1])
            a2, b2 = _halves(pr[first + 2])
            a3, b3 = _halves(pr[first + 3])
            a4, b4 = _halves(pr[first + 4])
            a5, b5 = _halves(pr[first + 5])
            a6, b6 = _halves(pr[first + 6])
            a7, b7 = _halves(pr[first + 7])
            x = gl.join(gl.join(gl.join(gl.join(a0, a1), gl.join(a2, a3)), gl.join(gl.join(a4, a5), gl.join(a6, a7))),
                        gl.join(gl.join(gl.join(b0, b1), gl.join(b2, b3)), gl.join(gl.join(b4, b5), gl.join(b6, b7))))
            # joins make [warp, w, p0, p1, p2, e] -> [warp, t, wl, p2, p1, p0, e]
            x = gl.reshape(gl.permute(x, (0, 1, 4, 3, 2, 5)), (NW, 4, 2, 2, 2, 2, 2))
            x = gl.permute(x, (0, 2, 3, 4, 5, 1, 6))
            return gl.reshape(x, (NW, 128))

    @gluon.jit
    def _keys(kwords, K_BITS: gl.constexpr):
        """Key words [NW, WE, KW] -> float16 1024 + code * 2^(bits (k % (half / 2))) [NW, WE, KW, pair bits, e]."""
        if K_BITS == 4:
            ko = gl.inline_asm_elementwise(KEYS4, "=h,=h,=h,=h,=h,=h,=h,=h,r", [kwords],
                                           dtype=(gl.float16,) * 8, is_pure=True, pack=1)
            return _in_registers(ko, 0, 8)
        else:
            ko = gl.inline_asm_elementwise(KEYS2, "=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,=h,r", [kwords],
                                           dtype=(gl.float16,) * 16, is_pure=True, pack=1)
            return _in_registers(ko, 0, 16)

    @gluon.jit
    def _values(vwords, V_BITS: gl.constexpr, WE: gl.constexpr):
        """Value words [NW, WE, VW] -> float16 codes times 2^(bits (k % (half / 2))) [NW, WE, VW * PW] (per entry:
        word, pair bits, e), made two entries at a time (``_values_ptx``)."""
        VW: gl.constexpr = 4 * V_BITS
        PW: gl.constexpr = 32 // V_BITS
        a, b = gl.split(gl.permute(gl.reshape(vwords, (NW, WE // 2, 2, VW)), (0, 1, 3, 2)))
        if V_BITS == 4:
            vo = gl.inline_asm_elementwise(VALS4, "=h," * 16 + "r,r", [a, b], dtype=(gl.float16,) * 16, is_pure=True,
                                           pack=1)
        else:
            vo = gl.inline_asm_elementwise(VALS2, "=h," * 32 + "r,r", [a, b], dtype=(gl.float16,) * 32, is_pure=True,
                                           pack=1)
        x = gl.join(_in_registers(vo, 0, PW), _in_registers(vo, PW, PW))   # [..., f]: entry 2j + f
        x = gl.permute(gl.reshape(x, (NW, WE // 2, VW * PW, 2)), (0, 1, 3, 2))
        return gl.reshape(x, (NW, WE, VW * PW))

    @gluon.jit
    def _pair_loads(kp, first, end, stride_kpg, K_GROUP: gl.constexpr, KW: gl.constexpr, K_BITS: gl.constexpr):
        """The (scale, zero point) pairs of the key group holding entry ``first[w]``, for each warp w
        (``packed.key_pairs``: pair k of every word at k * KW; past ``end``: masked)."""
        ok = (first < end)[:, None]
        pb = kp + (first // K_GROUP)[:, None] * stride_kpg
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
    def _loads(KW, VW, VS, VZ, KPOS, row, start, end, stride_kr, stride_vr, stride_vsr, stride_pr, kw_w, kw_n, kw_i,
               vw_w, vw_n, vw_i, sw, sn, K_BITS: gl.constexpr, V_BITS: gl.constexpr, WE: gl.constexpr):
        """A block's loads: key words, value words, positions and the values' scales and zero points (past
        ``end``: masked)."""
        K_WORDS: gl.constexpr = 4 * K_BITS
        V_WORDS: gl.constexpr = 4 * V_BITS
        ke = start + kw_w[:, None, None] * CH + kw_n[None, :, None]
        kwords = gl.load(KW + row * stride_kr + ke * K_WORDS + kw_i[None, None, :], mask=ke < end, other=0)
        ve = start + vw_w[:, None, None] * CH + vw_n[None, :, None]
        vwords = gl.load(VW + row * stride_vr + ve * V_WORDS + vw_i[None, None, :], mask=ve < end, other=0)
        se = start + sw[:, None] * CH + sn[None, :]
        pos = gl.load(KPOS + row * stride_pr + se, mask=se < end, other=-1)
        vs = gl.load(VS + row * stride_vsr + se, mask=se < end, other=0.0)
        vz = gl.load(VZ + row * stride_vsr + se, mask=se < end, other=0.0)
        return kwords, vwords, pos, vs, vz

    @gluon.jit
    def _a_halves(x, a_l: gl.constexpr):
        """A operand [NW, M, 128] -> its channels [0, 64) and [64, 128) (independent MMA chains)."""
        lo, hi = gl.split(gl.permute(gl.reshape(x, (NW, x.shape[1], 2, 64)), (0, 1, 3, 2)))
        return gl.convert_layout(lo, a_l), gl.convert_layout(hi, a_l)

    @gluon.jit
    def _b_halves(x, b_l: gl.constexpr):
        """B operand [NW, 128, N] -> its channels [0, 64) and [64, 128)."""
        lo, hi = gl.split(gl.permute(gl.reshape(x, (NW, 2, 64, x.shape[2])), (0, 2, 3, 1)))
        return gl.convert_layout(lo, b_l), gl.convert_layout(hi, b_l)

    @gluon.jit
    def _prep(pr, q2, qs, K_BITS: gl.constexpr, WE: gl.constexpr, mma: gl.constexpr, a_l: gl.constexpr,
              b_l: gl.constexpr):
        """Each warp's key group's scales into the query: (q * scale [w, channel, head] as two channel halves, the
        scores' starting accumulator [w, entry, head] = sum_k q zero - 1024 q * scale, the same for every entry)."""
        HALF: gl.constexpr = 16 // K_BITS
        c_l: gl.constexpr = gl.SliceLayout(2, b_l)
        sc = gl.convert_layout(_channels(pr, 0, K_BITS), c_l)
        zc = gl.convert_layout(_channels(pr, HALF, K_BITS), c_l)
        qk0, qk1 = _b_halves(q2 * sc[:, :, None], b_l)
        qz0, qz1 = _b_halves(qs * zc[:, :, None], b_l)
        neg = gl.full([NW, 16, 64], -1024.0, gl.float16, layout=a_l)
        one = gl.full([NW, 16, 64], 1.0, gl.float16, layout=a_l)
        zero = gl.zeros([NW, 16, 8], gl.float32, layout=mma)
        off = ((mma_v2(neg, qk0, zero) + mma_v2(neg, qk1, zero))
               + (mma_v2(one, qz0, zero) + mma_v2(one, qz1, zero)))
        if WE == 64:  # the 16 rows of the offset MMA are the same: copied to every entry of the block
            off = gl.join(off, off)
            c0 = gl.convert_layout(gl.reshape(gl.permute(gl.join(off, off), (0, 3, 4, 1, 2)), (NW, WE, 8)), mma)
        else:
            c0 = gl.convert_layout(gl.reshape(gl.permute(gl.join(off, off), (0, 3, 1, 2)), (NW, WE, 8)), mma)
        return qk0, qk1, c0

    @gluon.jit
    def _block(loaded, prepared, state, q_pos, K_BITS: gl.constexpr, V_BITS: gl.constexpr, WE: gl.constexpr,
               LANE_SUMS: gl.constexpr, mma: gl.constexpr, a_l: gl.constexpr, b_l: gl.constexpr):
        """One block of a program's entries into the running (max, sum, zero-point sum, out^T); scores in log2
        units (the query carries scale * log2 e)."""
        kwords, vwords, pos, vs, vz = loaded
        qk0, qk1, c0 = prepared
        m_i, l_i, extra, acc = state
        # [w, n, t, (word, pair) bits high to low, e] -> [w, n, chunk bits, p0, t, e]: the A operand's order
        kx = gl.permute(gl.reshape(_keys(kwords, K_BITS), (NW, WE, 4, 2, 2, 2, 2, 2)), (0, 1, 3, 4, 5, 6, 2, 7))
        ka0, ka1 = _a_halves(gl.reshape(kx, (NW, WE, 128)), a_l)
        s = mma_v2(ka0, qk0, c0) + mma_v2(ka1, qk1, gl.zeros([NW, WE, 8], gl.float32, layout=mma))

        vs = vs.to(gl.float32)
        vz = vz.to(gl.float32)
        s = gl.where(((pos >= 0) & (pos <= q_pos))[:, :, None], s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m_i - m_safe)
        p = gl.exp2(s - m_safe[:, None, :])
        if LANE_SUMS:  # each lane's own entries: summed over the lanes once, at the end
            a3 = gl.convert_layout(alpha, gl.SliceLayout(1, l_i.type.layout))[:, None, :]
            l_i = l_i * a3 + gl.sum(gl.reshape(p, (NW, WE // 8, 8, 8)), axis=1)
            extra = extra * a3 + gl.sum(gl.reshape(p * vz[:, :, None], (NW, WE // 8, 8, 8)), axis=1)
        else:
            l_i = l_i * alpha + gl.sum(p, axis=1)
            extra = extra * alpha + gl.sum(p * vz[:, :, None], axis=1)
        pt = gl.convert_layout((p * vs[:, :, None]).to(gl.float16), b_l)   # P^T [w, n, head]

        # [w, n, c, (word, pair) bits, e] -> [w, (word, pair) bits, e, c, n]: logical channel
        # m = c + 8 (e + 2 p + VPW wl) is lane c's word wl, lop3 pair p, half e
        vx = gl.permute(gl.reshape(_values(vwords, V_BITS, WE), (NW, WE, 8, 2, 2, 2, 2)), (0, 3, 4, 5, 6, 2, 1))
        va = gl.convert_layout(gl.reshape(vx, (NW, 128, WE)), a_l)
        acc = mma_v2(va, pt, acc * alpha[:, None, :])
        return m_new, l_i, extra, acc

    @gluon.jit
    def _gluon_decode_kernel(Q, KW, VW, KP, VS, VZ, KPOS, QPOS, M_OUT, L_OUT, ACC_OUT, num_kv, length, split_len,
                             first, scale, stride_qb, stride_qh, stride_kr, stride_vr, stride_kpr, stride_kpg,
                             stride_vsr, stride_pr, stride_mb, stride_mh, stride_ab, stride_ah, stride_as,
                             GROUP: gl.constexpr, K_GROUP: gl.constexpr, K_BITS: gl.constexpr,
                             V_BITS: gl.constexpr, WE: gl.constexpr, LANE_SUMS: gl.constexpr, KW_L: gl.constexpr,
                             VW_L: gl.constexpr):
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[4, 1, 1],
                                                      instr_shape=[1, 16, 8])
        a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        e_l: gl.constexpr = gl.SliceLayout(2, mma)  # [warp, entry] of the scores
        h_l: gl.constexpr = gl.SliceLayout(1, mma)  # [warp, head] of the scores and of out^T
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

        # the query (B operand [w, channel, head]) in the keys' channel order: logical k = e + 2t + 8 p0 + 16 c
        # (MMA chunk c) is channel KPW (K_WORDS / 4 t + wl) + p + KPW / 2 e of lane t's word wl, lop3 pair
        # p = p0 + 2 (c % (KPW / 4))
        qk = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(2, b_l)))
        chunk = qk // 16
        pair = (qk // 8) % 2 + 2 * (chunk % (KPW // 4))
        phys_k = KPW * ((K_WORDS // 4) * ((qk // 2) % 4) + chunk // (KPW // 4)) + pair + (KPW // 2) * (qk % 2)
        qh = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, b_l)))
        qw = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, b_l)))
        head = (row % num_kv) * GROUP + qh
        q = gl.load(Q + b * stride_qb + head[None, None, :] * stride_qh + phys_k[None, :, None] + 0 * qw[:, None, None],
                    mask=(qh < GROUP)[None, None, :] & (qw >= 0)[:, None, None], other=0.0).to(gl.float32)
        q = q * (scale * 1.4426950408889634)  # scores in log2 units
        qs = q.to(gl.float16)  # times the zero points
        # times the scales: a lop3 pair's keys come out times 2^(bits (p % (KPW / 4)))
        down_k = gl.exp2(-(K_BITS * (pair % (KPW // 4))).to(gl.float32))
        q2 = (q * down_k[None, :, None]).to(gl.float16)

        kw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, KW_L)))
        kw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, KW_L)))
        kw_i = gl.arange(0, K_WORDS, layout=gl.SliceLayout(0, gl.SliceLayout(1, KW_L)))
        vw_w = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(2, VW_L)))
        vw_n = gl.arange(0, WE, layout=gl.SliceLayout(0, gl.SliceLayout(2, VW_L)))
        vw_i = gl.arange(0, V_WORDS, layout=gl.SliceLayout(0, gl.SliceLayout(1, VW_L)))
        sw = gl.arange(0, NW, layout=gl.SliceLayout(1, e_l))
        sn = gl.arange(0, WE, layout=gl.SliceLayout(0, e_l))

        m_i = gl.full([NW, 8], float("-inf"), gl.float32, layout=h_l)
        if LANE_SUMS:
            l_i = gl.sum(gl.reshape(gl.zeros([NW, WE, 8], gl.float32, layout=mma), (NW, WE // 8, 8, 8)), axis=1)
        else:
            l_i = gl.zeros([NW, 8], gl.float32, layout=h_l)
        extra = l_i  # sum_n p[n] z[n] (the values' zero points)
        acc = gl.zeros([NW, 128, 8], gl.float32, layout=mma)  # out^T: [warp, channel (permuted), head]
        state = (m_i, l_i, extra, acc)
        # warp w takes the CHUNK entries at begin + BLOCK r + CHUNK w in round r, GW blocks of WE, all of one key
        # group: its scales are loaded a round ahead and folded into the query once a round, at its last block
        GW: gl.constexpr = CH // WE
        cur = _loads(KW, VW, VS, VZ, KPOS, row, begin, end, stride_kr, stride_vr, stride_vsr, stride_pr, kw_w, kw_n,
                     kw_i, vw_w, vw_n, vw_i, sw, sn, K_BITS, V_BITS, WE)
        pw = gl.arange(0, NW, layout=gl.SliceLayout(1, gl.SliceLayout(1, KW_L)))
        pi = gl.arange(0, K_WORDS, layout=gl.SliceLayout(0, gl.SliceLayout(1, KW_L)))
        kp = KP + row * stride_kpr + pi[None, :]
        g0 = begin + pw * CH
        prepared = _prep(_pair_loads(kp, g0, end, stride_kpg, K_GROUP, K_WORDS, K_BITS), q2, qs, K_BITS, WE, mma, a_l,
                         b_l)
        pr_n = _pair_loads(kp, g0 + RND, end, stride_kpg, K_GROUP, K_WORDS, K_BITS)
        for j in range(0, GW * gl.cdiv(end - begin, RND)):
            jn = j + 1
            nxt = _loads(KW, VW, VS, VZ, KPOS, row, begin + (jn // GW) * RND + (jn % GW) * WE, end, stride_kr,
                         stride_vr, stride_vsr, stride_pr, kw_w, kw_n, kw_i, vw_w, vw_n, vw_i, sw, sn, K_BITS, V_BITS,
                         WE)
            state = _block(cur, prepared, state, q_pos, K_BITS, V_BITS, WE, LANE_SUMS, mma, a_l, b_l)
            if jn % GW == 0:  # the next round's scales into the query; the round after's loaded
                prepared = _prep(pr_n, q2, qs, K_BITS, WE, mma, a_l, b_l)
                pr_n = _pair_loads(kp, g0 + (jn // GW + 1) * RND, end, stride_kpg, K_GROUP, K_WORDS, K_BITS)
            cur = nxt
        m_i, l_i, extra, acc = state
        if LANE_SUMS:
            l_i = gl.convert_layout(gl.sum(l_i, axis=1), h_l)
            extra = gl.convert_layout(gl.sum(extra, axis=1), h_l)
        # the values' powers of two out of each logical channel m = c + 8 (e + 2 p + VPW wl) (lop3 pair p)
        cm = gl.arange(0, 128, layout=gl.SliceLayout(0, gl.SliceLayout(2, mma)))
        down = gl.exp2(-(V_BITS * (((cm // 16) % (VPW // 2)) % (VPW // 4))).to(gl.float32))
        acc = acc * down[None, :, None] + extra[:, None, :]
        m = gl.max(m_i, axis=0)
        wgt = gl.exp2(m_i - gl.where(m == float("-inf"), 0.0, m)[None, :])  # the warps' partials merged
        l_tot = gl.sum(l_i * wgt, axis=0)
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
        mh = gl.arange(0, 8, layout=gl.SliceLayout(0, h_l))
        at = b * stride_mb + ((row % num_kv) * GROUP + mh) * stride_mh + at_split
        gl.store(M_OUT + at, m * 0.6931471805599453, mask=mh < GROUP)
        gl.store(L_OUT + at, l_tot, mask=mh < GROUP)


def supported(query: torch.Tensor, packed: PackedKV, sliding_window: int | None = None) -> bool:
    """Whether ``decode_attention_gluon`` serves this query and cache (see the module's docstring)."""
    if gluon is None or not query.is_cuda or sliding_window:
        return False
    batch, num_q, t_q, dim = query.shape
    rows = packed.rows
    return (packed.quantizer == "kivi" and packed.k_bits in BITS and packed.v_bits in BITS and packed.dim == 128
            and dim == 128 and t_q == 1 and packed.group % CHUNK == 0
            and value_group(packed.group, packed.dim) == packed.dim and query.dtype in (torch.bfloat16, torch.float16)
            and rows % batch == 0 and num_q % (rows // batch) == 0 and num_q // (rows // batch) <= 8)


def plan(length: int, rows: int, sms: int, splits: int | None = None) -> tuple[int, int]:
    """(splits, entries per split) for ``rows`` rows of ``length`` entries on ``sms`` SMs: by default one wave of
    programs, ``PROGRAMS_PER_SM`` an SM, as long as each split keeps a round (``BLOCK`` entries: a key group for
    each warp). A program is heavy (its registers allow two an SM), so more splits only add waves, prologues and
    partials to merge (measured with ``benchmarks/bench_packed_decode.py``)."""
    if splits is None:
        splits = max(1, min(-(-length // BLOCK), PROGRAMS_PER_SM * sms // rows))
    return plan_splits(length, rows, BLOCK, "cpu", splits)


def _plan(length: int, rows: int, device, splits: int | None = None) -> tuple[int, int]:
    return plan(length, rows, torch.cuda.get_device_properties(device).multi_processor_count, splits)


def splits_for(packed: PackedKV, rows: int, device) -> int:
    """How many splits ``decode_attention_gluon`` gives ``packed`` (for a shared ``Partials``)."""
    return _plan(packed.length, rows, device)[0]


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
    splits, split_len = _plan(length, rows, query.device, splits)
    query = query.contiguous()
    if key_pos.dtype != torch.int32 or not key_pos.is_contiguous():
        key_pos = key_pos.to(torch.int32).contiguous()
    query_pos = query_pos.to(device=query.device, dtype=torch.int32)
    own = partials is None
    parts = Partials(query, splits) if own else partials
    first = parts.take(splits)
    pairs = packed.keep_key_pairs()
    k, v, vs, vz = packed.k, packed.v, packed.v_scale, packed.v_zero
    we, lane_sums = TILES.get((packed.k_bits, packed.v_bits), TILE)
    kw_l, vw_l = WORD_LAYOUTS[packed.k_bits, packed.v_bits, we]
    _gluon_decode_kernel[(rows, splits)](
        query, k, v, pairs, vs, vz, key_pos.view(rows, length), query_pos, parts.m, parts.lsum, parts.acc,
        num_kv, length, split_len, first, scaling, query.stride(0), query.stride(1), k.stride(0), v.stride(0),
        pairs.stride(0), pairs.stride(1), vs.stride(0), length, parts.m.stride(0), parts.m.stride(1),
        parts.acc.stride(0), parts.acc.stride(1), parts.acc.stride(3), GROUP=num_q // num_kv, K_GROUP=packed.group,
        K_BITS=packed.k_bits, V_BITS=packed.v_bits, WE=we, LANE_SUMS=lane_sums,
        KW_L=kw_l, VW_L=vw_l, num_warps=4)
    return parts.merge() if own else None
