"""The one compression policy: score -> rank -> plan per layer and head -> keep (and quantize) -> tiers.

kvpress's press is the model: one object that, at the end of a layer's prefill, decides what that layer's
cache keeps. Both users of compression go through it:

- ``evolkv.apply`` (serving): one config, its ranking, its cache materialised (``Compressor``);
- the evaluator's shared prefill (search): every scorer's ranking recorded once per sample, then many
  candidates' plans read as prefixes of those rankings (``Evaluator._cache``).

They differ only in how many candidates they serve, not in what compression means: the ranking (``rank``),
the tokens each head keeps (``Plan.layer``: the budget plan, the AdaKV split), which ranks stay at full
precision, which are packed, and which the MiKV tier keeps (``LayerPlan``), and how tiers are packed
(``pack_kept``, ``pack_evicted``) are written here once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from evolkv.allocation import adaptive_split, layer_capacity, plan_tokens
from evolkv.config import KVConfig, LayerSpec, ModelSpec, ScorerSpec
from evolkv.kernels.packed import PackedKV, pack_ranked, tail_first
from evolkv.scorers import Observation, rank


@dataclass
class Ranking:
    """One scorer's ranking of one layer's prefill: every keep-set is a prefix of ``order``."""

    order: torch.Tensor  # [B, H_kv, T] int32 token positions, best first
    sorted_scores: torch.Tensor  # [B, H_kv, T] scores in that order (+inf window, -inf unkeepable)
    stats: torch.Tensor | None = None  # [B, 2] the layer's attention dispersion and shift (``layer_stats``)


@dataclass
class LayerPlan:
    """What one config keeps of one layer of one prefill, per sequence and KV head."""

    spec: LayerSpec
    length: int  # tokens prefilled
    capacity: int  # tokens the layer can usefully keep (the context, or its sliding window)
    counts: torch.Tensor  # [B, H_kv] long: ranks kept

    @property
    def residual(self) -> int:
        """Ranks below this stay at full precision in a quantized layer (all of them in a 16-bit one); with
        per-head precisions, in its quantized heads (``head_residual``)."""
        return min(self.spec.residual, self.length) if self.spec.quantized else self.length

    @functools.cached_property
    def head_residual(self) -> torch.Tensor | int:
        """Ranks kept at full precision at most, per KV head [H_kv] (an int when every head agrees); made once
        (``full_counts`` and ``packed_counts`` both read it)."""
        if self.spec.head_bits is None:
            return self.residual
        return torch.tensor([self.residual if pair != (16, 16) else self.length for pair in self.spec.head_bits],
                            device=self.counts.device)

    @property
    def full_counts(self) -> torch.Tensor:
        """[B, H_kv] ranks kept at full precision."""
        return self.counts.clamp(max=self.head_residual)

    @property
    def packed_counts(self) -> torch.Tensor:
        """[B, H_kv] ranks kept packed (from ``residual`` on)."""
        return (self.counts - self.head_residual).clamp(min=0)

    def packed_groups(self) -> list[tuple[torch.Tensor | None, LayerSpec]]:
        """The packed parts (``LayerSpec.packed_groups``): (KV head indices, or None for all, their spec)."""
        heads = self.counts.shape[-1]
        return [(None if members is None else torch.tensor(members, device=self.counts.device), spec)
                for members, spec in self.spec.packed_groups(heads)]

    @property
    def evicted(self) -> torch.Tensor | None:
        """MiKV: [B, H_kv] ranks past the budget kept at low precision (``None`` when they are dropped)."""
        return (self.capacity - self.counts).clamp(min=0) if self.spec.evicted_bits else None


class Plan:
    """A config's token plan for one prefill length: ``layer(i, ranking)`` gives layer ``i``'s ``LayerPlan``."""

    def __init__(self, cfg: KVConfig, length: int) -> None:
        self.cfg, self.length = cfg, length
        self.capacity = [layer_capacity(cfg.model, i, length) for i in range(cfg.model.num_layers)]
        self.tokens = plan_tokens(cfg, length, self.capacity)  # [L, H_kv]
        self._on: dict[torch.device, torch.Tensor] = {}  # ``tokens`` on a device, copied once

    def tokens_on(self, device: torch.device) -> torch.Tensor:
        """``tokens`` [L, H_kv] on ``device`` (one copy for all the layers)."""
        if device not in self._on:
            self._on[device] = self.tokens.to(device)
        return self._on[device]

    def layers(self, rankings: list[Ranking]) -> list[LayerPlan]:
        """Every layer's plan from every layer's ranking: a config with an ``allocation`` redistributes its
        total per sequence (``evolkv.allocators``); otherwise each layer as ``layer`` plans it."""
        if self.cfg.allocation is None:
            return [self.layer(i, r) for i, r in enumerate(rankings)]
        from evolkv.allocators import allocate, prior_weights

        device = rankings[0].order.device
        counts = allocate(self.cfg.allocation, rankings, self.tokens, self.capacity, prior_weights(self.cfg),
                          self.cfg.static)
        return [LayerPlan(spec, self.length, cap, c.to(device))
                for spec, cap, c in zip(self.cfg.layers, self.capacity, counts)]

    def layer(self, i: int, ranking: Ranking) -> LayerPlan:
        spec, cap = self.cfg.layers[i], self.capacity[i]
        batch = ranking.order.shape[0]
        if spec.heads is None:  # AdaKV: the layer's tokens go to the heads' best scores, per sequence
            counts = adaptive_split(ranking.sorted_scores, self.tokens[i].sum().expand(batch), cap)
        else:
            counts = self.tokens_on(ranking.order.device)[i].expand(batch, -1)
        return LayerPlan(spec, self.length, cap, counts)


class Press:
    """Ranks a layer's prefill with each of its scorers (``rank``); ``Plan`` reads configs off the rankings."""

    def __init__(self, model: ModelSpec, scorers: Iterable[ScorerSpec], stats: bool = False) -> None:
        self.model = model
        self.scorers = {s.key: s.build() for s in scorers}
        self.stats = stats  # also measure each layer's attention statistics (the cake allocator reads them)

    @property
    def replays(self) -> dict[str, object]:
        """The scorers that rank from a context-reconstruction pass (``evolkv.replay``), by key."""
        return {key: s for key, s in self.scorers.items() if s.replays}

    def rank(self, layer: int, query: torch.Tensor | None, keys: torch.Tensor, values: torch.Tensor,
             scaling: float, replay: dict[str, torch.Tensor] | None = None,
             stats: torch.Tensor | None = None, out_proj: torch.Tensor | None = None,
             rotary=None) -> dict[str, Ranking]:
        """Every scorer's ranking of one layer at the end of prefill (query [B, H_q, T, D], keys/values
        [B, H_kv, T, D]); tokens a sliding layer can no longer see rank last. Without ``replay`` the scorers
        that replay are left out (they come later); with it (their scores [B, H_kv, T] by key, after
        ``evolkv.replay.run``), only they are ranked, with the ``stats`` measured at the prefill. ``out_proj``
        is the layer's output projection weight, for scorers that weigh values by it (CriticalKV); ``rotary``
        its RoPE at given positions, for scorers that need the queries before rotation (ExpectedAttention)."""
        obs = Observation(layer, query, keys, values, scaling, out_proj=out_proj, rotary=rotary)
        first_valid = obs.length - layer_capacity(self.model, layer, obs.length)
        if replay is None and self.stats:
            stats = layer_stats(obs, first_valid)
        rankings = {}
        for key, scorer in self.scorers.items():
            if scorer.replays != (replay is not None):
                continue
            seen = obs if replay is None else dataclasses.replace(obs, replay=replay[key])
            order, sorted_scores = rank(scorer.score(seen), obs.window(scorer.window), first_valid)
            rankings[key] = Ranking(order.to(torch.int32), sorted_scores, stats)
        return rankings

    def measure(self, rankings: dict[str, Ranking], layer: int, query: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor, scaling: float) -> torch.Tensor | None:
        """The layer's attention statistics: those its prefill ``rankings`` carry, or, where there are none (a
        press of replaying scorers only), measured alone; None unless this press measures them."""
        if not self.stats:
            return None
        if rankings:
            return next(iter(rankings.values())).stats
        obs = Observation(layer, query, keys, values, scaling)
        return layer_stats(obs, obs.length - layer_capacity(self.model, layer, obs.length))


STATS_WINDOW = 8  # queries the layer statistics are measured on


def output_projection(module) -> torch.Tensor | None:
    """An attention module's output projection weight [hidden, H_q * D] (None where it has none)."""
    proj = getattr(module, "o_proj", None)
    return getattr(proj, "weight", None)


def layer_stats(obs: Observation, first_valid: int = 0) -> torch.Tensor:
    """CAKE's two measures of a layer, [B, 2]: the entropy of the window's mean attention over the tokens it
    can keep (spatial dispersion) and the variance of that attention over the window's queries, summed over
    the tokens (temporal shift); both averaged over KV heads and their query heads."""
    attention = obs.attention(STATS_WINDOW)[..., first_valid:]  # [B, H_kv, G, w, T']
    mean = attention.mean(dim=3)  # [B, H_kv, G, T']
    p = mean / mean.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)  # [B, H_kv, G]
    shift = attention.var(dim=3, unbiased=False).sum(-1) if attention.shape[3] > 1 else torch.zeros_like(entropy)
    return torch.stack([entropy.mean(dim=(1, 2)), shift.mean(dim=(1, 2))], dim=-1)


def pack_kept(keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, spec: LayerSpec,
              residual: int) -> PackedKV:
    """The packed tier of a quantized layer: rows' entries [R, T, D] from rank ``residual`` of ``order``
    [R, T] on, at the layer's (k_bits, v_bits), key groups starting at the residual."""
    return pack_ranked(keys, values, order, spec.k_bits, spec.v_bits, spec.group_size, start=residual,
                       quantizer=spec.quantizer)


def pack_evicted(keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, spec: LayerSpec,
                 capacity: int) -> tuple[torch.Tensor, PackedKV]:
    """MiKV's tier: ``order`` [R, T] with its ``capacity`` valid ranks reversed (the evicted entries become
    a prefix), and the entries packed at K{b}V{b} in that order."""
    tail = tail_first(order, capacity)
    return tail, pack_ranked(keys, values, tail, spec.evicted_bits, spec.evicted_bits, spec.group_size,
                             quantizer=spec.quantizer)
