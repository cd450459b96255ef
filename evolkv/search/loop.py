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

from evolkv.allocation import avg_bits, within_bits
from evolkv.config import Budget, KVConfig, ModelSpec, ScorerSpec
from evolkv.devices import is_out_of_memory, peak_memory_gib
from evolkv.errors import EvolKVError, SearchInterrupted
from evolkv.evaluators.evaluator import Score
from evolkv.executors import PROBE
from evolkv.search.baselines import baseline
from evolkv.search.optimizers import make_optimizer
from evolkv.search.precision import (PAIRS, PrecisionSpace, cluster, parse_evicted, parse_residuals, prune,
                                    sensitivity_configs, with_precisions)
from evolkv.search.space import BudgetSpace, SubSpace
from evolkv.settings import SearchSettings
from evolkv.store.store import Store


class Reporter:
    """Progress callbacks of a search; the CLI draws them, the default ignores them."""

    def stage(self, text: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def generation(self, gen: int, total: int, best: float, rate: float) -> None: ...


def run_search(settings: SearchSettings, spec: ModelSpec, executor, store: Store, run_id: str | None = None,
               reporter: Reporter | None = None) -> dict[str, Any]:
    """Search a config for ``settings.budget``; returns the run's summary (also in the store)."""
    reporter = reporter or Reporter()
    budget = Budget.parse(settings.budget)
    scorer = ScorerSpec(settings.scorer, window=settings.window)
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]
        store.create_run(run_id, spec, budget, settings.optimizer, settings.seed, settings.to_dict(), settings.mode)
    store.update_run(run_id, status="running", owner=f"{socket.gethostname()}:{os.getpid()}")
    try:
        return _search(settings, spec, executor, store, run_id, reporter, budget, scorer)
    except KeyboardInterrupt:
        store.update_run(run_id, status="interrupted")
        raise SearchInterrupted(run_id) from None


def _search(settings, spec, executor, store, run_id, reporter, budget, scorer) -> dict[str, Any]:
    job = _Job(settings, spec, executor, store, run_id, reporter)

    for split in ("search", "heldout"):
        reporter.stage(f"prefill {split} samples", total=len(executor.samples[split]))
        with job.stage(f"prefill {split}", len(executor.samples[split])):
            job.prepare(split)
    if settings.mode != "tokens":
        return _search_front(settings, spec, job, budget, scorer)

    baselines = {name: baseline(name, spec, budget, scorer) for name in settings.baselines}
    with job.stage("baselines", len(baselines)):
        job.evaluate(list(baselines.values()), generation=-1, labels=[f"baseline:{n}" for n in baselines])

    space = BudgetSpace(spec, budget, scorer, per_head=settings.per_head, context=settings.length)
    incumbent = space.encode(baseline("uniform", spec, budget, scorer))
    best_f, best_cfg = math.inf, None
    blocks = list(_schedule(settings, space))
    total_generations = sum(count for _, count, _ in blocks)
    for gen_start, gen_count, view in blocks:
        if isinstance(view, SubSpace):
            view.incumbent = incumbent
        lower, upper = view.bounds
        optimizer = make_optimizer(settings.optimizer, view.n_var, lower, upper, settings.population,
                                   settings.seed + gen_start, x0=np.clip(view.encode(space.decode(incumbent)),
                                                                         lower, upper))
        for gen in range(gen_start, gen_start + gen_count):
            started = time.perf_counter()
            X = optimizer.ask()
            with job.stage(f"generation {gen + 1}", len(X)):
                configs = job.build(view, X, gen)
                scores = job.evaluate_built(configs, generation=gen)
            F = np.array([s.objective if s.ok else np.inf for s in scores])
            optimizer.tell(X, F)  # a candidate that failed to build or score is infeasible (inf)
            for x, f, cfg in zip(X, F, configs):
                if f < best_f:
                    best_f, best_cfg = float(f), cfg
                    incumbent = view.full(x) if isinstance(view, SubSpace) else np.array(x)
            store.update_run(run_id, generations_done=gen + 1, best_objective=best_f if best_cfg else None)
            reporter.generation(gen + 1, total_generations, best_f, len(configs) / (time.perf_counter() - started))

    if best_cfg is None:
        store.update_run(run_id, status="failed")
        return store.detail(run_id)
    winner = best_cfg.with_provenance(run_id=run_id, label="winner", model=spec.name, search_objective=best_f,
                                      tasks=settings.tasks, samples=settings.samples, length=settings.length,
                                      seed=settings.seed, optimizer=settings.optimizer,
                                      query_aware=settings.query_aware, versions=_versions())
    reporter.stage("re-score winner and baselines on held-out data")
    finals = [winner, *baselines.values()]
    labels = ["winner", *[f"baseline:{n}" for n in baselines]]
    with job.stage("held-out re-score", 2 * len(finals)):
        job.evaluate(finals, generation=-2, labels=labels)
        heldout = job.evaluate(finals, generation=-2, labels=labels, split="heldout")
    with job.stage("exact match", 2 * len(finals)):
        job.exact_match(finals, labels)
    winner = winner.with_provenance(heldout_objective=heldout[0].objective, heldout_metrics=heldout[0].metrics)
    store.set_winner(run_id, winner, best_f, heldout[0].objective if heldout[0].ok else None, heldout[0].metrics)
    store.update_run(run_id, status="finished", best_objective=best_f)
    return store.detail(run_id)


QUANT_BASELINES = {"KV8": (8, 8), "KV4": (4, 4), "K4V2": (4, 2), "K2V4": (2, 4), "KIVI-2": (2, 2)}


def _search_front(settings, spec, job, budget, scorer) -> dict[str, Any]:
    """Quant / joint mode: NSGA-II-style search of (quality loss, bits), a stored Pareto front, and the
    winner = the best front point at or under ``target_bits``."""
    store, run_id, reporter = job.store, job.run_id, job.reporter
    joint = settings.mode == "joint"
    tokens_budget = budget if joint else Budget("fraction", 1.0)
    base = baseline("uniform", spec, tokens_budget, scorer)
    baselines = {"full": baseline("full", spec, budget, scorer)}
    if joint:
        baselines.update({n: baseline(n, spec, budget, scorer) for n in settings.baselines if n != "full"})
    residuals = parse_residuals(settings.residual)
    for name, (k, v) in QUANT_BASELINES.items():  # uniform caches as papers run them: no full-precision window
        baselines[name] = with_precisions(base, [(k, v)] * spec.num_layers, settings.group_size,
                                          residuals[0]).with_provenance(label=f"baseline:{name}")
    with job.stage("baselines", len(baselines)):
        job.evaluate(list(baselines.values()), generation=-1, labels=[f"baseline:{n}" for n in baselines])

    # KVTuner's reduction: one-layer sensitivity, prune dominated pairs, cluster layers
    probes = sensitivity_configs(base, settings.group_size, residuals[0])
    reporter.stage(f"sensitivity: {len(probes)} one-layer quantizations",
                   total=len(probes) * job.executor.split_size(PROBE))
    with job.stage("sensitivity", len(probes)):
        scores = job.evaluate([cfg for _, _, cfg in probes], generation=-3, labels=["sensitivity"] * len(probes),
                              split=PROBE, progress=reporter.advance)
    errors = np.zeros((spec.num_layers, len(PAIRS)))
    for (layer, pair, _), score in zip(probes, scores):
        errors[layer, PAIRS.index(pair)] = score.objective if score.ok else 1e6
    kept = prune(errors)
    groups = cluster(errors, settings.clusters, settings.seed)
    # the reduced space keeps every uniform baseline representable: the search can always match them
    always = {(16, 16), *QUANT_BASELINES.values()}
    choices = [sorted(always.union(*(kept[layer] for layer in g)), key=lambda p: (-(p[0] + p[1]), -p[0]))
               for g in groups]
    tokens = (BudgetSpace(spec, budget, scorer, per_head=settings.per_head, context=settings.length)
              if joint else None)
    space = PrecisionSpace(base, groups, choices, settings.group_size, residuals, tokens,
                           evicted=parse_evicted(settings.evicted_bits))
    before, after = space.size()
    space_info = {"log10_size_before": before, "log10_size_after": after, "groups": groups,
                  "choices": [[f"K{k}V{v}" for k, v in c] for c in choices], "residuals": list(residuals),
                  "evicted_bits": list(space.evicted),
                  "pruned": [[f"K{k}V{v}" for k, v in c] for c in kept]}
    store.update_run(run_id, settings={**settings.to_dict(), "space": space_info})
    reporter.stage(f"precision space 10^{before:.1f} -> 10^{after:.1f} ({len(groups)} layer groups)")

    lower, upper = space.bounds
    # first generation: every quantized uniform baseline, KV4 and K4V2 with each larger residual window, then
    # mutations of them
    seeds = [baselines[name] for name in QUANT_BASELINES]
    seeds += [with_precisions(base, [pair] * spec.num_layers, settings.group_size, r)
              for r in residuals[1:] for pair in ((4, 4), (4, 2))]
    x0 = np.clip(np.stack([space.encode(cfg) for cfg in seeds]), lower, upper)
    optimizer = make_optimizer(settings.optimizer, space.n_var, lower, upper, settings.population, settings.seed,
                               x0=x0, n_obj=2, storage=store.url if settings.optimizer.startswith("optuna") else None,
                               study_name=f"evolkv-{run_id}")
    seen: dict[str, tuple[KVConfig, float, float]] = {}
    for gen in range(settings.generations):
        started = time.perf_counter()
        X = optimizer.ask()
        with job.stage(f"generation {gen + 1}", len(X)):
            configs = job.build(space, X, gen)
            scores = job.evaluate_built(configs, generation=gen)
        F = np.array([[s.objective, s.metrics.get("bits", np.inf)] if s.ok else [np.inf, np.inf] for s in scores])
        # the optimiser sees memory no lower than the target: below it every point competes on quality alone,
        # which spends the population where the winner is chosen (the stored front keeps the true bits)
        optimizer.tell(X, np.stack([F[:, 0], np.maximum(F[:, 1], settings.target_bits)], axis=1))
        for cfg, (f, bits) in zip(configs, F):
            if cfg is not None and np.isfinite(f):
                seen[cfg.hash()] = (cfg, float(f), float(bits))
        front = _pareto(list(seen.values()))
        best = min((f for _, f, b in front if within_bits(b, settings.target_bits)), default=math.inf)
        store.update_run(run_id, generations_done=gen + 1, best_objective=best if math.isfinite(best) else None)
        reporter.generation(gen + 1, settings.generations, best, len(configs) / (time.perf_counter() - started))

    front = _pareto(list(seen.values()))
    if not front:
        store.update_run(run_id, status="failed")
        return store.detail(run_id)
    under = [p for p in front if within_bits(p[2], settings.target_bits)]
    win_index = front.index(min(under, key=lambda p: p[1])) if under else int(np.argmin([p[2] for p in front]))
    reporter.stage("re-score the front and baselines on held-out data")
    points = [cfg.with_provenance(label=f"front:{i}") for i, (cfg, _, _) in enumerate(front)]
    labels = [f"front:{i}" for i in range(len(points))]
    with job.stage("held-out re-score", len(points) + len(baselines) + 2):
        heldout = job.evaluate(points + list(baselines.values()), generation=-2,
                               labels=labels + [f"baseline:{n}" for n in baselines], split="heldout")
    winner_cfg, win_f, win_bits = front[win_index]
    winner = winner_cfg.with_provenance(run_id=run_id, label="winner", model=spec.name, search_objective=win_f,
                                        bits=win_bits, target_bits=settings.target_bits, mode=settings.mode,
                                        tasks=settings.tasks, samples=settings.samples, length=settings.length,
                                        seed=settings.seed, optimizer=settings.optimizer,
                                        query_aware=settings.query_aware, versions=_versions(),
                                        heldout_objective=heldout[win_index].objective,
                                        under_target=bool(under))
    finals = [winner, *baselines.values()]
    with job.stage("winner re-score", 2):
        job.evaluate([winner], generation=-2, labels=["winner"])
        job.evaluate([winner], generation=-2, labels=["winner"], split="heldout")
    with job.stage("exact match", 2 * len(finals)):
        job.exact_match(finals, ["winner", *[f"baseline:{n}" for n in baselines]])
    store.set_front(run_id, [(cfg, f, bits, h.objective if h.ok else None, h.metrics, i == win_index)
                             for i, ((cfg, f, bits), h) in enumerate(zip(front, heldout))])
    win_heldout = heldout[win_index]
    store.set_winner(run_id, winner, win_f, win_heldout.objective if win_heldout.ok else None, win_heldout.metrics)
    store.update_run(run_id, status="finished", best_objective=win_f)
    return store.detail(run_id)


def _pareto(points: list[tuple[KVConfig, float, float]]) -> list[tuple[KVConfig, float, float]]:
    """Non-dominated (config, loss, bits) points, sorted by bits (then loss)."""
    ordered = sorted(points, key=lambda p: (p[2], p[1]))
    front, best = [], math.inf
    for point in ordered:
        if point[1] < best:
            front.append(point)
            best = point[1]
    return front


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

    @contextmanager
    def stage(self, name: str, evaluations: int = 0):
        """Time a stage of the run and store it (with the peak GPU memory so far) when it ends."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings["stages"].append({"stage": name, "seconds": round(time.perf_counter() - started, 3),
                                           "evaluations": evaluations})
            peak = peak_memory_gib(self.settings.device)
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
            wide = self.settings.dtype == "float32"
            raise EvolKVError(f"out of {'GPU ' if self.settings.device.startswith('cuda') else ''}memory "
                              f"prefilling the {split} samples ({self.settings.length} tokens each, "
                              f"dtype {self.settings.dtype}): start again with a lower --length or --samples"
                              f"{' or --dtype bfloat16' if wide else ''}, or free GPU memory and "
                              f"`evolkv resume {self.run_id}`") from None

    def evaluate(self, configs: list[KVConfig], generation: int, labels: list[str],
                 split: str = "search", progress=None) -> list[Score]:
        results: dict[str, Score] = {}
        todo: dict[str, KVConfig] = {}
        for cfg, label in zip(configs, labels):
            digest = cfg.hash()
            rows = self.store.find_evaluations(self.run_id, digest, split)
            if rows:
                row = rows[0]
                score = Score(row.objective if row.objective is not None else math.inf, row.metrics,
                              row.status, row.reason, 0.0)
                if not any(r.generation == generation and r.label == label for r in rows):
                    self.store.add_evaluation(self.run_id, cfg, generation, label, split, score, "store")
                results[digest] = score
            else:
                todo.setdefault(digest, cfg)
        if todo:
            scores = self.executor.evaluate(list(todo.values()), split, progress=progress)
            for cfg, score in zip(todo.values(), scores):  # memory beside quality, for every evaluation
                score.metrics["bits"] = avg_bits(cfg, self.settings.length)
            computed = dict(zip(todo, scores))
            for cfg, label in dict.fromkeys((cfg, label) for cfg, label in zip(configs, labels)
                                            if cfg.hash() in computed):
                self.store.add_evaluation(self.run_id, cfg, generation, label, split, computed[cfg.hash()],
                                          self.executor.worker)
            results.update(computed)
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

    def evaluate_built(self, configs: list[KVConfig | None], generation: int) -> list[Score]:
        """``evaluate`` the configs that were built; the others score as failed."""
        built = [cfg for cfg in configs if cfg is not None]
        scores = iter(self.evaluate(built, generation=generation, labels=["search"] * len(built)) if built else [])
        return [next(scores) if cfg is not None else Score(math.inf, status="failed", reason="build failed")
                for cfg in configs]

    def exact_match(self, configs: list[KVConfig], labels: list[str]) -> None:
        """Greedy exact-match accuracy of the final configs on both splits, stored as evaluations."""
        for split in ("search", "heldout"):
            done = {row.label for row, _ in self.store.evaluations(self.run_id)
                    if row.split == f"{split}/em"}
            todo = [(cfg, label) for cfg, label in zip(configs, labels) if label not in done]
            if not todo:
                continue
            self.reporter.stage(f"exact-match accuracy on the {split} split", total=self.executor.split_size(split))
            accuracy = self.executor.exact_match([cfg for cfg, _ in todo], split, progress=self.reporter.advance)
            for (cfg, label), acc in zip(todo, accuracy):
                self.store.add_evaluation(self.run_id, cfg, -2, label, f"{split}/em",
                                          Score(acc["em"], acc), self.executor.worker)


def _schedule(settings: SearchSettings, space: BudgetSpace):
    """(first generation, generations, view) blocks: the whole space, or EvolKV's layer groups in turn."""
    if settings.groups <= 1:
        yield 0, settings.generations, space
        return
    layers = space.model.num_layers
    size = math.ceil(layers / settings.groups)
    groups = [list(range(i, min(i + size, layers))) for i in range(0, layers, size)]
    per_group = max(1, settings.generations // len(groups))
    for i, group in enumerate(groups):
        yield i * per_group, per_group, SubSpace(space, group, np.zeros(space.n_var))  # incumbent set in the loop


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import evolkv

    return {"evolkv": evolkv.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
