"""Expected attention (Devoto et al., 2025, "Expected Attention: KV Cache Compression by Estimating Attention
from Future Queries' Distribution"; kvpress's default scorer, which its registry wraps in AdaKV).

Future queries are unknown, but their distribution can be estimated: with queries q ~ N(mu, Sigma), the
expected attention logit of key k is s mu.k + s^2 k'Sigma k / 2 (s the scaling), normalised over the prompt,
per query head, averaged over the GQA group, then (plus ``epsilon``) multiplied by the value's norm (a token's
weight in the output, kvpress's ``use_vnorm``). mu and Sigma are the mean and covariance of the prompt's queries
before RoPE (all but the first ``sinks``, or the last ``statistics`` when set), rotated by RoPE averaged over the
next ``future`` positions, as kvpress does; the first ``sinks`` tokens score above all others. The queries
before RoPE come from undoing the layer's rotation (``Observation.rotary``). Deviations: where the model's RoPE
is unknown, the statistics are those of the rotated queries as they are; the recent ``window`` tokens are kept
first, as for every evolkv scorer (kvpress keeps none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evolkv.scorers.base import Observation, Scorer, rotate_half
from evolkv.scorers.registry import register


@register("expected_attention")
@dataclass
class ExpectedAttention(Scorer):
    statistics: int = 0
    covariance: bool = True
    sinks: int = 4
    future: int = 512
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        self.statistics, self.sinks, self.future = int(self.statistics), int(self.sinks), int(self.future)
        self.covariance = bool(self.covariance)

    def score(self, obs: Observation) -> torch.Tensor:
        length, sinks = obs.length, min(self.sinks, obs.length - 1)
        queries = obs.query.float()  # [B, H_q, T, D] after RoPE
        if obs.rotary is not None:
            queries = _unrotate(queries, *obs.rotary(torch.arange(length, device=queries.device)))
        queries = queries[:, :, sinks:] if not self.statistics else queries[:, :, -self.statistics:]
        batch, num_q, count, dim = queries.shape
        num_kv = obs.keys.shape[1]
        mean = queries.mean(dim=2)  # [B, H_q, D]
        cov = None
        if self.covariance and count > 1:
            centred = queries - mean[:, :, None]
            cov = torch.einsum("bhnd,bhne->bhde", centred, centred) / count  # [B, H_q, D, D]
        if obs.rotary is not None:  # RoPE averaged over the next positions: mu R', R Sigma R'
            cos, sin = obs.rotary(torch.arange(length, length + self.future, device=queries.device))
            rotation = _mean_rotation(cos, sin)  # [D, D]
            mean = mean @ rotation.T
            cov = rotation @ cov @ rotation.T if cov is not None else None
        keys = obs.keys.float()  # [B, H_kv, T, D]
        group = num_q // num_kv
        logits = torch.einsum("bhgd,bhtd->bhgt", mean.view(batch, num_kv, group, dim), keys) * obs.scaling
        if cov is not None:
            spread = torch.einsum("bhtd,bhgde,bhte->bhgt", keys, cov.view(batch, num_kv, group, dim, dim), keys)
            logits = logits + 0.5 * obs.scaling**2 * spread
        expected = logits[..., sinks:].softmax(dim=-1).mean(dim=2)  # [B, H_kv, T - sinks]
        scores = (expected + self.epsilon) * obs.values[:, :, sinks:].float().norm(dim=-1)
        top = scores.amax() + 1.0 if scores.numel() else 1.0
        return torch.cat([torch.full_like(obs.values[:, :, :sinks, 0], float(top), dtype=scores.dtype), scores], -1)


def _unrotate(queries: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Undo RoPE (q cos + rotate_half(q) sin, cos and sin [T, D] possibly scaled alike): rotate back and divide by
    the scale squared."""
    back = queries * cos - rotate_half(queries) * sin
    return back / (cos * cos + sin * sin).clamp_min(1e-12)


def _mean_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The mean over positions of RoPE's matrix R = diag(cos) + diag(sin) P ([N, D] -> [D, D]), P the matrix of
    ``rotate_half``."""
    dim = cos.shape[-1]
    half = dim // 2
    eye = torch.eye(dim, device=cos.device)
    p = torch.zeros(dim, dim, device=cos.device)
    p[half:, :half], p[:half, half:] = torch.eye(half), -torch.eye(half)
    return (cos.mean(0)[:, None] * eye) + (sin.mean(0)[:, None] * p)
