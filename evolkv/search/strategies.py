"""The parts of a search that vary by mode, behind one small interface; ``evolkv.search.loop`` runs them all.

A strategy owns its baselines, its space and optimisers (``blocks``), what the optimiser is told for a scored
population (``told``), what it keeps of it (``observe``), the progress figure (``best``) and how the winner
is chosen and stored (``finish``). Token search (EvolKV, PyramidKV/AdaKV baselines) and front search
(KVTuner-style precisions, joint budgets) are the two today.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from evolkv.allocation import avg_bits, within_bits
from evolkv.config import Budget, KVConfig, ModelSpec, ScorerSpec
from evolkv.evaluators.evaluator import Score
from evolkv.evaluators.tasks import task_metric
from evolkv.executors import PROBE, draw_split
from evolkv.search.baselines import baseline, scorer_choices
from evolkv.search.optimizers import make_optimizer
from evolkv.search.precision import (PAIRS, PrecisionSpace, cluster, parse_evicted, parse_residuals, prune,
                                    sensitivity_configs, with_precisions)
from evolkv.search.space import BudgetSpace, SubSpace
from evolkv.settings import SearchSettings
from evolkv.store.models import Stage

AGGREGATES = ("guarded", "worst", "mean")
CHOICES = ("mean", "typical", "metric")  # --choose
SMOOTHING = 0.05  # of the reference's mean KL, added to every KL before a ratio is taken
PENALTY = 10.0  # guarded: per unit of one task's ratio past 1 + tolerance


def aggregate(score: Score, ref: Score, rule: str, tolerance: float = 0.1, objective: str = "kl") -> float:
    """One number for a score against a reference scored on the same samples (uniform at the same budget).

    Each task's KL and the mean KL are taken relative to the reference's, both smoothed by 5% of the
    reference's mean KL so that a task the reference already solves (KL near 0) cannot blow a ratio up.
    ``worst``: the largest per-task ratio, so no task's gain pays for another's loss (DefensiveKV's worst case,
    applied to the search; strict, since the largest of several noisy ratios sits above 1 even for a config as
    good as the reference). ``guarded`` (the default): the mean ratio, plus ``PENALTY`` times how far the worst
    task's ratio goes past ``1 + tolerance``: a config may trade a little on one task for a gain overall, never
    a lot."""
    eps = max(SMOOTHING * ref.objective, 1e-6)
    ratios = [(value + eps) / (ref.metrics[key] + eps) for key, value in score.metrics.items()
              if key.endswith(f"/{objective}") and key in ref.metrics]
    worst = max(ratios) if ratios else (score.objective + eps) / (ref.objective + eps)
    if rule == "worst":
        return worst
    mean = (score.objective + eps) / (ref.objective + eps)
    return mean + PENALTY * max(0.0, worst - 1.0 - tolerance)


def typical_ratio(score: Score, ref: Score) -> float:
    """How ``score`` compares with ``ref`` sample by sample (both on the same samples): the geometric mean of
    the per-sample KL ratios (``logkl``: KL floored at ``LOG_KL_FLOOR``), where the mean KL's ratio follows the
    few samples with the largest KL. Below 1: better on the typical sample. NaN when either was not scored so
    (runs stored before ``logkl``)."""
    if not (score.ok and ref.ok and "logkl" in score.metrics and "logkl" in ref.metrics):
        return math.nan
    return math.exp(score.metrics["logkl"] - ref.metrics["logkl"])


def _with_splits(cfg: KVConfig, shares: list[list[float]]) -> KVConfig:
    """``cfg``'s layer budgets with each layer's split over its KV heads set to ``shares`` [L][H_kv] (no provenance)."""
    layers = tuple(dataclasses.replace(layer, heads=tuple(split)) for layer, split in zip(cfg.layers, shares))
    return dataclasses.replace(cfg, layers=layers, provenance={})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


QUANT_BASELINES = {"KV8": (8, 8), "KV4": (4, 4), "K4V2": (4, 2), "K2V4": (2, 4), "KIVI-2": (2, 2)}


class Strategy:
    """What one search mode decides; the loop does the asking, evaluating, telling and persisting."""

    baselines: dict[str, KVConfig]
    total_generations: int
    splits: tuple[str, ...] = ("search", "heldout")  # prefilled before the baselines

    def __init__(self, settings: SearchSettings, spec: ModelSpec, budget: Budget, scorer: ScorerSpec) -> None:
        self.settings, self.spec, self.budget, self.scorer = settings, spec, budget, scorer

    def observe_baselines(self, scores: dict[str, Score]) -> None:
        """The baselines' scores on the search split, before the first generation."""

    def warm_start(self, cfg: KVConfig) -> None:
        """Seed the first generation with ``cfg`` (another budget's winner); ignored where it does not fit."""

    def split(self, generation: int) -> str:
        """The samples generation ``generation`` is scored on."""
        return "search"

    def reference(self, job, split: str, generation: int) -> None:
        """Work before a generation is scored on ``split`` (a reference on a fresh draw, say)."""

    def prepare(self, job) -> None:
        """Work after the baselines and before the first generation (a sensitivity pass, say)."""

    def blocks(self, job) -> Iterator[tuple[Any, Any, range]]:
        """(view that decodes genes, optimiser, generations) in turn; made lazily, so a block can start from
        what the previous ones found."""
        raise NotImplementedError

    def told(self, scores: list[Score]) -> np.ndarray:
        raise NotImplementedError

    def observe(self, view, X: np.ndarray, configs: list[KVConfig | None], scores: list[Score]) -> None:
        raise NotImplementedError

    def best(self) -> float | None:
        raise NotImplementedError

    def finish(self, job) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def choose_on_validation(job, contenders: dict[str, KVConfig], value, eligible=None
                             ) -> tuple[str, dict[str, Score]]:
        """Score ``contenders`` (label -> config) on the validation split; the label with the lowest
        ``value(score, scores)`` wins among those ``eligible(label, scores)`` admits (all by default), a tie
        going to a baseline. Returns (label, every label's score)."""
        job.reporter.stage(f"choose the winner on validation data among {len(contenders)} configs")
        with job.stage("validation", len(contenders)):
            scored = dict(zip(contenders, job.evaluate(list(contenders.values()), Stage.FINAL, list(contenders),
                                                       split="validation")))
        admitted = [label for label in contenders if eligible is None or eligible(label, scored)]
        best = min(admitted, key=lambda label: (value(scored[label], scored), not label.startswith("baseline:")))
        return best, scored

    def provenance(self, job, cfg: KVConfig, objective: float, **extra: Any) -> KVConfig:
        settings = self.settings
        return cfg.with_provenance(run_id=job.run_id, label="winner", model=self.spec.name, search_objective=objective,
                                   tasks=settings.tasks, samples=settings.samples, length=settings.length,
                                   seed=settings.seed, optimizer=settings.optimizer, query_aware=settings.query_aware,
                                   versions=_versions(), **extra)


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
        names = list(dict.fromkeys([*settings.baselines, "uniform"]))  # uniform: the reference of every ratio
        self.baselines = {name: baseline(name, spec, budget, scorer) for name in names}
        self.space = BudgetSpace(spec, budget, scorer, per_head=settings.per_head, context=settings.length,
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
        self.history: dict[str, tuple[KVConfig, list[float]]] = {}  # config hash -> (config, told values)
        self.on_uniform: dict[str, KVConfig] = {}  # uniform's layer budgets with a profiled split (``transplants``)
        self.total_generations = sum(count for _, count, _ in _schedule(settings, self.space))

    def relative(self, score: Score, ref: Score | None) -> float:
        """What the optimiser and the winner's choice see of ``score``, relative to ``ref`` (uniform on the
        same samples; 1.0 = as good as uniform). See ``aggregate``."""
        if not score.ok:
            return math.inf
        if self.settings.aggregate == "mean" or ref is None or not ref.ok:
            return score.objective
        return aggregate(score, ref, self.settings.aggregate, self.settings.tolerance, self.settings.objective)

    def observe_baselines(self, scores):
        """Start from the best known configs: the baselines the space can express (fixed head shares, the
        run's scorer) seed the first generation, the best first."""
        self.ref = scores.get("uniform")
        ranked = sorted(((self.relative(score, self.ref), name) for name, score in scores.items()
                         if score.ok and name != "full"), key=lambda item: item[0])
        for told, name in ranked[:1]:
            self.best_f, self.best_cfg, self.best_kl = told, self.baselines[name], scores[name].objective
        self.seeds = [self.baselines[name] for _, name in ranked  # those the space can express
                      if self.baselines[name].scorer == self.scorer and self.baselines[name].allocation is None
                      and all(layer.heads is not None for layer in self.baselines[name].layers)]
        if self.seeds:
            self.incumbent = self.space.encode(self.seeds[0])

    def warm_start(self, cfg):
        """Another budget's winner, its layers' budgets scaled to this budget (its shape kept), joins the first
        generation after the best baseline."""
        if cfg.budget.kind != self.budget.kind or cfg.scorer != self.scorer or cfg.model.num_layers != \
                self.spec.num_layers:
            return
        if self.settings.per_head and any(layer.heads is None for layer in cfg.layers):
            return
        scale = self.budget.value / cfg.budget.value
        layers = [dataclasses.replace(layer, budget=layer.budget * scale) for layer in cfg.layers]
        rescaled = dataclasses.replace(cfg, budget=self.budget, layers=tuple(layers), provenance={})
        self.seeds = [*self.seeds[:1], rescaled, *self.seeds[1:]] if self.seeds else [self.baselines["uniform"], rescaled]

    def split(self, generation):
        return draw_split(generation) if self.settings.pool > self.settings.samples else "search"

    def reference(self, job, split, generation):
        if split != "search" and self.settings.aggregate != "mean":
            self.ref = job.evaluate([self.baselines["uniform"]], Stage.BASELINE, ["baseline:uniform"], split=split,
                                    generation=generation)[0]

    def blocks(self, job):
        for index, (gen_start, gen_count, view) in enumerate(_schedule(self.settings, self.space)):
            if isinstance(view, SubSpace):
                view.incumbent = self.incumbent
            lower, upper = view.bounds
            starts = [self.space.decode(self.incumbent)] + (self.seeds[1:] if index == 0 else [])
            if isinstance(view, SubSpace) and not view.layer_genes:  # the heads' stage: transplanted splits too
                starts += self.transplants(job, starts[0])
            x0 = np.clip(np.stack([view.encode(cfg) for cfg in starts]), lower, upper)
            optimizer = make_optimizer(self.settings.optimizer, view.n_var, lower, upper, self.settings.population,
                                       self.settings.seed + gen_start, x0=x0, step=self.settings.step,
                                       restarts=self.settings.restarts,
                                       x0_value=self.best_f if index and self.best_cfg is not None else None)
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
        job.store.update_run(job.run_id, derived={"transplanted": list(found)})
        return list(found.values())

    def told(self, scores):
        return np.array([self.relative(s, self.ref) for s in scores])

    def observe(self, view, X, configs, scores):
        for x, f, cfg, score in zip(X, self.told(scores), configs, scores):
            if cfg is not None and np.isfinite(f):
                self.history.setdefault(cfg.hash(), (cfg, []))[1].append(float(f))
            if f < self.best_f:
                self.best_f, self.best_cfg, self.best_kl = float(f), cfg, score.objective
                self.incumbent = view.full(x) if isinstance(view, SubSpace) else np.array(x)

    def best(self):
        return self.best_kl if self.best_cfg is not None else None

    def finalists(self) -> list[KVConfig]:
        """The best distinct search candidates by their mean told value (baselines are re-scored anyway)."""
        known = {cfg.hash() for cfg in self.baselines.values()}
        ranked = sorted((sum(values) / len(values), digest) for digest, (_, values) in self.history.items()
                        if digest not in known)
        return [self.history[digest][0] for _, digest in ranked[:self.settings.finalists]]

    @staticmethod
    def admits(label: str, scored: dict[str, Score]) -> bool:
        """``--choose typical``: whether a contender may displace uniform on validation: only if it is also better
        on the typical sample (``typical_ratio`` below 1). Per-sample KL is heavy-tailed (one code sample moved a
        mean of 16 by 0.07), so a lower mean can be a few samples' luck (a winner 2.8x worse than uniform on
        held-out data, 16 validation samples). Not the default: with 32 validation samples on SmolLM2 code it decided 5 cells
        differently from the mean, right once (a 1.37x loss avoided) and wrong four times (gains of 1.09-1.18x
        given up; benchmarks/acceptance/run.sh accept, SmolLM2 code)."""
        return label == "baseline:uniform" or not typical_ratio(scored[label], scored["baseline:uniform"]) >= 1.0

    def metric_guard(self, job, contenders: dict[str, KVConfig], scored: dict[str, Score]
                     ) -> tuple[str, dict[str, float]]:
        """``--choose metric``: the contenders that beat uniform on validation KL, best first, are greedy-decoded
        on the validation samples one at a time (uniform too, once), and the first whose task metric (``task_metric``:
        edit similarity for code, string match otherwise) is not below uniform's ships; if none, uniform. A lower
        KL that costs answers does not displace uniform. Returns (label, validation task metric of each label
        decoded). Not the default: on SmolLM2 code with 48 validation samples it shipped a config with higher held-out
        KL than the mean's pick in 6 of 12 runs, and what it shipped was still below uniform on held-out edit
        similarity at 10% and 20% (benchmarks/results/2026-11-26-h100-acceptance-suites.md)."""
        ref = scored["baseline:uniform"]
        bar = self.relative(ref, ref)
        ranked = sorted((label for label, score in scored.items()
                         if score.ok and label != "baseline:uniform" and self.relative(score, ref) < bar),
                        key=lambda label: (self.relative(scored[label], ref), not label.startswith("baseline:")))
        checked: dict[str, float] = {}
        for label in ["baseline:uniform", *ranked]:
            checked[label] = task_metric(job.task_metrics([contenders[label]], [label], "validation")[0])
            if label != "baseline:uniform" and checked[label] >= checked["baseline:uniform"]:
                return label, checked
        return "baseline:uniform", checked

    def finish(self, job):
        store, run_id = job.store, job.run_id
        if self.best_cfg is None:
            store.update_run(run_id, status="failed")
            return store.detail(run_id)
        # choose on data the optimiser did not fit: the best search candidates and every baseline at the budget
        contenders = {f"baseline:{n}": cfg for n, cfg in self.baselines.items() if n != "full"}
        contenders.update({f"finalist:{i}": cfg for i, cfg in enumerate(self.finalists())})
        contenders.update(self.on_uniform)
        chosen, scored = self.choose_on_validation(
            job, contenders, lambda score, scored: self.relative(score, scored["baseline:uniform"]),
            self.admits if self.settings.choose == "typical" else None)
        ref = scored["baseline:uniform"]
        metric_check: dict[str, float] = {}
        if self.settings.choose == "metric":
            chosen, metric_check = self.metric_guard(job, contenders, scored)
        chosen_value = self.relative(scored[chosen], ref)
        passed_over = {label: round(typical_ratio(score, ref), 4) for label, score in scored.items()
                       if score.ok and self.relative(score, ref) < chosen_value}
        if not scored[chosen].ok:
            store.update_run(run_id, status="failed")
            return store.detail(run_id)
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
                                 heldout_objective=heldout[0].objective, heldout_metrics=heldout[0].metrics)
        finals = [winner, *self.baselines.values()]
        with job.stage("exact match", 2 * len(finals)):
            job.exact_match(finals, labels)
        store.set_winner(run_id, winner, search[0].objective, heldout[0].objective if heldout[0].ok else None,
                         heldout[0].metrics)
        store.update_run(run_id, status="finished", best_objective=search[0].objective)
        return store.detail(run_id)


class FrontSearch(Strategy):
    """Quant / joint mode: a Pareto front of (quality loss, bits), the winner = the best point at or under
    ``target_bits``. KVTuner's reduction first: one-layer sensitivity, pruned pairs, clustered layers. The
    winner is chosen on the validation split among the front points and the uniform precisions at or under the
    target; a uniform precision that wins is shipped, marked."""

    splits = ("search", "validation", "heldout")

    def __init__(self, settings, spec, budget, scorer) -> None:
        super().__init__(settings, spec, budget, scorer)
        joint = settings.mode == "joint"
        self.base = baseline("uniform", spec, budget if joint else Budget("fraction", 1.0), scorer)
        self.baselines = {"full": baseline("full", spec, budget, scorer)}
        if joint:
            self.baselines.update({n: baseline(n, spec, budget, scorer) for n in settings.baselines if n != "full"})
        self.residuals = parse_residuals(settings.residual)
        for name, (k, v) in QUANT_BASELINES.items():  # uniform caches as papers run them: no full-precision window
            self.baselines[name] = with_precisions(self.base, [(k, v)] * spec.num_layers, settings.group_size,
                                                   self.residuals[0]).with_provenance(label=f"baseline:{name}")
        self.seen: dict[str, tuple[KVConfig, float, float]] = {}
        # --per-head: --generations per layer group, then half as many per KV head (``blocks``)
        extra = settings.generations // 2 if settings.per_head and spec.num_kv_heads > 1 else 0
        self.total_generations = settings.generations + extra

    def prepare(self, job):
        settings, spec = self.settings, self.spec
        probes = sensitivity_configs(self.base, settings.group_size, self.residuals[0])
        job.reporter.stage(f"sensitivity: {len(probes)} one-layer quantizations",
                           total=len(probes) * job.executor.split_size(PROBE))
        with job.stage("sensitivity", len(probes)):
            scores = job.evaluate([cfg for _, _, cfg in probes], Stage.SENSITIVITY, ["sensitivity"] * len(probes),
                                  split=PROBE, progress=job.reporter.advance)
        errors = np.zeros((spec.num_layers, len(PAIRS)))
        for (layer, pair, _), score in zip(probes, scores):
            errors[layer, PAIRS.index(pair)] = score.objective if score.ok else 1e6
        kept = prune(errors)
        groups = cluster(errors, settings.clusters, settings.seed)
        # the reduced space keeps every uniform baseline representable: the search can always match them
        always = {(16, 16), *QUANT_BASELINES.values()}
        choices = [sorted(always.union(*(kept[layer] for layer in g)), key=lambda p: (-(p[0] + p[1]), -p[0]))
                   for g in groups]
        tokens = (BudgetSpace(spec, self.budget, self.scorer, per_head=settings.per_head, context=settings.length)
                  if settings.mode == "joint" else None)
        self.space = PrecisionSpace(self.base, groups, choices, settings.group_size, self.residuals, tokens,
                                    evicted=parse_evicted(settings.evicted_bits),
                                    heads=spec.num_kv_heads if settings.per_head else 1)
        before, after = self.space.size()
        space_info = {"log10_size_before": before, "log10_size_after": after, "groups": groups,
                      "choices": [[f"K{k}V{v}" for k, v in c] for c in choices], "residuals": list(self.residuals),
                      "evicted_bits": list(self.space.evicted),
                      "pruned": [[f"K{k}V{v}" for k, v in c] for c in kept]}
        job.store.update_run(job.run_id, derived={"space": space_info})
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
        seeds += [with_precisions(self.base, [pair] * self.spec.num_layers, settings.group_size, r)
                  for r in self.residuals[1:] for pair in ((4, 4), (4, 2))]
        if space.heads == 1:
            yield space, self._optimizer(job, space, seeds, 0), range(settings.generations)
            return
        per_layer = dataclasses.replace(space, heads=1)
        yield per_layer, self._optimizer(job, per_layer, seeds, 0), range(settings.generations)
        front = [cfg for cfg, _, _ in _pareto(list(self.seen.values()))]
        keep = max(1, settings.population // 2)  # the rest of the first generation: mutations of these
        picked = np.unique(np.linspace(0, len(front) - 1, keep).round().astype(int)) if front else []
        starts = [front[i] for i in picked] or seeds
        yield (space, self._optimizer(job, space, starts, settings.generations),
               range(settings.generations, self.total_generations))

    def _optimizer(self, job, space: PrecisionSpace, starts: list[KVConfig], first_generation: int):
        lower, upper = space.bounds
        x0 = np.clip(np.stack([space.encode(cfg) for cfg in starts]), lower, upper)
        storage = job.store.url  # an optimiser that keeps a study keeps it beside the run
        suffix = f"-{first_generation}" if first_generation else ""
        return make_optimizer(self.settings.optimizer, space.n_var, lower, upper, self.settings.population,
                              self.settings.seed + first_generation, x0=x0, n_obj=2, storage=storage,
                              study_name=f"evolkv-{job.run_id}{suffix}")

    def _points(self, scores) -> np.ndarray:
        return np.array([[s.objective, s.metrics.get("bits", np.inf)] if s.ok else [np.inf, np.inf] for s in scores])

    def told(self, scores):
        F = self._points(scores)
        # the optimiser sees memory no lower than the target: below it every point competes on quality alone,
        # which spends the population where the winner is chosen (the stored front keeps the true bits)
        return np.stack([F[:, 0], np.maximum(F[:, 1], self.settings.target_bits)], axis=1)

    def observe(self, view, X, configs, scores):
        for cfg, (f, bits) in zip(configs, self._points(scores)):
            if cfg is not None and np.isfinite(f):
                self.seen[cfg.hash()] = (cfg, float(f), float(bits))

    def best(self):
        front = _pareto(list(self.seen.values()))
        best = min((f for _, f, b in front if within_bits(b, self.settings.target_bits)), default=math.inf)
        return best if math.isfinite(best) else None

    def finish(self, job):
        settings, store, run_id = self.settings, job.store, job.run_id
        front = _pareto(list(self.seen.values()))
        if not front:
            store.update_run(run_id, status="failed")
            return store.detail(run_id)
        under = [p for p in front if within_bits(p[2], settings.target_bits)]
        win_index = front.index(min(under, key=lambda p: p[1])) if under else int(np.argmin([p[2] for p in front]))
        source, chosen = "search", None
        if under:  # choose on validation among the front points and the uniform precisions at or under the target
            contenders = {f"front:{front.index(p)}": p[0] for p in under}
            contenders.update({f"baseline:{n}": cfg for n, cfg in self.baselines.items()
                               if n != "full" and within_bits(avg_bits(cfg, settings.length), settings.target_bits)})
            best, scored = self.choose_on_validation(job, contenders,
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
            winner_cfg, win_bits = chosen, avg_bits(chosen, settings.length)
            win_f = job.evaluate([chosen], Stage.FINAL, [source])[0].objective
            win_heldout = heldout[len(points) + list(self.baselines).index(source.removeprefix("baseline:"))]
            win_index = -1
        winner = self.provenance(job, winner_cfg, win_f, bits=win_bits, target_bits=settings.target_bits,
                                 mode=settings.mode, heldout_objective=win_heldout.objective,
                                 under_target=bool(under), source=source,
                                 selected_on="validation" if under else "bits")
        finals = [winner, *self.baselines.values()]
        with job.stage("winner re-score", 2):
            job.evaluate([winner], Stage.FINAL, ["winner"])
            job.evaluate([winner], Stage.FINAL, ["winner"], split="heldout")
            if under:
                job.evaluate([winner], Stage.FINAL, ["winner"], split="validation")
        with job.stage("exact match", 2 * len(finals)):
            job.exact_match(finals, ["winner", *[f"baseline:{n}" for n in self.baselines]])
        store.set_front(run_id, [(cfg, f, bits, h.objective if h.ok else None, h.metrics, i == win_index)
                                 for i, ((cfg, f, bits), h) in enumerate(zip(front, heldout))])
        store.set_winner(run_id, winner, win_f, win_heldout.objective if win_heldout.ok else None,
                         win_heldout.metrics)
        store.update_run(run_id, status="finished", best_objective=win_f)
        return store.detail(run_id)


STRATEGIES = {"tokens": TokenSearch, "quant": FrontSearch, "joint": FrontSearch}


def _pareto(points: list[tuple[KVConfig, float, float]]) -> list[tuple[KVConfig, float, float]]:
    """Non-dominated (config, loss, bits) points, sorted by bits (then loss)."""
    ordered = sorted(points, key=lambda p: (p[2], p[1]))
    front, best = [], math.inf
    for point in ordered:
        if point[1] < best:
            front.append(point)
            best = point[1]
    return front


def _schedule(settings: SearchSettings, space: BudgetSpace):
    """(first generation, generations, view) blocks: the whole space, or EvolKV's layer groups in turn. Per
    head (more than one KV head, no groups): coarse to fine, ``--generations`` over the layers' budgets with
    each layer's split over its heads held at the best start's, then half as many over the splits alone, the
    layers' budgets held at the best found, started there and at the per-prompt baselines' splits
    (``TokenSearch.transplants``). Searched per head from the start, the 3x larger space lost to per-layer
    search at 5% on SmolLM2; a second stage over every gene never beat the first stage's config on validation
    (benchmarks/acceptance/run.sh accept)."""
    if settings.groups <= 1:
        if space.per_head and space.model.num_kv_heads > 1:
            every_layer = list(range(space.model.num_layers))
            layers_only = SubSpace(space, every_layer, np.zeros(space.n_var), head_shares=False)
            yield 0, settings.generations, layers_only
            if settings.generations // 2:
                heads_only = SubSpace(space, every_layer, np.zeros(space.n_var), layer_genes=False)
                yield settings.generations, settings.generations // 2, heads_only
            return
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
