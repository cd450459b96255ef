"""StreamingLLM (Xiao et al., 2024, "Efficient Streaming Language Models with Attention Sinks").

Keeps the first ``sinks`` tokens and then the most recent ones. Deviation: applied once at the end of
prefill (the paper slides its window during generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("streaming")
@dataclass
class StreamingLLM(Scorer):
    sinks: int = 4

    def score(self, obs: Observation) -> torch.Tensor:
        batch, num_kv, length = obs.keys.shape[:3]
        recency = torch.arange(length, device=obs.keys.device, dtype=torch.float32) / length
        recency[: self.sinks] = 2.0
        return recency.expand(batch, num_kv, length)
