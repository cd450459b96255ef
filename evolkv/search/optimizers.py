"""Optimiser registry: ``--optimizer NAME``."""

from __future__ import annotations

from functools import partial

from evolkv.errors import ConfigError
from evolkv.search.base import Optimizer
from evolkv.search.optuna_backend import OptunaOptimizer
from evolkv.search.pymoo_backend import PymooOptimizer

OPTIMIZERS = {
    "cmaes": partial(PymooOptimizer, "cmaes"),
    "ga": partial(PymooOptimizer, "ga"),
    "de": partial(PymooOptimizer, "de"),
    "optuna-tpe": partial(OptunaOptimizer, "tpe"),
    "optuna-cmaes": partial(OptunaOptimizer, "cmaes"),
}


def make_optimizer(name: str, n_var, lower, upper, population: int, seed: int, x0=None) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](n_var, lower, upper, population=population, seed=seed, x0=x0)
