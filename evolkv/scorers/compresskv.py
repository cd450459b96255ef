"""CompressKV (2025, "CompressKV: Semantic Retrieval Heads Know What Tokens are Not Important Before
Generation").

Not every head's attention is a good judge of which tokens matter: heads that retrieve from far back in the
prompt ("semantic retrieval heads") are. CompressKV ranks every head's tokens by those heads' attention. Here a
layer's retrieval heads are its ``retrieval`` KV heads whose window attention puts the most mass outside the
recent ``window`` tokens, and every KV head of the layer is ranked by their mean SnapKV score. Deviations: the
paper finds the retrieval heads once per model with a copy-and-paste probe and also sets per-layer budgets
from each layer's compression error; here the heads are picked per prompt from the observation window (no
probe, one pass), and budgets stay whatever the config says (uniform, a baseline allocation or the search's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer, pool
from evolkv.scorers.registry import register


@register("compresskv")
@dataclass
class CompressKV(Scorer):
    retrieval: int = 1

    def score(self, obs: Observation) -> torch.Tensor:
        attention = obs.attention(self.window)  # [B, H_kv, G, w, T]
        votes = pool(attention.sum(dim=3).mean(dim=2), self.kernel)  # [B, H_kv, T]
        recent = min(self.window, obs.length)
        far = attention[..., : obs.length - recent].sum(dim=-1).mean(dim=(2, 3))  # [B, H_kv] mass before the window
        count = max(1, min(self.retrieval, votes.shape[1]))
        heads = far.topk(count, dim=1).indices  # [B, count]
        chosen = votes.gather(1, heads[..., None].expand(-1, -1, votes.shape[-1])).mean(dim=1, keepdim=True)
        return chosen.expand_as(votes).contiguous()
