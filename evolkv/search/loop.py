"""The one loop that joins ask -> evaluate -> tell -> persist.

Every evaluation is written to the store as soon as its population is scored, and read back before
anything is evaluated, so re-running a run id (``evolkv resume``) replays the finished generations from
the store and loses at most the generation in flight.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any

import numpy as np

from evolkv.allocation import avg_bits
from evolkv.config import Budget, KVConfig, ModelSpec, ScorerSpec
from evolkv.devices import is_out_of_memory, peak_memory_gib
from evolkv.errors import EvolKVError, SearchInterrupted
from evolkv.evaluators.evaluator import Score
from evolkv.search.fronts import FrontSearch
from evolkv.search.strategy import Outcome
from evolkv.search.tokens import TokenSearch
from evolkv.settings import SearchSettings
from evolkv.store.models import Stage
from evolkv.store.store import Store


STRATEGIES = {"tokens": TokenSearch, "quant": FrontSearch, "joint": FrontSearch}


class Reporter:
    """Progress callbacks of a search; the CLI draws them, the default ignores them."""

    def stage(self, text: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def generation(self, gen: int, total: int, best: float, rate: float) -> None: ...


def run_search(settings: SearchSettings, spec: ModelSpec, executor, store: Store, run_id: str | None = None,
               reporter: Reporter | None = None, warm_start: KVConfig | None = None) -> dict[str, Any]:
    """Search a config for ``settings.space.budget``; returns the run's summary (also in the store). ``warm_start``
    (another budget's winner, say) joins the first generation, rescaled to this budget."""
    reporter = reporter or Reporter()
    budget = Budget.parse(settings.space.budget)
    scorer = ScorerSpec(settings.space.scorer, window=settings.space.window)
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]
        store.create_run(run_id, spec, budget, settings.search.optimizer, settings.seed, settings.to_dict(), settings.space.mode)
    store.update_run(run_id, status="running", owner=f"{socket.gethostname()}:{os.getpid()}")
    if warm_start is not None:
        store.update_run(run_id, derived={"warm_start": warm_start.provenance.get("run_id")})
    try:
        return _search(settings, spec, executor, store, run_id, reporter, budget, scorer, warm_start)
    except KeyboardInterrupt:
        store.update_run(run_id, status="interrupted")
        raise SearchInterrupted(run_id) from None


def _search(settings, spec, executor, store, run_id, reporter, budget, scorer, warm_start=None) -> dict[str, Any]:
    """Prefill, baselines, then ask -> build -> evaluate -> tell -> persist for every block of generations the
    mode's strategy lays out; the strategy picks the winner and the loop stores it."""
    job = _Job(settings, spec, executor, store, run_id, reporter)
    strategy = STRATEGIES[settings.space.mode](settings, spec, budget, scorer)
    for split in strategy.splits:
        reporter.stage(f"prefill {split} samples", total=len(executor.samples[split]))
        with job.stage(f"prefill {split}", len(executor.samples[split])):
            job.prepare(split)
    with job.stage("baselines", len(strategy.baselines)):
        scores = job.evaluate(list(strategy.baselines.values()), Stage.BASELINE,
                              [f"baseline:{n}" for n in strategy.baselines])
    strategy.observe_baselines(dict(zip(strategy.baselines, scores)))
    if warm_start is not None:
        strategy.warm_start(warm_start)
    strategy.prepare(job)
    clock = _Clock(settings.search.time, strategy.total_generations)
    for view, optimizer, generations in strategy.blocks(job):
        clock.block(len(generations))
        for gen in generations:
            if clock.out(gen - generations.start):
                job.derive(stopped_by_time={"generation": gen, "seconds": round(clock.elapsed, 1)})
                break
            started = time.perf_counter()
            X = optimizer.ask()
            split = strategy.split(gen)
            with job.stage(f"generation {gen + 1}", len(X)):
                strategy.reference(job, split, gen)
                configs = job.build(view, X, gen)
                scores = job.evaluate_built(configs, generation=gen, split=split)
            optimizer.tell(X, strategy.told(scores))  # a candidate that failed to build or score is infeasible
            strategy.observe(view, X, configs, scores)
            best = strategy.best()
            store.update_run(run_id, generations_done=gen + 1, best_objective=best)
            reporter.generation(gen + 1, strategy.total_generations, math.inf if best is None else best,
                                len(configs) / (time.perf_counter() - started))
    return _persist(store, run_id, strategy.finish(job))


class _Clock:
    """``--time``: the optimiser's generations stop when their share of the time is spent. Each block of
    generations (a per-head search's layer stage, then its heads stage) gets the share of the time its
    generations are of all of them, with what an earlier block left unspent; every block runs at least one
    generation. Without a time budget nothing stops early."""

    def __init__(self, seconds: float, total_generations: int) -> None:
        self.seconds, self.total = seconds, max(total_generations, 1)
        self.start = time.perf_counter()
        self.until = 0.0  # seconds since the start by which the current block ends

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def block(self, generations: int) -> None:
        self.until += self.seconds * generations / self.total

    def out(self, done_in_block: int) -> bool:
        return bool(self.seconds) and done_in_block > 0 and self.elapsed >= self.until


def _persist(store: Store, run_id: str, outcome: Outcome) -> dict[str, Any]:
    """Store a strategy's outcome: the front (a front search), the winner and the run's final status."""
    if outcome.winner is None:
        store.update_run(run_id, status="failed")
        return store.detail(run_id)
    if outcome.front is not None:
        store.set_front(run_id, outcome.front)
    heldout = outcome.heldout
    store.set_winner(run_id, outcome.winner, outcome.objective,
                     heldout.objective if heldout is not None and heldout.ok else None,
                     heldout.metrics if heldout is not None else None)
    store.update_run(run_id, status="finished", best_objective=outcome.objective)
    return store.detail(run_id)


class _Job:
    """Evaluate-and-persist for one run, reading back whatever the store already has."""

    def __init__(self, settings, spec, executor, store, run_id, reporter):
        self.settings, self.spec, self.executor = settings, spec, executor
        self.store, self.run_id, self.reporter = store, run_id, reporter
        self.timings = dict(store.run(run_id).timings or {})  # a resumed run adds its stages to the earlier ones
        self.timings.setdefault("stages", [])
        load = getattr(executor, "load_seconds", None)
        if load is not None:
            self.timings["stages"].append({"stage": "model load", "seconds": round(load, 3), "evaluations": 0})

    @property
    def storage(self) -> str:
        """The store's URL: where an optimiser that keeps a study (optuna) keeps it, beside the run."""
        return self.store.url

    def derive(self, **items: Any) -> None:
        """Store what a strategy worked out about the run (its reduced space, the per-head stage's starts)."""
        self.store.update_run(self.run_id, derived=items)

    @contextmanager
    def stage(self, name: str, evaluations: int = 0):
        """Time a stage of the run and store it (with the peak GPU memory so far) when it ends."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings["stages"].append({"stage": name, "seconds": round(time.perf_counter() - started, 3),
                                           "evaluations": evaluations})
            own = getattr(self.executor, "peak_memory_gib", None)  # Ray: the largest of the actors' peaks
            peak = own() if own else peak_memory_gib(self.settings.compute.device)
            if peak is not None:
                self.timings["peak_gpu_gib"] = round(max(peak, self.timings.get("peak_gpu_gib", 0.0)), 3)
            self.store.update_run(self.run_id, timings=dict(self.timings))

    def prepare(self, split: str) -> None:
        """Prefill a split's samples; running out of GPU memory there is one error naming the fixes (the run
        is marked failed and can be resumed with more memory)."""
        try:
            self.executor.prepare(split, progress=self.reporter.advance)
        except EvolKVError:  # a sample the model cannot take: the run ends here, failed, with the reason
            self.store.update_run(self.run_id, status="failed")
            raise
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            self.store.update_run(self.run_id, status="failed")
            wide = self.settings.compute.dtype == "float32"
            raise EvolKVError(f"out of {self._memory()} prefilling the {split} samples ({self.settings.data.length} "
                              f"tokens each, dtype {self.settings.compute.dtype}): start again with a lower --length or "
                              f"--samples{' or --dtype bfloat16' if wide else ''}, or free GPU memory and "
                              f"`evolkv resume {self.run_id}`") from None

    def _memory(self) -> str:
        return f"{'GPU ' if self.settings.compute.device.startswith('cuda') else ''}memory"

    @contextmanager
    def _scoring(self, count: int, split: str):
        """Running out of memory while scoring is one error naming the fixes; what is stored stays (the run
        is marked failed and resumes from it, with fewer candidates per forward if need be)."""
        try:
            yield
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            self.store.update_run(self.run_id, status="failed")
            size = self.settings.scoring.batch_size
            raise EvolKVError(f"out of {self._memory()} scoring {count} configs on the {split} split "
                              f"({size} per forward): free GPU memory or give fewer per forward, then "
                              f"`evolkv resume {self.run_id} --batch-size {max(1, size // 2)}`") from None

    def evaluate(self, configs: list[KVConfig], stage: Stage, labels: list[str], split: str = "search",
                 generation: int | None = None, progress=None) -> list[Score]:
        """Scores of ``configs`` on ``split``: read back from the store when this run has them, else computed
        and stored (as ``stage``, with the search ``generation``)."""
        results: dict[str, Score] = {}
        todo: dict[str, KVConfig] = {}
        rows = []  # the evaluations to store, in one transaction
        found = self.store.find_many(self.run_id, [cfg.hash() for cfg in configs], split)
        for cfg, label in zip(configs, labels):
            digest = cfg.hash()
            if digest in found:
                stored = found[digest]
                row = stored[0]
                score = Score(row.objective if row.objective is not None else math.inf, row.metrics,
                              row.status, row.reason, 0.0)
                if not any(r.stage == stage and r.generation == generation and r.label == label for r in stored):
                    rows.append((cfg, generation, label, split, score, "store", stage))
                results[digest] = score
            else:
                todo.setdefault(digest, cfg)
        if todo:
            bits: dict[str, float] = {}

            def meanwhile() -> None:  # the driver's share, done while Ray actors score (before, locally)
                for digest, cfg in todo.items():
                    bits[digest] = avg_bits(cfg, self.settings.data.length)
                    cfg.stored_dict()  # what the store will write

            with self._scoring(len(todo), split):
                scores = self.executor.evaluate(list(todo.values()), split, progress=progress, meanwhile=meanwhile)
            for digest, score in zip(todo, scores):  # memory beside quality, for every evaluation
                score.metrics["bits"] = bits[digest]
            computed = dict(zip(todo, scores))
            for cfg, label in dict.fromkeys((cfg, label) for cfg, label in zip(configs, labels)
                                            if cfg.hash() in computed):
                rows.append((cfg, generation, label, split, computed[cfg.hash()], self.executor.worker, stage))
            results.update(computed)
        self.store.add_evaluations(self.run_id, rows)
        return [results[cfg.hash()] for cfg in configs]

    def build(self, view, X: np.ndarray, generation: int) -> list[KVConfig | None]:
        """Decode each gene vector of a population; one that cannot become a config is stored as a failed
        evaluation with its reason and comes back as ``None`` (the search goes on)."""
        configs: list[KVConfig | None] = []
        for x in X:
            try:
                configs.append(view.decode(x))
            except (EvolKVError, ValueError, RuntimeError) as e:
                reason = f"cannot build a config from the genes: {type(e).__name__}: {e}"
                self.store.add_failed_build(self.run_id, self.spec, list(view.full(x) if hasattr(view, "full")
                                                                        else x), generation, "search", reason)
                configs.append(None)
        return configs

    def evaluate_built(self, configs: list[KVConfig | None], generation: int, split: str = "search"
                       ) -> list[Score]:
        """``evaluate`` the configs that were built; the others score as failed."""
        built = [cfg for cfg in configs if cfg is not None]
        scores = iter(self.evaluate(built, Stage.SEARCH, ["search"] * len(built), split=split, generation=generation)
                      if built else [])
        return [next(scores) if cfg is not None else Score(math.inf, status="failed", reason="build failed")
                for cfg in configs]

    def exact_match(self, configs: list[KVConfig], labels: list[str]) -> None:
        """Greedy task metrics of the final configs on the held-out split (where configs are judged), stored as
        evaluations."""
        self.task_metrics(configs, labels, "heldout")

    def task_metrics(self, configs: list[KVConfig], labels: list[str], split: str) -> list[dict[str, float]]:
        """Greedy-decoded task metrics (``Evaluator.exact_match``) of ``configs`` on ``split``, stored as
        ``<split>/em`` evaluations under ``labels``; those this run already has are read back."""
        stored = {row.label: row.metrics for row, _ in self.store.evaluations(self.run_id)
                  if row.split == f"{split}/em"}
        todo = [(cfg, label) for cfg, label in zip(configs, labels) if label not in stored]
        if todo:
            self.reporter.stage(f"exact-match accuracy on the {split} split", total=self.executor.split_size(split))
            with self._scoring(len(todo), split):
                accuracy = self.executor.exact_match([cfg for cfg, _ in todo], split, progress=self.reporter.advance)
            self.store.add_evaluations(self.run_id, [(cfg, None, label, f"{split}/em", Score(acc["em"], acc),
                                                      self.executor.worker, Stage.FINAL)
                                                     for (cfg, label), acc in zip(todo, accuracy)])
            stored.update({label: acc for (_, label), acc in zip(todo, accuracy)})
        return [dict(stored[label]) for label in labels]
