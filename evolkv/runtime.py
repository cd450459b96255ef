"""Apply a compression config to a transformers model for real generation.

    with evolkv.apply(model, config):          # runs runtime.compress(model, config)
        out = model.generate(input_ids, max_new_tokens=32)

At the end of prefill each layer ranks its tokens per KV head with the config's scorer and keeps the
config's number of them; decoding then attends over the compressed, per-head variable-length cache. The
evaluator builds the very same ``CompressedCache`` for many candidates at once, so its fast-path scores
equal what ``generate`` does here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import NamedTuple

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin

from evolkv.config import KVConfig
from evolkv.errors import ConfigError
from evolkv import kernels
from evolkv.kernels.packed import PackedKV
from evolkv.press import LayerPlan, Plan, Press, output_projection, pack_evicted, pack_kept

ATTN_IMPLEMENTATION = "evolkv"
_ACTIVE: ContextVar[CompressedCache | None] = ContextVar("evolkv_active_cache", default=None)


class Tier(NamedTuple):
    """A packed part of a layer's cache: entries of B * len(heads) rows and their positions [B, len(heads), L]
    (-1 = empty); ``heads`` [n] the KV heads it holds (None: all of them, in order)."""

    packed: PackedKV
    pos: torch.Tensor
    heads: torch.Tensor | None = None


def query_heads(heads: torch.Tensor, group: int) -> torch.Tensor:
    """The query heads that read KV heads ``heads`` (transformers' GQA: KV head h serves queries h*G..h*G+G-1)."""
    return (heads[:, None] * group + torch.arange(group, device=heads.device)).flatten()


def merge_tier(out, lse, query, tier: Tier, group: int, query_pos, scaling, sliding, softcap):
    """(out [B, H_q, T_q, D], lse [B, H_q, T_q]) with the packed ``tier`` merged in: over its heads' queries only
    (``group`` query heads per KV head) when it holds some of the KV heads."""
    if tier.heads is None:
        return merge_softmax(out, lse, *kernels.attend_packed(query, tier.packed, tier.pos, query_pos, scaling,
                                                              sliding, softcap))
    rows = query_heads(tier.heads, group)
    part, part_lse = kernels.attend_packed(query[:, rows].contiguous(), tier.packed, tier.pos, query_pos, scaling,
                                           sliding, softcap)
    out[:, rows], lse[:, rows] = merge_softmax(out[:, rows], lse[:, rows], part, part_lse)  # fresh tensors: in place
    return out, lse


class CompressedLayer(CacheLayerMixin):
    """One layer's cache: keys/values [B, H_kv, L, D] and each entry's token position [B, H_kv, L] (-1 = empty)."""

    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.pos: torch.Tensor | None = None
        self.seen = 0
        self.compressed = False
        self.packs: list[Tier] = []  # quantized entries beside the full-precision ones, one tier per precision
        self.evicted: PackedKV | None = None  # MiKV: entries past the budget, kept at low precision
        self.evicted_pos: torch.Tensor | None = None  # [B, H_kv, L''] their positions (-1 = empty)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        self.pos = torch.empty(key_states.shape[:2] + (0,), dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        batch, heads, new = key_states.shape[:3]
        new_pos = torch.arange(self.seen, self.seen + new, device=key_states.device).expand(batch, heads, new)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.pos = torch.cat([self.pos, new_pos], dim=-1)
        self.seen += new
        return self.keys, self.values

    def truncate(self, length: int) -> None:
        """Drop every entry after the first ``length`` (an uncompressed layer after a replay pass)."""
        self.keys, self.values = self.keys[..., :length, :], self.values[..., :length, :]
        self.pos, self.seen = self.pos[..., :length], length

    def set_entries(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, seen: int) -> None:
        """Replace the contents with an already compressed cache (the evaluator's fast path)."""
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values, self.pos, self.seen = keys, values, pos, seen
        self.is_initialized = self.compressed = True

    def get_seq_length(self) -> int:
        return self.seen  # logical length: positions continue after compression

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:  # transformers >= 5.x (later releases)
        return -1

    def get_max_cache_shape(self) -> int:  # the same, as transformers 5.0 names it
        return -1

    def add_packed(self, packed: PackedKV, pos: torch.Tensor, heads: torch.Tensor | None = None) -> None:
        """Add quantized entries of all KV heads, or of ``heads`` (read by attention beside the full-precision
        ones)."""
        self.packs.append(Tier(packed, pos, heads))

    def set_evicted(self, packed: PackedKV, pos: torch.Tensor) -> None:
        """Add the MiKV tier: the entries the budget evicts, kept at low precision."""
        self.evicted, self.evicted_pos = packed, pos

    def tiers(self) -> list[Tier]:
        """The packed parts attention reads beside the full-precision entries."""
        evicted = [Tier(self.evicted, self.evicted_pos)] if self.evicted is not None else []
        return [*self.packs, *evicted]

    def reset(self) -> None:
        self.keys = self.values = self.pos = None
        self.packs = []
        self.evicted = self.evicted_pos = None
        self.seen, self.compressed, self.is_initialized = 0, False, False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.tiers():
            raise NotImplementedError("a quantized cache cannot be reordered for beam search")
        if self.is_initialized:
            beam_idx = beam_idx.to(self.keys.device)
            self.keys, self.values = self.keys[beam_idx], self.values[beam_idx]
            self.pos = self.pos[beam_idx]

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache: CompressedCache,
               scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor:
        """query [B, H_q, T_q, D] over this layer's entries (key, value: what ``update`` returned) and its packed
        tiers; at the end of the layer's prefill, the cache's policy compresses it. Returns [B, H_q, T_q, D]."""
        t_q = query.shape[2]
        query_pos = torch.arange(self.seen - t_q, self.seen, device=key.device)
        fresh = not self.compressed and self.seen == t_q
        out = attend_entries(query, key, value, self.pos, query_pos, scaling, sliding_window, softcap, fresh,
                             cache.pads if fresh else None, self.tiers())
        if not self.compressed and cache.policy is not None:
            rotary = None if cache.rotary is None else partial(cache.rotary, module.layer_idx)
            cache.policy.on_prefill(cache, module.layer_idx, query, scaling, sliding_window,
                                    output_projection(module), rotary)
            self.compressed = True
        return out

    def entries(self) -> int:
        """Number of occupied (key, value) slots over the batch and heads."""
        if not self.is_initialized:
            return 0
        packed = sum(int((tier.pos >= 0).sum()) for tier in self.tiers())
        return int((self.pos >= 0).sum()) + packed


class PrefillPolicy:
    """What a cache does with a layer once its prefill attention is done."""

    def on_prefill(self, cache: CompressedCache, layer_idx: int, query: torch.Tensor, scaling: float,
                   sliding_window: int | None, out_proj: torch.Tensor | None = None, rotary=None) -> None:
        """``out_proj``: the layer's output projection weight (``press.output_projection``), for scorers that
        weigh values by it; ``rotary``: the layer's RoPE at given positions (``rotary_of``), for scorers that
        need the queries before rotation."""
        raise NotImplementedError

    def after_prefill(self, model, cache: CompressedCache, input_ids: torch.Tensor | None) -> None:
        """Once the prefill's forward is done (every layer seen): the replay pass of scorers that need one."""


class CompressedCache(Cache):
    """A transformers ``Cache`` whose layers are compressed at the end of prefill by ``policy``."""

    def __init__(self, num_layers: int, policy: PrefillPolicy | None = None) -> None:
        super().__init__(layers=[CompressedLayer() for _ in range(num_layers)])
        self.policy = policy
        self.pads: torch.Tensor | None = None  # [B] left-padding tokens per sequence (None: no padding)
        self.replay = None  # an ``evolkv.replay.Replay`` while a context-reconstruction pass runs
        self.rotary = None  # (layer, positions) -> that layer's RoPE (cos, sin), set by ``attach``

    def set_padding(self, attention_mask: torch.Tensor | None) -> None:
        """Read a prefill's padding from its 2-D attention mask (1 = token, 0 = pad); pads must be on the left."""
        if attention_mask is None or attention_mask.dim() != 2 or bool(attention_mask.all()):
            self.pads = None
            return
        mask = attention_mask.bool()
        if not bool((mask[:, 1:] >= mask[:, :-1]).all()):  # a pad after a token: right (or inner) padding
            raise ConfigError("evolkv needs left-padded batches: set tokenizer.padding_side = 'left'")
        if not bool(mask.any(dim=1).all()):
            raise ConfigError("a sequence of the batch is all padding")
        self.pads = (~mask).sum(dim=1)

    def entries(self) -> int:
        return sum(layer.entries() for layer in self.layers)


class Compressor(PrefillPolicy):
    """Serve one config: at the end of each layer's prefill, the press ranks and plans (``evolkv.press``) and
    the layer keeps its plan's tiers: full-precision ranks, packed ranks, and the MiKV tier."""

    def __init__(self, cfg: KVConfig, tokenizer=None) -> None:
        self.cfg = cfg
        self.press = Press(cfg.model, cfg.scorers(), stats=cfg.allocation == "cake")
        self.tokenizer = tokenizer  # a replaying scorer (KVzip) feeds the model a request to repeat the context
        if self.press.replays and tokenizer is None:
            raise ConfigError(f"the {', '.join(sorted(self.press.replays))} scorer replays the context through "
                              "the tokenizer: pass it, evolkv.apply(model, cfg, tokenizer=tokenizer)")
        self._plans: dict[int, Plan] = {}  # by prefill length (one per sequence length of a padded batch)
        self._pending: dict[int, object] = {}  # deferred layers (allocation, replay) -> ranking(s), until ready
        self._prefill: dict[int, dict] = {}  # replaying configs: each layer's stats, out_proj and rotary

    def _plan_for(self, length: int) -> Plan:
        if length not in self._plans:
            self._plans[length] = Plan(self.cfg, length)
        return self._plans[length]

    def _padded(self, layer_idx, query, keys, values, scaling, pads, out_proj, rotary
                ) -> tuple[torch.Tensor, LayerPlan]:
        """Rank and plan each sequence of a left-padded batch on its own tokens, as alone: the order [B, H_kv, T]
        (positions in the padded batch, the pads last and never kept) and the batch's plan."""
        if self.cfg.layers[layer_idx].evicted_bits:
            raise ConfigError("MiKV tiers (evicted_bits) with left-padded batches are not supported: generate "
                              "one prompt at a time")
        key, length = self.cfg.scorer_of(layer_idx).key, keys.shape[2]
        orders, counts = [], []
        for b, pad in enumerate(pads.tolist()):
            rows = slice(b, b + 1)
            ranking = self.press.rank(layer_idx, query[rows, :, pad:], keys[rows, :, pad:], values[rows, :, pad:],
                                      scaling, out_proj=out_proj, rotary=rotary)[key]
            counts.append(self._plan_for(length - pad).layer(layer_idx, ranking).counts)
            padding = torch.arange(pad, device=keys.device).expand(1, keys.shape[1], pad)
            orders.append(torch.cat([ranking.order.long() + pad, padding], dim=-1))
        plan = LayerPlan(self.cfg.layers[layer_idx], length, self._plan_for(length).capacity[layer_idx],
                         torch.cat(counts))
        return torch.cat(orders), plan

    def on_prefill(self, cache, layer_idx, query, scaling, sliding_window, out_proj=None, rotary=None):
        layer = cache.layers[layer_idx]
        length = layer.seen
        weights = dict(out_proj=out_proj, rotary=rotary)
        if self.press.replays:  # ranked once the replay pass has run (``after_prefill``)
            if cache.pads is not None:
                raise ConfigError("a replaying scorer (kvzip) takes one prompt at a time (no padded batches)")
            self._pending[layer_idx] = ranked = self.press.rank(layer_idx, query, layer.keys, layer.values,
                                                                scaling, **weights)
            stats = self.press.measure(ranked, layer_idx, query, layer.keys, layer.values, scaling)
            self._prefill[layer_idx] = dict(stats=stats, **weights)
            return
        if self.cfg.allocation is not None:  # a per-prompt allocation needs every layer's ranking first
            if cache.pads is not None:
                raise ConfigError(f"the {self.cfg.allocation} allocation takes one prompt at a time (no padded "
                                  "batches)")
            self._pending[layer_idx] = self.press.rank(layer_idx, query, layer.keys, layer.values, scaling,
                                                       **weights)[self.cfg.scorer_of(layer_idx).key]
            if len(self._pending) == len(cache.layers):  # the last layer's prefill: compress them all now
                self._keep_all(cache, [self._pending.pop(i) for i in range(len(cache.layers))], length)
            return
        if cache.pads is not None:
            order, plan = self._padded(layer_idx, query, layer.keys, layer.values, scaling, cache.pads, out_proj,
                                       rotary)
        else:
            ranking = self.press.rank(layer_idx, query, layer.keys, layer.values, scaling, **weights)[
                self.cfg.scorer_of(layer_idx).key]
            plan = self._plan_for(length).layer(layer_idx, ranking)
            order = ranking.order.long()
        self._keep(layer, plan, order, length)

    def after_prefill(self, model, cache, input_ids):
        if not self.press.replays or len(self._pending) != len(cache.layers):
            return
        from evolkv import replay

        if input_ids is None:
            raise ConfigError("a replaying scorer (kvzip) needs the prompt's input_ids (not inputs_embeds)")
        layers = range(len(cache.layers))
        pending = [self._pending.pop(i) for i in layers]
        replayed = replay.rank_layers(self.press, model, cache, input_ids, self.tokenizer,
                                      [self._prefill.pop(i) for i in layers])
        rankings = [{**ranked, **more}[self.cfg.scorer_of(i).key]
                    for i, (ranked, more) in enumerate(zip(pending, replayed))]
        self._keep_all(cache, rankings, input_ids.shape[1])

    def _keep_all(self, cache, rankings, length: int) -> None:
        """Compress every layer at once from every layer's ranking (allocations, replaying scorers)."""
        for i, (plan, ranking) in enumerate(zip(self._plan_for(length).layers(rankings), rankings)):
            self._keep(cache.layers[i], plan, ranking.order.long(), length)

    @staticmethod
    def _keep(layer, plan: LayerPlan, order: torch.Tensor, length: int) -> None:
        """Replace ``layer``'s prefill with what ``plan`` keeps of it, in ``order``'s ranking."""
        flat = lambda t: t.flatten(0, 1)  # noqa: E731
        keys, values = layer.keys, layer.values  # the whole prefill (set_entries replaces them)
        if plan.evicted is not None:  # MiKV: what the budget evicts stays, at low precision, lowest rank first
            tail, packed = pack_evicted(flat(keys), flat(values), flat(order), plan.spec, plan.capacity)
            tail = tail.view_as(order)
            longest = int(plan.evicted.max()) if plan.evicted.numel() else 0
            if longest:
                slot = torch.arange(longest, device=order.device)
                layer.set_evicted(packed.narrow(0, longest),
                                  torch.where(slot < plan.evicted[..., None], tail[..., :longest].long(), -1))
        layer.set_entries(*kernels.gather_kv(keys, values, order, plan.full_counts), length)
        if not plan.spec.quantized:
            return
        # ranks < residual stay at full precision; the rest is stored packed in ranking order, quantized in
        # groups that start at the residual (as the evaluator's shared packed prefill is); one tier per
        # precision (per-head precisions: each holds the heads stored at it)
        residual, packed_counts = plan.residual, plan.packed_counts
        for heads, spec in plan.packed_groups():
            keep, ordered = packed_counts, order
            if heads is not None:
                keep, ordered, keys_h, values_h = keep[:, heads], order[:, heads], keys[:, heads], values[:, heads]
            else:
                keys_h, values_h = keys, values
            kept = int(keep.max()) if keep.numel() else 0
            if kept:
                packed = pack_kept(flat(keys_h), flat(values_h), flat(ordered), spec, residual)
                slot = torch.arange(kept, device=order.device)
                layer.add_packed(packed.narrow(0, kept),
                                 torch.where(slot < keep[..., None], ordered[..., residual:residual + kept].long(), -1),
                                 heads)


def evolkv_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over the active ``CompressedCache`` (registered as the ``"evolkv"`` implementation): each cache
    layer attends for itself (``CompressedLayer.attend``, the evaluator's ``GatheredLayer``, the serving path's
    ``ServingLayer``); a replay pass (``evolkv.replay``) and a forward without a cache are the two cases above
    the layers.

    query: [B, H_q, T_q, D]; key, value: [B, H_kv, L, D] as returned by the cache. Returns ([B, T_q, H_q, D], None).
    """
    sliding, softcap = kwargs.get("sliding_window"), kwargs.get("softcap")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache = _ACTIVE.get()
    if cache is None:  # no cache (use_cache=False): plain causal attention over this forward's tokens
        t_q, length = query.shape[2], key.shape[2]
        key_pos = torch.arange(length, device=key.device).expand(key.shape[:3])
        query_pos = torch.arange(length - t_q, length, device=key.device)
        out = attend_entries(query, key, value, key_pos, query_pos, scaling, sliding, softcap, fresh=True)
    elif cache.replay is not None:
        out = _replay_attention(cache, module.layer_idx, query, key, value, scaling, sliding, softcap)
    else:
        out = cache.layers[module.layer_idx].attend(module, query, key, value, cache, scaling, sliding, softcap)
    return out.transpose(1, 2).contiguous(), None


def attend_entries(query, key, value, key_pos, query_pos, scaling, sliding, softcap, fresh=False, pads=None,
                   tiers=()) -> torch.Tensor:
    """query [B, H_q, T_q, D] over full-precision entries key, value [B, H_kv, L, D] at positions key_pos
    [B, H_kv, L] (-1 = empty), with each packed ``tiers`` part merged in by log-sum-exp; a ``fresh`` prefill
    (nothing selected yet) through SDPA. Returns [B, H_q, T_q, D]."""
    if fresh and (softcap is None or pads is not None):  # a plain prefill: no entries to select
        return _prefill_attention(query, key, value, scaling, sliding, pads, softcap)
    out, lse = kernels.attend(query, key, value, key_pos, query_pos, scaling, sliding, softcap)
    group = query.shape[1] // key.shape[1]
    for tier in tiers:  # quantized parts: merge softmaxes
        out, lse = merge_tier(out, lse, query, tier, group, query_pos, scaling, sliding, softcap)
    return out


def _replay_attention(cache, layer_idx, query, key, value, scaling, sliding, softcap) -> torch.Tensor:
    """A replay pass's attention (``evolkv.replay``): the reconstruction tokens over the prefill and
    themselves; their scores recorded, their entries dropped again. Returns [B, H_q, T_q, D]."""
    layer, t_q = cache.layers[layer_idx], query.shape[2]
    query_pos = torch.arange(layer.seen - t_q, layer.seen, device=key.device)
    if softcap is None:  # SDPA: no [T_q, T + T_q] float32 attention matrix per head (a 2k chunk over 32k)
        visible = layer.pos[0, 0][None, :] <= query_pos[:, None]  # the prefill is uncompressed: one layout
        if sliding is not None:
            visible &= layer.pos[0, 0][None, :] > query_pos[:, None] - sliding
        group = query.shape[1] // key.shape[1]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), attn_mask=visible,
            scale=scaling)
    else:
        out, _ = kernels.reference.attend(query, key, value, layer.pos, query_pos, scaling, sliding, softcap)
    cache.replay.record(layer_idx, query, key, scaling)
    layer.truncate(cache.replay.length)
    return out


def merge_softmax(out, lse, other_out, other_lse):
    """Attention over two disjoint sets of entries, each (out [..., D], lse [...]), as over their union."""
    total = torch.logaddexp(lse, other_lse)
    weight, other_weight = (lse - total).exp().nan_to_num(0.0), (other_lse - total).exp().nan_to_num(0.0)
    merged = out.float() * weight[..., None] + other_out.float() * other_weight[..., None]
    return merged.to(out.dtype), total


def _prefill_attention(query, key, value, scaling, sliding_window, pads=None, softcap=None):
    """Causal (optionally sliding-window) attention of a prefill through SDPA (flash kernels on GPU).

    query: [B, H_q, T, D]; key, value: [B, H_kv, T, D]; pads: [B] left-padding tokens per sequence (their keys
    are masked; a pad query sees only itself). Returns [B, H_q, T, D].
    """
    length = query.shape[2]
    mask = None
    i = torch.arange(length, device=query.device)
    if sliding_window is not None and length > sliding_window:
        mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - sliding_window)  # [T, T]
    if pads is not None:
        causal = mask if mask is not None else i[None, :] <= i[:, None]
        real = i[None, :] >= pads.to(query.device)[:, None]  # [B, T] keys that are tokens
        mask = (causal[None] & real[:, None, :]) | torch.eye(length, dtype=torch.bool, device=query.device)
        mask = mask[:, None]  # [B, 1, T, T]
    if softcap is not None:  # Gemma 2 style logit soft-capping: the explicit path
        groups = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        logits = torch.tanh(query.float() @ k.float().transpose(-1, -2) * scaling / softcap) * softcap
        allowed = mask if mask is not None else (i[None, :] <= i[:, None])
        weights = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        return (weights @ v.float()).to(query.dtype)
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=mask is None, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1])


AttentionInterface.register(ATTN_IMPLEMENTATION, evolkv_attention)


CACHE_KWARGS = ("cache", "past_key_values")  # transformers >= 5.24 names it ``cache``; earlier 5.x releases
# ``past_key_values`` (still accepted with a FutureWarning until 5.40)


def cache_kwarg(model) -> str:
    """The keyword ``model.forward`` takes its KV cache by, on the installed transformers."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def rotary_of(model) -> Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """``(layer, positions [N]) -> (cos, sin) [N, D]``: the RoPE a layer of ``model`` applies at those
    positions (its own rotary module's, for models whose layers differ, as Gemma 3's sliding ones do); None
    where the model has no rotary module evolkv knows."""
    base = getattr(model, "model", None)
    base = getattr(base, "language_model", base)
    rope = getattr(base, "rotary_emb", None)
    if rope is None:
        return None
    config = getattr(model.config, "text_config", None) or model.config
    layer_types = getattr(config, "layer_types", None)
    by_type = "layer_type" in inspect.signature(rope.forward).parameters
    local = getattr(base, "rotary_emb_local", None)  # earlier releases: a second module for sliding layers

    @torch.no_grad()
    def at(layer: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        like = torch.zeros(1, dtype=torch.float32, device=positions.device)
        kind = layer_types[layer] if layer_types else None
        if by_type:
            cos, sin = rope(like, positions[None], kind)
        elif local is not None and kind == "sliding_attention":
            cos, sin = local(like, positions[None])
        else:
            cos, sin = rope(like, positions[None])
        return cos[0].float(), sin[0].float()

    return at


@contextmanager
def attach(model, make_cache: Callable[[], CompressedCache] | None = None) -> Iterator[None]:
    """Route ``model``'s attention through evolkv for the duration of the block; always restored.

    With ``make_cache``, every forward that starts a new sequence gets a fresh cache from it (so
    ``model.generate`` compresses without further arguments); without it, callers pass a
    ``CompressedCache`` themselves, as ``cache=`` or ``past_key_values=`` (either works on any 5.x).
    """
    previous = model.config._attn_implementation
    tokens: list = []
    name = cache_kwarg(model)
    rotary = rotary_of(model)

    def before(module, args, kwargs):
        cache = None
        for key in CACHE_KWARGS:  # a caller (or generate) may use either name; the model gets its own
            if kwargs.get(key) is not None:
                cache = kwargs.pop(key)
        if not isinstance(cache, CompressedCache):
            if make_cache is None or kwargs.get("use_cache") is False:
                if cache is not None:
                    kwargs[name] = cache
                tokens.append(_ACTIVE.set(None))
                return args, kwargs
            if cache is not None and cache.get_seq_length() > 0:
                raise ConfigError("this cache was prefilled without evolkv; start generation inside apply()")
            cache = make_cache()
            cache.set_padding(kwargs.get("attention_mask"))  # a left-padded batch: each sequence as alone
        kwargs[name] = cache
        cache.rotary = rotary
        tokens.append(_ACTIVE.set(cache))
        return args, kwargs

    def after(module, args, kwargs, output):
        cache = _ACTIVE.get()
        if tokens:
            _ACTIVE.reset(tokens.pop())
        if cache is not None and cache.policy is not None and cache.replay is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache.policy.after_prefill(model, cache, ids)

    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation(previous)


def check(model, cfg: KVConfig, tokenizer=None):
    """Refuse, before any generation, a config made for another architecture or one that cannot be served
    (a replaying scorer without the ``tokenizer``); returns the model's ``ModelSpec``."""
    from evolkv.models import model_spec

    spec = model_spec(model.config, cfg.model.name)
    cfg.check_fits(spec)
    Compressor(cfg, tokenizer)
    return spec


@contextmanager
def compress(model, cfg: KVConfig, tokenizer=None) -> Iterator[None]:
    """Compress ``model``'s KV cache with ``cfg`` inside the block (``check``s that ``cfg`` fits the model).
    A config with a replaying scorer (kvzip) also needs the model's ``tokenizer``. ``evolkv.apply`` is the public
    entry (a config, or a budget to look the stored winner up by); this is what it runs."""
    check(model, cfg, tokenizer)
    with attach(model, lambda: CompressedCache(cfg.model.num_layers, Compressor(cfg, tokenizer))):
        yield

