"""Fixed allocations every run is compared against at the same budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from evolkv.config import ALLOCATIONS, Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec, uniform_config


def full(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """No compression: every token of every layer (the quality reference)."""
    return uniform_config(model, Budget("fraction", 1.0), scorer)


def uniform(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """SnapKV: the same budget in every layer and head."""
    return uniform_config(model, budget, scorer)


def pyramid(model: ModelSpec, budget: Budget, scorer: ScorerSpec, beta: float = 20.0) -> KVConfig:
    """PyramidKV: budgets fall linearly from the bottom layer to the top one (same mean)."""
    layers, mean = model.num_layers, budget.value
    low = mean / beta
    high = 2 * mean - low
    if budget.kind == "fraction" and high > 1.0:  # keep the bottom layer within the context
        high, low = 1.0, 2 * mean - 1.0
    step = (high - low) / max(layers - 1, 1)
    heads = tuple([1.0 / model.num_kv_heads] * model.num_kv_heads)
    specs = tuple(LayerSpec(budget=high - i * step, heads=heads) for i in range(layers))
    return KVConfig(model, budget, scorer, specs)


def adakv(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """AdaKV: uniform layer budgets, heads share each layer's tokens by score, per sample."""
    specs = tuple(LayerSpec(budget=budget.value, heads=None) for _ in range(model.num_layers))
    return KVConfig(model, budget, scorer, specs)


def streaming(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """StreamingLLM: attention sinks plus the most recent tokens, uniform budgets."""
    return uniform_config(model, budget, ScorerSpec("streaming", window=scorer.window, kernel=1))


def kvzip(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """KVzip as its paper (and kvpress's KVzipPress) runs it: context-reconstruction scores, the budget spent
    over all layers and heads at once (globaltopk). Costs one replay pass per sample."""
    return dataclasses.replace(uniform_config(model, budget, ScorerSpec("kvzip", window=1, kernel=1)),
                               allocation="globaltopk")


def expected_attention(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    """kvpress's default press: ExpectedAttention scores, the layer's tokens split over heads by AdaKV."""
    return adakv(model, budget, ScorerSpec("expected_attention", window=scorer.window, kernel=1))


def _allocated(name: str) -> Callable[[ModelSpec, Budget, ScorerSpec], KVConfig]:
    """A per-prompt allocator (``evolkv.allocators``) over the uniform config's total."""
    def make(model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
        return dataclasses.replace(uniform_config(model, budget, scorer), allocation=name)
    make.__doc__ = f"{name}: the budget's total redistributed per prompt by evolkv.allocators.{name}."
    return make


BASELINES: dict[str, Callable[[ModelSpec, Budget, ScorerSpec], KVConfig]] = {
    "full": full, "uniform": uniform, "pyramid": pyramid, "adakv": adakv, "streaming": streaming,
    **{name: _allocated(name) for name in ALLOCATIONS},
    "kvzip": kvzip, "expected_attention": expected_attention,
}


def baseline(name: str, model: ModelSpec, budget: Budget, scorer: ScorerSpec) -> KVConfig:
    from evolkv.errors import ConfigError

    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name](model, budget, scorer).with_provenance(label=f"baseline:{name}")


def scorers_of(names, model: ModelSpec, scorer: ScorerSpec, choices=()) -> list[ScorerSpec]:
    """The run's scorer, every scorer the named baselines rank with, and the ``--scorers`` choices: the
    evaluator prepares each ranking once per sample, so every candidate and baseline can be scored."""
    probe = Budget("fraction", 0.5)
    found = [scorer] + [BASELINES[name](model, probe, scorer).scorer for name in names if name in BASELINES]
    found += list(choices)
    return list({spec.key: spec for spec in found}.values())


def scorer_choices(settings) -> tuple[ScorerSpec, ...]:
    """The scorers of ``--scorers`` (a gene per layer picks one), with the run's observation window."""
    return tuple(ScorerSpec(name, window=settings.space.window) for name in dict.fromkeys(settings.space.scorers))
