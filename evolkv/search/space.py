"""The optimiser's view of a config: a real vector that always decodes to a config spending the budget.

Genes are log-weights: ``L`` per-layer genes (and ``L * H_kv`` per-head genes with ``per_head``), then, with
two or more scorer ``choices`` (``--scorers``), ``L`` categorical genes: [-BOUND, BOUND] is cut into slices
``SLICE`` wide that name the choices in turn, so a step of one slice from anywhere reaches another scorer (the
optimiser's first steps are ~0.3 wide; halves of the range would leave a layer's first scorer out of reach).
Layer
budgets are the softmax of the layer genes times the total, water-filled between a floor and a cap (all
of the context for a fraction; the context length, when known, for tokens per head), so every decoded
config spends exactly the target (its mean layer budget equals the run's budget) and every gene vector
within the bounds decodes to a valid config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from evolkv.allocation import waterfill
from evolkv.config import ALLOCATIONS, Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec

BOUND = 3.0
SLICE = 0.5  # width of a scorer gene's slice (see the module docstring)
SLICES = int(2 * BOUND / SLICE)


def head_splits(genes: np.ndarray) -> list[tuple[float, ...]]:
    """Each layer's split over its KV heads from its genes ([L, H_kv], a softmax per layer)."""
    return [tuple(row) for row in torch.softmax(torch.tensor(genes), dim=1).tolist()]


def head_genes(cfg: KVConfig) -> np.ndarray:
    """Genes that decode (``head_splits``) to ``cfg``'s splits over the KV heads, layer after layer (an even split
    where a layer has none)."""
    heads = cfg.model.num_kv_heads
    genes = []
    for layer in cfg.layers:
        logs = np.log(np.maximum(np.array(layer.heads or [1.0 / heads] * heads), 1e-9))
        genes.append(logs - logs.mean())
    return np.concatenate(genes)


@dataclass
class BudgetSpace:
    model: ModelSpec
    budget: Budget
    scorer: ScorerSpec = field(default_factory=ScorerSpec)
    per_head: bool = False
    floor: float = 0.025  # a layer keeps at least this share of the mean budget (PyramidKV's top layer, a
    # twentieth of the mean, is a point of the space)
    context: int | None = None  # tokens budgets: no layer asks for more tokens per head than this
    choices: tuple[ScorerSpec, ...] = ()  # --scorers: a scorer gene per layer when there are two or more

    @property
    def cap(self) -> float:
        """The most a layer may keep, in the budget's unit (never below the mean, so the total fits)."""
        if self.budget.kind == "fraction":
            return 1.0
        return max(float(self.context), self.budget.value) if self.context else float("inf")

    @property
    def budget_vars(self) -> int:
        """Genes before the scorer genes: the layers' and (per head) the heads' log-weights."""
        return self.model.num_layers * (1 + (self.model.num_kv_heads if self.per_head else 0))

    @property
    def n_var(self) -> int:
        return self.budget_vars + (self.model.num_layers if len(self.choices) > 1 else 0)

    def layer_scorers(self, genes: np.ndarray) -> list[ScorerSpec | None]:
        """Each layer's own scorer from its gene (None where that is the run's scorer, or with no choices)."""
        if len(self.choices) < 2:
            return [None] * self.model.num_layers
        genes = genes[self.budget_vars:self.budget_vars + self.model.num_layers]
        slices = np.minimum(((genes + BOUND) / SLICE).astype(int), SLICES - 1)
        return [None if self.choices[i] == self.scorer else self.choices[i] for i in slices % len(self.choices)]

    def scorer_gene(self, choice: int) -> float:
        """The gene nearest the middle of the range that picks ``choices[choice]``: the middle of its slice."""
        best = min((k for k in range(SLICES) if k % len(self.choices) == choice),
                   key=lambda k: abs(-BOUND + (k + 0.5) * SLICE))
        return -BOUND + (best + 0.5) * SLICE

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
            shares = head_splits(x[layers:self.budget_vars].reshape(layers, heads))
        else:
            shares = [[1.0 / heads] * heads] * layers
        specs = tuple(LayerSpec(budget=b, heads=tuple(s), scorer=own)
                      for b, s, own in zip(self.layer_budgets(x), shares, self.layer_scorers(x)))
        return KVConfig(self.model, self.budget, self.scorer, specs)

    def encode(self, cfg: KVConfig) -> np.ndarray:
        """Genes that decode to (about) ``cfg``; used to seed the search at a baseline."""
        floor = self.floor * self.budget.value
        extra = np.array([max(layer.budget - floor, 1e-9) for layer in cfg.layers])
        logs = np.log(extra / extra.sum())
        genes = [logs - (logs.max() + logs.min()) / 2]  # centred on the range (softmax ignores a shift): a
        # spread of up to 2 * BOUND fits, PyramidKV's 77x between its bottom and top layer among them
        if self.per_head:
            genes.append(head_genes(cfg))
        if len(self.choices) > 1:  # each layer's scorer's slice nearest the middle (the run's scorer if not a choice)
            keys = [c.key for c in self.choices]
            picks = [keys.index(cfg.scorer_of(i).key) if cfg.scorer_of(i).key in keys else 0
                     for i in range(self.model.num_layers)]
            genes.append(np.array([self.scorer_gene(pick) for pick in picks]))
        return np.clip(np.concatenate(genes), -BOUND, BOUND)


@dataclass
class SubSpace:
    """A group of layers of ``space`` searched while the others stay at ``incumbent`` (EvolKV's schedule);
    with ``head_shares=False``, only the group's layer genes (and scorer genes), each layer's split over its KV heads
    held at the incumbent's (the per-layer first stage of a per-head search); with ``layer_genes=False``, only
    the split over the heads, each layer's budget (and scorer) held (the second stage)."""

    space: BudgetSpace
    layers: list[int]
    incumbent: np.ndarray
    head_shares: bool = True  # whether the group's per-head share genes are searched too
    layer_genes: bool = True  # whether the group's layer budget (and scorer) genes are searched

    def _indices(self) -> np.ndarray:
        space, heads = self.space, self.space.model.num_kv_heads
        idx = list(self.layers) if self.layer_genes else []
        if space.per_head and self.head_shares:
            for layer in self.layers:
                start = space.model.num_layers + layer * heads
                idx += list(range(start, start + heads))
        if space.n_var > space.budget_vars and self.layer_genes:  # the group's scorer genes
            idx += [space.budget_vars + layer for layer in self.layers]
        return np.array(idx, dtype=int)

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


RULES = ("static", "adakv", *ALLOCATIONS)
KNOBS = ((32, None), (None, 1), (32, 1), (16, 7))  # (window, pooling kernel) in the order --knobs takes them;
# None keeps the scorer's own: SnapKV's paper observes 32 queries and pools with a kernel of 7


def knob_variants(scorer: ScorerSpec, count: int) -> list[ScorerSpec]:
    """The first ``count`` of ``scorer`` at other knobs (its observation window, its pooling kernel): each ranks
    the tokens its own way, so each is another arm's scorer (``--knobs``)."""
    variants = []
    for window, kernel in KNOBS:
        variant = dataclasses.replace(scorer, window=window or scorer.window, kernel=kernel or scorer.kernel)
        if variant != scorer and variant not in variants:
            variants.append(variant)
    return variants[:count]


@dataclass(frozen=True)
class Arm:
    """The discrete part of a policy: the scorer that ranks the tokens and the rule that spends the budget.
    ``static``: each layer's budget as searched, split evenly over its KV heads (or as searched, per head);
    ``adakv``: each layer's budget as searched, split over its heads by score per prompt; an allocator
    (``evolkv.allocators``): the whole budget spent per prompt, the searched layer budgets acting as priors
    (``KVConfig.prior``) with a searched ``static`` share kept first. Every baseline but ``full`` is the point
    of its arm where the layer genes are equal and the static share is 0 (PyramidKV: its layer budgets)."""

    scorer: ScorerSpec
    rule: str

    @property
    def name(self) -> str:
        return f"{self.rule}:{self.scorer.name}"

    @property
    def per_prompt(self) -> bool:
        return self.rule in ALLOCATIONS

    @property
    def searchable(self) -> bool:
        """Whether the genes move this arm's kept sets: PrefixKV compares each head's own share of its importance,
        which a prior does not change, so below a static share every candidate of its arm is the method itself
        (its baseline stands for it)."""
        return self.rule != "prefixkv"

    @classmethod
    def of(cls, cfg: KVConfig) -> Arm | None:
        """The arm ``cfg`` is a point of (None for a config with a scorer per layer or a precision)."""
        if any(layer.scorer is not None or layer.quantized for layer in cfg.layers):
            return None
        rule = cfg.allocation or ("adakv" if any(layer.heads is None for layer in cfg.layers) else "static")
        return cls(cfg.scorer, rule)


def arm_names(arms: list[Arm]) -> list[str]:
    """Each arm's name, with its scorer's knobs where two arms share a name (``--knobs``)."""
    names = [arm.name for arm in arms]
    return [f"{arm.rule}:{arm.scorer.key}" if names.count(arm.name) > 1 else arm.name for arm in arms]


@dataclass
class PolicySpace:
    """One arm's genes: ``L`` layer log-weights (the layers' budgets, as ``BudgetSpace`` decodes them) and, for a
    per-prompt rule, a gene for the static share (``max(0, x) / BOUND``: from 0 at the middle of its range, so the
    start is the method itself, to all of the plan at the top)."""

    space: BudgetSpace
    arm: Arm

    @property
    def n_var(self) -> int:
        return self.space.model.num_layers + (1 if self.arm.per_prompt else 0)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.n_var, -BOUND), np.full(self.n_var, BOUND)

    def decode(self, x: np.ndarray) -> KVConfig:
        x = np.clip(np.asarray(x, dtype=np.float64), -BOUND, BOUND)
        model, layers = self.space.model, self.space.model.num_layers
        heads = None if self.arm.rule == "adakv" else tuple([1.0 / model.num_kv_heads] * model.num_kv_heads)
        specs = tuple(LayerSpec(budget=b, heads=heads) for b in self.space.layer_budgets(x[:layers]))
        if not self.arm.per_prompt:
            return KVConfig(model, self.space.budget, self.arm.scorer, specs)
        static = float(min(max(x[layers], 0.0), BOUND) / BOUND)
        # equal layer budgets and no static share: the method itself, the very config of its baseline
        prior = static > 0.0 or any(spec.budget != specs[0].budget for spec in specs)
        return KVConfig(model, self.space.budget, self.arm.scorer, specs, allocation=self.arm.rule, prior=prior,
                        static=static)

    def encode(self, cfg: KVConfig) -> np.ndarray:
        layers = self.space.model.num_layers
        flat = BudgetSpace(self.space.model, self.space.budget, floor=self.space.floor, context=self.space.context)
        genes = flat.encode(dataclasses.replace(cfg, layers=tuple(dataclasses.replace(layer, scorer=None)
                                                                  for layer in cfg.layers)))[:layers]
        if self.arm.per_prompt:
            genes = np.append(genes, cfg.static * BOUND)
        return np.clip(genes, -BOUND, BOUND)


@dataclass
class HeadPriors:
    """A per-prompt arm's stage per head: each layer's split of its priors over its KV heads (``L x H_kv`` genes,
    a softmax per layer), the layers' priors and the static share held at ``incumbent`` (the arm's best). Equal
    genes in a layer split it evenly, to the bit; where every split is even, the incumbent is the config."""

    incumbent: KVConfig

    @property
    def n_var(self) -> int:
        return self.incumbent.model.num_layers * self.incumbent.model.num_kv_heads

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.n_var, -BOUND), np.full(self.n_var, BOUND)

    def decode(self, x: np.ndarray) -> KVConfig:
        cfg, heads = self.incumbent, self.incumbent.model.num_kv_heads
        genes = np.clip(np.asarray(x, dtype=np.float64), -BOUND, BOUND).reshape(-1, heads)
        even = tuple([1.0 / heads] * heads)
        splits = [even if np.ptp(row) == 0 else split for row, split in zip(genes, head_splits(genes))]
        layers = tuple(dataclasses.replace(layer, heads=split) for layer, split in zip(cfg.layers, splits))
        prior = cfg.static > 0.0 or any(layer.budget != layers[0].budget or layer.heads != even for layer in layers)
        return dataclasses.replace(cfg, layers=layers, prior=prior, provenance={})

    def encode(self, cfg: KVConfig) -> np.ndarray:
        return np.clip(head_genes(cfg), -BOUND, BOUND)


@dataclass
class ArmChoice:
    """Every arm's genes in one vector (``--arm-search tpe``): gene 0 picks the arm (``floor``: ``[0, 1)`` the
    first, ``[1, 2)`` the second, ...), then each arm's view's genes in turn; a candidate decodes through the
    picked arm's view alone, so the genes of the arms not picked do not matter (``ArmTPE`` leaves them at their
    starts)."""

    arms: list[Arm]
    views: list  # each arm's view: ``PolicySpace``, or the home arm's ``BudgetSpace`` / ``SubSpace``

    @property
    def offsets(self) -> list[int]:
        return [1 + sum(view.n_var for view in self.views[:i]) for i in range(len(self.views))]

    @property
    def n_var(self) -> int:
        return 1 + sum(view.n_var for view in self.views)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lower = np.concatenate([[0.0], *(view.bounds[0] for view in self.views)])
        upper = np.concatenate([[len(self.views) - 0.5], *(view.bounds[1] for view in self.views)])
        return lower, upper

    def part(self, x: np.ndarray) -> tuple[int, object, np.ndarray]:
        """The picked arm's index, its view and its genes in ``x``."""
        index = int(np.clip(np.floor(x[0]), 0, len(self.views) - 1))
        first = self.offsets[index]
        return index, self.views[index], np.asarray(x[first:first + self.views[index].n_var])

    def decode(self, x: np.ndarray) -> KVConfig:
        _, view, genes = self.part(x)
        return view.decode(genes)

    def encode(self, cfg: KVConfig, index: int) -> np.ndarray:
        """``cfg`` as a point of arm ``index`` (the other arms' genes zero: nothing reads them)."""
        x = np.zeros(self.n_var)
        first = self.offsets[index]
        x[0] = index + 0.5
        x[first:first + self.views[index].n_var] = self.views[index].encode(cfg)
        return x

    @property
    def names(self) -> list[str]:
        return arm_names(self.arms)

    def segments(self) -> list[tuple[str, int, int]]:
        """(name, first gene, gene count) of each arm (``ArmTPE``)."""
        return [(name, first, view.n_var) for name, first, view in zip(self.names, self.offsets, self.views)]
