"""The parts of a search that vary by mode, behind one small interface; ``evolkv.search.loop`` runs them all.

A strategy owns its baselines, its space and optimisers (``blocks``), what the optimiser is told for a scored
population (``told``), what it keeps of it (``observe``), the progress figure (``best``) and how the winner
is chosen (``finish``, which returns an ``Outcome`` for the loop to store). Token search
(``search.tokens``: EvolKV, PyramidKV/AdaKV baselines) and front search (``search.fronts``: KVTuner-style
precisions, joint budgets) are the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from evolkv.config import Budget, KVConfig, ModelSpec, ScorerSpec
from evolkv.evaluators.evaluator import Score
from evolkv.settings import SearchSettings


@dataclass
class Outcome:
    """What a finished strategy hands the loop to store: the winner (None: the run failed), its objective on the
    search split, its held-out score, and for a front search every front point as (config, loss, bits, held-out
    loss, held-out metrics, is the winner)."""

    winner: KVConfig | None = None
    objective: float | None = None
    heldout: Score | None = None
    front: list[tuple[KVConfig, float, float, float | None, dict, bool]] | None = None


class Strategy:
    """What one search mode decides; the loop does the asking, evaluating, telling and persisting (a strategy
    never writes the store: it returns what the loop stores)."""

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

    def finish(self, job) -> Outcome:
        """Choose the winner and score it beside the baselines; the loop stores what this returns."""
        raise NotImplementedError

    def provenance(self, job, cfg: KVConfig, objective: float, **extra: Any) -> KVConfig:
        settings = self.settings
        return cfg.with_provenance(run_id=job.run_id, label="winner", model=self.spec.name, search_objective=objective,
                                   tasks=settings.data.tasks, samples=settings.data.samples, length=settings.data.length,
                                   seed=settings.seed, optimizer=settings.search.optimizer, query_aware=settings.data.query_aware,
                                   versions=_versions(), **extra)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import evolkv

    return {"evolkv": evolkv.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
