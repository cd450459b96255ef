"""Searched budgets as the curve stock kvpress's ``LUKVPress`` reads: a float32 array ``[99, layers, kv_heads]``,
row ``i`` the prune ratio of each layer's KV heads at overall compression ``(i + 1)%`` (kvpress 0.5.5,
``kvpress/presses/lukv_press.py``: it takes row ``round(compression_ratio * 100) - 1``). Written with numpy
alone, so a kvpress user loads it without evolkv:

    press = LUKVPress(SnapKVPress(window_size=8), compression_ratio=0.9, sink=0, window=0)
    press._budget_curves = np.load("curve.npy")      # set on the press: kvpress then downloads nothing

A config keeps ``budget * kv_heads * share`` of the context in each head (``plan_tokens``); its prune ratio is one
minus that. Rows at a stored winner's budget are that winner's; rows between two stored budgets are interpolated
linearly, head by head (so the mean keep fraction is the row's budget); rows past the smallest or largest stored
budget scale the nearest winner's shape to the row's budget, clamped to [0, 1]. kvpress rounds each layer's
counts to whole tokens on its own, evolkv over all layers at once, so a head may keep one token more or fewer.
"""

from __future__ import annotations

import numpy as np

from evolkv.config import KVConfig
from evolkv.errors import ConfigError

ROWS = 99  # kvpress's compression ratios 1%..99%


def check(cfg: KVConfig) -> None:
    """Refuse a config a budget curve cannot carry: static per-layer, per-head shares of the context around one
    scorer is all ``LUKVPress`` applies."""
    label = cfg.provenance.get("run_id") or cfg.label
    if cfg.budget.kind != "fraction":
        raise ConfigError(f"{label}: a budget curve holds shares of the context; this run's budget is {cfg.budget} "
                          "tokens per head: search with a percentage (--budget 10%)")
    if cfg.allocation is not None:
        raise ConfigError(f"{label}: its allocation ({cfg.allocation}) is made per prompt, which a static budget "
                          "curve cannot hold")
    for i, layer in enumerate(cfg.layers):
        if layer.heads is None:
            raise ConfigError(f"{label}: layer {i} splits its tokens over the heads per prompt (AdaKV), which a "
                              "static budget curve cannot hold")
        if layer.quantized or layer.scorer is not None:
            raise ConfigError(f"{label}: layer {i} has its own precision or scorer; LUKVPress applies token budgets "
                              "around one scorer press only")


def keep_fractions(cfg: KVConfig) -> np.ndarray:
    """[layers, kv_heads] share of the context each head keeps (before clamping to [0, 1])."""
    heads = cfg.model.num_kv_heads
    return np.array([[layer.budget * heads * share for share in layer.heads] for layer in cfg.layers])


def curve(configs: list[KVConfig]) -> np.ndarray:
    """The ``[99, layers, kv_heads]`` float32 prune-ratio curve of stored winners (one per budget, any order)."""
    if not configs:
        raise ConfigError("no winner to make a budget curve of")
    for cfg in configs:
        check(cfg)
        if cfg.model.fingerprint != configs[0].model.fingerprint:
            raise ConfigError("the winners of one curve must be for one model architecture")
    points = sorted((cfg.budget.value, keep_fractions(cfg)) for cfg in configs)
    budgets = np.array([b for b, _ in points])
    keeps = np.stack([k for _, k in points])  # [n, L, H]
    rows = []
    for i in range(ROWS):
        target = 1.0 - (i + 1) / 100  # keep fraction at compression (i + 1)%
        if target <= budgets[0]:
            keep = keeps[0] * target / budgets[0]
        elif target >= budgets[-1]:
            keep = keeps[-1] * target / budgets[-1]
        else:
            j = int(np.searchsorted(budgets, target))
            low, high = budgets[j - 1], budgets[j]
            weight = (target - low) / (high - low)
            keep = keeps[j - 1] + (keeps[j] - keeps[j - 1]) * weight
        rows.append(1.0 - np.clip(keep, 0.0, 1.0))
    return np.stack(rows).astype(np.float32)


def save(path: str, configs: list[KVConfig]) -> np.ndarray:
    """Write ``curve(configs)`` as a plain ``.npy`` (no pickle); returns it."""
    data = curve(configs)
    with open(path, "wb") as handle:
        np.save(handle, data, allow_pickle=False)
    return data
