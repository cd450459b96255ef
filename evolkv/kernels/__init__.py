"""Attention over compressed KV caches: Triton kernels on CUDA, torch references elsewhere."""

from __future__ import annotations

import os

import torch

from evolkv.kernels.reference import attend, gather_kv, gathered_attention_ref

__all__ = ["attend", "attend_gathered", "gather_kv"]


def attend_gathered(query, keys, values, order, counts, new_keys, new_values, scaling, sliding_window=None):
    """Many candidates' queries over their ranking prefixes of one shared cache (see ``gathered_attention``
    in ``evolkv.kernels.gathered_attention``): the Triton kernel on CUDA, the torch reference elsewhere."""
    if _use_triton(query):
        from evolkv.kernels.gathered_attention import gathered_attention as kernel

        return kernel(query, keys, values, order, counts, new_keys, new_values, scaling, sliding_window)
    return gathered_attention_ref(query, keys, values, order, counts, new_keys, new_values, scaling, sliding_window)


def _use_triton(query: torch.Tensor) -> bool:
    """``EVOLKV_KERNELS``: ``auto`` (Triton on CUDA), ``triton`` (also on CPU, under TRITON_INTERPRET=1), ``torch``."""
    mode = os.environ.get("EVOLKV_KERNELS", "auto")
    if mode == "torch" or (mode == "auto" and not query.is_cuda):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
