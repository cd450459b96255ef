"""Token scorers: rank a layer's prefill tokens per KV head (higher score = keep first).

``rank`` turns scores into the ranking every keep-set is a prefix of: the observation window (most recent
first), then the rest by score. Adding a scorer: write ``evolkv/scorers/<name>.py`` with a ``Scorer``
subclass decorated ``@register("<name>")`` and add the module to ``MODULES`` below (README, "Adding a scorer").
"""

from __future__ import annotations

import importlib

import torch

from evolkv.scorers.base import Observation, Scorer, pool
from evolkv.scorers.registry import SCORERS, register

MODULES = ("snapkv", "streaming", "keynorm", "tova", "h2o", "keydiff", "criticalkv", "defensivekv", "rkv", "mixkv",
           "compresskv", "expected_attention", "kvzip")
for _module in MODULES:
    importlib.import_module(f"evolkv.scorers.{_module}")

from evolkv.scorers.compresskv import CompressKV  # noqa: E402
from evolkv.scorers.criticalkv import CriticalKV  # noqa: E402
from evolkv.scorers.defensivekv import DefensiveKV  # noqa: E402
from evolkv.scorers.expected_attention import ExpectedAttention  # noqa: E402
from evolkv.scorers.h2o import H2O  # noqa: E402
from evolkv.scorers.keydiff import KeyDiff  # noqa: E402
from evolkv.scorers.keynorm import KeyNorm  # noqa: E402
from evolkv.scorers.kvzip import KVzip  # noqa: E402
from evolkv.scorers.mixkv import MixKV  # noqa: E402
from evolkv.scorers.rkv import RKV  # noqa: E402
from evolkv.scorers.snapkv import SnapKV  # noqa: E402
from evolkv.scorers.streaming import StreamingLLM  # noqa: E402
from evolkv.scorers.tova import TOVA  # noqa: E402

__all__ = ["RKV", "SCORERS", "TOVA", "CompressKV", "CriticalKV", "DefensiveKV", "ExpectedAttention", "H2O", "KeyDiff",
           "KeyNorm", "KVzip", "MixKV", "Observation", "SnapKV", "Scorer", "StreamingLLM", "pool", "rank", "register"]


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
