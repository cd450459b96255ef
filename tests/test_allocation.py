import torch

from evolkv.allocation import adaptive_split, kv_bytes, plan_tokens, round_to_total, waterfill
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
