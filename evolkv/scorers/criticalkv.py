"""CriticalKV (Feng et al., 2025, "Identify Critical KV Cache in LLM Inference from an Output Perturbation
Perspective").

What a token adds to the attention output is its attention weight times its value: the score is the window's
attention (accumulated as SnapKV does, averaged over the query heads of a GQA group) times the L2 norm of the
token's value. Deviations: the paper projects each value through the output projection W_o before its norm and
spends part of the budget on plain attention first (two stages); here the value's own norm stands in for the
projected one (an Observation carries no weights) and there is one stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.h2o import H2O
from evolkv.scorers.registry import register


@register("criticalkv")
@dataclass
class CriticalKV(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        return H2O(window=self.window).score(obs) * obs.values.float().norm(dim=-1)  # [B, H_kv, T]
