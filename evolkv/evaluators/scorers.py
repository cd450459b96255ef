"""Token scorers: rank a layer's prefill tokens per KV head (higher score = keep first).

A scorer is a small dataclass with one method, ``score``. ``rank`` turns scores into the ranking every
keep-set is a prefix of: the observation window (most recent first), then the rest by score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Scorer:
    window: int = 8
    kernel: int = 5

    def score(self, queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        """queries: [B, H_q, w, D] (the last ``w`` prompt tokens); keys: [B, H_kv, T, D]. Returns [B, H_kv, T]."""
        raise NotImplementedError


@dataclass
class SnapKV(Scorer):
    """Attention of the observation window over the prompt, pooled along tokens, averaged over a GQA group."""

    def score(self, queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        batch, num_q, w, dim = queries.shape
        num_kv, length = keys.shape[1], keys.shape[2]
        q = queries.float().view(batch, num_kv, num_q // num_kv, w, dim)  # [B, H_kv, G, w, D]
        logits = torch.einsum("bhgwd,bhtd->bhgwt", q, keys.float()) * scaling
        q_pos = torch.arange(length - w, length, device=keys.device)
        causal = torch.arange(length, device=keys.device)[None, :] > q_pos[:, None]  # [w, T]
        probs = logits.masked_fill(causal, float("-inf")).softmax(dim=-1)
        votes = probs.sum(dim=3).mean(dim=2)  # [B, H_kv, T]
        if self.kernel > 1:
            votes = F.avg_pool1d(votes, self.kernel, stride=1, padding=self.kernel // 2, count_include_pad=False)
        return votes


@dataclass
class StreamingLLM(Scorer):
    """Attention sinks (the first tokens) and the most recent tokens, nothing else."""

    sinks: int = 4

    def score(self, queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        batch, num_kv, length = keys.shape[:3]
        recency = torch.arange(length, device=keys.device, dtype=torch.float32) / length
        recency[: self.sinks] = 2.0
        return recency.expand(batch, num_kv, length)


@dataclass
class KeyNorm(Scorer):
    """Tokens with small key norms draw attention (Devoto et al., 2024): keep the smallest first."""

    def score(self, queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
        return -keys.float().norm(dim=-1)


SCORERS: dict[str, type[Scorer]] = {"snapkv": SnapKV, "streaming": StreamingLLM, "keynorm": KeyNorm}


def rank(scores: torch.Tensor, window: int, first_valid: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranking per head: the last ``window`` tokens (most recent first), then the rest by score.

    scores: [B, H, T]. Tokens before ``first_valid`` (outside a sliding window) go last with score -inf.
    Returns (order [B, H, T] long, sorted_scores [B, H, T] with +inf for window tokens).
    """
    batch, heads, length = scores.shape
    window = min(window, length)
    body = scores[..., : length - window].float().clone()  # [B, H, T - w]
    body[..., :first_valid] = float("-inf")
    body_scores, body_order = torch.sort(body, dim=-1, descending=True, stable=True)
    recent = torch.arange(length - 1, length - window - 1, -1, device=scores.device).expand(batch, heads, window)
    order = torch.cat([recent, body_order], dim=-1)
    sorted_scores = torch.cat([torch.full((batch, heads, window), float("inf"), device=scores.device),
                               body_scores], dim=-1)
    return order, sorted_scores
