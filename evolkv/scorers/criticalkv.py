"""CriticalKV (Feng et al., 2025, "Identify Critical KV Cache in LLM Inference from an Output Perturbation
Perspective").

What a token adds to the attention output is its attention weight times its value: the score is the window's
mean attention (averaged over the query heads of a GQA group, as SnapKV's without pooling) plus ``epsilon``,
times the size of the token's value. With ``projected = 1`` that size is the paper's: the L1 norm of the value
projected through the layer's output projection W_o, per query head, averaged over the group (kvpress's
``CriticalKVPress``); by default (0) it is the value's own L2 norm, which needs no weights. Deviation: the
paper (and kvpress, by default) first spends ``first_stage_ratio`` of the budget on plain attention, which
makes the ranking depend on the budget; here there is one stage (kvpress's ``first_stage_ratio = 0``), so every
budget keeps a prefix of one ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.errors import ConfigError
from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("criticalkv")
@dataclass
class CriticalKV(Scorer):
    projected: bool = False
    epsilon: float = 1e-4

    def __post_init__(self) -> None:
        self.projected = bool(self.projected)

    def score(self, obs: Observation) -> torch.Tensor:
        attention = obs.attention(self.window).mean(dim=3).mean(dim=2)  # [B, H_kv, T]
        if not self.projected:
            return (attention + self.epsilon) * obs.values.float().norm(dim=-1)
        if obs.out_proj is None:
            raise ConfigError("criticalkv with projected=1 needs the layer's output projection (o_proj), which "
                              "this model's attention does not have")
        return (attention + self.epsilon) * projected_norm(obs.values, obs.out_proj)


def projected_norm(values: torch.Tensor, out_proj: torch.Tensor) -> torch.Tensor:
    """||v W_o||_1 per query head, averaged over each KV head's group: values [B, H_kv, T, D], out_proj
    [hidden, H_q * D] -> [B, H_kv, T]. One query head at a time ([B, T, hidden] at most in memory)."""
    batch, num_kv, length, dim = values.shape
    num_q = out_proj.shape[1] // dim
    group = num_q // num_kv
    weight = out_proj.float().t().reshape(num_q, dim, -1)  # [H_q, D, hidden]
    norms = torch.stack([(values[:, h // group].float() @ weight[h]).abs().sum(-1) for h in range(num_q)], dim=1)
    return norms.view(batch, num_kv, group, length).mean(dim=2)
