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
    "nsga2": partial(PymooOptimizer, "nsga2"),
    "optuna-nsga2": partial(OptunaOptimizer, "nsga2"),
}
MULTI_OBJECTIVE = {"nsga2", "optuna-nsga2", "optuna-tpe"}  # can minimise (quality loss, memory) together


def make_optimizer(name: str, n_var, lower, upper, population: int, seed: int, x0=None, n_obj: int = 1,
                   storage: str | None = None, study_name: str | None = None) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if n_obj > 1 and name not in MULTI_OBJECTIVE:
        raise ConfigError(f"optimizer {name!r} has one objective; for a Pareto front use one of "
                          f"{', '.join(sorted(MULTI_OBJECTIVE))}")
    if n_obj == 1 and name in ("nsga2", "optuna-nsga2"):
        raise ConfigError(f"optimizer {name!r} needs two objectives (--mode quant or joint)")
    return OPTIMIZERS[name](n_var, lower, upper, population=population, seed=seed, x0=x0, n_obj=n_obj,
                            storage=storage, study_name=study_name)
