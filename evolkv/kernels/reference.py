"""Pure-torch references: attention over a compressed, per-head variable-length KV cache, and the gather
that builds such a cache from a ranking. The Triton kernels are checked against these; on CPU they are the
path the evaluator and runtime take. KVzip's replay scores (``replay_scores``) are here too.

A compressed layer cache is three tensors: keys and values [B, H_kv, L, D] and positions [B, H_kv, L]
(the token position each entry came from, -1 for an empty slot). Heads may keep different numbers of
entries; shorter heads are padded with -1 positions.
"""

from __future__ import annotations

import torch


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    key_pos: torch.Tensor,
    query_pos: torch.Tensor,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``query`` over the entries of a (compressed) cache.

    query: [B, H_q, T_q, D]; keys, values: [B, H_kv, L, D]; key_pos: [B, H_kv, L] long (-1 = empty);
    query_pos: [T_q] long. An entry is visible to a query when 0 <= key_pos <= query_pos and, for a sliding
    layer, key_pos > query_pos - sliding_window. Returns (out [B, H_q, T_q, D], lse [B, H_q, T_q] fp32).
    """
    batch, num_q, t_q, dim = query.shape
    num_kv = keys.shape[1]
    group = num_q // num_kv
    q = query.float().view(batch, num_kv, group, t_q, dim)  # [B, H_kv, G, T_q, D]
    logits = torch.einsum("bhgqd,bhld->bhgql", q, keys.float()) * scaling  # [B, H_kv, G, T_q, L]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    kp = key_pos[:, :, None, None, :]  # [B, H_kv, 1, 1, L]
    qp = query_pos.to(key_pos.device)[None, None, None, :, None]  # [1, 1, 1, T_q, 1]
    hidden = (kp < 0) | (kp > qp)
    if sliding_window is not None:
        hidden |= kp <= qp - sliding_window
    logits = logits.masked_fill(hidden, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # [B, H_kv, G, T_q]
    probs = torch.exp(logits - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhgql,bhld->bhgqd", probs, values.float())
    return out.reshape(batch, num_q, t_q, dim).to(query.dtype), lse.reshape(batch, num_q, t_q)


def gather_kv(
    keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the first ``counts[b, h]`` entries of each head's ranking.

    keys, values: [B or 1, H_kv, T, D] (position t at index t); order: [B or 1, H_kv, T] long;
    counts: [B, H_kv] long. Returns keys, values [B, H_kv, L, D] and positions [B, H_kv, L] with
    L = counts.max(); slots past a head's count hold position -1.
    """
    batch, heads = counts.shape
    length = max(int(counts.max()), 1) if counts.numel() else 1
    idx = order[..., :length].expand(batch, heads, length)  # [B, H_kv, L]
    gather_idx = idx[..., None].expand(batch, heads, length, keys.shape[-1])
    kept_keys = keys.expand(batch, -1, -1, -1).gather(2, gather_idx)
    kept_values = values.expand(batch, -1, -1, -1).gather(2, gather_idx)
    slot = torch.arange(length, device=counts.device)
    pos = torch.where(slot[None, None, :] < counts[..., None], idx, torch.full_like(idx, -1))
    return kept_keys, kept_values, pos


def gathered_attention_ref(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, counts: torch.Tensor,
    new_keys: torch.Tensor, new_values: torch.Tensor, scaling: float, sliding_window: int | None = None,
    include_new: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same function in torch: gather copies, append the new tokens, attend (see ``reference``);
    ``include_new=False`` leaves the new tokens out (they only place the queries)."""
    cands, _, t_q, _ = query.shape
    context, new_len = keys.shape[1], new_keys.shape[2]
    kept_k, kept_v, pos = gather_kv(keys[None], values[None], order.long(), counts.long())
    new_pos = torch.arange(context, context + new_len, device=query.device)
    seen_pos = new_pos if include_new else torch.full_like(new_pos, -1)
    return attend(query, torch.cat([kept_k, new_keys], 2), torch.cat([kept_v, new_values], 2),
                  torch.cat([pos, seen_pos.expand(cands, keys.shape[0], new_len)], 2), new_pos[new_len - t_q:],
                  scaling, sliding_window)


def quantize_ref(x: torch.Tensor, bits: int, group_size: int, per_channel: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KIVI-style asymmetric quantization, packed into int32 words along the last dim.

    x: [R, T, D]. Keys use ``per_channel=True``: each channel is quantized over groups of ``group_size``
    consecutive tokens (T % group_size == 0), scale/zero [R, T / G, D]. Values use ``per_channel=False``:
    each token over groups of ``group_size`` channels (D % group_size == 0), scale/zero [R, T, D / G].
    code = clamp(floor((x - min) / scale + 0.5), 0, 2**bits - 1) with scale = (max - min) / (2**bits - 1).
    Returns (packed [R, T, D * bits / 32] int32, scale fp32, zero fp32); code j of a word sits at bits j*bits.
    """
    rows, length, dim = x.shape
    levels = 2**bits - 1
    if per_channel:
        grouped, axis = x.float().view(rows, length // group_size, group_size, dim), 2  # [R, T/G, G, D]
    else:
        grouped, axis = x.float().view(rows, length, dim // group_size, group_size), 3  # [R, T, D/G, G]
    low, high = grouped.amin(dim=axis, keepdim=True), grouped.amax(dim=axis, keepdim=True)
    scale = (high - low) / levels
    codes = ((grouped - low) / torch.where(scale > 0, scale, 1.0)).view(rows, length, dim)
    scale, low = scale.squeeze(axis), low.squeeze(axis)  # [R, T/G, D] or [R, T, D/G]
    codes = torch.floor(codes + 0.5).clamp(0, levels).to(torch.int64)
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=x.device) * bits
    words = (codes.view(rows, length, dim // per_word, per_word) << shifts).sum(-1)  # disjoint bits: sum == or
    packed = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return packed, scale, low


def dequantize_ref(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                   per_channel: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_ref``: [R, T, D * bits / 32] int32 -> [R, T, D] in ``dtype`` (keys: the last
    scale group may cover fewer than ``group_size`` tokens)."""
    rows, length, words = packed.shape
    per_word = 32 // bits
    shifts = torch.arange(per_word, device=packed.device) * bits
    codes = ((packed.to(torch.int64)[..., None] >> shifts) & (2**bits - 1)).view(rows, length, words * per_word)
    axis = 1 if per_channel else 2  # keys: groups of tokens; values: groups of channels
    scale, zero = (t.repeat_interleave(group_size, dim=axis).narrow(axis, 0, codes.shape[axis]) for t in (scale, zero))
    return (codes.float() * scale + zero).to(dtype)


def attend_ragged(query, keys, values, start, count, step, capacity, scaling, pos=None, query_pos=None,
                  sliding_window=None, softcap=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention over a ragged serving cache (``evolkv.kernels.ragged``): row r = b * H_kv + h holds
    entries [start[r], start[r] + count[r] + step + 1) of keys/values [N, D]. Gathers each row into
    ``capacity`` padded slots and calls ``attend``; the shapes are static, so a CUDA graph can capture it."""
    batch, num_q, _, dim = query.shape
    rows = start.shape[0]
    num_kv = rows // batch
    slot = torch.arange(capacity, device=keys.device)
    index = (start.long()[:, None] + slot).clamp_(max=keys.shape[0] - 1)  # [R, C]
    valid = slot < (count.long() + step.long() + 1)[:, None]
    shape = (batch, num_kv, capacity)
    k = keys[index].view(*shape, dim)
    v = values[index].view(*shape, dim)
    if sliding_window is not None:
        key_pos = torch.where(valid, pos.long()[index], -1).view(shape)
        q_pos = query_pos.long().view(1)
    else:  # every kept and decoded entry precedes the query
        key_pos = torch.where(valid, 0, -1).view(shape)
        q_pos = torch.zeros(1, dtype=torch.long, device=keys.device)
    return attend(query, k, v, key_pos, q_pos, scaling, sliding_window, softcap)


REPLAY_BLOCK = 256  # ``replay_scores``' queries scored at a time: memory [B, H_kv, G, BLOCK, S] float32


def replay_scores(query: torch.Tensor, keys: torch.Tensor, scaling: float, sink: int, count: int) -> torch.Tensor:
    """KVzip's replay scores (``kernels.replay_scores``): query [B, H_kv, G, Q, D] of the reconstruction tokens,
    keys [B, H_kv, S, D] (``sink`` sinks, the chunk's ``count`` tokens, then the Q reconstruction tokens, causal
    among themselves). Returns [B, H_kv, count] float32, each chunk token's largest softmax probability over the
    queries and the GQA group; the softmax runs ``REPLAY_BLOCK`` queries at a time."""
    num_q = query.shape[3]
    q, subset = query.float(), keys.float()
    own = torch.arange(num_q, device=keys.device)
    best = torch.zeros(keys.shape[:2] + (count,), device=keys.device)
    for first in range(0, num_q, REPLAY_BLOCK):
        rows = slice(first, min(first + REPLAY_BLOCK, num_q))
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q[:, :, :, rows], subset) * scaling
        future = own[None, :] > own[rows, None]  # [block, q] a reconstruction token's later ones
        logits[..., -num_q:] = logits[..., -num_q:].masked_fill(future, float("-inf"))
        probs = logits.softmax(dim=-1)[..., sink:sink + count]
        best = torch.maximum(best, probs.amax(dim=(2, 3)))
    return best
