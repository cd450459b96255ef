"""MixKV (2025, "Mixing Importance with Diversity: Joint Optimization for KV Cache Compression").

Heads differ in how redundant their keys are; MixKV mixes importance and diversity per head by that
redundancy: score = (1 - r_h) * importance + r_h * diversity. Importance is the window's pooled attention
(SnapKV's votes) normalised over the prompt; diversity is one minus a key's cosine similarity to its head's
mean key, normalised the same way; r_h, the head's redundancy, is the mean pairwise cosine similarity of its
keys (the squared norm of the mean unit key, in [0, 1]). Deviations: the paper was written for vision-language
models and computes the head weights from the multimodal prompt's key similarity with its own normalisation;
here the same mixing on text, once per prompt at the end of prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register
from evolkv.scorers.rkv import importance


@register("mixkv")
@dataclass
class MixKV(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        unit = torch.nn.functional.normalize(obs.keys.float(), dim=-1)
        centre = unit.mean(dim=2, keepdim=True)  # [B, H_kv, 1, D]
        diversity = 1 - (unit * centre).sum(dim=-1) / centre.norm(dim=-1).clamp_min(1e-12)  # 1 - cos to the mean
        diversity = diversity / diversity.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        redundancy = centre.pow(2).sum(dim=-1)  # [B, H_kv, 1]: mean over pairs of unit keys' dot products
        return (1 - redundancy) * importance(obs, self.window, self.kernel) + redundancy * diversity
