"""Per-prompt allocators: a config's total tokens redistributed over layers (and heads) at the end of prefill,
from every layer's ranking. They cost no search, so every search reports them as baselines: a searched config
is worth its GPU-minutes only where it beats them on held-out data.

A config names one with ``"allocation": NAME`` (``KVConfig.allocation``); its layers' budgets then give only
the total, unless the config makes them searched priors: with ``prior``, each layer and KV head's planned tokens
relative to the mean (``prior_weights``) multiply its normalised scores, so a layer the search found important
wins more of the per-prompt competition (``cake``: its preference; ``prefixkv`` compares each head's own share
of its importance, which a weight does not change); with ``static``, each head first keeps that share of its
planned tokens, and the allocator spends the rest. Uniform priors and no static share are the method itself.

``allocate(name, rankings, tokens, capacity)`` returns each layer's tokens per sequence and KV head.
Every allocator keeps each head's observation window (the ``+inf`` ranks), never more than a layer's
capacity, and spends exactly the config's total (whatever capacity allows), so memory equals the config's own
accounting. Scores are compared across layers after shifting each layer's finite scores to start at zero and
scaling them to a mean of 1 over the layer (a scorer's scale differs from layer to layer; within a layer the
heads stay comparable, as AdaKV compares them).

- ``globaltopk``: the best scores of all layers and heads at once (AdaKV's global variant, KVzip's
  allocation).
- ``prefixkv`` (PrefixKV, Wang et al., 2024): each layer keeps the shortest prefix of its head-averaged
  ranking that holds a share ``p`` of its importance; ``p``, one for all layers, found by bisection to meet
  the budget. Heads share a layer's tokens evenly.
- ``cake`` (CAKE, Qin et al., 2025): a layer's share follows its preference, the entropy of the window's
  attention over the prompt (spatial dispersion) times its variance over the window's queries (temporal
  shift), both from ``Ranking.stats``. Deviation: the paper also evicts by a variance-weighted score, here
  the config's scorer ranks.
- ``dynamickv`` (DynamicKV, Zhou et al., 2024): every layer offers its heads' top ``2 x`` the mean budget,
  the best of all offers are kept, and a layer's count is spread evenly over its heads. Deviation: the paper
  re-balances every few layers while the prompt streams in; here once, at the end of prefill.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from evolkv.allocation import round_to_total, waterfill

ALLOCATORS: dict[str, Callable] = {}


def _register(name: str):
    def add(fn):
        ALLOCATORS[name] = fn
        return fn
    return add


def prior_weights(cfg) -> torch.Tensor | None:
    """A config's priors [L, H_kv]: each layer and KV head's planned share of the tokens relative to the mean
    (from its layer budgets and head splits, before rounding), or None where they are all equal (the method
    itself, to the bit) or the config has no ``prior``."""
    if not cfg.prior:
        return None
    heads = cfg.model.num_kv_heads
    plan = torch.tensor([[layer.budget * (layer.heads[h] if layer.heads is not None else 1.0 / heads)
                          for h in range(heads)] for layer in cfg.layers], dtype=torch.float64)
    weights = plan / plan.mean()
    return None if bool(((weights - 1.0).abs() < 1e-9).all()) else weights.clamp_min(1e-6)


def allocate(name: str, rankings: Sequence, tokens: torch.Tensor, capacity: Sequence[int],
             weights: torch.Tensor | None = None, static: float = 0.0) -> list[torch.Tensor]:
    """Tokens per layer: ``[B, H_kv]`` long for each layer, from the layers' rankings (``press.Ranking``),
    the config's plan ``tokens`` [L, H_kv] (its total is what is spent) and each layer's ``capacity``; the
    config's priors ``weights`` [L, H_kv] (``prior_weights``) and ``static`` share of the plan kept first."""
    base = _base(rankings, capacity)
    batch, heads = rankings[0].sorted_scores.shape[:2]
    total = int(tokens.sum())
    floor = (tokens.double() * static).floor().long() if static else None
    out = [torch.zeros(batch, heads, dtype=torch.long, device=r.sorted_scores.device) for r in rankings]
    for b in range(batch):
        norm, must, caps = base.norm[b], base.must[b], base.caps
        if floor is not None:
            must = [torch.maximum(m, f.to(m.device)).clamp(max=cap) for m, f, cap in zip(must, floor, caps)]
        if weights is not None:  # -inf (not keepable) stays -inf: every weight is positive
            norm = norm.weighed(weights)
        stats = [r.stats[b] if getattr(r, "stats", None) is not None else None for r in rankings]
        if weights is not None and name == "cake":
            stats = [None if s is None else s * torch.stack([w.mean().to(s), torch.ones((), dtype=s.dtype,
                                                                                         device=s.device)])
                     for s, w in zip(stats, weights)]
        counts = ALLOCATORS[name](norm, must, caps, total, stats)
        counts = _fill(norm, counts, caps, total)
        for layer, c in enumerate(counts):
            out[layer][b] = c
    return out


class _Scores(list):
    """The layers' normalised scores of one sequence: ``padded`` [L, H, T_max] (``-inf`` past a layer's own
    length), so the allocators pool all layers in one operation, and, as this list, each layer's [H, T_l] view
    of it."""

    def __init__(self, padded: torch.Tensor, lengths: Sequence[int]) -> None:
        super().__init__(padded[i, :, :length] for i, length in enumerate(lengths))
        self.padded = padded

    @classmethod
    def of(cls, layers: Sequence[torch.Tensor]) -> _Scores:
        if isinstance(layers, _Scores):
            return layers
        longest = max(n.shape[-1] for n in layers)
        padded = torch.full((len(layers), layers[0].shape[0], longest), float("-inf"), device=layers[0].device)
        for i, n in enumerate(layers):
            padded[i, :, : n.shape[-1]] = n
        return cls(padded, [n.shape[-1] for n in layers])

    def weighed(self, weights: torch.Tensor) -> _Scores:
        """Each layer and head's scores times its weight ([L, H], positive: ``-inf`` stays)."""
        return _Scores(self.padded * weights.to(self.padded.device, self.padded.dtype)[..., None],
                       [n.shape[-1] for n in self])


@dataclass
class _Base:
    """What ``allocate`` reads off a prompt's rankings whatever the config: per sequence the layers'
    normalised scores and windows (``+inf`` ranks, within capacity), and each layer's capacity."""

    norm: list[_Scores]
    must: list[list[torch.Tensor]]
    caps: list[int]


_BASES: dict[int, list] = {}  # id of the first layer's scores -> [(refs, caps, base)], gone with those scores


def _base(rankings: Sequence, capacity: Sequence[int]) -> _Base:
    """``_Base`` of ``rankings``, made once while their scores live: a search plans many configs on one
    prompt's rankings, and normalising them is most of a plan's work (and, on a GPU, its host syncs)."""
    scores = [r.sorted_scores for r in rankings]
    caps = [min(cap, s.shape[-1]) for cap, s in zip(capacity, scores)]
    entries = _BASES.get(id(scores[0]))
    if entries is None:
        entries = _BASES[id(scores[0])] = []
        weakref.finalize(scores[0], _BASES.pop, id(scores[0]), None)
    for refs, known, base in entries:
        if known == caps and len(refs) == len(scores) and all(ref() is s for ref, s in zip(refs, scores)):
            return base
    floats = [s.float() for s in scores]
    norm = [_Scores.of([_normalised(s[b]) for s in floats]) for b in range(floats[0].shape[0])]
    must = [[(s[b] == float("inf")).sum(-1).clamp(max=cap) for s, cap in zip(floats, caps)]
            for b in range(floats[0].shape[0])]
    base = _Base(norm, must, caps)
    entries.append(([weakref.ref(s) for s in scores], caps, base))
    return base


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    """A layer's [H, T] sorted scores -> non-negative, mean 1 over the layer's finite ones; -inf where not
    keepable or in the window (those are counted apart)."""
    finite = torch.isfinite(scores)
    if not bool(finite.any()):
        return torch.full_like(scores, float("-inf"))
    shifted = torch.where(finite, scores - scores[finite].min(), torch.zeros_like(scores))
    mass = shifted.sum()
    scaled = shifted * (finite.sum() / mass) if float(mass) > 0 else finite.float()
    return torch.where(finite, scaled, torch.full_like(scores, float("-inf")))


def _pool(norm: Sequence[torch.Tensor], counts: Sequence[torch.Tensor], caps: Sequence[int]) -> torch.Tensor:
    """Every layer's scores [H, T] of the ranks not yet taken (below the counts, past capacity: -inf),
    padded to one length: [L, H, T_max]."""
    padded = _Scores.of(norm).padded
    rank = torch.arange(padded.shape[-1], device=padded.device)
    cap = torch.tensor(caps, device=padded.device)
    open_ = (rank >= torch.stack(list(counts)).to(padded.device)[..., None]) & (rank < cap[:, None, None])
    return torch.where(open_, padded, torch.full_like(padded, float("-inf")))


def _take(pool: torch.Tensor, count: int) -> torch.Tensor:
    """How many of the ``count`` best open ranks fall to each (layer, head): [L, H] long."""
    layers, heads, length = pool.shape
    flat = pool.flatten()
    count = min(count, int(torch.isfinite(flat).sum()))
    taken = torch.zeros(layers * heads, dtype=torch.long, device=pool.device)
    if count > 0:
        chosen = torch.topk(flat, count).indices // length
        taken.scatter_add_(0, chosen, torch.ones_like(chosen))  # (bincount would sync for its length)
    return taken.view(layers, heads)


def _spent(counts: Sequence[torch.Tensor]) -> int:
    """Tokens the layers' ``counts`` keep, summed (one host sync)."""
    return int(torch.stack([c.sum() for c in counts]).sum())


def _fill(norm, counts, caps, total) -> list[torch.Tensor]:
    """Spend what is left of ``total`` (rounding, capped layers) on the best open ranks; never past it."""
    counts = [c.clone() for c in counts]
    rest = total - _spent(counts)
    if rest > 0:
        extra = _take(_pool(norm, counts, caps), rest)
        counts = [c + e for c, e in zip(counts, extra)]
    return counts


def _even(extra: Sequence[int], must: Sequence[torch.Tensor], caps: Sequence[int]) -> list[torch.Tensor]:
    """Each layer's heads keep their windows (``must`` [H]) and share the layer's ``extra`` tokens evenly within
    capacity, rounded by largest remainder; all layers at once, on the host (the counts come back there)."""
    must_all = torch.stack(list(must)).cpu().long()  # [L, H]
    heads = must_all.shape[1]
    cap = torch.tensor(caps, dtype=torch.long)[:, None]
    rest = torch.tensor(extra, dtype=torch.long).clamp(min=0)  # [L]
    room = (cap - must_all).clamp(min=0).double()
    wanted = torch.minimum(rest[:, None].double() / heads, room)
    return list((must_all + _round_rows(wanted, torch.minimum(rest, room.sum(-1).long()), room)).unbind(0))


def _round_rows(values: torch.Tensor, totals: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """``allocation.round_to_total`` of each row of ``values`` [L, H] to its ``totals`` [L] within ``caps``."""
    base = values.floor().clamp(max=caps)
    short = (totals - base.sum(-1).long()).clamp(min=0)  # [L]
    remainder = torch.where(base < caps, values - base, torch.full_like(values, -1.0))
    order = torch.argsort(remainder, dim=-1, descending=True, stable=True)
    bump = (torch.arange(values.shape[-1])[None, :] < short[:, None]).double()
    return base.scatter_add(-1, order, bump).long()


@_register("globaltopk")
def _global_topk(norm, must, caps, total, stats):
    rest = total - _spent(must)
    extra = _take(_pool(norm, must, caps), max(rest, 0))
    return [m + e for m, e in zip(must, extra)]


@_register("prefixkv")
def _prefixkv(norm, must, caps, total, stats):
    # per layer: the head-averaged share of importance held by its first n ranks, n = 0..cap (all layers at
    # once, padded: past a layer's last rank or its capacity a curve stays above any share)
    scores = _Scores.of(norm).padded  # [L, H, T]
    body = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))
    per_head = body / body.sum(-1, keepdim=True).clamp_min(1e-12)
    curves = torch.cat([torch.zeros_like(per_head[:, 0, :1]), per_head.cumsum(-1).mean(1)], dim=-1).cpu()
    lengths = torch.tensor([min(n.shape[-1], cap) + 1 for n, cap in zip(norm, caps)])  # [L] points of each curve
    curves[torch.arange(curves.shape[1])[None, :] >= lengths[:, None]] = 2.0
    device, must_host, cap = must[0].device, torch.stack(_host(must)), torch.tensor(caps)[:, None]

    def kept(p: float) -> torch.Tensor:  # [L, H] ranks kept: the prefix, never less than the window
        spent = torch.searchsorted(curves, torch.full((len(norm), 1), p) - 1e-9)
        return must_host.clamp(min=torch.minimum(spent, lengths[:, None] - 1)).clamp(max=cap)

    low, high = 0.0, 1.0
    for _ in range(40):  # the largest share p whose prefixes fit the budget (the window ranks hold no share)
        mid = (low + high) / 2
        if int(kept(mid).sum()) <= total:
            low = mid
        else:
            high = mid
    return list(kept(low).to(device).unbind(0))


def _host(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors on the host, in one copy: the per-layer bookkeeping below then syncs with no device."""
    return list(torch.stack(list(tensors)).cpu().unbind(0))


@_register("cake")
def _cake(norm, must, caps, total, stats):
    if any(s is None for s in stats):
        raise ValueError("cake needs the layers' attention statistics (Ranking.stats)")
    device = must[0].device
    preference = torch.stack([s[0].clamp_min(1e-6) * s[1].clamp_min(1e-12) for s in stats]).double().cpu()
    must = _host(must)
    fixed = [int(m.sum()) for m in must]
    room = torch.tensor([cap * m.shape[0] - f for cap, m, f in zip(caps, must, fixed)], dtype=torch.float64)
    shares = waterfill(max(total - sum(fixed), 0), preference, room.clamp(min=0))
    extra = round_to_total(shares[None], int(shares.sum().round()), room.clamp(min=0)[None])[0]  # past the windows
    return [c.to(device) for c in _even(extra.tolist(), must, caps)]


@_register("dynamickv")
def _dynamickv(norm, must, caps, total, stats, ratio: float = 2.0):
    heads = norm[0].shape[0]
    offer = max(1, int(ratio * total / (len(norm) * heads)))  # each head offers its best ``offer`` ranks
    pool = _pool(norm, must, caps)
    rank = torch.arange(pool.shape[-1], device=pool.device)
    limits = torch.stack(must)[..., None] + offer  # [L, H, 1]
    pool = torch.where(rank[None, None, :] < limits, pool, torch.full_like(pool, float("-inf")))
    rest = total - _spent(must)
    per_layer = _take(pool, max(rest, 0)).sum(-1)  # [L]
    device = must[0].device
    return [c.to(device) for c in _even(per_layer.tolist(), _host(must), caps)]
