"""optuna samplers (TPE, CMA-ES, NSGA-II) through ``Study.ask`` / ``Study.tell``, and one TPE study over the token
search's arms with each arm's genes conditional on it (``ArmTPE``, ``--arm-search tpe``).

With ``storage`` (the run's database URL) the study lives in the same database as the runs, under
``study_name``, so ``optuna-dashboard <url>`` browses it. A resumed run starts its study afresh: the loop
replays the finished generations from the store, which refills it with the same trials.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import optuna

from evolkv.search.base import Optimizer


class OptunaOptimizer(Optimizer):
    def __init__(self, sampler: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        optuna.logging.set_verbosity(logging.WARNING)
        self.name = sampler
        made = self._sampler()
        storage = None
        if self.storage:
            storage = optuna.storages.RDBStorage(self.storage)
            name = self.study_name or "evolkv"
            if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
                optuna.delete_study(study_name=name, storage=storage)
        self._study = optuna.create_study(directions=["minimize"] * self.n_obj, sampler=made, storage=storage,
                                          study_name=self.study_name if storage else None)
        for seed in self.seeds:
            self._study.enqueue_trial(self._params(seed))
        self._trials: list[optuna.trial.Trial] = []

    def _sampler(self) -> optuna.samplers.BaseSampler:
        if self.name == "tpe":
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.population)
        if self.name == "nsga2":
            if self.n_obj < 2:
                raise ValueError("optuna-nsga2 is a multi-objective optimiser (n_obj >= 2)")
            return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population)
        return optuna.samplers.CmaEsSampler(seed=self.seed)

    def _params(self, x: np.ndarray) -> dict[str, float]:
        """The trial parameters of the point ``x`` (a start the study is seeded with)."""
        return {f"x{i}": float(v) for i, v in enumerate(x)}

    def _suggest(self, trial: optuna.trial.Trial) -> np.ndarray:
        return np.array([trial.suggest_float(f"x{i}", self.lower[i], self.upper[i]) for i in range(self.n_var)])

    def _ask(self) -> np.ndarray:
        self._trials = [self._study.ask() for _ in range(self.population)]
        return np.stack([self._suggest(trial) for trial in self._trials])

    def _tell(self, X: np.ndarray, F: np.ndarray, failed: np.ndarray) -> None:
        for trial, f, bad in zip(self._trials, F, failed):
            if bad:
                self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self._study.tell(trial, [float(v) for v in np.atleast_1d(f)] if self.n_obj > 1 else float(f))


class ArmTPE(OptunaOptimizer):
    """Every arm of the token search in one TPE study (``--arm-search tpe``): a categorical parameter picks the
    arm, and only the picked arm's genes are parameters of the trial, so TPE models each arm's genes on that
    arm's trials alone (optuna's conditional search space; ``group=True``) while it learns which arm pays.

    The vector it hands out is ``ArmChoice``'s: gene 0 names the arm (its index plus one half), then every
    arm's genes in turn; an arm not picked keeps its ``fill`` (its start), which nothing reads. ``segments`` are
    each arm's (name, first gene, gene count)."""

    def __init__(self, segments: list[tuple[str, int, int]], *args, **kwargs) -> None:
        self.segments = segments
        super().__init__("tpe-arms", *args, **kwargs)
        self.fill = np.array(self.seeds[0])
        filled = set()
        for seed in self.seeds:  # each arm's first start fills its genes when another arm is picked
            index = self._arm(seed)
            if index not in filled:
                filled.add(index)
                _, first, count = self.segments[index]
                self.fill[first:first + count] = seed[first:first + count]

    def _sampler(self):
        with warnings.catch_warnings():  # group / multivariate / constant_liar are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.population, multivariate=True,
                                              group=True, constant_liar=True)

    def _arm(self, x: np.ndarray) -> int:
        return int(np.clip(np.floor(x[0]), 0, len(self.segments) - 1))

    def _params(self, x: np.ndarray) -> dict:
        name, first, count = self.segments[self._arm(x)]
        return {"arm": name, **{f"{name}:x{i}": float(x[first + i]) for i in range(count)}}

    def _suggest(self, trial: optuna.trial.Trial) -> np.ndarray:
        names = [segment[0] for segment in self.segments]
        index = names.index(trial.suggest_categorical("arm", names))
        name, first, count = self.segments[index]
        x = self.fill.copy()
        x[0] = index + 0.5
        for i in range(count):
            x[first + i] = trial.suggest_float(f"{name}:x{i}", self.lower[first + i], self.upper[first + i])
        return x
