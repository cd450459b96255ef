"""The scorer contract: what a scorer sees of a layer at the end of prefill, and what it returns.

A scorer is a small dataclass whose fields are its parameters (``window``, ``kernel`` and its own) with one
method, ``score(obs) -> [B, H_kv, T]`` (higher = keep first). ``obs`` is an ``Observation``: the layer index,
the observation window's queries, the layer's keys **and values**, the attention scaling, and the window's
attention weights on demand (computed once per layer and window, shared by every scorer that asks).

A scorer with ``replays = True`` (KVzip) scores from a second pass instead: once per prompt, after the
prefill, ``evolkv.replay`` feeds the model a request to repeat the context followed by the context itself, and
records how much attention each prefill token gets; that scorer's Observation carries those scores as
``replay``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class Observation:
    """One layer at the end of prefill, as every scorer sees it."""

    layer: int
    query: torch.Tensor | None  # [B, H_q, T, D] the prefill's queries (``queries(w)`` gives the window)
    keys: torch.Tensor  # [B, H_kv, T, D]
    values: torch.Tensor  # [B, H_kv, T, D]
    scaling: float
    replay: torch.Tensor | None = None  # [B, H_kv, T] the context-reconstruction pass's scores (``Scorer.replays``)
    out_proj: torch.Tensor | None = None  # [hidden, H_q * D] the layer's output projection W_o, where known
    rotary: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None  # positions [N] -> the
    # layer's RoPE (cos, sin) [N, D] at them, where known (``runtime.rotary_of``)
    _attention: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    def window(self, size: int) -> int:
        """The observation window a scorer asking for ``size`` queries gets (never more than the prompt)."""
        return max(1, min(size, self.length))

    def queries(self, size: int) -> torch.Tensor:
        """The last ``size`` queries: [B, H_q, w, D]."""
        return self.query[:, :, -self.window(size):]

    def attention(self, size: int) -> torch.Tensor:
        """Causal attention of the last ``size`` queries over the prompt, grouped by KV head:
        [B, H_kv, G, w, T] float32 (G query heads share each KV head). Computed once per window size."""
        w = self.window(size)
        if w not in self._attention:
            queries = self.queries(w)
            batch, num_q, _, dim = queries.shape
            num_kv, length = self.keys.shape[1], self.length
            q = queries.float().view(batch, num_kv, num_q // num_kv, w, dim)
            logits = torch.einsum("bhgwd,bhtd->bhgwt", q, self.keys.float()) * self.scaling
            q_pos = torch.arange(length - w, length, device=self.keys.device)
            future = torch.arange(length, device=self.keys.device)[None, :] > q_pos[:, None]  # [w, T]
            self._attention[w] = logits.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self._attention[w]


@dataclass
class Scorer:
    """Base of every scorer: ``window`` recent tokens are always kept first; ``kernel`` pools scores."""

    window: int = 8
    kernel: int = 5
    replays: ClassVar[bool] = False  # scores from a second pass that replays the context (``evolkv.replay``)

    def score(self, obs: Observation) -> torch.Tensor:
        """Scores [B, H_kv, T] of the layer's prefill tokens (higher = keep first)."""
        raise NotImplementedError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's pairing of the two halves of the last dimension: (x1, x2) -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def pool(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average pooling along tokens (SnapKV's clustering), edges without padding."""
    if kernel <= 1:
        return scores
    return torch.nn.functional.avg_pool1d(scores, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
