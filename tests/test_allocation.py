import pytest
import torch

from evolkv.allocation import adaptive_split, avg_bits, kv_bytes, plan_tokens, round_to_total, waterfill
from evolkv.config import Budget, KVConfig, LayerSpec, ModelSpec, ScorerSpec, uniform_config

SPEC = ModelSpec("toy", "gemma3_text", 4, 4, 2, 16, ["sliding_attention"] * 3 + ["full_attention"], 32)


def test_waterfill_respects_caps_and_total():
    alloc = waterfill(10.0, torch.tensor([1.0, 1.0, 8.0], dtype=torch.float64),
                      torch.tensor([5.0, 5.0, 2.0], dtype=torch.float64))
    assert torch.allclose(alloc, torch.tensor([4.0, 4.0, 2.0], dtype=torch.float64))


def test_round_to_total_is_exact():
    values = torch.tensor([1.4, 2.6, 3.0, 0.5], dtype=torch.float64)
    out = round_to_total(values, 8, torch.full_like(values, 10))
    assert int(out.sum()) == 8 and (out >= values.floor()).all()


def test_plan_spends_the_budget_and_respects_sliding_capacity():
    cfg = uniform_config(SPEC, Budget.parse("10%"))
    caps = [31, 31, 31, 200]
    plan = plan_tokens(cfg, 200, caps)
    assert plan.shape == (4, 2) and int(plan.sum()) == 160  # 10% of 200 tokens * 4 layers * 2 heads
    skewed = KVConfig(SPEC, cfg.budget, ScorerSpec(), tuple(LayerSpec(b, (0.5, 0.5)) for b in (0.3, 0.05, 0.03, 0.02)))
    plan = plan_tokens(skewed, 200, caps)
    assert int(plan.sum()) == 160 and int(plan[0].max()) <= 31  # overflow of layer 0 went elsewhere


def test_adaptive_split_sums_and_floors():
    scores = torch.sort(torch.rand(1, 2, 50), dim=-1, descending=True).values
    scores[0, 0] *= 0.1  # head 1 is far more confident
    counts = adaptive_split(scores, torch.tensor([20]), cap=50, floor=0.2)
    assert int(counts.sum()) == 20 and int(counts.min()) >= 2 and int(counts[0, 1]) > int(counts[0, 0])


def test_kv_bytes_counts_keys_and_values():
    cfg = uniform_config(SPEC, Budget.parse("100%"))
    assert kv_bytes(cfg, 20) == 20 * 4 * 2 * 16 * 2 * 2  # tokens * layers * heads * dim * (K+V) * 2 bytes


def test_avg_bits_of_uniform_precisions():
    full = uniform_config(SPEC, Budget.parse("100%"))
    assert avg_bits(full, 100) == 16.0
    spec = ModelSpec("toy", "llama", 4, 4, 2, 16, ["full_attention"] * 4)
    assert avg_bits(uniform_config(spec, Budget.parse("50%")), 100) == 8.0
    # K4V2 over 96 entries, groups of 32, no residual: 3 bits + key scales 2*16/32 + value scales 2*16/16
    cfg = uniform_config(spec, Budget.parse("100%"), k_bits=4, v_bits=2)
    assert avg_bits(cfg, 96) == pytest.approx(3 + (1 + 2) / 2)


@pytest.mark.parametrize("budget", ["100%", "50%", "100%-per-head", "50%-per-head"])
def test_kv_bytes_equal_the_bytes_of_a_real_packed_cache(tiny, budget):
    """The analytic memory objective against the runtime's cache after a real prefill of a tiny model (with
    per-head precisions: each KV head of a layer at another pair, some at 16 bits)."""
    import dataclasses

    from evolkv import runtime

    budget, per_head = budget.split("-")[0], budget.endswith("head")
    base = uniform_config(tiny.spec, Budget.parse(budget))
    precisions = [(2, 2, 0), (4, 2, 13), (16, 4, 32), (8, 16, 0), (4, 4, 70)]  # residuals inside groups too
    evicted = [2, 0, 4, 8, 2]  # MiKV tiers (nothing is evicted at 100%)
    heads = tiny.spec.num_kv_heads
    cfg = dataclasses.replace(base, layers=tuple(
        dataclasses.replace(layer, k_bits=k, v_bits=v, residual=r, group_size=32, evicted_bits=e,
                            head_bits=tuple(precisions[(i + h) % 5][:2] for h in range(heads)) if per_head else None)
        for i, (layer, (k, v, r), e) in enumerate(zip(base.layers, precisions, evicted))))
    assert not per_head or any(layer.head_bits for layer in cfg.layers)
    length = 200
    prompt = torch.randint(3, 50, (1, length), generator=torch.Generator().manual_seed(0)).to(tiny.model.device)
    cache = runtime.CompressedCache(cfg.model.num_layers, runtime.Compressor(cfg))
    with torch.no_grad(), runtime.attach(tiny.model):
        tiny.model(prompt, past_key_values=cache)
    dtype_bytes = cache.layers[0].keys.element_size()
    actual = 0
    for layer in cache.layers:
        actual += int((layer.pos >= 0).sum()) * tiny.spec.head_dim * dtype_bytes * 2  # full-precision entries
        for packed, pos, _ in layer.tiers():
            assert (pos >= 0).all()  # heads keep equal counts here: no padding to discount
            actual += packed.nbytes()
    if budget == "50%" and not tiny.spec.sliding_window:  # (Gemma's sliding layers hold under half anyway)
        assert any(layer.evicted is not None for layer in cache.layers)  # the MiKV tiers were stored
    assert kv_bytes(cfg, length, dtype_bytes) == actual


def test_targets_compare_bits_at_two_decimals():
    from evolkv.allocation import within_bits

    assert within_bits(3.251, 3.25) and within_bits(3.2549, 3.25)
    assert not within_bits(3.256, 3.25) and not within_bits(4.01, 4.0)


def _rankings(scores_per_layer, window=2, stats=None):
    from evolkv.press import Ranking
    from evolkv.scorers import rank

    out = []
    for i, scores in enumerate(scores_per_layer):
        order, sorted_scores = rank(scores, window)
        out.append(Ranking(order, sorted_scores, None if stats is None else stats[i]))
    return out


def test_every_allocator_spends_the_total_keeps_windows_and_respects_capacity():
    import dataclasses

    from evolkv.allocators import ALLOCATORS
    from evolkv.config import ALLOCATIONS
    from evolkv.press import Plan

    assert tuple(ALLOCATORS) == ALLOCATIONS  # the config's names are the registry's
    spec = ModelSpec("toy", "llama", 3, 4, 2, 8, ["full_attention"] * 3)
    torch.manual_seed(0)
    scores = [torch.rand(2, 2, 30) ** (i + 1) for i in range(3)]
    stats = [torch.tensor([[1.0, 0.1], [2.0, 0.1]]) * (i + 1) for i in range(3)]
    for name in ALLOCATORS:
        cfg = dataclasses.replace(uniform_config(spec, Budget.parse("20%")), allocation=name)
        plan = Plan(cfg, 30)
        counts = [p.counts for p in plan.layers(_rankings(scores, stats=stats))]
        assert all(int(sum(c[b].sum() for c in counts)) == int(plan.tokens.sum()) for b in range(2)), name
        assert all(bool((c >= 2).all()) and bool((c <= 30).all()) for c in counts), name


def test_global_topk_takes_the_best_scores_of_all_layers_and_prefixkv_gives_peaked_layers_less():
    import dataclasses

    from evolkv.press import Plan

    spec = ModelSpec("toy", "llama", 2, 2, 1, 8, ["full_attention"] * 2)
    flat = torch.ones(1, 1, 20)  # layer 0: every token alike
    peaked = torch.full((1, 1, 20), 0.01)
    peaked[..., :3] = 5.0  # layer 1: three tokens hold nearly everything
    rankings = _rankings([flat, peaked], window=1)
    for name, expect in (("globaltopk", lambda c0, c1: c1 >= 4), ("prefixkv", lambda c0, c1: c1 < c0)):
        cfg = dataclasses.replace(uniform_config(spec, Budget.parse("8")), allocation=name)
        c0, c1 = (int(p.counts.sum()) for p in Plan(cfg, 20).layers(rankings))
        assert c0 + c1 == 16 and expect(c0, c1), (name, c0, c1)


def test_cake_follows_the_layers_dispersion_times_shift():
    import dataclasses

    from evolkv.press import Plan

    spec = ModelSpec("toy", "llama", 2, 2, 1, 8, ["full_attention"] * 2)
    same = torch.rand(1, 1, 40)
    rankings = _rankings([same, same], window=1, stats=[torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 1.0]])])
    cfg = dataclasses.replace(uniform_config(spec, Budget.parse("10")), allocation="cake")
    c0, c1 = (int(p.counts.sum()) for p in Plan(cfg, 40).layers(rankings))
    assert (c0, c1) == (7, 13)  # each its window, then the other 18 tokens 1 : 2 by preference


def test_searched_priors_weigh_a_layers_scores_and_a_static_share_is_kept_first():
    """Two layers of equal scores: global top-k splits them evenly; a prior three times as high on layer 1 wins
    it more; a static share keeps that share of each layer's plan whatever the scores; the total is spent."""
    import dataclasses

    from evolkv.config import LayerSpec
    from evolkv.press import Plan

    spec = ModelSpec("toy", "llama", 2, 2, 1, 8, ["full_attention"] * 2)
    torch.manual_seed(0)
    same = torch.rand(1, 1, 40)
    rankings = _rankings([same, same.clone()], window=1)
    even = dataclasses.replace(uniform_config(spec, Budget.parse("10")), allocation="globaltopk")
    counts = [int(p.counts.sum()) for p in Plan(even, 40).layers(rankings)]
    assert counts == [10, 10]
    layers = (LayerSpec(budget=5.0, heads=(1.0,)), LayerSpec(budget=15.0, heads=(1.0,)))
    prior = dataclasses.replace(even, layers=layers, prior=True)
    c0, c1 = (int(p.counts.sum()) for p in Plan(prior, 40).layers(rankings))
    assert c0 + c1 == 20 and c1 > c0
    peaked = torch.full((1, 1, 40), 0.01)
    peaked[..., :2] = 9.0  # layer 1 holds everything: the allocator alone would give layer 0 almost nothing
    skewed = _rankings([peaked * 0 + 0.001, peaked], window=1)
    bare = [int(p.counts.sum()) for p in Plan(even, 40).layers(skewed)]
    floored = dataclasses.replace(even, layers=layers, prior=True, static=0.8)
    kept = [int(p.counts.sum()) for p in Plan(floored, 40).layers(skewed)]
    assert sum(kept) == 20 and kept[0] >= 4 and kept[1] >= 12  # 80% of the plan's 5 and 15
    assert bare != kept


def test_a_config_with_priors_says_the_second_schema_and_round_trips(tmp_path):
    import dataclasses

    from evolkv.config import SCHEMA, SCHEMA_POLICY, KVConfig
    from evolkv.errors import ConfigError

    cfg = dataclasses.replace(uniform_config(ModelSpec("toy", "llama", 2, 2, 1, 8, ["full_attention"] * 2),
                                             Budget.parse("10%")), allocation="globaltopk")
    assert cfg.to_dict()["schema"] == SCHEMA and "prior" not in cfg.to_dict()  # a method itself: the first schema
    shaped = dataclasses.replace(cfg, prior=True, static=0.25)
    data = shaped.to_dict()
    assert data["schema"] == SCHEMA_POLICY and data["prior"] is True and data["static"] == 0.25
    back = KVConfig.from_dict(data)
    assert back == shaped and back.hash() == shaped.hash() and back.hash() != cfg.hash()
    for field, value, words in (("static", 1.5, "in \\[0, 1\\]"), ("static", "half", "malformed"),
                                ("prior", "yes", "malformed")):
        with pytest.raises(ConfigError, match=words):
            KVConfig.from_dict({**data, field: value})
    with pytest.raises(ConfigError, match="shape a per-prompt 'allocation'"):
        KVConfig.from_dict({**data, "allocation": None})


def test_a_prompts_normalised_scores_are_made_once_for_every_config_and_go_with_its_rankings():
    """A search plans many configs on one prompt's rankings: the part of a plan that depends on the rankings
    alone is made once (the same counts as made afresh) and is dropped when the rankings are."""
    import dataclasses
    import gc

    from evolkv import allocators
    from evolkv.allocators import ALLOCATORS
    from evolkv.press import Plan

    spec = ModelSpec("toy", "llama", 3, 4, 2, 8, ["full_attention"] * 3)
    torch.manual_seed(0)
    scores = [torch.rand(2, 2, 30) ** (i + 1) for i in range(3)]
    stats = [torch.tensor([[1.0, 0.1], [2.0, 0.1]]) * (i + 1) for i in range(3)]
    rankings = _rankings(scores, stats=stats)
    gc.collect()  # entries of rankings earlier tests dropped but the collector has not yet freed
    before = len(allocators._BASES)
    for name in ALLOCATORS:
        for static in (0.0, 0.5):
            cfg = dataclasses.replace(uniform_config(spec, Budget.parse("20%")), allocation=name, static=static,
                                      layers=tuple(LayerSpec(budget=b, heads=(0.5, 0.5)) for b in (0.1, 0.2, 0.3)),
                                      prior=True)
            shared = [p.counts for p in Plan(cfg, 30).layers(rankings)]
            fresh = [p.counts for p in Plan(cfg, 30).layers(_rankings(scores, stats=stats))]
            assert all(torch.equal(a, b) for a, b in zip(shared, fresh)), (name, static)
    gc.collect()
    assert len(allocators._BASES) == before + 1  # the fresh rankings' entries went with them
    del rankings
    gc.collect()
    assert len(allocators._BASES) == before
