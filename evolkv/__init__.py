"""evolkv: search how to spend a KV-cache memory budget across layers, heads and precisions."""

from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec
from evolkv.errors import BudgetError, ConfigError, EvolKVError, ModelError, StoreError, TaskError

__version__ = "0.1.0"


def lookup(model, budget, db=None):
    """The stored winner for ``model`` at or under ``budget`` (``evolkv.deploy.lookup``)."""
    from evolkv.deploy import lookup as _lookup

    return _lookup(model, budget, db)


def apply(model, config_or_budget=None, *, db=None, tokenizer=None):
    """Compress ``model``'s KV cache inside a ``with`` block: ``evolkv.apply(model, cfg)`` with a ``KVConfig``, its
    dict or a path to its JSON, or ``evolkv.apply(model, "10%")`` to look the stored winner for the model up by
    budget (``evolkv.deploy.apply``). Yields the config applied."""
    from evolkv.deploy import apply as _apply

    return _apply(model, config_or_budget, db=db, tokenizer=tokenizer)


__all__ = [
    "Budget",
    "BudgetError",
    "ConfigError",
    "EvolKVError",
    "KVConfig",
    "LayerSpec",
    "ModelError",
    "ModelSpec",
    "ScorerSpec",
    "StoreError",
    "TaskError",
    "apply",
    "lookup",
]
