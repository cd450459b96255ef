"""Per-layer key/value precision pairs, and the KVTuner-style reduction of their search space.

1. ``sensitivity``: quantize one layer at a time to each pair (the other layers at full precision) and
   measure the change of the model's output (KL to the full cache): an error matrix [layers, pairs].
2. ``prune``: per layer, keep only the pairs no other pair beats on both error and bits.
3. ``cluster``: group layers with similar (log) error profiles; a group shares one pair, chosen among
   the union of its members' surviving pairs.

``PrecisionSpace`` is what the optimiser sees: one gene in [0, 1) per group picks its pair (per group and KV
head with ``heads`` > 1, ``--per-head``: GQA heads differ, retrieval heads need more bits); with more than
one residual choice a second gene per group picks how many top-ranked entries stay at full precision (the
attention sinks and heavy hitters: on Gemma 3 270M four of them halve K4V4's KL for 0.08 bits); in joint
mode the token-budget genes of a ``BudgetSpace`` follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from evolkv.config import ALLOWED_BITS, KVConfig
from evolkv.errors import ConfigError

PAIRS: tuple[tuple[int, int], ...] = tuple((k, v) for k in ALLOWED_BITS for v in ALLOWED_BITS)


def parse_residuals(value) -> tuple[int, ...]:
    """Residual-window choices from ``16``, ``[0, 4, 16]`` or ``"0,4,16"`` (sorted, unique, each >= 0)."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        out = sorted({int(str(item).strip()) for item in items})
    except ValueError:
        raise ConfigError(f"residual {value!r} is not a whole number or a comma-separated list of them") from None
    if not out or out[0] < 0:
        raise ConfigError(f"residual {value!r}: every choice must be a whole number >= 0")
    return tuple(out)


def parse_evicted(value) -> tuple[int, ...]:
    """MiKV tier choices from ``"0,2"`` and the like: each 0 (drop evicted tokens) or 8/4/2 bits."""
    from evolkv.config import EVICTED_BITS

    choices = parse_residuals(value)
    if any(bits not in EVICTED_BITS for bits in choices):
        raise ConfigError(f"evicted bits {value!r}: each choice must be one of {EVICTED_BITS} (0 = drop)")
    return choices


def with_precisions(cfg: KVConfig, pairs: list, group_size: int, residual: int | list[int]) -> KVConfig:
    """``cfg`` with layer i stored at ``pairs[i]`` = (k_bits, v_bits), or at one such pair per KV head (a list
    of them), its ``residual`` (one for every layer, or one per layer) top-ranked entries kept at full
    precision."""
    residuals = residual if isinstance(residual, (list, tuple)) else [residual] * len(cfg.layers)
    layers = []
    for layer, pair, r in zip(cfg.layers, pairs, residuals):
        heads = tuple(pair) if isinstance(pair[0], (list, tuple)) else (tuple(pair),)
        quantized = any(k < 16 or v < 16 for k, v in heads)
        layers.append(replace(layer, k_bits=heads[0][0], v_bits=heads[0][1], group_size=group_size,
                              residual=r if quantized else 0, head_bits=heads if len(heads) > 1 else None))
    return replace(cfg, layers=tuple(layers))


def sensitivity_configs(base: KVConfig, group_size: int, residual: int,
                        pairs: tuple[tuple[int, int], ...] = PAIRS) -> list[tuple[int, tuple[int, int], KVConfig]]:
    """(layer, pair, config with only that layer quantized) for every layer and every pair but K16V16."""
    full = [(16, 16)] * len(base.layers)
    out = []
    for layer in range(len(base.layers)):
        for pair in pairs:
            if pair != (16, 16):
                chosen = list(full)
                chosen[layer] = pair
                out.append((layer, pair, with_precisions(base, chosen, group_size, residual).with_provenance(
                    label=f"sensitivity:L{layer}:K{pair[0]}V{pair[1]}")))
    return out


def prune(errors: np.ndarray, pairs: tuple[tuple[int, int], ...] = PAIRS) -> list[list[tuple[int, int]]]:
    """Per layer, the pairs not dominated on (error, k_bits + v_bits). errors: [layers, len(pairs)]."""
    bits = np.array([k + v for k, v in pairs], dtype=float)
    kept = []
    for row in errors:
        layer = []
        for j, pair in enumerate(pairs):
            dominated = ((row <= row[j]) & (bits <= bits[j]) & ((row < row[j]) | (bits < bits[j]))).any()
            if not dominated:
                layer.append(pair)
        kept.append(sorted(layer, key=lambda p: -(p[0] + p[1])))
    return kept


def cluster(errors: np.ndarray, groups: int, seed: int = 0, iterations: int = 50) -> list[list[int]]:
    """k-means on the layers' log-error profiles (deterministic: seeded, initialised at quantiles of the
    mean profile). Returns ``groups`` (or fewer, when layers coincide) lists of layer indices."""
    layers = errors.shape[0]
    groups = max(1, min(groups, layers))
    profile = np.log10(np.maximum(errors, 1e-8))
    order = np.argsort(profile.mean(axis=1), kind="stable")
    centers = profile[order[np.linspace(0, layers - 1, groups).round().astype(int)]]
    assign = np.zeros(layers, dtype=int)
    for _ in range(iterations):
        distance = ((profile[:, None, :] - centers[None]) ** 2).sum(-1)
        new = distance.argmin(axis=1)
        if _ and (new == assign).all():
            break
        assign = new
        for g in range(groups):
            if (assign == g).any():
                centers[g] = profile[assign == g].mean(axis=0)
    return [sorted(np.flatnonzero(assign == g).tolist()) for g in range(groups) if (assign == g).any()]


@dataclass
class PrecisionSpace:
    """Genes in [0, 1): one per layer group picks that group's (k_bits, v_bits) among ``choices[g]``; with
    several ``residuals``, one more per group picks its full-precision window among them; with ``tokens``
    (joint mode) the budget genes of that ``BudgetSpace`` follow."""

    base: KVConfig
    groups: list[list[int]]
    choices: list[list[tuple[int, int]]]
    group_size: int = 128
    residuals: tuple[int, ...] = (0,)
    tokens: object | None = None  # a BudgetSpace in joint mode
    stats: dict = field(default_factory=dict)
    evicted: tuple[int, ...] = (0,)  # joint mode, MiKV: tier precisions for the evicted tokens (0 = drop)
    heads: int = 1  # > 1 (the model's KV heads, ``--per-head``): a pair gene per group and KV head

    def __post_init__(self) -> None:
        self.residuals = parse_residuals(self.residuals)
        self.evicted = tuple(sorted(set(self.evicted)))

    @property
    def n_pair_genes(self) -> int:
        return len(self.groups) * self.heads

    @property
    def n_precision(self) -> int:
        return self.n_pair_genes + len(self.groups) * ((len(self.residuals) > 1) + (len(self.evicted) > 1))

    def _extra_genes(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(residual genes, evicted-tier genes) of ``x``, each [groups] or None when that choice is fixed."""
        at, n = self.n_pair_genes, len(self.groups)
        residual = evicted = None
        if len(self.residuals) > 1:
            residual, at = x[at:at + n], at + n
        if len(self.evicted) > 1:
            evicted = x[at:at + n]
        return residual, evicted

    @property
    def n_var(self) -> int:
        return self.n_precision + (self.tokens.n_var if self.tokens is not None else 0)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = np.zeros(self.n_precision), np.full(self.n_precision, 1.0 - 1e-9)
        if self.tokens is not None:
            t_lower, t_upper = self.tokens.bounds
            lower, upper = np.concatenate([lower, t_lower]), np.concatenate([upper, t_upper])
        return lower, upper

    @staticmethod
    def _pick(gene: float, options: list):
        return options[min(int(np.clip(gene, 0, 1) * len(options)), len(options) - 1)]

    def pairs(self, x: np.ndarray) -> list:
        """Each layer's (k_bits, v_bits), or with ``heads`` > 1 its list of one pair per KV head."""
        chosen: list = [(16, 16)] * len(self.base.layers)
        genes = np.asarray(x[: self.n_pair_genes]).reshape(len(self.groups), self.heads)
        for row, layers, options in zip(genes, self.groups, self.choices):
            picked = [self._pick(gene, options) for gene in row]
            for layer in layers:
                chosen[layer] = picked if self.heads > 1 else picked[0]
        return chosen

    def _per_layer(self, genes: np.ndarray | None, options: tuple[int, ...]) -> list[int]:
        chosen = [options[0]] * len(self.base.layers)
        if genes is not None:
            for gene, layers in zip(genes, self.groups):
                for layer in layers:
                    chosen[layer] = self._pick(gene, list(options))
        return chosen

    def layer_residuals(self, x: np.ndarray) -> list[int]:
        return self._per_layer(self._extra_genes(x)[0], self.residuals)

    def decode(self, x: np.ndarray) -> KVConfig:
        x = np.asarray(x, dtype=float)
        cfg = self.tokens.decode(x[self.n_precision:]) if self.tokens is not None else self.base
        cfg = with_precisions(cfg, self.pairs(x), self.group_size, self.layer_residuals(x))
        tiers = self._per_layer(self._extra_genes(x)[1], self.evicted)
        if any(tiers):
            cfg = replace(cfg, layers=tuple(replace(layer, evicted_bits=e) for layer, e in zip(cfg.layers, tiers)))
        return cfg

    def encode(self, cfg: KVConfig) -> np.ndarray:
        """Genes picking, per group, the allowed pair nearest (in bits) to its first layer's pair (and the
        residual choice nearest to that layer's residual)."""
        genes = []
        for layers, options in zip(self.groups, self.choices):
            layer = cfg.layers[layers[0]]
            for k_bits, v_bits in layer.head_pairs(self.heads)[:self.heads]:
                distance = [abs(k - k_bits) + abs(v - v_bits) for k, v in options]
                genes.append((int(np.argmin(distance)) + 0.5) / len(options))
        for options, field_name in ((self.residuals, "residual"), (self.evicted, "evicted_bits")):
            if len(options) > 1:
                for layers in self.groups:
                    distance = [abs(r - getattr(cfg.layers[layers[0]], field_name)) for r in options]
                    genes.append((int(np.argmin(distance)) + 0.5) / len(options))
        if self.tokens is not None:
            genes = np.concatenate([genes, self.tokens.encode(cfg)])
        return np.asarray(genes, dtype=float)

    def size(self) -> tuple[float, float]:
        """log10 of the number of precision assignments: every pair per layer, and after pruning/clustering."""
        residual = math.log10(len(self.residuals)) + math.log10(len(self.evicted))
        before = len(self.base.layers) * (self.heads * math.log10(len(PAIRS)) + residual)
        after = sum(self.heads * math.log10(len(options)) + residual for options in self.choices)
        return before, after
