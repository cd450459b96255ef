"""An evolkv config as a kvpress press: its per-layer (and per-KV-head) budgets in kvpress's pipeline.

    from evolkv.integrations.kvpress import EvolKVPress
    press = EvolKVPress.from_file("winner.json")          # evolkv export RUN --format kvpress -o winner.json
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    pipe(context, question=question, press=press)
    # or: with press(model): model(context_ids, past_key_values=cache)

At the end of each layer's prefill the press ranks the layer's tokens with the config's scorer and plans each
head's count exactly as ``evolkv.apply`` does (``evolkv.press``: the same code), so both keep the same
tokens (``tests/test_kvpress.py``). Every head keeps the layer's largest count of its best tokens; where the
config gives a head fewer, kvpress's head-wise masking (``masked_key_indices``, as its AdaKV press uses) hides
the rest from attention. Token budgets only: precision pairs, per-prompt allocations and scorers that replay
the context need evolkv's own cache (``evolkv.apply``); ``check`` says so before anything runs.
kvpress 0.5.x pins ``transformers<5.3``: install it with ``pip install 'evolkv[kvpress]'`` in its own
environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evolkv.config import KVConfig
from evolkv.errors import ConfigError
from evolkv.integrations import kvpress_check as check

try:
    from kvpress import BasePress
    from kvpress.utils import get_prerope_query_states
except ImportError as e:  # pragma: no cover - exercised where kvpress is absent
    raise ImportError("evolkv.integrations.kvpress needs kvpress (0.5.x, which pins transformers<5.3): "
                      "pip install 'evolkv[kvpress]' in its own environment") from e


@dataclass
class EvolKVPress(BasePress):
    """Compress a model's KV cache in kvpress's pipeline with an evolkv config's budgets and scorer(s)."""

    config: KVConfig = None
    _plans: dict = field(default_factory=dict, repr=False)
    _rotary: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.config, KVConfig):
            raise ConfigError("EvolKVPress needs an evolkv KVConfig (EvolKVPress.from_file('winner.json'))")
        check(self.config)
        from evolkv.press import Press

        self._press = Press(self.config.model, self.config.scorers())

    @classmethod
    def from_file(cls, path: str | Path) -> EvolKVPress:
        """The press of a config written by ``evolkv export`` (either format)."""
        return cls(KVConfig.load(path))

    def post_init_from_model(self, model) -> None:
        from evolkv.models import model_spec
        from evolkv.runtime import rotary_of

        self.config.check_fits(model_spec(model.config, self.config.model.name))
        self._rotary = rotary_of(model)

    def _plan(self, length: int):
        from evolkv.press import Plan

        if length not in self._plans:
            self._plans[length] = Plan(self.config, length)
        return self._plans[length]

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):
        from evolkv.press import output_projection
        from evolkv.scorers.base import rotate_half

        layer, length = module.layer_idx, keys.shape[2]
        cos, sin = kwargs["position_embeddings"]
        query = get_prerope_query_states(module, hidden_states)
        query = query * cos[:, None] + rotate_half(query) * sin[:, None]
        rotary = None if self._rotary is None else (lambda positions: self._rotary(layer, positions))
        ranking = self._press.rank(layer, query, keys, values, module.scaling, out_proj=output_projection(module),
                                   rotary=rotary)[self.config.scorer_of(layer).key]
        counts = self._plan(length).layer(layer, ranking).counts.to(keys.device)  # [B, H_kv]
        longest = int(counts.max())
        best = ranking.order[..., :longest].long()  # each head's best ``longest`` positions, by rank
        rank_of = best.argsort(dim=-1)  # slot j (in position order) holds rank rank_of[j]
        index = best.gather(-1, rank_of)[..., None].expand(-1, -1, -1, keys.shape[-1])
        keys, values = keys.gather(2, index), values.gather(2, index)
        hidden = rank_of >= counts[..., None]  # ranks past the head's own count: masked in attention
        module.masked_key_indices = tuple(hidden.nonzero(as_tuple=True)) if bool(hidden.any()) else None
        return keys, values
