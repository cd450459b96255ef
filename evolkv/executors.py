"""Executors run evaluations for the search loop.

``LocalExecutor`` scores in-process on one device; ``evolkv.ray_executor.RayExecutor`` spreads the samples
over Ray actors. Both see the same splits: ``search`` (the search pool), ``validation``, ``heldout``, ``race`` (more
validation samples, prefilled only when a close call is raced on them), ``probe``
(a few search samples spread over the tasks, for cheap passes such as the precision sensitivity) and the
draws ``search@<n>``: ``samples`` per task drawn from the pool for generation ``n`` (read from the pool's
prefill, never prefilled again) when the pool is larger than that.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from evolkv.config import KVConfig
from evolkv.evaluators.evaluator import Evaluator, Prepared, Score
from evolkv.evaluators.tasks import Sample

PROBE = "probe"
RACE = "race"
DRAW = "@"


def draw_split(draw: int) -> str:
    """The name of the search pool's ``draw``-th resample (one per generation)."""
    return f"search{DRAW}{draw}"


def draw_indices(pool: Sequence[Sample], per_task: int, seed: int, split: str) -> list[int]:
    """Indices into ``pool`` of the draw ``split`` (``search@n``): ``per_task`` samples of every task, drawn
    without replacement by a stream of (seed, n), in pool order."""
    draw = int(split.rpartition(DRAW)[2])
    by_task: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(pool):
        by_task[sample.task].append(index)
    rng = random.Random(f"draw:{seed}:{draw}")
    chosen = []
    for task in sorted(by_task):
        chosen += rng.sample(by_task[task], min(per_task, len(by_task[task])))
    return sorted(chosen)


def shard_of(items: Sequence, rank: int, world: int) -> list:
    """Worker ``rank``'s share of ``items`` among ``world``: every ``world``-th item from ``rank`` on (strided,
    so that a split ordered by task gives every worker each task in equal measure)."""
    return list(items[rank::world])


class LocalExecutor:
    """Prefills each split's samples once (on first use) and scores populations on them."""

    def __init__(self, evaluator: Evaluator, samples: dict[str, list[Sample]], per_task: int = 0, seed: int = 0,
                 pool: Sequence[Sample] | None = None, rank: int = 0, world: int = 1) -> None:
        self.evaluator = evaluator
        self.samples = samples
        self.worker = f"local:{evaluator.device}"
        self._prepared: dict[str, list[Prepared]] = {}
        self.load_seconds: float | None = None  # set by make_local: the model's load, a stage of the run
        # draws from the search pool: ``per_task`` of each task; a shard holds pool[rank::world]
        self.per_task, self.seed, self.rank, self.world = per_task, seed, rank, world
        self.pool = samples.get("search", []) if pool is None else pool

    def prepare(self, split: str, progress: Callable[[], None] | None = None) -> None:
        if DRAW in split:
            split = "search"
        if split not in self._prepared:
            self._prepared[split] = self.evaluator.prepare(self.samples[split], progress)

    def prepared(self, split: str) -> list[Prepared]:
        self.prepare(split)
        if DRAW not in split:
            return self._prepared[split]
        mine = self._prepared["search"]
        indices = draw_indices(self.pool, self.per_task, self.seed, split)
        return [mine[i // self.world] for i in indices if i % self.world == self.rank]

    def split_size(self, split: str) -> int:
        if DRAW in split:
            return len(draw_indices(self.pool, self.per_task, self.seed, split))
        return len(self.samples.get(split, []))

    def evaluate(self, configs: Sequence[KVConfig], split: str, progress: Callable[[int], None] | None = None,
                 meanwhile: Callable[[], None] | None = None) -> list[Score]:
        """Scores of ``configs`` on ``split``. ``meanwhile``: the caller's own work on these configs, run while
        they are scored where the scoring happens elsewhere (Ray actors); here, before."""
        if meanwhile:
            meanwhile()
        return self.evaluator.score(configs, self.prepared(split), progress)

    def exact_match(self, configs: Sequence[KVConfig], split: str,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        return self.evaluator.exact_match(configs, self.prepared(split), progress)

    def head_shares(self, configs: Sequence[KVConfig], split: str) -> list[list[list[float]]]:
        """Per config, each layer's split of its kept tokens over its KV heads [L][H_kv] (shares summing to 1),
        averaged over ``split``'s samples: a per-prompt allocation made static (``Evaluator.head_counts``)."""
        return [head_shares(counts) for counts in self.evaluator.head_counts(configs, self.prepared(split))]


def head_shares(counts: list[list[float]]) -> list[list[float]]:
    """Each layer's token counts per KV head [L][H_kv] as shares of the layer's total (equal where it kept none)."""
    return [[c / sum(layer) if sum(layer) else 1.0 / len(layer) for c in layer] for layer in counts]


def build_samples(settings, tokenizer) -> dict[str, list[Sample]]:
    """The run's samples: the three splits of every task, the race split (each task's validation samples past
    the first ``validation_samples``: a task's samples of a split are the same first ones whatever the count, so
    the validation split does not change with ``--race``) and the probe subset of the search split."""
    from evolkv.evaluators.tasks import SPLITS, load_tasks

    validation = settings.data.validation_samples or settings.data.samples
    counts = {"search": max(settings.data.pool, settings.data.samples),
              "validation": validation + settings.data.race,
              "heldout": settings.data.heldout_samples or settings.data.samples}
    samples = {split: load_tasks(settings.data.tasks, counts[split], settings.data.length, settings.seed, split, tokenizer)
               for split in SPLITS}
    seen: dict[str, int] = defaultdict(int)
    samples[RACE] = []
    kept = []
    for sample in samples["validation"]:
        seen[sample.task] += 1
        (kept if seen[sample.task] <= validation else samples[RACE]).append(sample)
    samples["validation"] = kept
    search = samples["search"]
    count = min(settings.space.probe_samples, len(search))
    samples[PROBE] = [search[i * len(search) // count] for i in range(count)]
    return samples


def make_local(settings, shard: tuple[int, int] | None = None):
    """Load the model of ``settings`` and build a local executor (over shard ``(rank, world)`` of every
    split's samples when given)."""
    import torch

    from evolkv import models
    from evolkv.config import ScorerSpec

    settings.compute.resolve_auto()
    started = time.perf_counter()
    loaded = models.load(settings.compute.model, settings.compute.device, settings.compute.dtype)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(settings.seed)
    samples = build_samples(settings, loaded.tokenizer)
    pool = samples["search"]
    rank, world = shard or (0, 1)
    samples = {split: shard_of(items, rank, world) for split, items in samples.items()}
    from evolkv.search.baselines import scorer_choices, scorers_of
    from evolkv.search.space import knob_variants

    run_scorer = ScorerSpec(settings.space.scorer, window=settings.space.window)
    scorers = scorers_of([*settings.scoring.baselines, "streaming"], loaded.spec, run_scorer,
                         (*scorer_choices(settings), *knob_variants(run_scorer, settings.space.knobs)))
    evaluator = Evaluator(loaded.model, loaded.tokenizer, loaded.spec, scorers, settings.data.query_aware,
                          settings.scoring.batch_size, settings.scoring.objective)
    evaluator.check_lengths([sample for split, items in samples.items() if split != PROBE for sample in items])
    executor = LocalExecutor(evaluator, samples, settings.data.samples, settings.seed, pool, rank, world)
    executor.load_seconds = load_seconds
    return loaded, executor
