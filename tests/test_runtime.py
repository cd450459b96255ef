"""Applying a config to a real transformers model for generation."""

import pytest
import torch

import evolkv
from evolkv import runtime
from evolkv.allocation import layer_capacity, plan_tokens
from evolkv.config import Budget, uniform_config
from evolkv.search.baselines import adakv


def _prompt(tiny, length=120):
    torch.manual_seed(3)
    return torch.randint(4, len(tiny.tokenizer), (1, length)).to(tiny.model.device)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_full_budget_equals_plain_generate(tiny, kernels, monkeypatch):
    if kernels == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("EVOLKV_KERNELS", kernels)  # decode through the Triton kernel (interpreted on CPU)
    ids = _prompt(tiny)
    kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = tiny.model.generate(ids, **kwargs)
        with evolkv.apply(tiny.model, uniform_config(tiny.spec, Budget.parse("100%"))):
            ours = tiny.model.generate(ids, **kwargs)
    assert torch.equal(plain.sequences, ours.sequences)
    tol = 1e-4 if tiny.model.dtype == torch.float32 else 3e-2  # bf16 on a GPU (models.load's auto dtype)
    for a, b in zip(plain.logits, ours.logits):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("make", [lambda spec: uniform_config(spec, Budget.parse("10%")),
                                  lambda spec: adakv(spec, Budget.parse("10%"), uniform_config(spec, Budget.parse("10%")).scorer)])
def test_compressed_cache_holds_the_planned_tokens(tiny, make):
    cfg = make(tiny.spec)
    ids = _prompt(tiny)
    cache = runtime.CompressedCache(tiny.spec.num_layers, runtime.Compressor(cfg))
    with torch.no_grad(), runtime.attach(tiny.model):
        tiny.model(ids, past_key_values=cache)
    caps = [layer_capacity(tiny.spec, i, ids.shape[1]) for i in range(tiny.spec.num_layers)]
    assert cache.entries() == int(plan_tokens(cfg, ids.shape[1], caps).sum())
    assert all(layer.seen == ids.shape[1] for layer in cache.layers)


def test_apply_restores_the_model_even_on_error(tiny):
    before = tiny.model.config._attn_implementation
    with pytest.raises(RuntimeError), evolkv.apply(tiny.model, uniform_config(tiny.spec, Budget.parse("10%"))):
        assert tiny.model.config._attn_implementation == runtime.ATTN_IMPLEMENTATION
        raise RuntimeError("boom")
    assert tiny.model.config._attn_implementation == before
    assert not tiny.model._forward_pre_hooks and not tiny.model._forward_hooks


def test_apply_refuses_a_config_for_another_model(loaded):
    cfg = uniform_config(loaded["llama"].spec, Budget.parse("10%"))
    from evolkv.errors import ConfigError

    with pytest.raises(ConfigError, match="num_layers|num_kv_heads|model_type"):
        with evolkv.apply(loaded["qwen3"].model, cfg):
            pass


@pytest.mark.parametrize("budget, precision", [("10%", 16), ("30%", 16), ("30%", 4), ("100%", 16)])
def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(tiny, budget, precision):
    """Prompts of unequal length, left-padded into one batch: each row's tokens and logits equal its own
    generation under the same config (its ranking, budgets and positions are its own; pads are never kept)."""
    cfg = uniform_config(tiny.spec, Budget.parse(budget), k_bits=precision, v_bits=precision, group_size=32)
    prompts = [_prompt(tiny, 120)[0], _prompt(tiny, 90)[0, 7:], _prompt(tiny, 64)[0, 3:]]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long, device=p.device), p])
                       for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]) for p in prompts]).long()
    kwargs = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
                  pad_token_id=0)
    with torch.no_grad(), evolkv.apply(tiny.model, cfg):
        batch = tiny.model.generate(ids, attention_mask=mask.to(ids.device), **kwargs)
        for row, prompt in enumerate(prompts):
            alone = tiny.model.generate(prompt[None], **kwargs)
            new = alone.sequences[0, len(prompt):]  # (it may stop early, at end-of-sequence)
            assert torch.equal(batch.sequences[row, longest:longest + len(new)], new)
            tol = 2e-4 if tiny.model.dtype == torch.float32 else 3e-2
            for a, b in zip(batch.logits, alone.logits):
                torch.testing.assert_close(a[row], b[0], atol=tol, rtol=tol)


def test_right_padding_and_mikv_with_padding_are_one_clear_error(tiny):
    from evolkv.errors import ConfigError

    ids = torch.cat([_prompt(tiny, 40), _prompt(tiny, 40)])
    right = torch.ones_like(ids)
    right[1, -5:] = 0
    with torch.no_grad(), evolkv.apply(tiny.model, uniform_config(tiny.spec, Budget.parse("20%"))):
        with pytest.raises(ConfigError, match="padding_side = 'left'"):
            tiny.model.generate(ids, attention_mask=right, max_new_tokens=2, pad_token_id=0)
    left = right.flip(1)
    mikv = uniform_config(tiny.spec, Budget.parse("20%"), evicted_bits=4, group_size=32)
    with torch.no_grad(), evolkv.apply(tiny.model, mikv):
        with pytest.raises(ConfigError, match="MiKV"):
            tiny.model.generate(ids, attention_mask=left, max_new_tokens=2, pad_token_id=0)


def test_the_replay_pass_leaves_the_prefill_and_scores_every_token(tiny):
    """KVzip's context reconstruction: after ``replay.run`` the cache holds exactly the prefill again, and every
    prefill token of every layer has a score in [0, 1] (an attention weight), chunk after chunk."""
    from evolkv import replay

    ids = _prompt(tiny, 50)
    cache = runtime.CompressedCache(tiny.spec.num_layers)
    with torch.no_grad(), runtime.attach(tiny.model):
        tiny.model(ids, past_key_values=cache)
        before = [(layer.keys.clone(), layer.values.clone(), layer.pos.clone()) for layer in cache.layers]
        scores = replay.run(tiny.model, cache, ids, tiny.tokenizer, sinks=4, size=20)  # 3 chunks: 20, 20, 10
    for layer, (keys, values, pos), s in zip(cache.layers, before, scores):
        assert layer.seen == 50 and torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
        assert torch.equal(layer.pos, pos)
        assert s.shape == (1, tiny.spec.num_kv_heads, 50) and bool((s > 0).all()) and bool((s <= 1).all())
    assert cache.replay is None
    parts = replay.chunks(tiny.tokenizer, ids, 20)
    assert [(a, b) for a, b, _ in parts] == [(0, 20), (20, 40), (40, 50)]
    assert torch.equal(parts[1][2][0, -20:], ids[0, 20:40]) and torch.equal(parts[1][2][0, -29:-21], ids[0, 12:20])


def test_kvzip_generates_with_its_replay_and_refuses_what_it_cannot_serve(tiny):
    from evolkv.config import ScorerSpec
    from evolkv.errors import ConfigError

    cfg = uniform_config(tiny.spec, Budget.parse("20%"), ScorerSpec("kvzip"))
    with pytest.raises(ConfigError, match="tokenizer"):
        with evolkv.apply(tiny.model, cfg):
            pass
    ids = _prompt(tiny, 60)
    with torch.no_grad(), evolkv.apply(tiny.model, cfg, tokenizer=tiny.tokenizer):
        out = tiny.model.generate(ids, max_new_tokens=3, do_sample=False)
        assert out.shape[1] == 63
        twice = torch.cat([ids, ids])
        left = torch.ones_like(twice)
        left[1, :5] = 0
        with pytest.raises(ConfigError, match="one prompt at a time"):
            tiny.model.generate(twice, attention_mask=left, max_new_tokens=2, pad_token_id=0)
