"""Key norm (Devoto et al., 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression").

Tokens whose keys have a small L2 norm draw the most attention: keep the smallest norms first. Needs no
queries, so it works query-agnostic at no attention cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("keynorm")
@dataclass
class KeyNorm(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        return -obs.keys.float().norm(dim=-1)
