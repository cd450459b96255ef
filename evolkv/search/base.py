"""The ask/tell protocol every optimiser follows. Optimisers see vectors and numbers, never tensors or the store."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

PENALTY = 1e6  # the objective told for a failed (infeasible) candidate


class Optimizer(ABC):
    """Minimises a black-box objective over a box, one population at a time.

    ``ask`` returns a population [P, n_var]; ``tell`` takes the same population with objectives [P]
    (``inf``/``nan`` = failed evaluation). ``best`` is the incumbent (x, f).
    """

    def __init__(self, n_var: int, lower: np.ndarray, upper: np.ndarray, population: int, seed: int,
                 x0: np.ndarray | None = None) -> None:
        self.n_var, self.lower, self.upper = n_var, np.asarray(lower, float), np.asarray(upper, float)
        self.population, self.seed = population, seed
        self.x0 = np.zeros(n_var) if x0 is None else np.asarray(x0, float)
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf

    def ask(self) -> np.ndarray:
        return np.clip(np.atleast_2d(self._ask()), self.lower, self.upper)

    def tell(self, X: np.ndarray, F: np.ndarray) -> None:
        F = np.asarray(F, dtype=float)
        failed = ~np.isfinite(F)
        for x, f in zip(X, F):
            if np.isfinite(f) and f < self.best_f:
                self.best_x, self.best_f = np.array(x), float(f)
        self._tell(np.asarray(X), F, failed)

    @abstractmethod
    def _ask(self) -> np.ndarray: ...

    @abstractmethod
    def _tell(self, X: np.ndarray, F: np.ndarray, failed: np.ndarray) -> None: ...
