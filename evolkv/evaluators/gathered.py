"""The evaluator's cache layer: many candidates' compressed caches over one shared prefill, never copied out."""

from __future__ import annotations

import torch

from evolkv import kernels
from evolkv.kernels.packed import PackedKV, with_packed_entries
from evolkv.runtime import CompressedLayer, merge_softmax, query_heads


class GatheredLayer(CompressedLayer):
    """Many candidates' compressed caches over one shared prefill, never copied out.

    Holds the sample's prefill keys/values [H_kv, T, D], each candidate's ranking ``order`` [C or 1, H_kv, T]
    (int32) and ``counts`` [C, H_kv] (candidate c keeps the first counts[c, h] entries of order[c, h]), and the
    tokens appended after the prefill, ``keys``/``values`` [C, H_kv, N, D]. Candidates of a quantized layer
    read their ranks from ``residual`` on from ``packs`` (one packed prefill per precision, shared; with
    per-head precisions, of the KV heads stored at it).
    MiKV candidates also read the entries their budget evicts from ``evicted``: (rows, the ranking with its
    valid part reversed [1, H_kv, T], evicted counts [rows, H_kv], that ranking's prefill packed at low
    precision), merged into the softmax by log-sum-exp.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, order: torch.Tensor, counts: torch.Tensor,
                 seen: int, packs: list[tuple[torch.Tensor, PackedKV, int, torch.Tensor | None]] | None = None,
                 evicted: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, PackedKV]] | None = None) -> None:
        super().__init__()
        self.shared = (keys, values)
        self.order, self.counts = order.to(torch.int32), counts.to(torch.int32)
        self.packs = packs or []  # (candidate rows, the prefill packed in their ranking's order, residual, KV heads)
        self.tails = [(rows, tail.to(torch.int32), n.to(torch.int32), packed) for rows, tail, n, packed in evicted or []]
        self.merged: dict = {}  # torch path: dequantized prefills
        cands, heads = counts.shape
        self.dtype, self.device = keys.dtype, keys.device
        self.keys = keys.new_empty(cands, heads, 0, keys.shape[-1])
        self.values = values.new_empty(cands, heads, 0, values.shape[-1])
        self.seen, self.compressed, self.is_initialized = seen, True, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.seen += key_states.shape[2]
        return self.keys, self.values

    def entries(self) -> int:
        evicted = sum(int(n.sum()) for _, _, n, _ in self.tails)
        return int(self.counts.sum()) + evicted + self.keys.shape[0] * self.keys.shape[1] * self.keys.shape[2]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a gathered (evaluation) cache cannot be reordered for beam search")

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cache, scaling: float,
               sliding_window: int | None, softcap: float | None) -> torch.Tensor:
        """Every candidate's query rows [C, H_q, T_q, D] over its kept prefix of the shared prefill and its own
        new tokens (``kernels.attend_gathered``); quantized candidates through ``_attend_packed``."""
        if self.packs or self.tails:
            return self._attend_packed(query, scaling, sliding_window)
        out, _ = kernels.attend_gathered(query, *self.shared, self.order, self.counts, self.keys, self.values,
                                         scaling, sliding_window)
        return out

    def _attend_packed(self, query, scaling, sliding):
        """Candidates grouped by the packed prefill they read, over the KV heads stored at it (the rest read the
        full-precision one), then the MiKV candidates' evicted tiers merged in."""
        out = torch.empty_like(query)
        lse = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
        cands, kv_heads = self.counts.shape
        group = query.shape[1] // kv_heads
        covered = torch.zeros(cands, kv_heads, dtype=torch.bool, device=query.device)
        groups = []
        for rows, packed, residual, heads in self.packs:
            groups.append((rows, heads, packed, residual))
            covered[rows[:, None], slice(None) if heads is None else heads[None, :]] = True
        plain: dict[tuple[bool, ...], list[int]] = {}  # the cells no pack covers, grouped by their heads
        for c, row in enumerate((~covered).tolist()):
            if any(row):
                plain.setdefault(tuple(row), []).append(c)
        for pattern, rows in plain.items():
            heads = None if all(pattern) else torch.tensor([h for h, on in enumerate(pattern) if on], device=query.device)
            groups.append((torch.tensor(rows, device=query.device), heads, None, 0))
        dense = not kernels.use_triton(query)

        def read(key, shared, order, packed, residual):
            """(shared keys/values, packed) as the kernel reads them; the torch path dequantizes each packed
            prefill into a dense copy once per cache (greedy decoding comes back once per token)."""
            if not dense or packed is None:
                return shared, packed
            if key not in self.merged:
                self.merged[key] = with_packed_entries(*shared, order[0], packed, residual)
            return self.merged[key], None

        for i, (rows, heads, packed, residual) in enumerate(groups):
            order = self.order if self.order.shape[0] == 1 else self.order[rows]
            q, shared, counts = query[rows], self.shared, self.counts[rows]
            new_keys, new_values = self.keys[rows], self.values[rows]
            if heads is not None:  # some KV heads of these candidates: their queries, their rows of everything
                q_heads = query_heads(heads, group)
                q = q[:, q_heads]
                shared = (shared[0][heads], shared[1][heads])
                order, counts = order[:, heads], counts[:, heads]
                new_keys, new_values = new_keys[:, heads], new_values[:, heads]
            shared, packed = read(i, shared, order, packed, residual)
            part, part_lse = kernels.attend_gathered(q, *shared, order, counts, new_keys, new_values, scaling, sliding,
                                                     packed=packed, residual=residual)
            if heads is None:
                out[rows], lse[rows] = part, part_lse
            else:
                at = (rows[:, None], q_heads[None, :])
                out[at], lse[at] = part, part_lse
        for i, (rows, tail, evicted, packed) in enumerate(self.tails):
            shared, packed = read(("tail", i), self.shared, tail, packed, 0)
            tail_out, tail_lse = kernels.attend_gathered(query[rows], *shared, tail, evicted, self.keys[rows],
                                                         self.values[rows], scaling, sliding, packed=packed,
                                                         include_new=False)
            out[rows], lse[rows] = merge_softmax(out[rows], lse[rows], tail_out, tail_lse)
        return out
