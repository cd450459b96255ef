"""Executors run evaluations for the search loop. ``LocalExecutor`` scores in-process on one device."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from evolkv.config import KVConfig
from evolkv.evaluators.evaluator import Evaluator, Prepared, Score
from evolkv.evaluators.tasks import Sample

PROBE = "probe"


class LocalExecutor:
    """Prefills each split's samples once (on first use) and scores populations on them."""

    def __init__(self, evaluator: Evaluator, samples: dict[str, list[Sample]], probe_samples: int = 4) -> None:
        self.evaluator = evaluator
        self.samples = samples
        self.probe_samples = probe_samples  # size of the "probe" split: search samples spread over the tasks
        self.worker = f"local:{evaluator.device}"
        self._prepared: dict[str, list[Prepared]] = {}

    def prepare(self, split: str, progress: Callable[[], None] | None = None) -> None:
        if split == PROBE:  # a subset of the search split, for cheap passes (precision sensitivity)
            self.prepare("search", progress)
            search = self._prepared["search"]
            count = min(self.probe_samples, len(search))
            self._prepared[PROBE] = [search[i * len(search) // count] for i in range(count)]
        elif split not in self._prepared:
            self._prepared[split] = self.evaluator.prepare(self.samples[split], progress)

    def split_size(self, split: str) -> int:
        return min(self.probe_samples, len(self.samples["search"])) if split == PROBE else len(self.samples[split])

    def evaluate(self, configs: Sequence[KVConfig], split: str,
                 progress: Callable[[int], None] | None = None) -> list[Score]:
        self.prepare(split)
        return self.evaluator.score(configs, self._prepared[split], progress)

    def exact_match(self, configs: Sequence[KVConfig], split: str) -> list[dict[str, float]]:
        self.prepare(split)
        return self.evaluator.exact_match(configs, self._prepared[split])


def make_executor(settings, reporter=None):
    """Load the model of ``settings`` and build a local executor over its tasks' two splits."""
    import torch

    from evolkv import models
    from evolkv.config import ScorerSpec
    from evolkv.evaluators.tasks import SPLITS, load_tasks

    loaded = models.load(settings.model, settings.device, settings.dtype)
    torch.manual_seed(settings.seed)
    samples = {split: load_tasks(settings.tasks, settings.samples, settings.length, settings.seed, split,
                                 loaded.tokenizer) for split in SPLITS}
    scorers = [ScorerSpec(settings.scorer, window=settings.window), ScorerSpec("streaming", settings.window, 1)]
    evaluator = Evaluator(loaded.model, loaded.tokenizer, loaded.spec, scorers, settings.query_aware,
                          settings.batch_size)
    return loaded, LocalExecutor(evaluator, samples, getattr(settings, "probe_samples", 4))
