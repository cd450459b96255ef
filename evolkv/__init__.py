"""evolkv: search how to spend a KV-cache memory budget across layers, heads and precisions."""

from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec
from evolkv.errors import BudgetError, ConfigError, EvolKVError, ModelError, StoreError, TaskError

__version__ = "0.1.0"


def lookup(model, budget, db=None):
    """The stored winner for ``model`` at or under ``budget`` (``evolkv.deploy.lookup``)."""
    from evolkv.deploy import lookup as _lookup

    return _lookup(model, budget, db)


def apply(model, budget=None, *, config=None, db=None, tokenizer=None):
    """``with evolkv.apply(model, budget="10%"):`` looks the winner up and applies it (``evolkv.deploy.apply``)."""
    from evolkv.deploy import apply as _apply

    return _apply(model, budget, config=config, db=db, tokenizer=tokenizer)


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
