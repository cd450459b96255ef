"""H2O, "heavy hitters" (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference").

A token's score is the attention it received, accumulated over the observation window's queries and averaged
over the query heads of a GQA group. Deviations: the paper accumulates over every query so far and evicts one
token per decoding step; here the scores are taken once at the end of prefill from the last ``queries``
queries (0: the ``window``), and the recent ``window`` tokens are kept first as for every scorer. Unlike
SnapKV there is no pooling over neighbours.

kvpress's ObservedAttention is ``queries`` = the prompt length with ``average = 1``: every query of the prompt
observes, and a token's sum is divided by the number of queries that can see it (its distance to the end).
Observing the whole prompt costs T x T attention memory per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("h2o")
@dataclass
class H2O(Scorer):
    queries: int = 0
    average: bool = False

    def __post_init__(self) -> None:
        self.queries, self.average = int(self.queries), bool(self.average)

    def score(self, obs: Observation) -> torch.Tensor:
        seen = obs.attention(self.queries or self.window)  # [B, H_kv, G, w, T]
        scores = seen.sum(dim=3)
        if self.average:  # each token's sum over the queries that can see it (the last w, causally)
            w, length = seen.shape[3], obs.length
            positions = torch.arange(length, device=scores.device)
            scores = scores / (length - torch.maximum(positions, positions.new_tensor(length - w))).float()
        return scores.mean(dim=2)  # [B, H_kv, T]
