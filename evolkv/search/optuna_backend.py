"""optuna samplers (TPE, CMA-ES, NSGA-II) through ``Study.ask`` / ``Study.tell``.

With ``storage`` (the run's database URL) the study lives in the same database as the runs, under
``study_name``, so ``optuna-dashboard <url>`` browses it. A resumed run starts its study afresh: the loop
replays the finished generations from the store, which refills it with the same trials.
"""

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
        elif sampler == "nsga2":
            if self.n_obj < 2:
                raise ValueError("optuna-nsga2 is a multi-objective optimiser (n_obj >= 2)")
            made = optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population)
        else:
            made = optuna.samplers.CmaEsSampler(seed=self.seed)
        storage = None
        if self.storage:
            storage = optuna.storages.RDBStorage(self.storage)
            name = self.study_name or "evolkv"
            if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
                optuna.delete_study(study_name=name, storage=storage)
        self._study = optuna.create_study(directions=["minimize"] * self.n_obj, sampler=made, storage=storage,
                                          study_name=self.study_name if storage else None)
        for seed in self.seeds:
            self._study.enqueue_trial({f"x{i}": float(v) for i, v in enumerate(seed)})
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
                self._study.tell(trial, [float(v) for v in np.atleast_1d(f)] if self.n_obj > 1 else float(f))
