"""Expected attention (Devoto et al., 2025, "Expected Attention: KV Cache Compression by Estimating Attention
from Future Queries' Distribution"; kvpress's default scorer, which its registry wraps in AdaKV).

Future queries are unknown, but their distribution can be estimated: with queries q ~ N(mu, Sigma), the
expected attention logit of key k is exp(s mu.k + s^2 k'Sigma k / 2) (s the scaling), normalised over the
prompt, per query head, averaged over the GQA group, then multiplied by the value's norm (a token's weight in
the output, kvpress's ``use_vnorm``). mu and Sigma are the mean and covariance of the prompt's last
``statistics`` queries. Deviations: kvpress estimates them from the queries before RoPE and averages the
rotation over the next 512 positions; an Observation carries the queries after RoPE and no rotary
parameters, so the statistics are those of the recent rotated queries. kvpress also keeps ``n_sink`` first
tokens; here the recent ``window`` tokens are kept first, as for every evolkv scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("expected_attention")
@dataclass
class ExpectedAttention(Scorer):
    statistics: int = 64
    covariance: bool = True

    def score(self, obs: Observation) -> torch.Tensor:
        queries = obs.queries(self.statistics).float()  # [B, H_q, n, D]
        batch, num_q, count, dim = queries.shape
        num_kv = obs.keys.shape[1]
        mean = queries.mean(dim=2).view(batch, num_kv, num_q // num_kv, dim)  # [B, H_kv, G, D]
        keys = obs.keys.float()  # [B, H_kv, T, D]
        logits = torch.einsum("bhgd,bhtd->bhgt", mean, keys) * obs.scaling
        if self.covariance and count > 1:
            centred = (queries - queries.mean(dim=2, keepdim=True)).view(batch, num_kv, num_q // num_kv, count, dim)
            cov = torch.einsum("bhgnd,bhgne->bhgde", centred, centred) / (count - 1)  # [B, H_kv, G, D, D]
            spread = torch.einsum("bhtd,bhgde,bhte->bhgt", keys, cov, keys)
            logits = logits + 0.5 * obs.scaling**2 * spread
        expected = logits.softmax(dim=-1).mean(dim=2)  # [B, H_kv, T]
        return expected * obs.values.float().norm(dim=-1)
