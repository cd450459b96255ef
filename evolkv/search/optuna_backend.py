"""optuna samplers (TPE, CMA-ES) through ``Study.ask`` / ``Study.tell``."""

from __future__ import annotations

import logging

import numpy as np
import optuna

from evolkv.search.base import Optimizer


class OptunaOptimizer(Optimizer):
    def __init__(self, sampler: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        optuna.logging.set_verbosity(logging.WARNING)
        self.name = sampler
        if sampler == "tpe":
            made = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.population)
        else:
            made = optuna.samplers.CmaEsSampler(seed=self.seed)
        self._study = optuna.create_study(direction="minimize", sampler=made)
        self._study.enqueue_trial({f"x{i}": float(v) for i, v in enumerate(self.x0)})
        self._trials: list[optuna.trial.Trial] = []

    def _ask(self) -> np.ndarray:
        self._trials = [self._study.ask() for _ in range(self.population)]
        return np.array([[t.suggest_float(f"x{i}", self.lower[i], self.upper[i]) for i in range(self.n_var)]
                         for t in self._trials])

    def _tell(self, X: np.ndarray, F: np.ndarray, failed: np.ndarray) -> None:
        for trial, f, bad in zip(self._trials, F, failed):
            if bad:
                self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self._study.tell(trial, float(f))
