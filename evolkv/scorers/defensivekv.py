"""DefensiveKV (Feng et al., 2025, "Taming the Fragility of KV Cache Eviction in LLM Inference").

Mean aggregation of importance over the observation window's queries lets a token that one query needs badly
score low when the others ignore it; DefensiveKV takes the worst case instead: a token's score is the largest
attention any window query gives it (averaged over the query heads of a GQA group). Deviation: the paper's
layer-level budget redistribution (Layer-DefensiveKV) is left to evolkv's allocators and the search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("defensivekv")
@dataclass
class DefensiveKV(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        return obs.attention(self.window).amax(dim=3).mean(dim=2)  # [B, H_kv, T]
