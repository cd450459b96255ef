"""Precision pairs: KVTuner's pruning and clustering, and the space the optimiser sees."""

import numpy as np
import pytest

from evolkv.config import Budget, ModelSpec, uniform_config
from evolkv.search.optimizers import make_optimizer
from evolkv.errors import ConfigError
from evolkv.search.precision import PAIRS, PrecisionSpace, cluster, parse_evicted, parse_residuals, prune, sensitivity_configs

SPEC = ModelSpec("toy", "llama", 4, 4, 2, 32, ["full_attention"] * 4)
BASE = uniform_config(SPEC, Budget.parse("100%"))


def test_prune_keeps_exactly_the_non_dominated_pairs():
    bits = np.array([k + v for k, v in PAIRS], dtype=float)
    errors = np.array([1.0 / bits, 1.0 / bits + np.arange(len(PAIRS)) * 1e-3])
    errors[1, PAIRS.index((8, 4))] = 5.0  # dominated by cheaper, better pairs
    kept = prune(errors)
    for row, pairs in zip(errors, kept):
        for pair in pairs:
            j = PAIRS.index(pair)
            assert not ((row <= row[j]) & (bits <= bits[j]) & ((row < row[j]) | (bits < bits[j]))).any()
    assert (8, 4) not in kept[1] and (16, 16) in kept[0]


def test_cluster_groups_layers_with_similar_profiles():
    sensitive, robust = np.full(len(PAIRS), 1.0), np.full(len(PAIRS), 1e-4)
    errors = np.stack([sensitive, robust, sensitive * 1.1, robust * 0.9])
    assert sorted(cluster(errors, 2)) == [[0, 2], [1, 3]]
    assert cluster(errors, 9) and sum(len(g) for g in cluster(errors, 9)) == 4


def test_sensitivity_configs_quantize_one_layer_each():
    probes = sensitivity_configs(BASE, group_size=32, residual=0)
    assert len(probes) == SPEC.num_layers * (len(PAIRS) - 1)
    for layer, (k, v), cfg in probes:
        quantized = [i for i, spec in enumerate(cfg.layers) if spec.quantized]
        assert quantized == [layer] and (cfg.layers[layer].k_bits, cfg.layers[layer].v_bits) == (k, v)


def test_space_decodes_every_gene_to_an_allowed_pair_and_encodes_back():
    groups, choices = [[0, 3], [1], [2]], [[(8, 8), (4, 4)], [(4, 2), (2, 2), (16, 16)], [(2, 4)]]
    space = PrecisionSpace(BASE, groups, choices, group_size=32)
    lower, upper = space.bounds
    for x in np.random.default_rng(0).uniform(lower, upper, (20, space.n_var)):
        cfg = space.decode(x)
        for g, layers in enumerate(groups):
            assert all((cfg.layers[i].k_bits, cfg.layers[i].v_bits) in choices[g] for i in layers)
        assert space.decode(space.encode(cfg)) == cfg
    before, after = space.size()
    assert before == pytest.approx(4 * np.log10(16)) and after == pytest.approx(np.log10(2 * 3 * 1))


def test_per_head_genes_give_each_kv_head_of_a_group_its_own_pair():
    """``--per-head``: a pair gene per group and KV head; the layers of a group share the per-head pairs."""
    groups, choices = [[0, 3], [1], [2]], [[(8, 8), (4, 4)], [(4, 2), (2, 2), (16, 16)], [(2, 4)]]
    space = PrecisionSpace(BASE, groups, choices, group_size=32, residuals=(0, 4), heads=SPEC.num_kv_heads)
    assert space.n_var == 3 * SPEC.num_kv_heads + 3
    mixed = 0
    for x in np.random.default_rng(0).uniform(*space.bounds, (30, space.n_var)):
        cfg = space.decode(x)
        for g, layers in enumerate(groups):
            pairs = {cfg.layers[i].head_pairs(SPEC.num_kv_heads) for i in layers}
            assert len(pairs) == 1 and set(next(iter(pairs))) <= set(choices[g])
        mixed += any(layer.head_bits is not None for layer in cfg.layers)
        assert space.decode(space.encode(cfg)) == cfg
    assert mixed  # heads of one layer do differ
    before, after = space.size()
    assert after == pytest.approx(2 * np.log10(2 * 3 * 1) + 3 * np.log10(2))


def test_residual_genes_pick_a_window_per_group():
    groups, choices = [[0, 3], [1], [2]], [[(8, 8), (4, 4)], [(4, 2), (16, 16)], [(2, 4)]]
    space = PrecisionSpace(BASE, groups, choices, group_size=32, residuals=(0, 4, 16))
    assert space.n_var == 6
    seen = set()
    for x in np.random.default_rng(1).uniform(*space.bounds, (30, space.n_var)):
        cfg = space.decode(x)
        for layers in groups:
            windows = {cfg.layers[i].residual for i in layers if cfg.layers[i].quantized}
            assert len(windows) <= 1 and windows <= {0, 4, 16}
            seen |= windows
        assert space.decode(space.encode(cfg)) == cfg
    assert seen == {0, 4, 16}
    before, after = space.size()
    assert after == pytest.approx(np.log10(2 * 2 * 1) + 3 * np.log10(3))


def test_evicted_tier_genes_pick_drop_or_low_precision_per_group():
    groups, choices = [[0, 3], [1, 2]], [[(4, 4)], [(8, 4), (4, 2)]]
    space = PrecisionSpace(BASE, groups, choices, group_size=32, residuals=(0, 4), evicted=(0, 2))
    assert space.n_var == 6
    tiers = set()
    for x in np.random.default_rng(2).uniform(*space.bounds, (30, space.n_var)):
        cfg = space.decode(x)
        for layers in groups:
            assert len({cfg.layers[i].evicted_bits for i in layers}) == 1
        tiers |= {layer.evicted_bits for layer in cfg.layers}
        assert space.decode(space.encode(cfg)) == cfg
    assert tiers == {0, 2}


@pytest.mark.parametrize("text", ["3", "0,16", "x"])
def test_parse_evicted_rejects_bits_outside_the_tiers(text):
    with pytest.raises(ConfigError):
        parse_evicted(text)


@pytest.mark.parametrize("text, expected", [("0,4,16", (0, 4, 16)), ("16", (16,)), (8, (8,)), ([4, 0, 4], (0, 4))])
def test_parse_residuals(text, expected):
    assert parse_residuals(text) == expected


@pytest.mark.parametrize("text", ["a,b", "-1", "", "4,-2"])
def test_parse_residuals_rejects_bad_input(text):
    with pytest.raises(ConfigError):
        parse_residuals(text)


@pytest.mark.parametrize("name", ["nsga2", "optuna-nsga2", "optuna-tpe"])
def test_first_generation_starts_with_every_seed(name):
    seeds = np.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    opt = make_optimizer(name, 3, np.zeros(3), np.ones(3), population=6, seed=0, x0=seeds, n_obj=2)
    X = opt.ask()
    assert np.allclose(X[:2], seeds)
