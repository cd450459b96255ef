"""SnapKV (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation").

The observation window's attention over the prompt, summed over the window's queries, averaged over the
query heads of a GQA group, then average-pooled along tokens (``kernel``). Deviation: the paper max-pools and
gives each query head its own keep-set; here a KV head's group shares one (the cache stores one per KV head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer, pool
from evolkv.scorers.registry import register


@register("snapkv")
@dataclass
class SnapKV(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        votes = obs.attention(self.window).sum(dim=3).mean(dim=2)  # [B, H_kv, T]
        return pool(votes, self.kernel)
