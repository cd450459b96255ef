"""R-KV (Cai et al., 2025, "R-KV: Redundancy-aware KV Cache Compression for Reasoning Models").

A token is worth keeping when the window attends to it (importance) and when no other key already says the
same (redundancy): score = ``lam`` * importance - (1 - ``lam``) * redundancy, per KV head. Importance is the
window's attention, pooled as SnapKV's and normalised to sum to 1 over the prompt; redundancy is the softmax
over the prompt of each key's mean cosine similarity to the others (both terms are distributions over the
tokens, so ``lam`` weighs like with like; the paper's ``lam`` is 0.1). Deviations: the paper scores the
decoding buffer of a reasoning model every few steps and keeps only the most recent of near-duplicate keys
above a similarity threshold; here the scores are taken once at the end of prefill, and the mean similarity
to all keys, ``k_i . mean_j k_j`` over unit keys, is exact in O(T D) instead of the T x T matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer, pool
from evolkv.scorers.registry import register


def importance(obs: Observation, window: int, kernel: int) -> torch.Tensor:
    """The window's pooled attention (SnapKV's votes) as a distribution over the prompt: [B, H_kv, T]."""
    votes = pool(obs.attention(window).sum(dim=3).mean(dim=2), kernel)
    return votes / votes.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def mean_similarity(keys: torch.Tensor) -> torch.Tensor:
    """Each key's mean cosine similarity to every key of its head (itself included): [B, H_kv, T]."""
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    return (unit * unit.mean(dim=2, keepdim=True)).sum(dim=-1)


@register("rkv")
@dataclass
class RKV(Scorer):
    lam: float = 0.1

    def score(self, obs: Observation) -> torch.Tensor:
        redundancy = mean_similarity(obs.keys).softmax(dim=-1)
        return self.lam * importance(obs, self.window, self.kernel) - (1 - self.lam) * redundancy
