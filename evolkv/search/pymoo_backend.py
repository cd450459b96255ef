"""pymoo algorithms (CMA-ES, GA, DE; NSGA-II for two objectives) through pymoo's own ask/tell interface."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination

from evolkv.search.base import PENALTY, Optimizer


class PymooOptimizer(Optimizer):
    """``step``: CMA-ES's initial step, relative to the bounds; ``restarts``: times CMA-ES starts again from
    the incumbent with twice the step when ``patience`` generations in a row find nothing better than the
    best so far (a search stuck at its start explores further instead of shrinking around it)."""

    def __init__(self, algorithm: str, *args, step: float = 0.15, restarts: int = 0, patience: int = 3,
                 x0_value: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.name = algorithm
        self.step, self.restarts, self.patience = step, restarts, patience
        self._stalled, self._best_seen = 0, np.inf
        self._rng_state = np.random.RandomState(self.seed).get_state()
        self._pending: Population | None = None
        # CMA-ES starts from one point: with several seeds, the first generation is the seeds themselves, and
        # CMA-ES then starts from the best of them (GA, DE and NSGA-II put every seed in their first population)
        self._seeding = algorithm == "cmaes" and len(self.seeds) > 1
        if not self._seeding:
            self._setup(x0_value)

    def _setup(self, x0_value: float | None = None) -> None:
        """``x0_value``: x0's objective, when already known (the best seed, the incumbent a restart or a later
        block starts from): CMA-ES's first generation is x0 alone, so it is told at once instead of asked,
        and the first population asked is the first sampled one (a whole generation otherwise spent on x0)."""
        problem = Problem(n_var=self.n_var, n_obj=self.n_obj, xl=self.lower, xu=self.upper)
        with self._own_rng():
            self._algorithm = self._make(self.name)
            # cma reads seed 0 as "seed from the clock": shift seeds so that every seed is reproducible
            self._algorithm.setup(problem, termination=NoTermination(), seed=self.seed + 1, verbose=False)
            if self.name == "cmaes" and x0_value is not None:
                start = self._algorithm.ask()
                value = x0_value if np.isfinite(x0_value) else PENALTY
                start.set("F", np.full((len(start), self.n_obj), value))
                self._algorithm.tell(infills=start)

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """cma samples from numpy's global RNG: give this optimiser a private copy of it."""
        outside = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(outside)

    def _make(self, algorithm: str):
        if algorithm == "cmaes":
            from pymoo.algorithms.soo.nonconvex.cmaes import CMAES

            # sigma is relative to the bounds (normalize=True): 0.15 (the default step) of the 6-wide log-weight
            # range moves a layer by e^±0.9 (2.5x); 0.05 (~35%) often never left the uniform start (look-ups
            # in prose: the best candidate's validation KL 0.59-0.64 vs 0.37-0.57 at 0.15, 4 seeds);
            # 0.25 (e^±1.5, 4.5x) scattered a 90-gene SmolLM2 search far from every baseline
            return CMAES(x0=self.x0, sigma=self.step, popsize=self.population, restarts=0)
        if algorithm == "ga":
            from pymoo.algorithms.soo.nonconvex.ga import GA

            return GA(pop_size=self.population, sampling=self._around_x0(), eliminate_duplicates=True)
        if algorithm == "nsga2":
            from pymoo.algorithms.moo.nsga2 import NSGA2

            if self.n_obj < 2:
                raise ValueError("nsga2 is a multi-objective optimiser (n_obj >= 2)")
            return NSGA2(pop_size=self.population, sampling=self._around_x0(), eliminate_duplicates=True)
        if algorithm == "de":
            from pymoo.algorithms.soo.nonconvex.de import DE

            # the first generation starts at the seeds (the uniform baseline), as GA and NSGA-II do; pymoo's
            # default Latin-hypercube start ignored them and did no better than random search at 96 evaluations
            return DE(pop_size=self.population, sampling=self._around_x0())
        raise ValueError(algorithm)

    def _around_x0(self):
        from pymoo.core.sampling import Sampling

        seeds, spread = self.seeds, 0.5 * (self.upper - self.lower) / 6

        class AroundX0(Sampling):  # first generation: the seeds, then Gaussian perturbations of them in turn
            def _do(self, problem, n_samples, random_state=None, **kwargs):
                noise = random_state.normal(0.0, 1.0, size=(n_samples, problem.n_var)) * spread
                noise[: len(seeds)] = 0.0
                centres = seeds[np.arange(n_samples) % len(seeds)]
                return np.clip(centres + noise, problem.xl, problem.xu)

        return AroundX0()

    def _ask(self) -> np.ndarray:
        if self._seeding:
            return self.seeds.copy()
        if self.name == "cmaes" and self._algorithm.termination.force_termination:
            # cma stopped (a flat fitness: every candidate scored the same, as where a gene changes nothing): start
            # again from the best so far with twice the step, rather than asking a finished strategy
            self.step, self._stalled = min(2 * self.step, 0.5), 0
            self.x0 = np.array(self.best_x) if self.best_x is not None else self.x0
            self.seed += 1000
            self._setup(self.best_f if self.best_x is not None else None)
        with self._own_rng():
            self._pending = self._algorithm.ask()
        return self._pending.get("X")

    def _tell(self, X: np.ndarray, F: np.ndarray, failed: np.ndarray) -> None:
        first = np.where(failed, np.inf, F if F.ndim == 1 else F[:, 0])
        improved = first.size and first.min() < self._best_seen
        self._best_seen = min(self._best_seen, float(first.min()) if first.size else np.inf)
        if self._seeding:  # the seeds' generation: CMA-ES starts from the best of them
            self._seeding = False
            self.x0 = self.seeds[int(np.argmin(first))]
            self._setup(float(first.min()))
            return
        pop = self._pending
        F = F if F.ndim == 2 else F[:, None]
        pop.set("F", np.where(failed[:, None], PENALTY, F))
        with self._own_rng():
            self._algorithm.tell(infills=pop)
        self._stalled = 0 if improved else self._stalled + 1
        if self.name == "cmaes" and self.restarts > 0 and self._stalled >= self.patience and self.best_x is not None:
            self.restarts -= 1  # start again from the incumbent, exploring twice as far
            self.step, self._stalled, self.x0 = min(2 * self.step, 0.5), 0, np.array(self.best_x)
            self.seed += 1000
            self._setup(self.best_f)
