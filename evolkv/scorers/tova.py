"""TOVA (Oren et al., 2024, "Transformers are Multi-State RNNs").

The attention of the prompt's last query over the prompt, averaged over the query heads of a GQA group.
Deviations: applied once at the end of prefill (the paper evicts one token per generation step), and the
recent ``window`` tokens are kept first as for every evolkv scorer (use ``window=1`` for the paper's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("tova")
@dataclass
class TOVA(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        return obs.attention(self.window)[:, :, :, -1].mean(dim=2)  # [B, H_kv, T]
