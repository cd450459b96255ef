"""Attention over compressed KV caches: Triton kernels on CUDA, torch references elsewhere."""

from evolkv.kernels.reference import attend, gather_kv

__all__ = ["attend", "gather_kv"]
