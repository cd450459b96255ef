"""H2O, "heavy hitters" (Zhang et al., 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference").

A token's score is the attention it received, accumulated over the observation window's queries and averaged
over the query heads of a GQA group; kvpress calls the prompt-wide version ObservedAttention. Deviations: the
paper accumulates over every query so far and evicts one token per decoding step; here the scores are taken
once at the end of prefill from the last ``window`` queries (set ``window`` to the prompt length for every
query, at T x T attention memory per layer), and those recent tokens are kept first as for every scorer. Unlike
SnapKV there is no pooling over neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("h2o")
@dataclass
class H2O(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        return obs.attention(self.window).sum(dim=3).mean(dim=2)  # [B, H_kv, T]
