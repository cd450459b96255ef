"""The stored layout of a reduced-precision KV cache (``PackedKV``), with nothing to dispatch: the quantizers
(``evolkv.quantizers``) build it and the kernels read it, so both import this module and neither imports the
other through it.

``PackedKV`` holds R rows (one per sequence and KV head) of up to T entries each, in the order the entries
were ranked, keys and values each either packed by its ``quantizer`` (KIVI's layout: codes [R, T', D * bits / 32]
int32 with key scales per group of entries and value scales per entry) or full precision (16 bits).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def use_triton(tensor: torch.Tensor) -> bool:
    """``EVOLKV_KERNELS``: ``auto`` (Triton on CUDA), ``triton`` (also on CPU, under TRITON_INTERPRET=1), ``torch``."""
    mode = os.environ.get("EVOLKV_KERNELS", "auto")
    if mode == "torch" or (mode == "auto" and not tensor.is_cuda):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


SCALE_DTYPE = torch.float16


def value_group(group: int, dim: int) -> int:
    """Values are quantized over groups of this many channels (a head narrower than the group is one group)."""
    return min(group, dim)


@dataclass
class PackedKV:
    """Keys and values of ``rows`` rows of ``length`` entries each, at (k_bits, v_bits)."""

    k_bits: int
    v_bits: int
    group: int
    length: int
    dim: int
    k: torch.Tensor  # int32 codes [R, T', W] or, at 16 bits, the entries [R, T, D]
    v: torch.Tensor
    k_scale: torch.Tensor | None = None  # [R, ceil(T / group), D]
    k_zero: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None  # [R, T', D / group']
    v_zero: torch.Tensor | None = None
    quantizer: str = "kivi"  # evolkv.quantizers name: the layout of the codes and the kernels' load path
    k_pairs: torch.Tensor | None = None  # key_pairs: k_scale and k_zero's bytes rearranged (then those are None)

    @property
    def rows(self) -> int:
        return self.k.shape[0]

    def nbytes(self) -> int:
        """Storage of every tensor (codes, full-precision entries, scales and zero points)."""
        parts = (self.k, self.v, self.k_scale, self.k_zero, self.v_scale, self.v_zero, self.k_pairs)
        return sum(p.numel() * p.element_size() for p in parts if p is not None)

    def key_scales(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(k_scale, k_zero), rebuilt from ``k_pairs`` when the cache keeps its key scales only that way."""
        if self.k_scale is None and self.k_pairs is not None:
            return scales_from_pairs(self.k_pairs, self.k_bits, self.dim)
        return self.k_scale, self.k_zero

    def keep_key_pairs(self) -> torch.Tensor:
        """The key scales and zero points as ``key_pairs`` (the operands of ``folded``'s ``pairs`` and of
        ``gluon_decode``), made once: the fp16 tensors are dropped (the pairs hold the same bytes) and ``key_scales``
        rebuilds them for the paths that read them."""
        if self.k_pairs is None:
            self.k_pairs = key_pairs(self.k_scale, self.k_zero, self.k_bits)
            self.k_scale = self.k_zero = None
        return self.k_pairs

    def narrow(self, start: int, length: int) -> PackedKV:
        """A copy of entries [start, start + length) of every row (``start`` on a key-group boundary): their
        codes, and the scales and zero points of the key groups they touch."""
        if start % self.group:
            raise ValueError(f"start {start} is not on a group boundary of {self.group}")
        length = max(0, min(length, self.length - start))
        end = start + length
        g0, g1 = start // self.group, -(-end // self.group)
        cut = lambda t, s, e: None if t is None else t[:, s:e].clone()  # noqa: E731  (copies: frees the rest)
        return PackedKV(self.k_bits, self.v_bits, self.group, length, self.dim,
                        cut(self.k, start, end), cut(self.v, start, end),
                        cut(self.k_scale, g0, g1), cut(self.k_zero, g0, g1),
                        cut(self.v_scale, start, end), cut(self.v_zero, start, end), self.quantizer,
                        cut(self.k_pairs, g0, g1))


    def select(self, rows: torch.Tensor) -> PackedKV:
        """A copy of rows ``rows`` (indices) of every tensor: some KV heads of a one-sequence cache."""
        take = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        return PackedKV(self.k_bits, self.v_bits, self.group, self.length, self.dim, take(self.k), take(self.v),
                        take(self.k_scale), take(self.k_zero), take(self.v_scale), take(self.v_zero), self.quantizer,
                        take(self.k_pairs))


def _pair_channels(k_bits: int, dim: int, device) -> tuple[torch.Tensor, int]:
    """The low channel of each pair, pair k of word w at k * W + w, and the distance to its high channel."""
    per_word, half = 32 // k_bits, 16 // k_bits
    low = torch.arange(dim // per_word)[None, :] * per_word + torch.arange(half)[:, None]
    return low.flatten().to(device), half


def key_pairs(k_scale: torch.Tensor, k_zero: torch.Tensor, k_bits: int) -> torch.Tensor:
    """KIVI key scales and zero points [R, G, D] (fp16) as int32 [R, G, 2 * half, W] (half = 16 / k_bits, W words
    a row): [r, g, k, w] holds channel 32 / k_bits * w + k in its low half and that + half in its high half, of
    the scales for k < half, of the zero points for the rest. ``kernels.folded``'s ``UNPACK=2`` and
    ``kernels.gluon_decode`` take each as one ``fma.rn.f16x2`` operand; the bytes are the fp16 tensors', rearranged."""
    low, half = _pair_channels(k_bits, k_scale.shape[-1], k_scale.device)

    def pairs(t: torch.Tensor) -> torch.Tensor:
        bits = t.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
        return (bits[..., low] | (bits[..., low + half] << 16)).unflatten(-1, (half, -1))

    return torch.cat([pairs(k_scale), pairs(k_zero)], 2).contiguous()


def scales_from_pairs(k_pairs: torch.Tensor, k_bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``key_pairs``' inverse: (k_scale, k_zero) [R, G, D] fp16."""
    low, half = _pair_channels(k_bits, dim, k_pairs.device)
    halves = ((k_pairs & 0xFFFF).to(torch.int16).view(torch.float16),
              (k_pairs >> 16).to(torch.int16).view(torch.float16))
    out = []
    for part in (slice(0, half), slice(half, 2 * half)):
        t = torch.empty(*k_pairs.shape[:2], dim, dtype=torch.float16, device=k_pairs.device)
        t[..., low], t[..., low + half] = halves[0][:, :, part].flatten(2), halves[1][:, :, part].flatten(2)
        out.append(t)
    return out[0], out[1]
