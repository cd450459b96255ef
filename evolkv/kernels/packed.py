"""A KV cache stored at reduced precision: ``pack`` and ``unpack`` dispatch to the cache's quantizer
(``evolkv.quantizers``), and the torch references read a packed cache through them. The layout itself,
``PackedKV``, lives in ``kernels.layout`` (re-exported here).
"""

from __future__ import annotations

import torch

from evolkv.kernels.layout import (  # noqa: F401  (the layout, re-exported)
    SCALE_DTYPE, PackedKV, key_pairs, scales_from_pairs, use_triton, value_group)


def pack(keys: torch.Tensor, values: torch.Tensor, k_bits: int, v_bits: int, group: int,
         quantizer: str = "kivi") -> PackedKV:
    """Quantize ``keys``/``values`` [R, T, D] (entries in storage order) to (k_bits, v_bits) with ``quantizer``."""
    from evolkv.quantizers import QUANTIZERS

    return QUANTIZERS[quantizer].pack(keys, values, k_bits, v_bits, group)


def kernel_path(packed: PackedKV) -> int:
    """The load path (``load_entries``' ``QUANT``) the attention kernels compile for ``packed``'s quantizer."""
    from evolkv.quantizers import QUANTIZERS

    return QUANTIZERS[packed.quantizer].kernel


def pack_ranked(keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, k_bits: int, v_bits: int,
                group: int, start: int = 0, quantizer: str = "kivi") -> PackedKV:
    """Quantize a cache [R, T, D] in each row's ranking ``order`` [R, T] (the storage order of its entries),
    from rank ``start`` on: the ranks before it stay at full precision, so key groups begin at ``start``
    and the top-ranked entries (attention sinks, heavy hitters) never widen a group's range."""
    idx = order[:, start:].long()[..., None].expand(-1, -1, keys.shape[-1])
    return pack(keys.gather(1, idx), values.gather(1, idx), k_bits, v_bits, group, quantizer)


def tail_first(order: torch.Tensor, capacity: int) -> torch.Tensor:
    """``order`` [..., T] with its first ``capacity`` ranks reversed: the entries a budget evicts (ranks
    ``n`` to ``capacity - 1``) become the first ``capacity - n``, so the MiKV tier that keeps them at low
    precision is a prefix too, read by the same kernels (``include_new=False``)."""
    return torch.cat([order[..., :capacity].flip(-1), order[..., capacity:]], -1)


def densify(packed: PackedKV, dtype: torch.dtype) -> PackedKV:
    """The same entries dequantized into a 16-bit ``PackedKV`` (the Triton dequantize kernel on CUDA).

    For many candidates over one packed prefill, dequantizing once and letting every candidate read dense
    rows beats each candidate dequantizing its prefix again (H100: ``benchmarks/bench_quantized.py``)."""
    whole_groups = packed.k_bits == 16 or packed.k.shape[1] % packed.group == 0  # as ``pack`` leaves them
    if use_triton(packed.k) and packed.length and whole_groups:
        from evolkv.kernels.quantize import dequantize

        def restore(data, scale, zero, bits, group, per_channel):
            if bits == 16:
                return data[:, :packed.length]
            return dequantize(data, scale, zero, bits, group, per_channel, dtype,
                              quant=kernel_path(packed))[:, :packed.length]

        keys = restore(packed.k, *packed.key_scales(), packed.k_bits, packed.group, True)
        values = restore(packed.v, packed.v_scale, packed.v_zero, packed.v_bits,
                         value_group(packed.group, packed.dim), False)
    else:
        keys, values = unpack(packed, dtype)
    return PackedKV(16, 16, packed.group, packed.length, packed.dim, keys.contiguous(), values.contiguous())


def unpack(packed: PackedKV, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries the kernels see: keys, values [R, T, D] in ``dtype`` (dequantized where packed)."""
    from evolkv.quantizers import QUANTIZERS

    return QUANTIZERS[packed.quantizer].unpack(packed, dtype)


def with_packed_entries(keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, packed: PackedKV,
                        residual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill cache as a candidate reading ``packed`` sees it: keys, values [H_kv, T, D] in position
    order, every entry of rank >= ``residual`` in ``order`` [H_kv, T] replaced by its dequantized value
    (``packed`` holds ranks ``residual`` to ``T - 1``, as ``pack_ranked(..., start=residual)`` makes it)."""
    packed_keys, packed_values = unpack(packed, keys.dtype)  # [H_kv, T - residual, D] in ranking order
    idx = order[:, residual:].long()[..., None].expand(-1, -1, keys.shape[-1])
    keys = keys.scatter(1, idx, packed_keys)
    values = values.scatter(1, idx, packed_values)
    return keys, values


def gathered_attention_packed_ref(query, keys, values, order, counts, new_keys, new_values, scaling,
                                  sliding_window=None, packed: PackedKV | None = None, residual: int = 0,
                                  include_new: bool = True):
    """``reference.gathered_attention_ref`` with ranks >= ``residual`` read from ``packed`` (dequantized)."""
    from evolkv.kernels.reference import gathered_attention_ref

    if packed is not None:
        keys, values = with_packed_entries(keys, values, order[0], packed, residual)
    return gathered_attention_ref(query, keys, values, order, counts, new_keys, new_values, scaling,
                                  sliding_window, include_new)


def attend_packed_ref(query, packed: PackedKV, key_pos, query_pos, scaling, sliding_window=None, softcap=None):
    """``reference.attend`` over a packed cache of B * H_kv rows (row b * H_kv + h), dequantized first."""
    from evolkv.kernels.reference import attend

    batch, heads, length = key_pos.shape
    keys, values = unpack(packed, query.dtype)
    shape = (batch, heads, length, packed.dim)
    return attend(query, keys.reshape(shape), values.reshape(shape), key_pos, query_pos, scaling, sliding_window,
                  softcap)
