"""The ask/tell protocol every optimiser follows. Optimisers see vectors and numbers, never tensors or the store."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

PENALTY = 1e6  # the objective told for a failed (infeasible) candidate


class Optimizer(ABC):
    """Minimises a black-box objective over a box, one population at a time.

    ``ask`` returns a population [P, n_var]; ``tell`` takes the same population with objectives [P]
    (``inf``/``nan`` = failed evaluation), or [P, n_obj] for the multi-objective ones (NSGA-II,
    multi-objective TPE), which minimise every objective and keep a Pareto front. ``best`` is the incumbent
    (x, f) on the first objective.
    """

    def __init__(self, n_var: int, lower: np.ndarray, upper: np.ndarray, population: int, seed: int,
                 x0: np.ndarray | None = None, n_obj: int = 1, storage: str | None = None,
                 study_name: str | None = None) -> None:
        self.n_var, self.lower, self.upper = n_var, np.asarray(lower, float), np.asarray(upper, float)
        self.population, self.seed, self.n_obj = population, seed, n_obj
        self.storage, self.study_name = storage, study_name  # optuna keeps its study there (others ignore it)
        # x0: one starting point [n_var], or several [S, n_var] (the first generation starts with all of them)
        seeds = np.zeros((1, n_var)) if x0 is None else np.atleast_2d(np.asarray(x0, float))
        self.seeds = np.clip(seeds, self.lower, self.upper)
        self.x0 = self.seeds[0]
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf

    def ask(self) -> np.ndarray:
        return np.clip(np.atleast_2d(self._ask()), self.lower, self.upper)

    def tell(self, X: np.ndarray, F: np.ndarray) -> None:
        """F: [P] objectives, or [P, n_obj] for a multi-objective optimiser (``best`` tracks the first)."""
        F = np.asarray(F, dtype=float).reshape(len(X), -1) if self.n_obj > 1 else np.asarray(F, dtype=float)
        failed = ~np.isfinite(F).all(axis=1) if F.ndim == 2 else ~np.isfinite(F)
        first = F[:, 0] if F.ndim == 2 else F
        for x, f, bad in zip(X, first, failed):
            if not bad and f < self.best_f:
                self.best_x, self.best_f = np.array(x), float(f)
        self._tell(np.asarray(X), F, failed)

    @abstractmethod
    def _ask(self) -> np.ndarray: ...

    @abstractmethod
    def _tell(self, X: np.ndarray, F: np.ndarray, failed: np.ndarray) -> None: ...
