"""Executors run evaluations for the search loop.

``LocalExecutor`` scores in-process on one device; ``evolkv.ray_executor.RayExecutor`` spreads the samples
over Ray actors. Both see the same three splits: ``search``, ``heldout`` and ``probe`` (a few search samples
spread over the tasks, for cheap passes such as the precision sensitivity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from evolkv.config import KVConfig
from evolkv.evaluators.evaluator import Evaluator, Prepared, Score
from evolkv.evaluators.tasks import Sample

PROBE = "probe"


def shard_bounds(count: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) blocks of ``count`` items over ``shards`` workers (sizes differ by <= 1)."""
    base, extra = divmod(count, shards)
    bounds, start = [], 0
    for i in range(shards):
        end = start + base + (i < extra)
        bounds.append((start, end))
        start = end
    return bounds


class LocalExecutor:
    """Prefills each split's samples once (on first use) and scores populations on them."""

    def __init__(self, evaluator: Evaluator, samples: dict[str, list[Sample]]) -> None:
        self.evaluator = evaluator
        self.samples = samples
        self.worker = f"local:{evaluator.device}"
        self._prepared: dict[str, list[Prepared]] = {}
        self.load_seconds: float | None = None  # set by make_local: the model's load, a stage of the run

    def prepare(self, split: str, progress: Callable[[], None] | None = None) -> None:
        if split not in self._prepared:
            self._prepared[split] = self.evaluator.prepare(self.samples[split], progress)

    def prepared(self, split: str) -> list[Prepared]:
        self.prepare(split)
        return self._prepared[split]

    def split_size(self, split: str) -> int:
        return len(self.samples[split])

    def evaluate(self, configs: Sequence[KVConfig], split: str,
                 progress: Callable[[int], None] | None = None) -> list[Score]:
        return self.evaluator.score(configs, self.prepared(split), progress)

    def exact_match(self, configs: Sequence[KVConfig], split: str,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        return self.evaluator.exact_match(configs, self.prepared(split), progress)


def build_samples(settings, tokenizer) -> dict[str, list[Sample]]:
    """The run's samples: both splits of every task, and the probe subset of the search split."""
    from evolkv.evaluators.tasks import SPLITS, load_tasks

    samples = {split: load_tasks(settings.tasks, settings.samples, settings.length, settings.seed, split,
                                 tokenizer) for split in SPLITS}
    search = samples["search"]
    count = min(getattr(settings, "probe_samples", 4), len(search))
    samples[PROBE] = [search[i * len(search) // count] for i in range(count)]
    return samples


def make_local(settings, shard: tuple[int, int] | None = None):
    """Load the model of ``settings`` and build a local executor (over shard ``(rank, world)`` of every
    split's samples when given)."""
    import torch

    from evolkv import models
    from evolkv.config import ScorerSpec

    started = time.perf_counter()
    loaded = models.load(settings.model, settings.device, settings.dtype)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(settings.seed)
    samples = build_samples(settings, loaded.tokenizer)
    if shard is not None:
        rank, world = shard
        samples = {split: items[slice(*shard_bounds(len(items), world)[rank])] for split, items in samples.items()}
    scorers = [ScorerSpec(settings.scorer, window=settings.window), ScorerSpec("streaming", settings.window, 1)]
    evaluator = Evaluator(loaded.model, loaded.tokenizer, loaded.spec, scorers, settings.query_aware,
                          settings.batch_size)
    executor = LocalExecutor(evaluator, samples)
    executor.load_seconds = load_seconds
    return loaded, executor
