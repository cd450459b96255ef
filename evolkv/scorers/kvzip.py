"""KVzip (Kim et al., 2025, "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction").

A token matters as much as the model needs it to reproduce the context: after the prefill, the model is fed
"Repeat the previous context exactly." followed by the context itself (in chunks of ``chunk`` tokens, each
later chunk's request ending with the previous chunk's last 8 tokens), over the full prefill cache. A token's
score is the largest attention any of those reconstruction queries, of any query head of its KV head's group,
pays it; the softmax runs over the first ``sinks`` tokens, the chunk being reconstructed and the
reconstruction tokens themselves, as kvpress's ``KVzipPress`` does. The first ``sinks`` tokens score above
all others. The pass (``evolkv.replay``) costs about one more prefill; in a search it runs once per sample,
shared by every candidate.

KVzip spends its budget over all layers and heads at once: pair it with the ``globaltopk`` allocation (or
``adakv`` within each layer, kvpress's ``layerwise=True``). Deviations: the replay prompt carries no chat
template (kvpress wraps it in the model's template when there is one), and the attention is scaled by the
model's own attention scaling (kvpress uses 1/sqrt(head_dim), the same on Llama-style models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from evolkv.errors import ConfigError
from evolkv.scorers.base import Observation, Scorer
from evolkv.scorers.registry import register


@register("kvzip")
@dataclass
class KVzip(Scorer):
    sinks: int = 4
    chunk: int = 2048
    replays: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.sinks, self.chunk = int(self.sinks), int(self.chunk)
        if self.sinks < 0 or self.chunk < 1:
            raise ConfigError("kvzip needs sinks >= 0 and chunk >= 1")

    def score(self, obs: Observation) -> torch.Tensor:
        if obs.replay is None:
            raise ConfigError("the kvzip scorer needs its context-reconstruction pass: apply the config with "
                              "evolkv.apply(model, cfg, tokenizer=...) or score it with the evaluator")
        scores = obs.replay.float().clone()  # [B, H_kv, T]
        scores[..., : self.sinks] = scores.amax() + 1.0
        return scores
