"""Attention over compressed KV caches: Triton kernels on CUDA, torch references elsewhere."""

from __future__ import annotations

import contextlib
import os

import torch

from evolkv.kernels import reference
from evolkv.kernels.layout import use_triton
from evolkv.kernels.packed import attend_packed_ref, gathered_attention_packed_ref
from evolkv.kernels.reference import gather_kv

DECODE_MAX_QUERIES = 16  # up to this many query tokens per sequence take the split-sequence decode kernel
DECODE_MIN_ENTRIES = 2048  # below this cache length per-call overheads outweigh it (H100, ``benchmarks/bench_kernels.py``)
DENSIFY_MIN_CANDIDATES = 32  # from this many candidates a packed prefill is dequantized once per forward (H100:
# at population 64 it wins from 16k context on, at 16 it does not; benchmarks/results/*bench_quantized*)

__all__ = ["attend", "attend_gathered", "attend_packed", "attend_ragged", "gather_kv", "replay_scores"]


def attend(query, keys, values, key_pos, query_pos, scaling, sliding_window=None, softcap=None):
    """Attention over a compressed cache (see ``reference.attend``): the split-sequence Triton decode kernel
    for a few query tokens on CUDA, the torch reference otherwise."""
    small = keys.shape[2] < DECODE_MIN_ENTRIES and os.environ.get("EVOLKV_KERNELS") != "triton"
    if softcap is None and query.shape[2] <= DECODE_MAX_QUERIES and not small and use_triton(query):
        from evolkv.kernels.decode_attention import decode_attention

        return decode_attention(query, keys, values, key_pos, query_pos, scaling, sliding_window)
    return reference.attend(query, keys, values, key_pos, query_pos, scaling, sliding_window, softcap)


def replay_scores(query, keys, scaling, sink, count):
    """KVzip's replay scores of a chunk (see ``reference.replay_scores``): the two-pass Triton kernels on CUDA,
    which never build the attention matrix, the torch reference otherwise."""
    if use_triton(query) and query.shape[-1] in (16, 32, 64, 128, 256):
        from evolkv.kernels.replay import replay_scores as kernel

        return kernel(query, keys, scaling, sink, count)
    return reference.replay_scores(query, keys, scaling, sink, count)


def attend_ragged(query, keys, values, start, count, step, capacity, scaling, pos=None, query_pos=None,
                  sliding_window=None, softcap=None):
    """Decode attention over a ragged serving cache (see ``reference.attend_ragged``): the Triton kernel on
    CUDA, the torch reference otherwise (and for soft-capped logits)."""
    if softcap is None and use_triton(query):
        from evolkv.kernels.ragged import ragged_decode_attention

        return ragged_decode_attention(query, keys, values, start, count, step, capacity, scaling, pos, query_pos,
                                       sliding_window)
    return reference.attend_ragged(query, keys, values, start, count, step, capacity, scaling, pos, query_pos,
                                   sliding_window, softcap)


def attend_packed(query, packed, key_pos, query_pos, scaling, sliding_window=None, softcap=None):
    """Attention over a packed (quantized) cache (see ``packed.attend_packed_ref``): the decode kernel, which
    dequantizes as it reads, for a few query tokens on CUDA; dequantize-then-attend in torch otherwise."""
    if softcap is None and query.shape[2] <= DECODE_MAX_QUERIES and use_triton(query):
        from evolkv.kernels import folded
        from evolkv.kernels.decode_attention import decode_attention_packed

        if gluon_serves(query, [packed], sliding_window):
            from evolkv.kernels.gluon_decode import decode_attention_gluon

            return decode_attention_gluon(query, packed, key_pos, query_pos, scaling)
        if folded_serves(query, [packed]):
            return folded.decode_attention_folded(query, packed, key_pos, query_pos, scaling, sliding_window)

        return decode_attention_packed(query, packed, key_pos, query_pos, scaling, sliding_window)
    return attend_packed_ref(query, packed, key_pos, query_pos, scaling, sliding_window, softcap)


def attend_gathered(query, keys, values, order, counts, new_keys, new_values, scaling, sliding_window=None,
                    packed=None, residual=0, include_new=True):
    """Many candidates' queries over their ranking prefixes of one shared cache (see ``gathered_attention``
    in ``evolkv.kernels.gathered_attention``), ranks >= ``residual`` read from ``packed`` when given: the
    Triton kernel on CUDA, the torch reference elsewhere."""
    if use_triton(query):
        from evolkv.kernels.gathered_attention import gathered_attention as kernel
        from evolkv.kernels.packed import densify

        if packed is not None and query.shape[0] >= DENSIFY_MIN_CANDIDATES and os.environ.get(
                "EVOLKV_PACKED", "auto") != "on-the-fly":  # dequantize once, every candidate reads dense rows
            packed = densify(packed, query.dtype)
        return kernel(query, keys, values, order, counts, new_keys, new_values, scaling, sliding_window,
                      packed=packed, residual=residual, include_new=include_new)
    return gathered_attention_packed_ref(query, keys, values, order, counts, new_keys, new_values, scaling,
                                         sliding_window, packed, residual, include_new)


PACKED_DECODE_MODES = ("gluon", "pairs", "plain")


def packed_decode_mode() -> str:
    """``EVOLKV_PACKED_DECODE``: ``gluon`` (default: ``kernels.gluon_decode``, the MMA operands built in registers,
    for CUDA graphs where it serves, else ``kernels.folded``; see ``gluon_serves``), ``pairs`` (``kernels.folded``
    everywhere: the keys dequantized a channel pair per ``fma.f16x2``, the values' codes fed to the tensor cores)
    or ``plain`` (``decode_attention_packed``, dequantize as read: the reference layout's kernel)."""
    mode = os.environ.get("EVOLKV_PACKED_DECODE", "gluon")
    if mode not in PACKED_DECODE_MODES:
        raise ValueError(f"EVOLKV_PACKED_DECODE={mode!r}: use {', '.join(PACKED_DECODE_MODES)}")
    return mode


_FOR_GRAPH = False


@contextlib.contextmanager
def for_graph():
    """Pick the kernels a CUDA graph will replay (no launch cost in a replay): the serving path's warm-up and
    capture, so the kernels are compiled before the capture."""
    global _FOR_GRAPH
    old, _FOR_GRAPH = _FOR_GRAPH, True
    try:
        yield
    finally:
        _FOR_GRAPH = old


def gluon_serves(query: torch.Tensor, packs, sliding_window: int | None = None) -> bool:
    """Whether ``kernels.gluon_decode`` attends ``query`` over every one of ``packs``: ``EVOLKV_PACKED_DECODE=gluon``
    (the default), on CUDA, for a CUDA graph (``for_graph``, or while one is being captured), and each cache of
    a layout it reads (``gluon_decode.supported``: 2- or 4-bit keys and values, head_dim 128, key groups of 128, up
    to 8 query heads per KV head, no sliding window). Eager calls take ``kernels.folded``: Gluon's launcher costs
    0.26 ms of host time a call against folded's 0.12 (H100 host, ``benchmarks/bench_decode_host.py``), and an eager decode step is bound by
    the host, so there the faster kernel would make the step slower."""
    if not (query.is_cuda and use_triton(query) and packed_decode_mode() == "gluon"
            and (_FOR_GRAPH or torch.cuda.is_current_stream_capturing())):
        return False
    from evolkv.kernels import gluon_decode

    return all(gluon_decode.supported(query, packed, sliding_window) for packed in packs)


def folded_serves(query: torch.Tensor, packs) -> bool:
    """Whether ``kernels.folded`` attends ``query`` over every one of ``packs`` (``PackedKV``): on CUDA, not
    switched off (``EVOLKV_PACKED_DECODE=plain``), and each cache of a layout it reads (``folded.supported``)."""
    from evolkv.kernels import folded

    return (query.is_cuda and use_triton(query) and packed_decode_mode() != "plain"
            and all(folded.supported(query, packed) for packed in packs))
