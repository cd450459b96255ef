"""Parity with NVIDIA kvpress: the same tiny model, prompt and budget through a kvpress press and through
evolkv's runtime, and the kept token sets compared per layer and KV head.

Runs where kvpress is installed: kvpress 0.5.x pins ``transformers<5.3``, so it lives in its own virtual
environment (``.ci/run`` builds one; ``pip install 'evolkv[kvpress]'`` gives a compatible transformers).
Elsewhere the module is skipped. Every method either keeps the same tokens (>= 99% overlap) or the test
states the difference and checks it is that difference.
"""

import dataclasses

import pytest
import torch

kvpress = pytest.importorskip("kvpress")

from transformers import DynamicCache  # noqa: E402

import evolkv
from evolkv import runtime  # noqa: E402
from evolkv.config import Budget, KVConfig, ScorerSpec, uniform_config  # noqa: E402
from evolkv.search.baselines import adakv, pyramid  # noqa: E402

LENGTH, RATIO, WINDOW = 256, 0.75, 8  # kvpress keeps int(256 * 0.25) = 64 tokens per head


def _prompt(tiny):
    torch.manual_seed(5)
    return torch.randint(4, len(tiny.tokenizer), (1, LENGTH)).to(tiny.model.device)


def _layers_of(model):
    return [layer.self_attn for layer in model.model.layers]


def _full_keys(tiny, ids):
    cache = DynamicCache()
    with torch.no_grad():
        tiny.model(ids, past_key_values=cache)
    return [layer.keys[0] for layer in cache.layers]  # [H_kv, T, D] per layer


def _slots_by_keys(full, kept):
    """The position of each kept key [H_kv, n, D] among the full ones [H_kv, T, D] (exact copies), per head."""
    slots = []
    for h in range(full.shape[0]):
        distance = torch.cdist(kept[h].float(), full[h].float())  # [n, T]
        slots.append(distance.argmin(dim=1).tolist())
    return slots


def kvpress_kept(tiny, ids, press):
    """kvpress's kept positions, per layer and KV head: the cache's entries, less those masked in attention
    (AdaKV-style presses keep every entry and mask the pruned ones)."""
    full = _full_keys(tiny, ids)
    cache = DynamicCache()
    with torch.no_grad(), press(tiny.model):
        tiny.model(ids, past_key_values=cache)
    kept = []
    for i, (layer, attn) in enumerate(zip(cache.layers, _layers_of(tiny.model))):
        slots = _slots_by_keys(full[i], layer.keys[0])
        masked = getattr(attn, "masked_key_indices", None)
        hidden = set()
        if masked is not None:
            hidden = {(h, t) for _, h, t in zip(*(m.tolist() for m in masked))}
            attn.masked_key_indices = None
        kept.append([{p for t, p in enumerate(head) if (h, t) not in hidden} for h, head in enumerate(slots)])
    return kept


def evolkv_kept(tiny, ids, cfg: KVConfig):
    cache = runtime.CompressedCache(tiny.spec.num_layers, runtime.Compressor(cfg, tiny.tokenizer))
    with torch.no_grad(), runtime.attach(tiny.model):
        tiny.model(ids, past_key_values=cache)
    return [[set(p[p >= 0].tolist()) for p in layer.pos[0]] for layer in cache.layers]


def overlap(a, b):
    """Share of kvpress's kept (layer, head, token) triples evolkv keeps too."""
    inter = sum(len(x & y) for la, lb in zip(a, b) for x, y in zip(la, lb))
    return inter / max(sum(len(x) for la in a for x in la), 1)


@pytest.fixture
def llama(loaded):
    """The tiny Llama (GQA, full attention everywhere: kvpress's presses assume it) with SDPA attention."""
    tiny = loaded["llama"]
    previous = tiny.model.config._attn_implementation
    tiny.model.set_attn_implementation("sdpa")
    yield tiny
    tiny.model.set_attn_implementation(previous)


def _kept_tokens():
    return int(LENGTH * (1 - RATIO))


def _uniform(tiny, scorer):
    return uniform_config(tiny.spec, Budget.parse(str(_kept_tokens())), scorer)


PARITY = {  # kvpress press -> the evolkv config that keeps the same tokens
    "knorm": (lambda: kvpress.KnormPress(RATIO), lambda t: _uniform(t, ScorerSpec("keynorm", window=1, kernel=1))),
    "streaming": (lambda: kvpress.StreamingLLMPress(RATIO, n_sink=4),
                  lambda t: _uniform(t, ScorerSpec("streaming", window=1, kernel=1, params={"sinks": 4}))),
}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_the_same_tokens_as_kvpress(llama, name):
    make_press, make_cfg = PARITY[name]
    ids = _prompt(llama)
    share = overlap(kvpress_kept(llama, ids, make_press()), evolkv_kept(llama, ids, make_cfg(llama)))
    assert share >= 0.99, f"{name}: {share:.3f} of kvpress's kept tokens"


def test_keydiff_differs_from_kvpress_only_by_the_last_token(llama):
    """Every evolkv scorer keeps the most recent ``window`` (>= 1) tokens first; kvpress's KeyDiff has no
    window. Per head the sets differ at most by the last token and the one it displaced."""
    ids = _prompt(llama)
    theirs = kvpress_kept(llama, ids, kvpress.KeyDiffPress(RATIO))
    ours = evolkv_kept(llama, ids, _uniform(llama, ScorerSpec("keydiff", window=1, kernel=1)))
    for la, lb in zip(theirs, ours):
        for x, y in zip(la, lb):
            assert LENGTH - 1 in y and len(x ^ y) <= 2 and (x ^ y <= {LENGTH - 1} or len(x ^ y) == 2)
            assert x - y == set() or LENGTH - 1 in y - x  # what kvpress keeps and evolkv drops made room for it
    assert overlap(theirs, ours) >= 1 - 1 / _kept_tokens()


def test_snapkv_differs_from_kvpress_only_in_the_pooling_edges(llama):
    """kvpress pools with zero padding counted (F.avg_pool1d's default); evolkv averages edges over the real
    neighbours only. Away from the two ends of the scored span the sets agree; the few differences sit within
    ``kernel // 2`` tokens of the span's ends."""
    ids = _prompt(llama)
    theirs = kvpress_kept(llama, ids, kvpress.SnapKVPress(RATIO, window_size=WINDOW, kernel_size=5))
    ours = evolkv_kept(llama, ids, _uniform(llama, ScorerSpec("snapkv", window=WINDOW, kernel=5)))
    edges = set(range(2)) | set(range(LENGTH - WINDOW - 2, LENGTH - WINDOW))
    for la, lb in zip(theirs, ours):
        for x, y in zip(la, lb):
            assert (x ^ y) <= edges | _displaced(x, y, edges)
    assert overlap(theirs, ours) >= 0.95


def _displaced(x, y, edges):
    """The tokens a differing edge token pushed in or out at the boundary of the keep-set (one per edge
    token that changed sides)."""
    changed = (x ^ y) & edges
    rest = (x ^ y) - edges
    return rest if len(rest) <= len(changed) else set()


def test_tova_shares_one_ranking_over_all_kv_heads_in_kvpress(llama):
    """kvpress's TOVA averages the last query's attention over every query head and gives all KV heads that
    ranking; evolkv's averages over each KV head's own group. Averaging evolkv's per-group scores over the
    KV heads gives kvpress's ranking back exactly."""
    ids = _prompt(llama)
    theirs = kvpress_kept(llama, ids, kvpress.TOVAPress(RATIO))
    for layer in theirs:
        assert all(heads == layer[0] for heads in layer)  # one set for every KV head
    ours = evolkv_kept(llama, ids, _uniform(llama, ScorerSpec("tova", window=1, kernel=1)))
    assert any(len(set(map(frozenset, layer))) > 1 for layer in ours)  # per-group: heads differ


def test_adakv_keeps_kvpress_adakv_tokens(llama):
    """AdaKV(SnapKV): the layer's budget goes to the heads' best scores. kvpress keeps a safeguard share
    (alpha 0.20) of each head's budget first; evolkv has none, and pools SnapKV scores without padding (see
    above): the sets agree up to those."""
    ids = _prompt(llama)
    press = kvpress.AdaKVPress(kvpress.SnapKVPress(RATIO, window_size=WINDOW, kernel_size=5))
    theirs = kvpress_kept(llama, ids, press)
    cfg = adakv(llama.spec, Budget.parse(str(_kept_tokens())), ScorerSpec("snapkv", window=WINDOW, kernel=5))
    ours = evolkv_kept(llama, ids, cfg)
    assert [sum(map(len, la)) for la in theirs] == [sum(map(len, lb)) for lb in ours]  # the same layer totals
    assert overlap(theirs, ours) >= 0.9


def test_pyramid_budgets_against_kvpress_pyramidkv(llama):
    """PyramidKV: kvpress falls back to uniform SnapKV whenever the smallest layer's share would drop below
    its window (most budgets under ~10% at a few thousand tokens); at this budget both taper. Reported, not
    required equal: evolkv's pyramid is its own schedule (`baselines.pyramid`)."""
    ids = _prompt(llama)
    press = kvpress.PyramidKVPress(RATIO, window_size=WINDOW, kernel_size=5)
    theirs = kvpress_kept(llama, ids, press)
    cfg = pyramid(llama.spec, Budget.parse(str(_kept_tokens())), ScorerSpec("snapkv", window=WINDOW, kernel=5))
    ours = evolkv_kept(llama, ids, cfg)
    sizes = [len(la[0]) for la in theirs], [len(lb[0]) for lb in ours]
    assert sizes[0] == sorted(sizes[0], reverse=True) and sizes[1] == sorted(sizes[1], reverse=True)
    assert sum(sizes[0]) == pytest.approx(sum(sizes[1]), rel=0.05)


def test_kvzip_keeps_kvpress_kvzip_tokens(llama):
    """KVzip: both replay "Repeat the previous context exactly." and the context over the prefill cache and
    score a token by the largest attention a reconstruction query pays it; kvpress's ``layerwise=True`` keeps
    each layer's best scores over all its heads, evolkv's AdaKV split does the same. evolkv also keeps each
    head's last token (its window of 1)."""
    ids = _prompt(llama)
    theirs = kvpress_kept(llama, ids, kvpress.KVzipPress(RATIO, layerwise=True))
    cfg = adakv(llama.spec, Budget.parse(str(_kept_tokens())), ScorerSpec("kvzip", window=1, kernel=1))
    ours = evolkv_kept(llama, ids, cfg)
    assert [sum(map(len, la)) for la in theirs] == [sum(map(len, lb)) for lb in ours]
    for la, lb in zip(theirs, ours):
        for x, y in zip(la, lb):
            assert y - x <= {LENGTH - 1}  # evolkv keeps nothing else kvpress drops
    heads = sum(len(la) for la in theirs)
    assert overlap(theirs, ours) >= 1 - heads / sum(len(x) for la in theirs for x in la)


def test_observed_attention_keeps_kvpress_observed_attention_tokens(llama):
    """ObservedAttention (H2O over the whole prompt, each token's sum divided by the queries that see it) reads
    eager attention weights in kvpress; evolkv's ``h2o`` with ``queries`` = the prompt and ``average`` computes
    them itself. Per head the sets differ at most by evolkv's last token (its window of 1)."""
    ids = _prompt(llama)
    llama.model.set_attn_implementation("eager")
    try:
        theirs = kvpress_kept(llama, ids, kvpress.ObservedAttentionPress(RATIO))
    finally:
        llama.model.set_attn_implementation("sdpa")
    spec = ScorerSpec("h2o", window=1, kernel=1, params={"queries": LENGTH, "average": 1})
    ours = evolkv_kept(llama, ids, _uniform(llama, spec))
    for la, lb in zip(theirs, ours):
        for x, y in zip(la, lb):
            assert y - x <= {LENGTH - 1} and len(x - y) <= 1
    assert overlap(theirs, ours) >= 1 - 1 / _kept_tokens()


def test_criticalkv_keeps_kvpress_criticalkv_tokens(llama):
    """CriticalKV over SnapKV's window attention (no pooling), one stage: kvpress's ``first_stage_ratio=0``;
    evolkv's ``criticalkv`` with ``projected=1`` (the value's L1 norm through W_o). kvpress gives the window's
    tokens the top score before weighing them; evolkv keeps the window first."""
    ids = _prompt(llama)
    press = kvpress.CriticalKVPress(kvpress.SnapKVPress(RATIO, window_size=WINDOW, kernel_size=1),
                                    first_stage_ratio=0.0)
    theirs = kvpress_kept(llama, ids, press)
    spec = ScorerSpec("criticalkv", window=WINDOW, kernel=1, params={"projected": 1})
    ours = evolkv_kept(llama, ids, _uniform(llama, spec))
    assert overlap(theirs, ours) >= 0.99


def test_expected_attention_keeps_kvpress_expected_attention_tokens(llama):
    """ExpectedAttention: query statistics before RoPE (evolkv undoes the layer's rotation), RoPE averaged over
    the next 512 positions, sinks kept; evolkv also keeps each head's last token (its window of 1)."""
    ids = _prompt(llama)
    theirs = kvpress_kept(llama, ids, kvpress.ExpectedAttentionPress(RATIO))
    ours = evolkv_kept(llama, ids, _uniform(llama, ScorerSpec("expected_attention", window=1, kernel=1)))
    for la, lb in zip(theirs, ours):
        for x, y in zip(la, lb):
            assert y - x <= {LENGTH - 1} and len(x - y) <= 1
    assert overlap(theirs, ours) >= 1 - 1 / _kept_tokens()


@pytest.mark.parametrize("scorer", ["snapkv", "expected_attention", "criticalkv"])
def test_a_searched_per_head_config_keeps_in_kvpress_what_evolkv_apply_keeps(llama, scorer, tmp_path):
    """``evolkv.integrations.kvpress.EvolKVPress`` in kvpress's own hooks: per layer and KV head the same tokens
    as ``evolkv.apply`` (the same ranking and plan); heads below the layer's largest count are masked."""
    import numpy as np

    from evolkv.integrations.kvpress import EvolKVPress
    from evolkv.search.space import BudgetSpace

    space = BudgetSpace(llama.spec, Budget.parse("20%"), ScorerSpec(scorer), per_head=True)
    cfg = space.decode(np.random.default_rng(3).uniform(-2, 2, space.n_var))
    ids = _prompt(llama)
    ours = evolkv_kept(llama, ids, cfg)
    assert any(len({len(h) for h in layer}) > 1 for layer in ours)  # heads of a layer keep different counts
    cfg.save(tmp_path / "winner.json")  # as `evolkv export RUN --format kvpress -o winner.json` writes it
    assert kvpress_kept(llama, ids, EvolKVPress.from_file(tmp_path / "winner.json")) == ours


def test_what_a_kvpress_press_cannot_carry_is_one_clear_error(llama):
    from evolkv.errors import ConfigError
    from evolkv.integrations.kvpress import EvolKVPress

    budget = Budget.parse("20%")
    for cfg, words in [(dataclasses.replace(_uniform(llama, ScorerSpec()), allocation="cake"), "allocation"),
                       (uniform_config(llama.spec, budget, k_bits=4, v_bits=4, group_size=32), "quantizes"),
                       (_uniform(llama, ScorerSpec("kvzip")), "KVzipPress")]:
        with pytest.raises(ConfigError, match=words):
            EvolKVPress(cfg)


def test_decoding_after_an_evolkv_press_in_kvpress_matches_evolkv_apply(llama):
    """The tokens a kvpress user decodes after ``EvolKVPress`` (pruned, and masked where heads keep fewer) are
    the ones ``evolkv.apply`` + ``generate`` give, with the same logits up to kvpress's masking."""
    import numpy as np

    from evolkv.integrations.kvpress import EvolKVPress
    from evolkv.search.space import BudgetSpace

    space = BudgetSpace(llama.spec, Budget.parse("20%"), ScorerSpec(), per_head=True)
    cfg = space.decode(np.random.default_rng(4).uniform(-2, 2, space.n_var))
    ids = _prompt(llama)
    with torch.no_grad(), evolkv.apply(llama.model, cfg):
        want = llama.model.generate(ids, max_new_tokens=5, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
    llama.model.set_attn_implementation("sdpa")
    cache, tokens, logits = DynamicCache(), [], []
    with torch.no_grad():
        with EvolKVPress(cfg)(llama.model):
            out = llama.model(ids, past_key_values=cache)
        for step in range(5):  # positions continue after the context, as kvpress's pipeline passes them
            logits.append(out.logits[:, -1])
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
            position = torch.tensor([[ids.shape[1] + step]], device=ids.device)
            out = llama.model(tokens[-1], past_key_values=cache, position_ids=position)
    for layer in _layers_of(llama.model):
        layer.masked_key_indices = None
    assert torch.equal(torch.cat(tokens, 1)[0], want.sequences[0, ids.shape[1]:])
    torch.testing.assert_close(torch.stack(logits), torch.stack(want.logits), atol=1e-3, rtol=1e-3)


def test_a_lukv_curve_keeps_in_stock_kvpress_what_evolkv_keeps(llama, tmp_path):
    """``evolkv export --format lukv``: stock ``LUKVPress`` around ``KnormPress``, the curve loaded with numpy and
    set on the press, keeps per layer and KV head the tokens evolkv's runtime keeps with the same config (keynorm,
    the last token kept first as LU-KV's ``window=1`` protects it), at two budgets. The heads' shares make every
    head's count whole at this length: kvpress rounds each layer's counts, evolkv all layers' at once."""
    import numpy as np

    from evolkv.integrations import lukv

    scorer = ScorerSpec("keynorm", window=1, kernel=1)
    configs = []
    for budget, per_layer, shares in (("25%", (0.125, 0.25, 0.375, 0.25), (0.75, 0.25)),
                                      ("50%", (0.25, 0.5, 0.75, 0.5), (0.625, 0.375))):
        base = uniform_config(llama.spec, Budget.parse(budget), scorer)
        layers = tuple(dataclasses.replace(layer, budget=b, heads=shares) for layer, b in zip(base.layers, per_layer))
        configs.append(dataclasses.replace(base, layers=layers))
    path = tmp_path / "curve.npy"
    lukv.save(str(path), configs)
    ids = _prompt(llama)
    for cfg in configs:
        press = kvpress.LUKVPress(kvpress.KnormPress(), compression_ratio=1 - cfg.budget.value, sink=0, window=1)
        press._budget_curves = np.load(path)  # what a kvpress user writes: no evolkv import needed
        theirs = kvpress_kept(llama, ids, press)
        ours = evolkv_kept(llama, ids, cfg)
        assert [[len(h) for h in layer] for layer in ours] == [[round(b * 2 * s * LENGTH) for s in cfg.layers[0].heads]
                                                                for b in (layer.budget for layer in cfg.layers)]
        assert theirs == ours, cfg.budget
