"""evolkv: search how to spend a KV-cache memory budget across layers, heads and precisions."""

from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec
from evolkv.errors import BudgetError, ConfigError, EvolKVError, ModelError, StoreError, TaskError

__version__ = "0.1.0"

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
]
