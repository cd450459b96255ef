"""The optimiser's view of a config: a real vector that always decodes to a config spending the budget.

Genes are log-weights: ``L`` per-layer genes (and ``L * H_kv`` per-head genes with ``per_head``). Layer
budgets are the softmax of the layer genes times the total, water-filled between a floor and a cap (all
of the context for a fraction; the context length, when known, for tokens per head), so every decoded
config spends exactly the target (its mean layer budget equals the run's budget) and every gene vector
within the bounds decodes to a valid config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from evolkv.allocation import waterfill
from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec

BOUND = 3.0


@dataclass
class BudgetSpace:
    model: ModelSpec
    budget: Budget
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    per_head: bool = False
    floor: float = 0.1  # a layer keeps at least this share of the mean budget
    context: int | None = None  # tokens budgets: no layer asks for more tokens per head than this

    @property
    def cap(self) -> float:
        """The most a layer may keep, in the budget's unit (never below the mean, so the total fits)."""
        if self.budget.kind == "fraction":
            return 1.0
        return max(float(self.context), self.budget.value) if self.context else float("inf")

    @property
    def n_var(self) -> int:
        return self.model.num_layers * (1 + (self.model.num_kv_heads if self.per_head else 0))

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.n_var, -BOUND), np.full(self.n_var, BOUND)

    def layer_budgets(self, genes: np.ndarray) -> list[float]:
        layers, mean = self.model.num_layers, self.budget.value
        weights = torch.softmax(torch.tensor(genes[:layers], dtype=torch.float64), dim=0)
        cap, floor = self.cap, self.floor * mean
        room = torch.full((layers,), cap - floor, dtype=torch.float64)
        extra = waterfill((mean - floor) * layers, weights, room)
        return [min(max(floor + float(x), floor), cap) for x in extra]

    def decode(self, x: np.ndarray) -> KVConfig:
        x = np.clip(np.asarray(x, dtype=np.float64), -BOUND, BOUND)
        layers, heads = self.model.num_layers, self.model.num_kv_heads
        if self.per_head:
            shares = torch.softmax(torch.tensor(x[layers:].reshape(layers, heads)), dim=1).tolist()
        else:
            shares = [[1.0 / heads] * heads] * layers
        specs = tuple(LayerSpec(budget=b, heads=tuple(s)) for b, s in zip(self.layer_budgets(x), shares))
        return KVConfig(self.model, self.budget, self.scorer, specs)

    def encode(self, cfg: KVConfig) -> np.ndarray:
        """Genes that decode to (about) ``cfg``; used to seed the search at a baseline."""
        floor = self.floor * self.budget.value
        extra = np.array([max(layer.budget - floor, 1e-9) for layer in cfg.layers])
        genes = [np.log(extra / extra.sum()) - np.log(extra / extra.sum()).mean()]
        if self.per_head:
            for layer in cfg.layers:
                shares = np.array(layer.heads or [1.0 / self.model.num_kv_heads] * self.model.num_kv_heads)
                logs = np.log(np.maximum(shares, 1e-9))
                genes.append(logs - logs.mean())
        return np.clip(np.concatenate(genes), -BOUND, BOUND)


@dataclass
class SubSpace:
    """A group of layers of ``space`` searched while the others stay at ``incumbent`` (EvolKV's schedule)."""

    space: BudgetSpace
    layers: list[int]
    incumbent: np.ndarray

    def _indices(self) -> np.ndarray:
        space, heads = self.space, self.space.model.num_kv_heads
        idx = list(self.layers)
        if space.per_head:
            for layer in self.layers:
                start = space.model.num_layers + layer * heads
                idx += list(range(start, start + heads))
        return np.array(idx)

    @property
    def n_var(self) -> int:
        return len(self._indices())

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.n_var, -BOUND), np.full(self.n_var, BOUND)

    def full(self, x: np.ndarray) -> np.ndarray:
        genes = self.incumbent.copy()
        genes[self._indices()] = x
        return genes

    def decode(self, x: np.ndarray) -> KVConfig:
        return self.space.decode(self.full(x))

    def encode(self, cfg: KVConfig) -> np.ndarray:
        return self.space.encode(cfg)[self._indices()]
