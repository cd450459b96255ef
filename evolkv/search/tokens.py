"""Token search: per-layer (and per-head) token budgets at one memory budget, one objective (EvolKV, with
PyramidKV, AdaKV, the per-prompt allocators and KVzip as baselines), the winner chosen on validation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from evolkv.config import KVConfig
from evolkv.evaluators.evaluator import LOG_KL_FLOOR, Score
from evolkv.executors import RACE, draw_split
from evolkv.search.baselines import baseline, scorer_choices
from evolkv.search.objectives import aggregate, typical_ratio
from evolkv.search.optimizers import make_optimizer
from evolkv.search.selection import admits, choose_on_validation, choose_paired, close_calls, metric_guard, pooled
from evolkv.search.optuna_backend import ArmTPE
from evolkv.search.space import (Arm, ArmChoice, BudgetSpace, HeadPriors, PolicySpace, SubSpace, arm_names,
                                 knob_variants)
from evolkv.search.strategy import Outcome, Strategy
from evolkv.settings import SearchSettings
from evolkv.store.models import Stage


def _with_splits(cfg: KVConfig, shares: list[list[float]]) -> KVConfig:
    """``cfg``'s layer budgets with each layer's split over its KV heads set to ``shares`` [L][H_kv] (no provenance)."""
    layers = tuple(dataclasses.replace(layer, heads=tuple(split)) for layer, split in zip(cfg.layers, shares))
    return dataclasses.replace(cfg, layers=layers, provenance={})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class TokenSearch(Strategy):
    """Per-layer (and per-head) token budgets, one objective; EvolKV's layer-group schedule as blocks.

    Against overfitting the search samples: the first generation holds every baseline the space can express;
    with ``pool`` above ``samples`` each generation is scored on a fresh draw from the search pool; the
    optimiser is told the mean KL relative to uniform's on the same samples, penalised when any one task gets
    more than ``tolerance`` worse than uniform's (``aggregate``), so a small gain on one task cannot pay for a
    large loss on another; and the winner is chosen on the
    validation split among the best search candidates and every baseline at the budget, so a run whose
    search found nothing better ships the best baseline, marked as such."""

    splits = ("search", "validation", "heldout")

    def __init__(self, settings, spec, budget, scorer) -> None:
        super().__init__(settings, spec, budget, scorer)
        names = list(dict.fromkeys([*settings.scoring.baselines, "uniform"]))  # uniform: the reference of every ratio
        self.baselines = {name: baseline(name, spec, budget, scorer) for name in names}
        self.space = BudgetSpace(spec, budget, scorer, per_head=settings.space.per_head, context=settings.data.length,
                                 choices=scorer_choices(settings))
        for choice in self.space.choices:  # --scorers: uniform with each other scorer is a baseline (and a seed)
            if choice != scorer:
                uniform = self.baselines["uniform"]
                layers = tuple(dataclasses.replace(layer, scorer=choice) for layer in uniform.layers)
                self.baselines[f"uniform:{choice.name}"] = dataclasses.replace(uniform, layers=layers).with_provenance(
                    label=f"baseline:uniform:{choice.name}")
        self.incumbent = self.space.encode(baseline("uniform", spec, budget, scorer))
        self.best_f, self.best_cfg, self.best_kl = math.inf, None, math.inf
        self.seeds: list[KVConfig] = []
        self.ref: Score | None = None  # uniform on the samples being scored
        self.baseline_scores: dict[str, Score] = {}  # the baselines on the search split (observe_baselines)
        self.history: dict[str, tuple[KVConfig, list[float]]] = {}  # config hash -> (config, told values)
        self.on_uniform: dict[str, KVConfig] = {}  # uniform's layer budgets with a profiled split (``transplants``)
        self.home = Arm(scorer, "static")  # the budgets of ``space``: the run's scorer, layer (and head) budgets
        self.arms: list[Arm] = [self.home]  # the arms searched, the best baseline's first (``observe_baselines``)
        self.arm_best: dict[Arm, float] = {}  # the best told value found in each arm
        self.arm_best_cfg: dict[Arm, KVConfig] = {}  # and the config that has it
        self.home_best = math.inf  # the incumbent's told value (the home arm's best)
        self._view_arm: dict[int, Arm | ArmChoice] = {}  # a view's arm (``ArmChoice``: the arm of each candidate)
        self._trials_per_arm: dict[str, int] = {}  # --arm-search tpe: the candidates each arm was given
        self.total_generations = sum(count for _, count, _ in _schedule(settings, self.space))

    def relative(self, score: Score, ref: Score | None) -> float:
        """What the optimiser and the winner's choice see of ``score``, relative to ``ref`` (uniform on the
        same samples; 1.0 = as good as uniform). See ``aggregate``."""
        if not score.ok:
            return math.inf
        if self.settings.scoring.aggregate == "mean" or ref is None or not ref.ok:
            return score.objective
        return aggregate(score, ref, self.settings.scoring.aggregate, self.settings.scoring.tolerance, self.settings.scoring.objective)

    def observe_baselines(self, scores):
        """Start from the best known configs: the baselines the static space can express (fixed head shares,
        the run's scorer) seed its first generation, the best first; every baseline's arm (``Arm.of``) is ranked
        by its best baseline, and the ``--arms`` best are searched (``blocks``)."""
        self.ref = scores.get("uniform")
        self.baseline_scores = dict(scores)  # unbiased for the winner's choice: a baseline fitted nothing
        ranked = sorted(((self.relative(score, self.ref), name) for name, score in scores.items()
                         if score.ok and name != "full"), key=lambda item: item[0])
        for told, name in ranked[:1]:
            self.best_f, self.best_cfg, self.best_kl = told, self.baselines[name], scores[name].objective
        self.seeds = [self.baselines[name] for _, name in ranked  # those the space can express
                      if self.baselines[name].scorer == self.scorer and self.baselines[name].allocation is None
                      and all(layer.heads is not None for layer in self.baselines[name].layers)]
        if self.seeds:
            self.incumbent = self.space.encode(self.seeds[0])
            self.home_best = next(told for told, name in ranked if self.baselines[name] is self.seeds[0])
        self.arm_seeds: dict[Arm, list[tuple[float, KVConfig]]] = {}  # each arm's baselines, best first
        for told, name in ranked:
            arm = Arm.of(self.baselines[name])
            if arm is not None and arm.searchable:
                self.arm_seeds.setdefault(arm, []).append((told, self.baselines[name]))
        for arm, seeds in self.arm_seeds.items():  # an arm starts at its best baseline's value, a point of it
            if math.isfinite(seeds[0][0]):
                self.arm_best[arm], self.arm_best_cfg[arm] = seeds[0][0], seeds[0][1]
        wanted = self.settings.space.arms if self.settings.space.groups <= 1 else 0  # groups: their own schedule
        self.arms = list(self.arm_seeds)[:min(wanted, self.settings.search.generations)] or [self.home]
        if wanted and self.arms[0].scorer == self.scorer:  # --knobs: the best arm's rule at the scorer's other knobs
            seed = self.arm_seeds[self.arms[0]][0][1]
            for variant in knob_variants(self.scorer, self.settings.space.knobs):
                arm = Arm(variant, self.arms[0].rule)
                self.arm_seeds[arm] = [(math.inf, dataclasses.replace(seed, scorer=variant, provenance={}))]
                self.arms.append(arm)
            self.arms = self.arms[:self.settings.search.generations]
        self.total_generations = self._arm_generations()[-1]

    def warm_start(self, cfg):
        """Another budget's winner, its layers' budgets scaled to this budget (its shape kept), joins the first
        generation after the best baseline."""
        if cfg.budget.kind != self.budget.kind or cfg.scorer != self.scorer or cfg.model.num_layers != \
                self.spec.num_layers:
            return
        if self.settings.space.per_head and any(layer.heads is None for layer in cfg.layers):
            return
        scale = self.budget.value / cfg.budget.value
        layers = [dataclasses.replace(layer, budget=layer.budget * scale) for layer in cfg.layers]
        rescaled = dataclasses.replace(cfg, budget=self.budget, layers=tuple(layers), provenance={})
        self.seeds = [*self.seeds[:1], rescaled, *self.seeds[1:]] if self.seeds else [self.baselines["uniform"], rescaled]

    def split(self, generation):
        return draw_split(generation) if self.settings.data.pool > self.settings.data.samples else "search"

    def reference(self, job, split, generation):
        if split != "search" and self.settings.scoring.aggregate != "mean":
            self.ref = job.evaluate([self.baselines["uniform"]], Stage.BASELINE, ["baseline:uniform"], split=split,
                                    generation=generation)[0]

    def _arm_generations(self) -> tuple[int, int, int]:
        """(generations of each arm in the first round, generations of the arm that continues, all of them)."""
        gens, arms = self.settings.search.generations, self.arms
        if arms == [self.home]:
            return 0, gens, sum(count for _, count, _ in _schedule(self.settings, self.space))
        first = max(1, gens // (2 * len(arms))) if len(arms) > 1 else 0
        rest = gens - first * len(arms)  # --generations in all: no arm more than the generations
        heads = rest // 2 if any(self._head_stage(arm) for arm in arms) else 0
        return first, rest, first * len(arms) + rest + heads

    def _head_stage(self, arm: Arm) -> bool:
        """Whether ``arm``, continued, ends with a stage over its split per KV head (``--per-head``): the home
        arm's static splits (``_schedule``), a per-prompt arm's priors (``HeadPriors``)."""
        return self.space.per_head and self.spec.num_kv_heads > 1 and (arm == self.home or arm.per_prompt)

    def blocks(self, job):
        """The arms (``Arm``: a scorer and a rule; ``--arms``) of the best baselines, each started at its best
        baseline (the best of all first): with two or more, successive halving: each arm gets an equal share of
        half the generations, then the arm whose best told value is lowest gets the rest. The home arm (the run's
        scorer, static budgets) is searched as ``_schedule`` lays out (per head: the layers, then the heads)."""
        if self.arms == [self.home]:
            yield from self._home_blocks(job, _schedule(self.settings, self.space))
            return
        if len(self.arms) > 1 and self.settings.search.arm_search == "tpe":
            yield from self._tpe_blocks(job)
            return
        first, rest, _ = self._arm_generations()
        start, started = 0, {}
        if len(self.arms) > 1:
            for arm in self.arms:
                if arm == self.home:
                    view, optimizer, _ = next(self._home_blocks(job, _schedule(self.settings, self.space, first, start)))
                else:
                    view, optimizer = self._arm_start(arm, start)
                started[arm] = (view, optimizer)
                yield view, optimizer, range(start, start + first)
                start += first
        best = self._best_arm()
        arms = {**self._arms_found(best), "first_round": first, "rest": rest}
        job.derive(arms=arms)
        if not rest:
            return
        if best == self.home:
            yield from self._home_blocks(job, _schedule(self.settings, self.space, rest, start))
            return
        view, optimizer = started.get(best) or self._arm_start(best, start)
        yield view, optimizer, range(start, start + rest)
        yield from self._head_priors(job, best, start + rest, rest // 2, arms)

    def _best_arm(self) -> Arm:
        return min(self.arms, key=lambda arm: (self.arm_best.get(arm, math.inf), self.arms.index(arm)))

    def _arms_found(self, best: Arm) -> dict:
        """What ``derived.arms`` says of the arms: their names, the best told value of each, the one that goes on."""
        names = dict(zip(self.arms, arm_names(self.arms)))
        return {"searched": [names[arm] for arm in self.arms], "continued": names[best],
                "best": {names[arm]: _finite(self.arm_best.get(arm, math.inf)) for arm in self.arms}}

    def _head_priors(self, job, arm: Arm, start: int, count: int, arms: dict):
        """A per-prompt arm's stage per KV head, coarse to fine as the home arm's: each layer's split of its
        priors, started at the arm's best (``HeadPriors``)."""
        if not count or not self._head_stage(arm) or arm not in self.arm_best_cfg:
            return
        view = HeadPriors(self.arm_best_cfg[arm])
        yield view, self._optimizer(view, arm, start, view.encode(view.incumbent)[None],
                                    self.arm_best[arm]), range(start, start + count)
        job.derive(arms={**arms, "head_priors": count})

    def _tpe_blocks(self, job):
        """``--arm-search tpe``: the arms side by side in one TPE study (``ArmTPE``) for as many generations as
        successive halving gives them all, each arm's genes conditional on it and every arm's baselines (the best
        first) its first trials; then the best arm's stage per KV head, as with halving."""
        first, rest, _ = self._arm_generations()
        count = first * len(self.arms) + rest
        views = []
        for arm in self.arms:
            if arm == self.home:
                view = next(iter(_schedule(self.settings, self.space, count)))[2]
                if isinstance(view, SubSpace):
                    view.incumbent = self.incumbent
            else:
                view = PolicySpace(dataclasses.replace(self.space, scorer=arm.scorer, choices=()), arm)
            views.append(view)
        choice = ArmChoice(self.arms, views)
        starts = [(told, index, cfg) for index, arm in enumerate(self.arms)
                  for told, cfg in (self.arm_seeds.get(arm) or [(self.home_best, self.space.decode(self.incumbent))])]
        starts.sort(key=lambda item: item[0])  # each arm's best start first: ArmTPE keeps it as the arm's genes
        # while another arm is picked
        x0 = np.stack([choice.encode(cfg, index) for _, index, cfg in starts])
        lower, upper = choice.bounds
        optimizer = ArmTPE(choice.segments(), choice.n_var, lower, upper, population=self.settings.search.population,
                           seed=self.settings.seed, x0=np.clip(x0, lower, upper))
        self._view_arm[id(choice)] = choice
        yield choice, optimizer, range(0, count)
        best = self._best_arm()
        arms = {**self._arms_found(best), "arm_search": "tpe", "generations": count,
                "trials": self._trials_per_arm}
        job.derive(arms=arms)
        heads = rest // 2
        if best == self.home:
            if heads and self._head_stage(best):
                stage = list(_schedule(self.settings, self.space, rest, count))[1:]
                yield from self._home_blocks(job, [(count, heads, view) for _, _, view in stage])
            return
        yield from self._head_priors(job, best, count, heads, arms)

    def _arm_start(self, arm: Arm, start: int):
        """An arm's view (``PolicySpace``) and its optimiser, started at its baselines (its best first)."""
        view = PolicySpace(dataclasses.replace(self.space, scorer=arm.scorer, choices=()), arm)
        seeds = self.arm_seeds.get(arm, [])
        x0 = np.stack([view.encode(cfg) for _, cfg in seeds] or [np.zeros(view.n_var)])
        known = seeds[0][0] if len(seeds) == 1 and math.isfinite(seeds[0][0]) else None  # scored as a baseline:
        # CMA-ES's first population is then a sampled one, not the start alone
        return view, self._optimizer(view, arm, start, x0, known)

    def _optimizer(self, view, arm: Arm, start: int, x0: np.ndarray, x0_value: float | None):
        """``view``'s optimiser (``--optimizer``, ``--population``, ``--step``, ``--restarts``), seeded by its first
        generation ``start``, started at the rows of ``x0`` (clipped to the bounds), the first told ``x0_value``
        where known; ``view``'s candidates count for ``arm``."""
        self._view_arm[id(view)] = arm
        lower, upper = view.bounds
        search = self.settings.search
        return make_optimizer(search.optimizer, view.n_var, lower, upper, search.population, self.settings.seed + start,
                              x0=np.clip(x0, lower, upper), step=search.step, restarts=search.restarts,
                              x0_value=x0_value)

    def _home_blocks(self, job, schedule):
        for index, (gen_start, gen_count, view) in enumerate(schedule):
            if isinstance(view, SubSpace):
                view.incumbent = self.incumbent
            starts = [self.space.decode(self.incumbent)] + (self.seeds[1:] if index == 0 else [])
            if isinstance(view, SubSpace) and not view.layer_genes:  # the heads' stage: transplanted splits too
                starts += self.transplants(job, starts[0])
            optimizer = self._optimizer(view, self.home, gen_start, np.stack([view.encode(cfg) for cfg in starts]),
                                        self.home_best if index and math.isfinite(self.home_best) else None)
            yield view, optimizer, range(gen_start, gen_start + gen_count)

    def transplants(self, job, incumbent: KVConfig) -> list[KVConfig]:
        """Starts for the per-head stage: the incumbent's layer budgets with each per-prompt baseline's split over
        the KV heads (AdaKV's by score, ``globaltopk``'s, KVzip's), averaged over the search samples and made
        static (``head_shares``): where the heads' importance differs, the optimiser starts where the
        per-prompt allocators put the tokens instead of at equal shares. Splits within 1% of equal are left out.

        The same splits on uniform's layer budgets join the winner's choice on validation
        (``uniform+split:NAME``, ``on_uniform``): where no searched layer budgets beat uniform's (SmolLM2 code at
        2%), a per-head search can still ship uniform with the heads' split (held-out KL 0.878 with AdaKV's split
        against 0.891 with equal shares on the CPU; on the H100's validation samples the same splits came within 1% of
        uniform, not below it, so uniform shipped: benchmarks/results/2026-11-26-h100-acceptance-suites.md)."""
        profiled = [cfg for name, cfg in self.baselines.items() if name != "full" and
                    (cfg.allocation is not None or any(layer.heads is None for layer in cfg.layers))]
        if not profiled:
            return []
        heads = self.spec.num_kv_heads
        found: dict[str, KVConfig] = {}
        for cfg, shares in zip(profiled, job.executor.head_shares(profiled, "search")):
            if max(abs(share - 1.0 / heads) for layer in shares for share in layer) < 0.01:
                continue
            label = cfg.provenance.get("label", "?")
            found[label] = _with_splits(incumbent, shares)
            on_uniform = _with_splits(self.baselines["uniform"], shares)
            if on_uniform.hash() != found[label].hash():
                self.on_uniform[f"uniform+split:{label.removeprefix('baseline:')}"] = on_uniform
        job.derive(transplanted=list(found))
        return list(found.values())

    def told(self, scores):
        return np.array([self.relative(s, self.ref) for s in scores])

    def observe(self, view, X, configs, scores):
        owner = self._view_arm.get(id(view), self.home)  # an ``ArmChoice``: each candidate's own arm
        for x, f, cfg, score in zip(X, self.told(scores), configs, scores):
            arm, part, genes = owner, view, x
            if isinstance(owner, ArmChoice):
                index, part, genes = owner.part(x)
                arm = owner.arms[index]
                self._trials_per_arm[owner.names[index]] = self._trials_per_arm.get(owner.names[index], 0) + 1
            if cfg is not None and np.isfinite(f):
                self.history.setdefault(cfg.hash(), (cfg, []))[1].append(float(f))
                if f < self.arm_best.get(arm, math.inf):
                    self.arm_best[arm], self.arm_best_cfg[arm] = float(f), cfg
            if f < self.best_f:
                self.best_f, self.best_cfg, self.best_kl = float(f), cfg, score.objective
            if arm == self.home and f < self.home_best:
                self.home_best = float(f)
                self.incumbent = part.full(genes) if isinstance(part, SubSpace) else np.array(genes)

    def best(self):
        return self.best_kl if self.best_cfg is not None else None

    def finalists(self) -> list[KVConfig]:
        """The best distinct search candidates by their mean told value (baselines are re-scored anyway)."""
        known = {cfg.hash() for cfg in self.baselines.values()}
        ranked = sorted((sum(values) / len(values), digest) for digest, (_, values) in self.history.items()
                        if digest not in known)
        return [self.history[digest][0] for _, digest in ranked[:self.settings.scoring.finalists]]

    def finish(self, job):
        if self.best_cfg is None:
            return Outcome()
        # choose on data the optimiser did not fit: the best search candidates and every baseline at the budget
        contenders = {f"baseline:{n}": cfg for n, cfg in self.baselines.items() if n != "full"}
        contenders.update({f"finalist:{i}": cfg for i, cfg in enumerate(self.finalists())})
        contenders.update(self.on_uniform)
        chosen, scored = choose_on_validation(
            job, contenders, lambda score, scored: self.relative(score, scored["baseline:uniform"]),
            admits if self.settings.scoring.choose == "typical" else None)
        ref = scored["baseline:uniform"]
        metric_check: dict[str, float] = {}
        evidence: dict = {}
        if self.settings.scoring.choose == "metric":
            chosen, metric_check = metric_guard(job, contenders, scored, self.relative)
        elif self.settings.scoring.choose == "paired":
            search_scores = {f"baseline:{name}": score for name, score in self.baseline_scores.items()}
            chosen, evidence = choose_paired(scored, search_scores, LOG_KL_FLOOR)
            chosen, evidence = self.race(job, contenders, scored, search_scores, chosen, evidence)
        chosen_value = self.relative(scored[chosen], ref)
        passed_over = {label: round(typical_ratio(score, ref), 4) for label, score in scored.items()
                       if score.ok and self.relative(score, ref) < chosen_value}
        if evidence.get("ratio_to_uniform"):
            evidence["passed_over"] = _passed_over_reasons(passed_over, chosen, evidence)
        if not scored[chosen].ok:
            return Outcome()
        source = chosen if chosen.startswith("baseline:") else "search"
        finals_by_label = {"winner": contenders[chosen], **{f"baseline:{n}": cfg for n, cfg in self.baselines.items()}}
        labels = list(finals_by_label)
        job.reporter.stage("re-score winner and baselines on search and held-out data")
        with job.stage("held-out re-score", 2 * len(labels)):
            search = job.evaluate(list(finals_by_label.values()), Stage.FINAL, labels)
            job.evaluate([contenders[chosen]], Stage.FINAL, ["winner"], split="validation")
            heldout = job.evaluate(list(finals_by_label.values()), Stage.FINAL, labels, split="heldout")
            passed = [label for label in passed_over if label not in finals_by_label]
            if passed:  # what the mean alone would have shipped, on held-out data too (runs show)
                job.evaluate([contenders[label] for label in passed], Stage.FINAL, passed, split="heldout")
        winner = self.provenance(job, contenders[chosen], search[0].objective, source=source,
                                 selected_on="validation", validation_objective=scored[chosen].objective,
                                 validation_relative=chosen_value,
                                 validation_typical_ratio=_finite(typical_ratio(scored[chosen], ref)),
                                 **({"validation_task_metric": metric_check} if metric_check else {}),
                                 **({"passed_over": passed_over} if passed_over else {}),
                                 **({"selection_evidence": evidence} if evidence else {}),
                                 heldout_objective=heldout[0].objective, heldout_metrics=heldout[0].metrics)
        finals = [winner, *self.baselines.values()]
        with job.stage("exact match", len(finals)):
            job.exact_match(finals, labels)
        return Outcome(winner, search[0].objective, heldout[0])


    def race(self, job, contenders: dict[str, KVConfig], scored: dict[str, Score], search_scores: dict[str, Score],
             chosen: str, evidence: dict) -> tuple[str, dict]:
        """A close call raced: where the leading contenders are within noise of each other (``close_calls``),
        they are scored on the race split (``--race`` more validation samples per task, prefilled now) and the
        paired choice is made again on validation and race samples pooled. Within noise still, the rule ships the
        simpler config, as before the race."""
        if not self.settings.data.race or not job.executor.split_size(RACE):
            return chosen, evidence
        close = close_calls(scored, search_scores, LOG_KL_FLOOR)
        if not close:
            return chosen, evidence
        job.reporter.stage(f"race {len(close)} close contenders on more validation samples",
                           total=job.executor.split_size(RACE))
        with job.stage(f"prefill {RACE}", job.executor.split_size(RACE)):
            job.prepare(RACE)
        with job.stage(RACE, len(close)):
            more = dict(zip(close, job.evaluate([contenders[label] for label in close], Stage.FINAL, close,
                                                split=RACE)))
        raced = {label: pooled(scored[label], more[label]) for label in close}
        winner, after = choose_paired(raced, search_scores, LOG_KL_FLOOR)
        after["race"] = {"configs": close, "samples": job.executor.split_size(RACE), "before": chosen,
                         "before_reason": evidence.get("reason"),
                         "before_ratio_to_uniform": evidence.get("ratio_to_uniform")}
        return winner, after


def _passed_over_reasons(passed: dict[str, float], chosen: str, evidence: dict) -> dict[str, str]:
    """Why each contender with a better validation value than the winner's did not ship (``--choose paired``)."""
    ratios = evidence["ratio_to_uniform"]
    mine = ratios.get(chosen)
    reasons = {}
    for label in passed:
        if label == evidence.get("simplest"):
            reasons[label] = "led, but within noise of uniform: uniform, the simplest config, ships"
        elif label == evidence.get("leader") and evidence.get("within_noise"):
            reasons[label] = "led, but within noise of the best baseline and of uniform: the simpler config ships"
        elif label in ratios and mine is not None:
            reasons[label] = (f"its per-sample loss ratio to uniform, {ratios[label]:.3f}, is above the winner's "
                              f"{mine:.3f}: a lower mean from a few samples")
        else:
            reasons[label] = "not among the contenders raced on more samples, which the winner led"
    return reasons


def _schedule(settings: SearchSettings, space: BudgetSpace, generations: int | None = None, start: int = 0):
    """(first generation, generations, view) blocks: the whole space, or EvolKV's layer groups in turn. Per
    head (more than one KV head, no groups): coarse to fine, ``--generations`` over the layers' budgets with
    each layer's split over its heads held at the best start's, then half as many over the splits alone, the
    layers' budgets held at the best found, started there and at the per-prompt baselines' splits
    (``TokenSearch.transplants``). Searched per head from the start, the 3x larger space lost to per-layer
    search at 5% on SmolLM2; a second stage over every gene never beat the first stage's config on validation
    (benchmarks/acceptance/run.sh accept). ``generations`` from generation ``start`` on (the arms' second round)
    in place of ``--generations`` from 0."""
    gens = settings.search.generations if generations is None else generations
    if settings.space.groups <= 1:
        if space.per_head and space.model.num_kv_heads > 1:
            every_layer = list(range(space.model.num_layers))
            layers_only = SubSpace(space, every_layer, np.zeros(space.n_var), head_shares=False)
            yield start, gens, layers_only
            if gens // 2:
                heads_only = SubSpace(space, every_layer, np.zeros(space.n_var), layer_genes=False)
                yield start + gens, gens // 2, heads_only
            return
        yield start, gens, space
        return
    layers = space.model.num_layers
    size = math.ceil(layers / settings.space.groups)
    groups = [list(range(i, min(i + size, layers))) for i in range(0, layers, size)]
    per_group = max(1, gens // len(groups))
    for i, group in enumerate(groups):
        yield start + i * per_group, per_group, SubSpace(space, group, np.zeros(space.n_var))  # incumbent set in the loop
