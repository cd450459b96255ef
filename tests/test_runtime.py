"""Applying a config to a real transformers model for generation."""

import pytest
import torch

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
        with runtime.apply(tiny.model, uniform_config(tiny.spec, Budget.parse("100%"))):
            ours = tiny.model.generate(ids, **kwargs)
    assert torch.equal(plain.sequences, ours.sequences)
    for a, b in zip(plain.logits, ours.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


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
    with pytest.raises(RuntimeError), runtime.apply(tiny.model, uniform_config(tiny.spec, Budget.parse("10%"))):
        assert tiny.model.config._attn_implementation == runtime.ATTN_IMPLEMENTATION
        raise RuntimeError("boom")
    assert tiny.model.config._attn_implementation == before
    assert not tiny.model._forward_pre_hooks and not tiny.model._forward_hooks


def test_apply_refuses_a_config_for_another_model(loaded):
    cfg = uniform_config(loaded["llama"].spec, Budget.parse("10%"))
    from evolkv.errors import ConfigError

    with pytest.raises(ConfigError, match="num_layers|num_kv_heads|model_type"):
        with runtime.apply(loaded["qwen3"].model, cfg):
            pass
