"""evolkv configs in other serving stacks: ``evolkv.integrations.kvpress`` (needs kvpress installed).

``kvpress_check`` (importable without kvpress) says whether a config fits in a kvpress press.
"""

from __future__ import annotations

from evolkv.config import KVConfig
from evolkv.errors import ConfigError


def kvpress_check(cfg: KVConfig) -> None:
    """Raise ``ConfigError`` (one line) when ``cfg`` needs more than kvpress's cache can hold."""
    from evolkv.scorers import SCORERS

    if cfg.allocation is not None:
        raise ConfigError(f"the {cfg.allocation} allocation redistributes budgets per prompt across layers, which "
                          "a kvpress press (one layer at a time) cannot do: apply it with evolkv.apply")
    if any(spec.quantized or spec.evicted_bits for spec in cfg.layers):
        raise ConfigError("this config quantizes keys/values; a kvpress press carries token budgets only: apply it "
                          "with evolkv.apply")
    replays = sorted({s.name for s in cfg.scorers() if SCORERS[s.name].replays})
    if replays:
        raise ConfigError(f"the {', '.join(replays)} scorer replays the context after the prefill: use kvpress's "
                          "KVzipPress or evolkv.apply")
