"""Fast generation with a compressed cache: static per-layer capacities, decode steps in a CUDA graph.

    from evolkv.serving import Generator

    gen = Generator(model, cfg)                     # cfg None: the full cache, through the same path
    tokens = gen.generate(input_ids, attention_mask, max_new_tokens=64)

The prefill runs as under ``evolkv.apply`` (each layer compressed by the config at the end of its prefill).
From then on every layer's size is known: its kept entries per (sequence, KV head) plus room for the new
tokens. ``ServingCache`` moves each layer into one ragged buffer of exactly that size (no padding to the
longest head), quantized tiers stay as packed, and a decode step touches only preallocated tensors and device
counters, so on CUDA it is captured once in a CUDA graph and replayed for every token (gpt-fast style): no
per-token allocation, concatenation or Python-side launch overhead. Greedy tokens equal ``model.generate``
under ``evolkv.apply`` with the same config.
"""

from __future__ import annotations

import time

import torch

from evolkv import kernels, runtime
from evolkv.config import KVConfig
from evolkv.errors import ConfigError
from evolkv.models import max_positions
from evolkv.runtime import CompressedCache, CompressedLayer, Compressor, merge_tier


class ServingLayer(CompressedLayer):
    """One layer of a ``ServingCache``: keys/values [N, D], row r = b * H_kv + h at [start[r], start[r] +
    count[r] + room); its packed tiers (if any) as the prefill left them."""

    def __init__(self, source: CompressedLayer, room: int, cache: ServingCache, sliding: bool) -> None:
        super().__init__()
        pos = source.pos  # [B, H_kv, L], -1 = empty
        dim = source.keys.shape[-1]
        valid = (pos >= 0).flatten(0, 1)  # [R, L]
        count = valid.sum(-1)
        slots = count + room
        start = torch.cumsum(slots, 0) - slots
        total = int(slots.sum())
        # zeros, not garbage: the torch path reads padded slots (masked, but 0 * NaN would be NaN)
        self.keys = source.keys.new_zeros(total, dim)
        self.values = source.values.new_zeros(total, dim)
        dest = (start[:, None] + valid.cumsum(-1) - 1)[valid]
        self.keys[dest] = source.keys.flatten(0, 1)[valid]
        self.values[dest] = source.values.flatten(0, 1)[valid]
        self.slot_pos = None
        if sliding:  # a sliding layer masks by position: keep each entry's
            self.slot_pos = torch.full((total,), -1, dtype=torch.int32, device=pos.device)
            self.slot_pos[dest] = pos.flatten(0, 1)[valid].to(torch.int32)
        self.start, self.count = start.to(torch.int32), count.to(torch.int32)
        self.base = (start + count).long()  # where decoded token i of row r goes: base[r] + i
        self.capacity = int(slots.max()) if slots.numel() else 1
        self.kept = int(count.sum())
        self.cache = cache
        self._tiers = []
        for tier in source.tiers():  # read-only from now on: positions as the kernel wants them
            self._tiers.append(tier._replace(pos=tier.pos.to(torch.int32).contiguous()))
        self.dtype, self.device = source.keys.dtype, source.keys.device
        self.seen, self.compressed, self.is_initialized = source.seen, True, True

    def tiers(self):
        return self._tiers

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write one decoded token per row at its row's next slot (no host value: graph-safe)."""
        if key_states.shape[2] != 1:
            raise ConfigError("a serving cache decodes one token per step")
        rows = self.start.shape[0]  # b * H_kv + h
        index = self.base + self.cache.step
        self.keys.index_copy_(0, index, key_states.reshape(rows, -1))
        self.values.index_copy_(0, index, value_states.reshape(rows, -1))
        if self.slot_pos is not None:
            self.slot_pos.index_copy_(0, index, self.cache.query_pos.expand(rows))
        return key_states, value_states

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache: ServingCache,
               scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor:
        """query [B, H_q, 1, D] over this layer's entries (ragged rows, then the packed tiers merged in); ``cache``
        is this layer's ``ServingCache``: its device counters place the new token."""
        whole = all(tier.heads is None for tier in self._tiers)  # per-head precisions: the general path
        packs = [tier.packed for tier in self._tiers]
        if packs and whole and softcap is None and kernels.folded_serves(query, packs):
            from evolkv.kernels import folded, gluon_decode, ragged
            from evolkv.kernels.decode_attention import Partials, plan_splits

            gluon = kernels.gluon_serves(query, packs, sliding_window)
            own = dict(keys=self.keys, values=self.values, start=self.start, count=self.count, step=cache.step,
                       capacity=self.capacity, pos=self.slot_pos)
            if len(self._tiers) == 1 and not gluon:  # the full-precision rows as the first splits of one launch
                packed, packed_pos, _ = self._tiers[0]
                return folded.decode_attention_folded(query, packed, packed_pos, cache.query_pos, scaling,
                                                      sliding_window, ragged=own)[0]
            # the Gluon kernel, or MiKV's two packed tiers: a launch each, and one merge
            rows, device = self.start.shape[0], query.device
            splits = plan_splits(self.capacity, rows, 64, device)[0]
            splits += sum(gluon_decode.splits_for(packed, rows, device) if gluon
                          else folded.splits_for(packed, rows, device) for packed in packs)
            parts = Partials(query, splits)
            ragged.ragged_decode_attention(query, own["keys"], own["values"], own["start"], own["count"], own["step"],
                                           self.capacity, scaling, self.slot_pos, cache.query_pos, sliding_window,
                                           partials=parts)
            for packed, packed_pos, _ in self._tiers:
                if gluon:
                    gluon_decode.decode_attention_gluon(query, packed, packed_pos, cache.query_pos, scaling,
                                                        partials=parts)
                else:
                    folded.decode_attention_folded(query, packed, packed_pos, cache.query_pos, scaling,
                                                   sliding_window, partials=parts)
            return parts.merge()[0]
        out, lse = kernels.attend_ragged(query, self.keys, self.values, self.start, self.count, cache.step,
                                         self.capacity, scaling, self.slot_pos, cache.query_pos, sliding_window,
                                         softcap)
        group = query.shape[1] * query.shape[0] // self.start.shape[0]  # query heads per KV head
        for tier in self._tiers:
            out, lse = merge_tier(out, lse, query, tier, group, cache.query_pos, scaling, sliding_window, softcap)
        return out

    def nbytes(self, room: bool = True) -> int:
        """Bytes this layer stores: full-precision entries (with the room for new tokens, or only the kept
        ones), positions of a sliding layer, and the packed tiers."""
        entries = self.keys.shape[0] if room else self.kept
        full = entries * (self.keys.shape[1] * self.keys.element_size() * 2)
        pos = 0 if self.slot_pos is None else entries * self.slot_pos.element_size()
        return full + pos + sum(tier.packed.nbytes() for tier in self._tiers)

    def entries(self) -> int:
        return self.kept + sum(int((tier.pos >= 0).sum()) for tier in self._tiers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a serving cache cannot be reordered for beam search")


class ServingCache(CompressedCache):
    """Every layer of a prefilled ``CompressedCache`` in static form with room for ``room`` new tokens per
    sequence; ``source``'s layers are emptied as they move (the peak is one layer above the cache).
    ``step`` (tokens decoded so far) and ``query_pos`` (the next token's position, in the prefill's padded
    coordinates) are device counters; ``advance`` moves both after a decode step."""

    def __init__(self, source: CompressedCache, room: int, sliding: list[bool]) -> None:
        super().__init__(0, None)
        device = source.layers[0].keys.device
        self.step = torch.zeros(1, dtype=torch.int32, device=device)
        self.query_pos = torch.full((1,), source.layers[0].seen, dtype=torch.int32, device=device)
        self.layers = []
        for layer, slide in zip(source.layers, sliding):
            self.layers.append(ServingLayer(layer, room, self, slide))
            layer.reset()
        self.pads, self.rotary, self.room = source.pads, source.rotary, room

    def advance(self) -> None:
        self.step.add_(1)
        self.query_pos.add_(1)

    def nbytes(self, room: bool = True) -> int:
        return sum(layer.nbytes(room) for layer in self.layers)


def compile_blocks(model) -> list:
    """Replace ``model``'s norm and MLP modules (classes named ``*RMSNorm`` / ``*MLP``) by ``torch.compile``d
    copies: their elementwise work fused into a few kernels per layer, which a decode step of a 7-8B model is
    mostly made of besides its weights' read (H100, Llama-3-8B shape: -0.9 to -1.3 ms per step,
    ``benchmarks/results/*serving*``). Attention stays evolkv's. Returns what ``restore_blocks`` undoes."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            kind = type(child).__name__
            if kind.endswith(("RMSNorm", "MLP")):
                setattr(parent, name, torch.compile(child, dynamic=False))
                swapped.append((parent, name, child))
    return swapped


def restore_blocks(swapped: list) -> None:
    for parent, name, child in swapped:
        setattr(parent, name, child)


class Generator:
    """Greedy generation with ``cfg`` (None: the full cache) through a ``ServingCache``.

    ``cuda_graph``: capture the decode step once and replay it per token (default: on CUDA). ``prefill``,
    ``decode`` and ``generate`` can be timed apart (``benchmarks/bench_serving.py`` does)."""

    def __init__(self, model, cfg: KVConfig | None = None, tokenizer=None, cuda_graph: bool | None = None) -> None:
        from evolkv.models import model_spec

        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.spec = runtime.check(model, cfg, tokenizer) if cfg is not None else model_spec(model.config, "model")
        device = next(model.parameters()).device
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and device.type != "cuda":
            raise ConfigError("CUDA graphs need the model on a CUDA device")
        self.cache: ServingCache | None = None
        self._graph = None

    def timed(self, input_ids: torch.Tensor, max_new_tokens: int, stage=None) -> dict:
        """Greedy generation of one prompt [1, T], timed apart: the prefill, then the decode steps after the first
        (which captures the CUDA graph). ``stage(text)`` is told each part as it starts. Returns the tokens
        generated, ``prefill_s``, ``decode_s`` and ``timed_steps`` (the steps ``decode_s`` covers)."""
        stage = stage or (lambda text: None)
        device = input_ids.device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        stage(f"prefill {input_ids.shape[1]} tokens")
        start = time.perf_counter()
        first = self.prefill(input_ids, None, max_new_tokens)
        sync()
        prefill_s = time.perf_counter() - start
        stage(f"decode {max_new_tokens} tokens")
        warm = self.decode(min(1, max_new_tokens - 1))  # the first step captures the CUDA graph: not timed
        timed = max_new_tokens - 1 - warm.shape[1]
        start = time.perf_counter()
        rest = self.decode(timed)
        sync()
        decode_s = time.perf_counter() - start
        tokens = torch.cat([first[:, None], warm, rest], 1)[0].tolist()
        return {"tokens": tokens, "prefill_s": prefill_s, "decode_s": decode_s, "timed_steps": timed}

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                max_new_tokens: int = 32) -> torch.Tensor:
        """Run the prompt (compressed as ``evolkv.apply`` does), build the serving cache with room for
        ``max_new_tokens``; returns the first new token [B]."""
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1")
        limit = max_positions(self.model.config)
        if limit and input_ids.shape[1] + max_new_tokens > limit:
            raise ConfigError(f"{input_ids.shape[1]} prompt tokens + {max_new_tokens} new ones exceed the "
                              f"model's {limit} positions")
        cache, first = self.prefill_cache(input_ids, attention_mask)
        lengths = input_ids.shape[1] - (cache.pads if cache.pads is not None else 0)
        self.serve(cache, first, lengths, max_new_tokens)
        return first

    @torch.no_grad()
    def prefill_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                      ) -> tuple[CompressedCache, torch.Tensor]:
        """The prompt's forward into a ``CompressedCache`` (compressed by the config at each layer's end of
        prefill, as under ``evolkv.apply``): (the cache, the first new token [B])."""
        policy = Compressor(self.cfg, self.tokenizer) if self.cfg is not None else None
        cache = CompressedCache(self.spec.num_layers, policy)
        cache.set_padding(attention_mask)
        position_ids = None
        if cache.pads is not None:  # as generate numbers a left-padded prompt: from its first token
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        with runtime.attach(self.model):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, logits_to_keep=1, **{runtime.cache_kwarg(self.model): cache})
        self.prefill_logits = out.logits[:, -1]
        return cache, out.logits[:, -1].argmax(-1)

    def serve(self, cache: CompressedCache, first: torch.Tensor, lengths, room: int) -> None:
        """Decode from ``cache`` from now on: its serving form with ``room`` slots per row for new tokens,
        ``first`` [B] the next token to feed, at positions ``lengths`` (each sequence's real prompt length)."""
        spec = self.spec
        self.cache = ServingCache(cache, room, [spec.is_sliding(i) for i in range(spec.num_layers)])
        self._ids = first[:, None].clone()
        self._positions = (torch.zeros_like(first) + lengths)[:, None].clone()  # the next token's position
        self._graph, self._decoded = None, 0

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step over the serving cache: feed ``_ids``, leave the next token there; returns it [B]
        and its logits [B, V]."""
        with runtime.attach(self.model):
            logits = self.model(input_ids=self._ids, position_ids=self._positions, use_cache=True,
                                **{runtime.cache_kwarg(self.model): self.cache}).logits
        token = logits[:, -1].argmax(-1)
        self.cache.advance()
        self._positions.add_(1)
        self._ids.copy_(token[:, None])
        return token, logits[:, -1]

    def _capture(self) -> None:
        """Warm up (compiles the kernels) on a side stream, undo the warm-up's steps, capture one step."""
        state = (self._ids, self._positions, self.cache.step, self.cache.query_pos)  # what a step moves on
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with kernels.for_graph():  # the replays' kernels (``kernels.gluon_serves``), compiled before the capture
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            for tensor, value in zip(state, saved):
                tensor.copy_(value)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._token, self._logits = self._step()

    @torch.no_grad()
    def decode(self, steps: int, logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``steps`` greedy tokens after the last one fed [B, steps] (at most the room left); with ``logits``
        also each step's next-token logits [B, steps, V]."""
        cache = self.cache
        if cache is None:
            raise ConfigError("prefill first")
        if self._decoded + steps > cache.room:  # counted here: reading cache.step would wait for the GPU
            raise ConfigError(f"only {cache.room - self._decoded} more tokens fit this serving cache")
        self._decoded += steps
        tokens = torch.empty(self._ids.shape[0], steps, dtype=torch.long, device=self._ids.device)
        kept = [] if logits else None
        if self.cuda_graph and self._graph is None and steps:
            self._capture()
        for i in range(steps):
            if self._graph is not None:
                self._graph.replay()
                token, step_logits = self._token, self._logits
            else:
                token, step_logits = self._step()
            tokens[:, i] = token
            if logits:
                kept.append(step_logits.float().clone())
        return (tokens, torch.stack(kept, 1) if steps else tokens.new_empty(0)) if logits else tokens

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32) -> torch.Tensor:
        """The prompt followed by ``max_new_tokens`` greedy tokens [B, T + new], as ``model.generate`` with
        ``do_sample=False`` returns it (no early stop at EOS)."""
        first = self.prefill(input_ids, attention_mask, max_new_tokens)
        rest = self.decode(max_new_tokens - 1)
        return torch.cat([input_ids, first[:, None], rest], dim=1)
