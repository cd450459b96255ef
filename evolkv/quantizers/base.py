"""The quantizer contract: how a layer's kept entries are stored below 16 bits, and how the kernels read them.

A quantizer packs rows of entries (keys and values [R, T, D], in the order they were ranked) into a
``PackedKV`` (``evolkv.kernels.packed``), unpacks them (the torch path and the references), counts the bytes
one KV head stores (what ``kv_bytes`` and the memory axis measure), and names the path the Triton kernels'
``load_entries`` takes to dequantize its entries on the fly (``kernel``, a ``tl.constexpr``).
"""

from __future__ import annotations

import torch


class Quantizer:
    name: str = ""
    kernel: int = 0  # load_entries' QUANT: which dequantize path the attention kernels compile

    def pack(self, keys: torch.Tensor, values: torch.Tensor, k_bits: int, v_bits: int, group: int):
        """Quantize ``keys``/``values`` [R, T, D] (entries in storage order) to a ``PackedKV``."""
        raise NotImplementedError

    def unpack(self, packed, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries the kernels see: keys, values [R, T, D] in ``dtype``."""
        raise NotImplementedError

    def head_bytes(self, kept: int, full: int, k_bits: int, v_bits: int, group: int, dim: int,
                   dtype_bytes: int = 2) -> int:
        """Bytes one KV head stores for ``kept`` entries, the first ``full`` of them at full precision."""
        raise NotImplementedError
