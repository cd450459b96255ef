"""The serving path (``evolkv.serving``): static ragged caches, one decode token per step, CUDA graphs on GPU.
Its greedy tokens must equal ``model.generate`` under ``evolkv.apply`` with the same config."""

import dataclasses

import pytest
import torch

import evolkv
from evolkv.config import Budget, ScorerSpec, uniform_config
from evolkv.errors import ConfigError
from evolkv.search.baselines import adakv
from evolkv.serving import Generator


def _prompt(tiny, length=120, seed=3):
    torch.manual_seed(seed)
    return torch.randint(4, len(tiny.tokenizer), (1, length)).to(tiny.model.device)


CONFIGS = {
    "full": lambda spec: None,
    "uniform 10%": lambda spec: uniform_config(spec, Budget.parse("10%")),
    "adakv 30%": lambda spec: adakv(spec, Budget.parse("30%"), ScorerSpec()),
    "K4V4 all": lambda spec: uniform_config(spec, Budget.parse("100%"), k_bits=4, v_bits=4, group_size=32),
    "30% K4V2 r16": lambda spec: uniform_config(spec, Budget.parse("30%"), k_bits=4, v_bits=2, group_size=32,
                                                residual=16),
    "20% MiKV e4": lambda spec: uniform_config(spec, Budget.parse("20%"), evicted_bits=4, group_size=32),
    "30% per-head bits": lambda spec: _per_head_bits(uniform_config(spec, Budget.parse("30%"), group_size=32,
                                                                    residual=4)),
}


def _per_head_bits(cfg):
    """Each KV head of a layer at its own (k_bits, v_bits), one of them at 16 bits."""
    pairs = [(4, 2), (16, 16), (2, 2), (4, 4)]
    heads = cfg.model.num_kv_heads
    return dataclasses.replace(cfg, layers=tuple(
        dataclasses.replace(layer, head_bits=tuple(pairs[(i + h) % 4] for h in range(heads)))
        for i, layer in enumerate(cfg.layers)))


def _same_until_eos(ours, expected, eos=2):
    """``generate`` stops a row at end-of-sequence (and pads it); the serving loop runs on: equal tokens up to
    and including the first end-of-sequence."""
    for row, ref in zip(ours, expected):
        stop = (ref == eos).nonzero()
        n = int(stop[0]) + 1 if len(stop) else len(ref)
        if not torch.equal(row[:n], ref[:n]):
            return False
    return True


def _reference(tiny, cfg, ids, new, **kwargs):
    generate = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, **kwargs)
    if kwargs:
        generate.update(output_logits=True, return_dict_in_generate=True)
    if cfg is None:
        return tiny.model.generate(ids, **generate)
    with evolkv.apply(tiny.model, cfg, tokenizer=tiny.tokenizer):
        return tiny.model.generate(ids, **generate)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serving_generates_what_generate_does_under_apply(tiny, name):
    """Each step's logits equal ``generate``'s under ``evolkv.apply`` (greedy, min_new_tokens keeps both
    going), token for token until the two first pick different tokens: there, only a near tie may differ."""
    cfg = CONFIGS[name](tiny.spec)
    ids = torch.cat([_prompt(tiny, 120, seed=3), _prompt(tiny, 120, seed=4)])
    with torch.no_grad():
        expected = _reference(tiny, cfg, ids, 8, min_new_tokens=8)
    gen = Generator(tiny.model, cfg, tiny.tokenizer)
    first = gen.prefill(ids, max_new_tokens=8)
    rest, logits = gen.decode(7, logits=True)
    ours = torch.cat([first[:, None], rest], 1)
    logits = torch.cat([gen.prefill_logits.float()[:, None], logits], 1)
    tol = 2e-3 if tiny.model.dtype == torch.float32 else 3e-2  # bf16 logits on a GPU: steps of ~4e-3 near 1
    for step, ref in enumerate(expected.logits):
        torch.testing.assert_close(logits[:, step], ref.float(), atol=tol, rtol=tol)
        if not torch.equal(ours[:, step], expected.sequences[:, ids.shape[1] + step]):
            break  # a near tie, or end-of-sequence (min_new_tokens bars it in generate): they go on apart


def test_serving_a_left_padded_batch(tiny):
    cfg = uniform_config(tiny.spec, Budget.parse("30%"))
    prompts = [_prompt(tiny, 120)[0], _prompt(tiny, 90, seed=5)[0], _prompt(tiny, 64, seed=6)[0]]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long, device=p.device), p])
                       for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]) for p in prompts])
    mask = mask.long().to(ids.device)
    ours = Generator(tiny.model, cfg).generate(ids, mask, max_new_tokens=6)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            alone = _reference(tiny, cfg, prompt[None], 6)
            assert _same_until_eos(ours[row:row + 1, longest:], alone[:, len(prompt):])


def test_serving_kvzip_and_its_bytes(tiny):
    """A replaying scorer serves too (its prefill replays); the cache's bytes after prefill are the config's
    own accounting (``allocation.kv_bytes``) for a uniform config."""
    from evolkv.allocation import kv_bytes

    kvzip = uniform_config(tiny.spec, Budget.parse("30%"), ScorerSpec("kvzip"))
    ids = _prompt(tiny, 120)
    with torch.no_grad():
        expected = _reference(tiny, kvzip, ids, 6)
    ours = Generator(tiny.model, kvzip, tiny.tokenizer).generate(ids, max_new_tokens=6)
    assert _same_until_eos(ours[:, ids.shape[1]:], expected[:, ids.shape[1]:])
    for cfg in (uniform_config(tiny.spec, Budget.parse("20%")),
                uniform_config(tiny.spec, Budget.parse("50%"), k_bits=4, v_bits=4, group_size=32)):
        gen = Generator(tiny.model, cfg)
        gen.prefill(ids, max_new_tokens=4)
        dtype_bytes = tiny.model.dtype.itemsize
        sliding = sum(layer.kept * 4 for layer in gen.cache.layers if layer.slot_pos is not None)
        assert gen.cache.nbytes(room=False) - sliding == kv_bytes(cfg, ids.shape[1], dtype_bytes)


def test_serving_bad_input_is_one_clear_error(tiny):
    cfg = uniform_config(tiny.spec, Budget.parse("10%"))
    gen = Generator(tiny.model, cfg)
    with pytest.raises(ConfigError, match="prefill first"):
        gen.decode(2)
    with pytest.raises(ConfigError, match="positions"):
        gen.prefill(_prompt(tiny, 4094), max_new_tokens=8)
    gen.prefill(_prompt(tiny, 40), max_new_tokens=3)
    with pytest.raises(ConfigError, match="more tokens fit"):
        gen.decode(4)
    ids = torch.cat([_prompt(tiny, 40), _prompt(tiny, 40, seed=5)])
    right = torch.ones_like(ids)
    right[1, -5:] = 0
    with pytest.raises(ConfigError, match="padding_side = 'left'"):
        gen.generate(ids, right, max_new_tokens=2)
    other = "qwen3" if tiny.spec.model_type != "qwen3" else "llama"
    from evolkv.models import model_spec

    with pytest.raises(ConfigError, match="config is for"):
        Generator(tiny.model, uniform_config(model_spec(_config_of(other), "other"), Budget.parse("10%")))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            Generator(tiny.model, cfg, cuda_graph=True)


def _config_of(arch):
    from tests.conftest import BUILDERS
    from evolkv.testing import char_tokenizer

    return BUILDERS[arch](len(char_tokenizer())).config


@pytest.mark.parametrize("arch, name", [("llama", "adakv 30%"), ("gemma3", "30% K4V2 r16")])
def test_serving_through_the_triton_kernels(loaded, arch, name, monkeypatch):
    """The ragged decode kernel inside the model (interpreted on CPU): a per-head config on Llama, a quantized
    one on Gemma 3's sliding layers."""
    pytest.importorskip("triton")
    monkeypatch.setenv("EVOLKV_KERNELS", "triton")
    tiny = loaded[arch]
    ids = torch.cat([_prompt(tiny, 100, seed=3), _prompt(tiny, 100, seed=4)])
    cfg = CONFIGS[name](tiny.spec)
    with torch.no_grad():
        expected = _reference(tiny, cfg, ids, 4)
    ours = Generator(tiny.model, cfg).generate(ids, max_new_tokens=4)
    assert _same_until_eos(ours[:, ids.shape[1]:], expected[:, ids.shape[1]:])


def test_compiled_blocks_generate_the_same(loaded):
    """``compile_blocks`` (torch.compile'd norms and MLPs) changes speed, not tokens; ``restore_blocks`` undoes it."""
    from evolkv.serving import compile_blocks, restore_blocks

    tiny = loaded["llama"]
    cfg = CONFIGS["uniform 10%"](tiny.spec)
    ids = _prompt(tiny, 100)
    plain = Generator(tiny.model, cfg).generate(ids, max_new_tokens=4)
    swapped = compile_blocks(tiny.model)
    try:
        assert len(swapped) == 3 * tiny.spec.num_layers + 1  # two norms and the MLP of each layer, the last norm
        assert torch.equal(Generator(tiny.model, cfg).generate(ids, max_new_tokens=4), plain)
    finally:
        restore_blocks(swapped)
    assert not any(type(m).__name__ == "OptimizedModule" for m in tiny.model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the folded packed kernel runs on CUDA only")
@pytest.mark.parametrize("mode,dim", [("pairs", 64), ("gluon", 64), ("gluon", 128)])
@pytest.mark.parametrize("precision", ["K4V4 all", "30% K4V2 r16 + MiKV e2"])
def test_serving_quantized_layers_through_the_folded_kernel(precision, mode, dim, monkeypatch):
    """head_dim 64 in bfloat16, as the packed kernel serves (the tiny models' head_dim 16 is not): one packed
    tier (one launch with the full-precision rows) and two (MiKV: three launches, one merge) against
    ``generate`` under ``evolkv.apply`` (a torch log-sum-exp merge per tier), with either key path; at head_dim
    128 and key groups of 128 the Gluon kernel serves them (a launch per tier beside the full-precision rows')."""
    monkeypatch.setenv("EVOLKV_PACKED_DECODE", mode)
    from transformers import LlamaConfig, LlamaForCausalLM

    from evolkv.models import model_spec

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=dim, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    spec = model_spec(config, "tiny-64")
    if precision == "K4V4 all":
        cfg = uniform_config(spec, Budget.parse("100%"), k_bits=4, v_bits=4, group_size=dim)
    else:
        cfg = uniform_config(spec, Budget.parse("30%"), k_bits=4, v_bits=2, group_size=dim, residual=16,
                             evicted_bits=2)
    ids = torch.randint(4, 512, (2, 700), device="cuda")
    from evolkv.kernels import gluon_decode

    launches = []
    real = gluon_decode.decode_attention_gluon
    monkeypatch.setattr(gluon_decode, "decode_attention_gluon", lambda *a, **k: launches.append(1) or real(*a, **k))
    gen = Generator(model, cfg)
    first = gen.prefill(ids, max_new_tokens=6)
    assert all(len(layer.tiers()) == (1 if precision == "K4V4 all" else 2) for layer in gen.cache.layers)
    rest, logits = gen.decode(5, logits=True)
    with torch.no_grad(), evolkv.apply(model, cfg):
        expected = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=0)
    # the Gluon kernel served the graph's decode steps where it reads the layout (head_dim 128), pairs elsewhere
    assert bool(launches) == (mode == "gluon" and dim == 128)
    ours = torch.cat([first[:, None], rest], 1)
    logits = torch.cat([gen.prefill_logits.float()[:, None], logits], 1)
    for step, ref in enumerate(expected.logits):
        torch.testing.assert_close(logits[:, step], ref.float(), atol=5e-2, rtol=5e-2)
        if not torch.equal(ours[:, step], expected.sequences[:, ids.shape[1] + step]):
            break
