"""Front search (``--mode quant`` and ``--mode joint``): a Pareto front of (quality loss, bits) over per-layer
key/value precisions (KVTuner), with token budgets too in joint mode; the winner the best point at or under
``--target-bits``, chosen on validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from evolkv.allocation import avg_bits, within_bits
from evolkv.config import Budget, KVConfig
from evolkv.executors import PROBE
from evolkv.search.baselines import baseline
from evolkv.search.optimizers import make_optimizer
from evolkv.search.precision import (PAIRS, PrecisionSpace, cluster, parse_evicted, parse_residuals, prune,
                                    sensitivity_configs, with_precisions)
from evolkv.search.selection import choose_on_validation
from evolkv.search.space import BudgetSpace
from evolkv.search.strategy import Outcome, Strategy
from evolkv.store.models import Stage

QUANT_BASELINES = {"KV8": (8, 8), "KV4": (4, 4), "K4V2": (4, 2), "K2V4": (2, 4), "KIVI-2": (2, 2)}


class FrontSearch(Strategy):
    """Quant / joint mode: a Pareto front of (quality loss, bits), the winner = the best point at or under
    ``target_bits``. KVTuner's reduction first: one-layer sensitivity, pruned pairs, clustered layers. The
    winner is chosen on the validation split among the front points and the uniform precisions at or under the
    target; a uniform precision that wins is shipped, marked."""

    splits = ("search", "validation", "heldout")

    def __init__(self, settings, spec, budget, scorer) -> None:
        super().__init__(settings, spec, budget, scorer)
        joint = settings.space.mode == "joint"
        self.base = baseline("uniform", spec, budget if joint else Budget("fraction", 1.0), scorer)
        self.baselines = {"full": baseline("full", spec, budget, scorer)}
        if joint:
            self.baselines.update({n: baseline(n, spec, budget, scorer) for n in settings.scoring.baselines if n != "full"})
        self.residuals = parse_residuals(settings.space.residual)
        for name, (k, v) in QUANT_BASELINES.items():  # uniform caches as papers run them: no full-precision window
            self.baselines[name] = with_precisions(self.base, [(k, v)] * spec.num_layers, settings.space.group_size,
                                                   self.residuals[0]).with_provenance(label=f"baseline:{name}")
        self.seen: dict[str, tuple[KVConfig, float, float]] = {}
        # --per-head: --generations per layer group, then half as many per KV head (``blocks``)
        extra = settings.search.generations // 2 if settings.space.per_head and spec.num_kv_heads > 1 else 0
        self.total_generations = settings.search.generations + extra

    def prepare(self, job):
        settings, spec = self.settings, self.spec
        probes = sensitivity_configs(self.base, settings.space.group_size, self.residuals[0])
        job.reporter.stage(f"sensitivity: {len(probes)} one-layer quantizations",
                           total=len(probes) * job.executor.split_size(PROBE))
        with job.stage("sensitivity", len(probes)):
            scores = job.evaluate([cfg for _, _, cfg in probes], Stage.SENSITIVITY, ["sensitivity"] * len(probes),
                                  split=PROBE, progress=job.reporter.advance)
        errors = np.zeros((spec.num_layers, len(PAIRS)))
        for (layer, pair, _), score in zip(probes, scores):
            errors[layer, PAIRS.index(pair)] = score.objective if score.ok else 1e6
        kept = prune(errors)
        groups = cluster(errors, settings.space.clusters, settings.seed)
        # the reduced space keeps every uniform baseline representable: the search can always match them
        always = {(16, 16), *QUANT_BASELINES.values()}
        choices = [sorted(always.union(*(kept[layer] for layer in g)), key=lambda p: (-(p[0] + p[1]), -p[0]))
                   for g in groups]
        tokens = (BudgetSpace(spec, self.budget, self.scorer, per_head=settings.space.per_head, context=settings.data.length)
                  if settings.space.mode == "joint" else None)
        self.space = PrecisionSpace(self.base, groups, choices, settings.space.group_size, self.residuals, tokens,
                                    evicted=parse_evicted(settings.space.evicted_bits),
                                    heads=spec.num_kv_heads if settings.space.per_head else 1)
        before, after = self.space.size()
        space_info = {"log10_size_before": before, "log10_size_after": after, "groups": groups,
                      "choices": [[f"K{k}V{v}" for k, v in c] for c in choices], "residuals": list(self.residuals),
                      "evicted_bits": list(self.space.evicted),
                      "pruned": [[f"K{k}V{v}" for k, v in c] for c in kept]}
        job.derive(space=space_info)
        job.reporter.stage(f"precision space 10^{before:.1f} -> 10^{after:.1f} ({len(groups)} layer groups)")

    def blocks(self, job):
        """One block over the whole space; with ``--per-head`` a second one: after ``--generations`` of one pair
        per layer group (every head alike), half as many more of one pair per KV head, started from the
        first block's front. The per-head space holds every per-layer point, so the second block can only add
        to that front. Measured on SmolLM2 at 3.25 bits (held-out KL of the winner, 12 x 6):
        per layer 0.086; per head from the start 0.129 (three times the pair genes for the same evaluations);
        3 generations per layer then 3 per head 0.229 (the per-layer half too short to reach the good region)."""
        settings, space = self.settings, self.space
        # first generation: every quantized uniform baseline, KV4 and K4V2 with each larger residual window, then
        # mutations of them
        seeds = [self.baselines[name] for name in QUANT_BASELINES]
        seeds += [with_precisions(self.base, [pair] * self.spec.num_layers, settings.space.group_size, r)
                  for r in self.residuals[1:] for pair in ((4, 4), (4, 2))]
        if space.heads == 1:
            yield space, self._optimizer(job, space, seeds, 0), range(settings.search.generations)
            return
        per_layer = dataclasses.replace(space, heads=1)
        yield per_layer, self._optimizer(job, per_layer, seeds, 0), range(settings.search.generations)
        front = [cfg for cfg, _, _ in _pareto(list(self.seen.values()))]
        keep = max(1, settings.search.population // 2)  # the rest of the first generation: mutations of these
        picked = np.unique(np.linspace(0, len(front) - 1, keep).round().astype(int)) if front else []
        starts = [front[i] for i in picked] or seeds
        yield (space, self._optimizer(job, space, starts, settings.search.generations),
               range(settings.search.generations, self.total_generations))

    def _optimizer(self, job, space: PrecisionSpace, starts: list[KVConfig], first_generation: int):
        lower, upper = space.bounds
        x0 = np.clip(np.stack([space.encode(cfg) for cfg in starts]), lower, upper)
        storage = job.storage  # an optimiser that keeps a study keeps it beside the run
        suffix = f"-{first_generation}" if first_generation else ""
        return make_optimizer(self.settings.search.optimizer, space.n_var, lower, upper, self.settings.search.population,
                              self.settings.seed + first_generation, x0=x0, n_obj=2, storage=storage,
                              study_name=f"evolkv-{job.run_id}{suffix}")

    def _points(self, scores) -> np.ndarray:
        return np.array([[s.objective, s.metrics.get("bits", np.inf)] if s.ok else [np.inf, np.inf] for s in scores])

    def told(self, scores):
        F = self._points(scores)
        # the optimiser sees memory no lower than the target: below it every point competes on quality alone,
        # which spends the population where the winner is chosen (the stored front keeps the true bits)
        return np.stack([F[:, 0], np.maximum(F[:, 1], self.settings.space.target_bits)], axis=1)

    def observe(self, view, X, configs, scores):
        for cfg, (f, bits) in zip(configs, self._points(scores)):
            if cfg is not None and np.isfinite(f):
                self.seen[cfg.hash()] = (cfg, float(f), float(bits))

    def best(self):
        front = _pareto(list(self.seen.values()))
        best = min((f for _, f, b in front if within_bits(b, self.settings.space.target_bits)), default=math.inf)
        return best if math.isfinite(best) else None

    def finish(self, job):
        settings = self.settings
        front = _pareto(list(self.seen.values()))
        if not front:
            return Outcome()
        under = [p for p in front if within_bits(p[2], settings.space.target_bits)]
        win_index = front.index(min(under, key=lambda p: p[1])) if under else int(np.argmin([p[2] for p in front]))
        source, chosen = "search", None
        if under:  # choose on validation among the front points and the uniform precisions at or under the target
            contenders = {f"front:{front.index(p)}": p[0] for p in under}
            contenders.update({f"baseline:{n}": cfg for n, cfg in self.baselines.items()
                               if n != "full" and within_bits(avg_bits(cfg, settings.data.length), settings.space.target_bits)})
            best, scored = choose_on_validation(job, contenders,
                                                     lambda score, _: score.objective if score.ok else math.inf)
            if scored[best].ok and best.startswith("baseline:"):
                source, chosen = best, contenders[best]
            elif scored[best].ok:
                win_index = int(best.removeprefix("front:"))
        job.reporter.stage("re-score the front and baselines on held-out data")
        points = [cfg.with_provenance(label=f"front:{i}") for i, (cfg, _, _) in enumerate(front)]
        labels = [f"front:{i}" for i in range(len(points))]
        with job.stage("held-out re-score", len(points) + len(self.baselines)):
            heldout = job.evaluate(points + list(self.baselines.values()), Stage.FINAL,
                                   labels + [f"baseline:{n}" for n in self.baselines], split="heldout")
        if chosen is None:
            winner_cfg, win_f, win_bits = front[win_index]
            win_heldout = heldout[win_index]
        else:  # a uniform precision beat every front point on validation: ship it, marked
            winner_cfg, win_bits = chosen, avg_bits(chosen, settings.data.length)
            win_f = job.evaluate([chosen], Stage.FINAL, [source])[0].objective
            win_heldout = heldout[len(points) + list(self.baselines).index(source.removeprefix("baseline:"))]
            win_index = -1
        winner = self.provenance(job, winner_cfg, win_f, bits=win_bits, target_bits=settings.space.target_bits,
                                 mode=settings.space.mode, heldout_objective=win_heldout.objective,
                                 under_target=bool(under), source=source,
                                 selected_on="validation" if under else "bits")
        finals = [winner, *self.baselines.values()]
        with job.stage("winner re-score", 2):
            job.evaluate([winner], Stage.FINAL, ["winner"])
            job.evaluate([winner], Stage.FINAL, ["winner"], split="heldout")
            if under:
                job.evaluate([winner], Stage.FINAL, ["winner"], split="validation")
        with job.stage("exact match", len(finals)):
            job.exact_match(finals, ["winner", *[f"baseline:{n}" for n in self.baselines]])
        points = [(cfg, f, bits, h.objective if h.ok else None, h.metrics, i == win_index)
                  for i, ((cfg, f, bits), h) in enumerate(zip(front, heldout))]
        return Outcome(winner, win_f, win_heldout, points)


def _pareto(points: list[tuple[KVConfig, float, float]]) -> list[tuple[KVConfig, float, float]]:
    """Non-dominated (config, loss, bits) points, sorted by bits (then loss)."""
    ordered = sorted(points, key=lambda p: (p[2], p[1]))
    front, best = [], math.inf
    for point in ordered:
        if point[1] < best:
            front.append(point)
            best = point[1]
    return front
