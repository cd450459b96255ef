"""KeyDiff (Park et al., 2025, "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference").

Keys that differ most from the others carry the most information: a token's score is minus the cosine
similarity of its key to the anchor, the mean of the prompt's unit keys (per KV head; as kvpress's
KeyDiffPress). Needs no queries, so it works
query-agnostic at no attention cost. Deviation: the paper scores block by block as the prompt streams in; here
once, over the whole prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("keydiff")
@dataclass
class KeyDiff(Scorer):
    def score(self, obs: Observation) -> torch.Tensor:
        keys = obs.keys.float()
        anchor = torch.nn.functional.normalize(keys, dim=-1).mean(dim=2, keepdim=True)  # [B, H_kv, 1, D]
        return -torch.nn.functional.cosine_similarity(keys, anchor, dim=-1)
