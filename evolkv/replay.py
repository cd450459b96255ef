"""The context-reconstruction pass of replaying scorers (KVzip): once per prompt, after the prefill.

The model is fed a request to repeat the context, then the context itself, over the full prefill cache, chunk by
chunk (``chunks``); at each layer, ``Replay.record`` keeps the largest attention each prefill token gets from
those reconstruction queries, and the reconstruction tokens' own keys and values are dropped again, so the
cache holds exactly the prefill afterwards. The scorer (``evolkv.scorers.kvzip``) then ranks from those scores.
Both users of compression rank through ``rank_layers``: the runtime (``Compressor.after_prefill``) and the
evaluator's shared prefill, where it costs about one more prefill per sample, whatever the population.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REQUEST = "\n\nRepeat the previous context exactly."
REQUEST_NEXT = "\n\nRepeat the part of the previous context exactly, starting with"
SUFFIX = "\n"
OVERLAP = 8  # a later chunk's request ends with the previous chunk's last tokens


@dataclass
class Replay:
    """A replay in progress on a ``CompressedCache``: the prefill's length, the chunk being reconstructed
    ([start, end) of the prefill) and every layer's scores so far ([B, H_kv, T] float32)."""

    length: int
    sinks: int
    scores: list[torch.Tensor]
    start: int = 0
    end: int = 0

    def record(self, layer: int, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> None:
        """Scores of the chunk's tokens at ``layer``: query [B, H_q, q, D] of the reconstruction tokens, keys
        [B, H_kv, T + q, D] (the prefill's, then theirs). The softmax runs over the first ``sinks`` tokens,
        the chunk and the reconstruction tokens (causally); the maximum over queries and the group is kept
        (``kernels.replay_scores``: on CUDA without building the attention matrix)."""
        from evolkv import kernels

        batch, num_q, q_len, dim = query.shape
        num_kv = keys.shape[1]
        sink = min(self.sinks, self.start)
        subset = torch.cat([keys[:, :, :sink], keys[:, :, self.start:self.end], keys[:, :, -q_len:]], dim=2)
        q = query.reshape(batch, num_kv, num_q // num_kv, q_len, dim)
        best = self.scores[layer][..., self.start:self.end]  # [B, H_kv, chunk] (zeros: scores are >= 0)
        chunk = kernels.replay_scores(q, subset, scaling, sink, self.end - self.start)
        self.scores[layer][..., self.start:self.end] = torch.maximum(best, chunk)


def chunks(tokenizer, context: torch.Tensor, size: int) -> list[tuple[int, int, torch.Tensor]]:
    """(start, end, ids [B, n]) per chunk of the prefill ``context`` [B, T]: the request, the suffix, then the
    chunk's tokens."""
    encode = lambda text: torch.tensor(tokenizer(text, add_special_tokens=False).input_ids,  # noqa: E731
                                       dtype=torch.long, device=context.device).expand(context.shape[0], -1)
    suffix, out = encode(SUFFIX), []
    for start in range(0, context.shape[1], size):
        end = min(start + size, context.shape[1])
        request = encode(REQUEST) if start == 0 else torch.cat(
            [encode(REQUEST_NEXT), context[:, max(0, start - OVERLAP):start]], dim=1)
        out.append((start, end, torch.cat([request, suffix, context[:, start:end]], dim=1)))
    return out


@torch.no_grad()
def run(model, cache, context: torch.Tensor, tokenizer, sinks: int = 4, size: int = 2048) -> list[torch.Tensor]:
    """Replay ``context`` [B, T] (the prompt just prefilled into ``cache``) through ``model``, which must be
    inside ``runtime.attach``: every layer's scores [B, H_kv, T] float32. The cache holds the prefill again
    afterwards."""
    length = context.shape[1]
    scores = [torch.zeros(layer.keys.shape[:2] + (length,), device=layer.keys.device) for layer in cache.layers]
    cache.replay = state = Replay(length, sinks, scores)
    try:
        for start, end, ids in chunks(tokenizer, context, size):
            state.start, state.end = start, end
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        cache.replay = None
    return scores


def rank_layers(press, model, cache, context: torch.Tensor, tokenizer, prefill: list[dict]) -> list[dict]:
    """Every layer's rankings by ``press``'s replaying scorers (``Press.rank`` with their replayed scores):
    one replay per scorer, then each layer ranked with what its prefill left in ``prefill[i]`` (its
    ``stats``, ``out_proj`` and ``rotary``)."""
    scores = {key: run(model, cache, context, tokenizer, scorer.sinks, scorer.chunk)
              for key, scorer in press.replays.items()}
    return [press.rank(i, None, layer.keys, layer.values, 1.0, {key: s[i] for key, s in scores.items()},
                       **prefill[i]) for i, layer in enumerate(cache.layers)]
