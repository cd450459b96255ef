"""KIVI-style quantize/pack and dequantize/unpack of a KV cache (keys per-channel, values per-token).

Same numerics as ``reference.quantize_ref`` / ``dequantize_ref``: asymmetric min/max groups of ``group_size``
(tokens for keys, channels for values), ``floor(x / scale + 0.5)`` rounding, ``32 / bits`` codes per int32
word along the head dimension. Bit width and layout are ``tl.constexpr`` flags of one kernel each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quantize_kernel(X, PACKED, SCALE, ZERO, length,
                     stride_xr, stride_xt, stride_pr, stride_pt, stride_sr, stride_st,
                     BITS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, PER_CHANNEL: tl.constexpr,
                     BLOCK_T: tl.constexpr):
    r = tl.program_id(0)
    tb = tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, DIM)
    ok = t < length
    x = tl.load(X + r * stride_xr + t[:, None] * stride_xt + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    levels: tl.constexpr = 2**BITS - 1
    if PER_CHANNEL:  # BLOCK_T == GROUP tokens: one scale per channel
        low = tl.min(x, axis=0)
        scale = tl.math.div_rn(tl.max(x, axis=0) - low, levels + 0.0)
        safe = tl.where(scale > 0, scale, 1.0)
        codes = tl.math.div_rn(x - low[None, :], tl.broadcast_to(safe[None, :], (BLOCK_T, DIM)))
        tl.store(SCALE + r * stride_sr + tb * stride_st + d, scale)
        tl.store(ZERO + r * stride_sr + tb * stride_st + d, low)
    else:  # one scale per token and group of channels
        x3 = tl.reshape(x, (BLOCK_T, DIM // GROUP, GROUP))
        low = tl.min(x3, axis=2)
        scale = tl.math.div_rn(tl.max(x3, axis=2) - low, levels + 0.0)
        safe = tl.where(scale > 0, scale, 1.0)
        codes3 = tl.math.div_rn(x3 - low[:, :, None], tl.broadcast_to(safe[:, :, None], (BLOCK_T, DIM // GROUP, GROUP)))
        codes = tl.reshape(codes3, (BLOCK_T, DIM))
        g = tl.arange(0, DIM // GROUP)
        tl.store(SCALE + r * stride_sr + t[:, None] * stride_st + g[None, :], scale, mask=ok[:, None])
        tl.store(ZERO + r * stride_sr + t[:, None] * stride_st + g[None, :], low, mask=ok[:, None])
    codes = tl.minimum(tl.maximum(tl.floor(codes + 0.5), 0.0), levels + 0.0).to(tl.uint32)
    PER_WORD: tl.constexpr = 32 // BITS
    shifts = (tl.arange(0, PER_WORD) * BITS).to(tl.uint32)
    words = tl.sum(tl.reshape(codes, (BLOCK_T, DIM // PER_WORD, PER_WORD)) << shifts[None, None, :], axis=2)
    w = tl.arange(0, DIM // PER_WORD)
    tl.store(PACKED + r * stride_pr + t[:, None] * stride_pt + w[None, :], words.to(tl.int32, bitcast=True),
             mask=ok[:, None])


@triton.jit
def load_entries(P, S, Z, offs, ok, stride_pt, stride_st, BITS: tl.constexpr, GROUP: tl.constexpr,
                 HEAD_DIM: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr, start=0,
                 COMPACT: tl.constexpr = False, QUANT: tl.constexpr = 0):
    """Entries ``offs`` [BLOCK] of one row of a packed cache as float32 [BLOCK, D]: unpacked and dequantized,
    or at ``BITS == 16`` loaded as they are. P/S/Z point at the row's codes, scales and zero points.
    ``QUANT`` is the quantizer's ``kernel`` id (``evolkv.quantizers``): 0 is KIVI's layout, the only one so far;
    a new quantizer adds its branch here.

    ``COMPACT`` loads each scale once and broadcasts it in registers: for keys the block must lie inside one
    group (``offs = start + arange``, GROUP a multiple of BLOCK, ``start`` on a block boundary) or cover whole
    groups (BLOCK a multiple of GROUP, ``start`` on a group boundary); otherwise every element loads its own
    (cached) scale."""
    d = tl.arange(0, HEAD_DIM)
    if BITS == 16:
        x = tl.load(P + offs[:, None] * stride_pt + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    else:
        tl.static_assert(QUANT == 0, "no load path for this quantizer kernel id")
        PER_WORD: tl.constexpr = 32 // BITS
        w = tl.arange(0, HEAD_DIM // PER_WORD)
        words = tl.load(P + offs[:, None] * stride_pt + w[None, :], mask=ok[:, None], other=0)
        shifts = (tl.arange(0, PER_WORD) * BITS).to(tl.uint32)
        codes = (words.to(tl.uint32, bitcast=True)[:, :, None] >> shifts[None, None, :]) & (2**BITS - 1)
        codes = tl.reshape(codes, (BLOCK, HEAD_DIM)).to(tl.float32)
        if COMPACT and PER_CHANNEL and BLOCK <= GROUP:  # keys: the block's one scale row
            at = (start // GROUP) * stride_st + d
            scale = tl.load(S + at).to(tl.float32)[None, :]
            zero = tl.load(Z + at).to(tl.float32)[None, :]
        elif COMPACT and PER_CHANNEL:  # keys: the rows of the whole groups the block covers
            rows: tl.constexpr = BLOCK // GROUP
            g = start // GROUP + tl.arange(0, rows)
            at = g[:, None] * stride_st + d[None, :]
            g_ok = tl.reshape(ok, (rows, GROUP)).to(tl.int32)
            g_ok = tl.max(g_ok, axis=1) > 0
            shape3: tl.constexpr = (rows, GROUP, HEAD_DIM)
            scale = tl.load(S + at, mask=g_ok[:, None], other=0.0).to(tl.float32)
            zero = tl.load(Z + at, mask=g_ok[:, None], other=0.0).to(tl.float32)
            scale = tl.reshape(tl.broadcast_to(scale[:, None, :], shape3), (BLOCK, HEAD_DIM))
            zero = tl.reshape(tl.broadcast_to(zero[:, None, :], shape3), (BLOCK, HEAD_DIM))
        elif COMPACT:  # values: [BLOCK, D / GROUP] scales, broadcast over each group's channels
            g = tl.arange(0, HEAD_DIM // GROUP)
            at = offs[:, None] * stride_st + g[None, :]
            shape: tl.constexpr = (BLOCK, HEAD_DIM // GROUP, GROUP)
            scale = tl.load(S + at, mask=ok[:, None], other=0.0).to(tl.float32)
            zero = tl.load(Z + at, mask=ok[:, None], other=0.0).to(tl.float32)
            scale = tl.reshape(tl.broadcast_to(scale[:, :, None], shape), (BLOCK, HEAD_DIM))
            zero = tl.reshape(tl.broadcast_to(zero[:, :, None], shape), (BLOCK, HEAD_DIM))
        else:
            if PER_CHANNEL:  # keys: one scale per channel and group of entries
                at = (offs // GROUP)[:, None] * stride_st + d[None, :]
            else:  # values: one scale per entry and group of channels
                at = offs[:, None] * stride_st + (d // GROUP)[None, :]
            scale = tl.load(S + at, mask=ok[:, None], other=0.0).to(tl.float32)
            zero = tl.load(Z + at, mask=ok[:, None], other=0.0).to(tl.float32)
        x = codes * scale + zero
    return x


@triton.jit
def _dequantize_kernel(PACKED, SCALE, ZERO, OUT, length,
                       stride_pr, stride_pt, stride_sr, stride_st, stride_or, stride_ot,
                       BITS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr, PER_CHANNEL: tl.constexpr,
                       BLOCK_T: tl.constexpr, QUANT: tl.constexpr):
    r = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = t < length
    x = load_entries(PACKED + r * stride_pr, SCALE + r * stride_sr, ZERO + r * stride_sr, t, ok, stride_pt,
                     stride_st, BITS, GROUP, DIM, PER_CHANNEL, BLOCK_T, QUANT=QUANT)
    d = tl.arange(0, DIM)
    tl.store(OUT + r * stride_or + t[:, None] * stride_ot + d[None, :], x.to(OUT.dtype.element_ty), mask=ok[:, None])


def _check(x_shape, bits: int, group_size: int, per_channel: bool) -> None:
    rows, length, dim = x_shape
    if bits not in (8, 4, 2):
        raise ValueError(f"bits must be 8, 4 or 2, not {bits}")
    if dim & (dim - 1) or dim < 32 // bits:
        raise ValueError(f"head_dim {dim} must be a power of two >= {32 // bits}")
    if per_channel and length % group_size:
        raise ValueError(f"keys: {length} tokens are not whole groups of {group_size}")
    if not per_channel and (dim % group_size or group_size > dim):
        raise ValueError(f"values: head_dim {dim} is not whole groups of {group_size}")


def quantize(x: torch.Tensor, bits: int, group_size: int, per_channel: bool, block_t: int = 16
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [R, T, D] -> (packed [R, T, D * bits / 32] int32, scale, zero) as ``reference.quantize_ref``."""
    _check(x.shape, bits, group_size, per_channel)
    rows, length, dim = x.shape
    x = x.contiguous()
    packed = torch.empty(rows, length, dim * bits // 32, dtype=torch.int32, device=x.device)
    groups = (rows, length // group_size, dim) if per_channel else (rows, length, dim // group_size)
    scale = torch.empty(groups, dtype=torch.float32, device=x.device)
    zero = torch.empty_like(scale)
    block = group_size if per_channel else block_t
    _quantize_kernel[(rows, triton.cdiv(length, block))](
        x, packed, scale, zero, length, x.stride(0), x.stride(1), packed.stride(0), packed.stride(1),
        scale.stride(0), scale.stride(1), BITS=bits, GROUP=group_size, DIM=dim, PER_CHANNEL=per_channel,
        BLOCK_T=block)
    return packed, scale, zero


def dequantize(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
               per_channel: bool, dtype: torch.dtype = torch.float32, block_t: int = 16, quant: int = 0
               ) -> torch.Tensor:
    """Inverse of ``quantize``: [R, T, D * bits / 32] int32 -> [R, T, D] in ``dtype``."""
    rows, length, words = packed.shape
    dim = words * 32 // bits
    _check((rows, length, dim), bits, group_size, per_channel)
    packed, scale, zero = packed.contiguous(), scale.contiguous(), zero.contiguous()
    out = torch.empty(rows, length, dim, dtype=dtype, device=packed.device)
    _dequantize_kernel[(rows, triton.cdiv(length, block_t))](
        packed, scale, zero, out, length, packed.stride(0), packed.stride(1), scale.stride(0), scale.stride(1),
        out.stride(0), out.stride(1), BITS=bits, GROUP=group_size, DIM=dim, PER_CHANNEL=per_channel,
        BLOCK_T=block_t, QUANT=quant)
    return out
