"""Turn a config's budgets into integer token counts per layer and KV head for one context.

Both the evaluator and the runtime call ``plan_tokens``, so a config keeps exactly the same tokens in
search and in serving.
"""

from __future__ import annotations

import torch

from evolkv.config import KVConfig, LayerSpec, ModelSpec


def waterfill(total: float, weights: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """Split ``total`` proportionally to ``weights`` without exceeding ``caps``; overflow goes to the rest.

    weights, caps: [N] float. Returns [N] float (``weights``' dtype) summing to ``min(total, caps.sum())``, each
    entry within ``[0, caps]``.
    """
    caps = caps.to(weights.dtype)  # the water level is computed in the weights' precision
    alloc = torch.zeros_like(weights)
    free = torch.ones_like(weights, dtype=torch.bool)
    remaining = min(float(total), float(caps.sum()))
    for _ in range(weights.numel() + 1):
        w = torch.where(free, weights, torch.zeros_like(weights))
        if remaining <= 1e-9 or float(w.sum()) <= 0:
            if remaining > 1e-9:  # zero-weight entries take what is left, evenly
                room = (caps - alloc).clamp(min=0)
                alloc += room * (remaining / float(room.sum()))
            break
        share = w / w.sum() * remaining
        over = free & (alloc + share >= caps)
        if not bool(over.any()):
            alloc += share
            break
        remaining -= float((caps - alloc)[over].sum())
        alloc[over] = caps[over]
        free &= ~over
    return torch.minimum(alloc, caps)  # rounding of the running sums may overshoot a cap by an ulp


def round_to_total(values: torch.Tensor, total: int, caps: torch.Tensor) -> torch.Tensor:
    """Largest-remainder rounding of ``values`` (float, any shape) to integers summing to ``total``."""
    flat, cap = values.flatten(), caps.flatten()
    base = flat.floor().clamp(max=cap)
    short = int(total - base.sum().item())
    if short > 0:
        remainder = torch.where(base < cap, flat - base, torch.full_like(flat, -1.0))
        order = torch.argsort(remainder, descending=True, stable=True)[:short]
        base[order] += 1
    return base.long().view_as(values)


def plan_tokens(cfg: KVConfig, context_len: int, capacity: list[int]) -> torch.Tensor:
    """Tokens kept per layer and KV head, [L, H] long.

    ``capacity[l]`` is how many tokens layer ``l`` can usefully keep (the context, or the sliding window).
    The sum over all layers and heads equals the config's demand, rounded, whenever capacity allows.
    """
    num_heads = cfg.model.num_kv_heads
    demand = torch.zeros(cfg.model.num_layers, num_heads, dtype=torch.float64)
    for i, layer in enumerate(cfg.layers):
        per_head = layer.budget * context_len if cfg.budget.kind == "fraction" else layer.budget
        shares = torch.tensor(layer.heads or [1.0 / num_heads] * num_heads, dtype=torch.float64)
        demand[i] = per_head * num_heads * shares
    caps = torch.tensor(capacity, dtype=torch.float64)[:, None].expand_as(demand).clone()
    alloc = waterfill(float(demand.sum()), demand.flatten(), caps.flatten()).view_as(demand)
    return round_to_total(alloc, round(float(alloc.sum())), caps)


def adaptive_split(sorted_scores: torch.Tensor, total: torch.Tensor, cap: int, floor: float = 0.2) -> torch.Tensor:
    """AdaKV: split a layer's ``total`` tokens among heads by the best scores across heads.

    sorted_scores: [B, H, T] scores in each head's ranking order (descending; window tokens +inf, tokens
    that cannot be kept -inf). total: [B] long. Each head first gets ``floor * total / H`` (the AdaKV
    safeguard), the rest go to the highest remaining scores of any head. Returns [B, H] long.
    """
    batch, heads, length = sorted_scores.shape
    cap = min(cap, length)
    device = sorted_scores.device
    total = total.cpu()  # the bookkeeping is the host's: no sync per layer on a GPU
    base = (floor * total.double() / heads).floor().long().clamp(max=cap)  # [B] each head's floor
    counts = base[:, None].expand(batch, heads).clone().to(device)
    positions = torch.arange(length, device=device)
    for b in range(batch):
        first = int(base[b])
        rest = min(int(total[b]) - first * heads, heads * (cap - first))  # at most every eligible rank
        if rest <= 0:
            continue
        eligible = (positions >= first) & (positions < cap)  # [T], the same ranks of every head
        pool = torch.where(eligible[None, :], sorted_scores[b].double(),
                           torch.full_like(sorted_scores[b], float("-inf"), dtype=torch.float64))
        chosen = torch.topk(pool.flatten(), rest).indices // length
        counts[b] += torch.zeros(heads, dtype=counts.dtype, device=device).scatter_add_(
            0, chosen, torch.ones_like(chosen, dtype=counts.dtype))
    return counts


def layer_capacity(spec: ModelSpec, layer: int, context_len: int) -> int:
    """Tokens of a ``context_len`` prefill that layer ``layer`` can still attend to when decoding."""
    if spec.is_sliding(layer):
        return min(context_len, spec.sliding_window - 1)
    return context_len


def head_bytes(kept: int, layer: LayerSpec, dim: int, dtype_bytes: int = 2) -> int:
    """Bytes one KV head of a layer (``layer.head_spec(h)`` for a layer with per-head precisions) stores for
    ``kept`` entries (keys and values): ranks below the residual window at full precision, the rest as the
    layer's quantizer stores them (codes, scales, zero points)."""
    from evolkv.quantizers import QUANTIZERS

    if layer.head_bits is not None:
        raise ValueError("a layer with per-head precisions stores each head as layer.head_spec(h) says")
    if not layer.quantized:
        return 2 * kept * dim * dtype_bytes
    full = min(kept, layer.residual)
    return QUANTIZERS[layer.quantizer].head_bytes(kept, full, layer.k_bits, layer.v_bits, layer.group_size, dim,
                                                  dtype_bytes)


def evicted_bytes(evicted: int, layer: LayerSpec, dim: int) -> int:
    """Bytes of the MiKV tier: ``evicted`` entries past the budget packed at K{b}V{b} (``layer.evicted_bits``),
    in groups that start at the lowest-ranked entry (``evolkv.kernels.packed.tail_first``)."""
    if not layer.evicted_bits or evicted <= 0:
        return 0
    bits = layer.evicted_bits
    tier = LayerSpec(budget=1.0, k_bits=bits, v_bits=bits, group_size=layer.group_size, quantizer=layer.quantizer)
    return head_bytes(evicted, tier, dim)


def kv_bytes(cfg: KVConfig, context_len: int, dtype_bytes: int = 2) -> int:
    """Bytes of the compressed cache of one sequence after prefill (keys and values, all layers, scales and
    zero points included, and the MiKV tier of layers that keep evicted tokens at low precision), for
    full-precision entries of ``dtype_bytes`` each."""
    spec = cfg.model
    capacity = [layer_capacity(spec, i, context_len) for i in range(spec.num_layers)]
    plan = plan_tokens(cfg, context_len, capacity)
    return sum(head_bytes(int(n), layer.head_spec(h), spec.head_dim, dtype_bytes)
               + evicted_bytes(cap - int(n), layer, spec.head_dim)
               for layer, counts, cap in zip(cfg.layers, plan, capacity) for h, n in enumerate(counts))


def dense_kv_bytes(spec: ModelSpec, tokens: int, dtype_bytes: int = 2) -> int:
    """Bytes of an uncompressed cache holding ``tokens`` tokens in every layer (keys and values)."""
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * tokens * dtype_bytes


def avg_bits(cfg: KVConfig, context_len: int) -> float:
    """Memory as bits per element of the uncompressed 16-bit cache (16.0 = full cache, 4.0 = a quarter):
    what ``--target-bits`` and the fronts' memory axis measure."""
    spec = cfg.model
    elements = sum(layer_capacity(spec, i, context_len) for i in range(spec.num_layers))
    elements *= 2 * spec.num_kv_heads * spec.head_dim
    return 8 * kv_bytes(cfg, context_len) / elements


def within_bits(bits: float, target: float) -> bool:
    """``bits`` at or under ``target``, compared at two decimals: a uniform K4V2 cache is 3.25 bits plus the
    scales of a last, partial key group (3.251 at ~1000 tokens), and a user's 3.25 means that cache."""
    return round(bits, 2) <= target
