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


def _kept_by_keys(full, kept):
    """Positions of the kept keys [H_kv, n, D] among the full ones [H_kv, T, D] (exact copies)."""
    sets = []
    for h in range(full.shape[0]):
        distance = torch.cdist(kept[h].float(), full[h].float())  # [n, T]
        sets.append(set(distance.argmin(dim=1).tolist()))
    return sets


def kvpress_kept(tiny, ids, press):
    """kvpress's kept positions, per layer and KV head."""
    full = _full_keys(tiny, ids)
    cache = DynamicCache()
    with torch.no_grad(), press(tiny.model):
        tiny.model(ids, past_key_values=cache)
    kept = []
    for i, (layer, attn) in enumerate(zip(cache.layers, _layers_of(tiny.model))):
        masked = getattr(attn, "masked_key_indices", None)
        if masked is not None:  # AdaKV masks instead of pruning: kept = all but the masked
            sets = [set(range(full[i].shape[1])) for _ in range(full[i].shape[0])]
            for b, h, t in zip(*(m.tolist() for m in masked)):
                sets[h].discard(t)
            attn.masked_key_indices = None
            kept.append(sets)
        else:
            kept.append(_kept_by_keys(full[i], layer.keys[0]))
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
