"""KIVI (Liu et al., 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache").

Asymmetric min/max quantization, ``floor(x / scale + 0.5)`` rounding, ``32 / bits`` codes per int32 word:

- keys per channel over groups of ``group`` consecutive entries: codes [R, T', D * bits / 32] int32,
  scale/zero [R, ceil(T / group), D];
- values per entry over groups of ``min(group, D)`` channels: codes [R, T', D * bits / 32], scale/zero
  [R, T', D / group'];

where T' is T rounded up to whole key groups (codes past T are never read). A last, partial key group is
filled with copies of its last entry, which leaves its minimum and maximum, and so every code, unchanged.
Scales and zero points are float16. Deviation: KIVI keeps a full-precision window of the most recent
tokens; here the full-precision window is the top of the ranking (``LayerSpec.residual``).
"""

from __future__ import annotations

import torch

from evolkv.quantizers.base import Quantizer
from evolkv.quantizers.registry import register

SCALE_BYTES = 2  # each scale and zero point is stored as float16


def _quantize(x: torch.Tensor, bits: int, group: int, per_channel: bool):
    from evolkv.kernels.layout import use_triton
    from evolkv.kernels.layout import SCALE_DTYPE
    from evolkv.kernels.reference import quantize_ref

    if use_triton(x) and x.shape[1]:
        from evolkv.kernels.quantize import quantize

        codes, scale, zero = quantize(x, bits, group, per_channel)
    else:
        codes, scale, zero = quantize_ref(x, bits, group, per_channel)
    return codes, scale.to(SCALE_DTYPE), zero.to(SCALE_DTYPE)


@register("kivi")
class KIVI(Quantizer):
    kernel = 0

    def pack(self, keys, values, k_bits, v_bits, group):
        from evolkv.kernels.layout import PackedKV, value_group

        rows, length, dim = keys.shape
        padded = -(-length // group) * group
        if padded > length and (k_bits < 16 or v_bits < 16):
            last = keys[:, -1:].expand(rows, padded - length, dim)  # copies of the last entry: same min/max
            keys_p = torch.cat([keys, last], 1)
            values_p = torch.cat([values, values[:, -1:].expand(rows, padded - length, dim)], 1)
        else:
            keys_p, values_p = keys, values
        out = PackedKV(k_bits, v_bits, group, length, dim, keys.contiguous(), values.contiguous(), quantizer=self.name)
        if k_bits < 16:
            out.k, out.k_scale, out.k_zero = _quantize(keys_p, k_bits, group, per_channel=True)
        if v_bits < 16:
            out.v, out.v_scale, out.v_zero = _quantize(values_p, v_bits, value_group(group, dim), per_channel=False)
        return out

    def unpack(self, packed, dtype):
        from evolkv.kernels.layout import value_group
        from evolkv.kernels.reference import dequantize_ref

        def restore(data, scale, zero, bits, group, per_channel):
            if bits == 16:
                return data[:, :packed.length].to(dtype)
            full = dequantize_ref(data, scale.float(), zero.float(), bits, group, per_channel, dtype)
            return full[:, :packed.length]

        keys = restore(packed.k, *packed.key_scales(), packed.k_bits, packed.group, True)
        values = restore(packed.v, packed.v_scale, packed.v_zero, packed.v_bits,
                         value_group(packed.group, packed.dim), False)
        return keys, values

    def head_bytes(self, kept, full, k_bits, v_bits, group, dim, dtype_bytes=2):
        packed = kept - full
        total = 0
        for bits, keys in ((k_bits, True), (v_bits, False)):
            if bits == 16:
                total += kept * dim * dtype_bytes
                continue
            total += full * dim * dtype_bytes + packed * dim * bits // 8
            if keys and packed:  # one (scale, zero) per channel and group of entries touched
                total += -(-packed // group) * dim * 2 * SCALE_BYTES
            elif packed:  # one (scale, zero) per entry and group of channels
                total += packed * (dim // min(group, dim)) * 2 * SCALE_BYTES
        return total
