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
# what each optimiser can do, declared once: how many objectives it minimises, and whether it keeps its state
# in a database of its own (optuna's study, stored beside the run)
OBJECTIVES = {"cmaes": {1}, "ga": {1}, "de": {1}, "optuna-tpe": {1, 2}, "optuna-cmaes": {1}, "nsga2": {2},
              "optuna-nsga2": {2}}
STORES_STUDY = {"optuna-tpe", "optuna-cmaes", "optuna-nsga2"}
MULTI_OBJECTIVE = {name for name, counts in OBJECTIVES.items() if 2 in counts}  # fronts: (quality loss, memory)


def check_objectives(name: str, n_obj: int) -> None:
    """Raise ``ConfigError`` (naming the options that fit) unless optimiser ``name`` minimises ``n_obj``
    objectives."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    if n_obj in OBJECTIVES[name]:
        return
    if n_obj > 1:
        raise ConfigError(f"a Pareto front (--mode quant or joint) needs a multi-objective optimizer: "
                          f"{', '.join(sorted(MULTI_OBJECTIVE))}; {name!r} has one objective")
    raise ConfigError(f"optimizer {name!r} needs two objectives: use it with --mode quant or joint")


def make_optimizer(name: str, n_var, lower, upper, population: int, seed: int, x0=None, n_obj: int = 1,
                   storage: str | None = None, study_name: str | None = None, step: float | None = None,
                   restarts: int = 0, x0_value: float | None = None) -> Optimizer:
    """``step``, ``restarts`` and ``x0_value`` (the start's objective when known: not asked again) tune CMA-ES
    (``cmaes``; see ``PymooOptimizer``); the others ignore them."""
    check_objectives(name, n_obj)
    tuning = {}
    if name == "cmaes":
        tuning = dict(restarts=restarts, x0_value=x0_value, **({} if step is None else {"step": step}))
    return OPTIMIZERS[name](n_var, lower, upper, population=population, seed=seed, x0=x0, n_obj=n_obj,
                            storage=storage if name in STORES_STUDY else None, study_name=study_name, **tuning)
