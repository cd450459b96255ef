"""Prefill once, score many: the fast path equals real generation with the config applied."""

import dataclasses

import pytest
import torch

import evolkv
from evolkv.config import Budget, ScorerSpec, uniform_config
from evolkv.evaluators.evaluator import Evaluator
from evolkv.evaluators.tasks import synthetic
from evolkv.search.baselines import BASELINES, baseline
from evolkv.scorers import SCORERS as ALL_SCORERS
from evolkv.search.space import BudgetSpace

import numpy as np

SCORERS = [ScorerSpec(), ScorerSpec("streaming", 8, 1)]


@pytest.fixture
def evaluator(tiny):
    return Evaluator(tiny.model, tiny.tokenizer, tiny.spec, SCORERS, query_aware=True, batch_size=3)


def _samples(tiny, count=2, split="search"):
    return synthetic("passkey", count, 300, 0, split, tiny.tokenizer)


PRECISIONS = [(2, 2, 0), (4, 2, 9), (16, 4, 32), (8, 16, 0)]  # k_bits, v_bits, residual (any size)
EVICTED = [2, 0, 4, 8]  # MiKV tiers: evicted tokens kept at K{b}V{b} (0 = dropped)


def _mixed(cfg, shift=0, mikv=False):
    """Every layer at another precision (and residual window; with ``mikv``, another evicted tier)."""
    tiers = EVICTED[shift:] + EVICTED[:shift] if mikv else [0] * len(EVICTED)
    layers = [dataclasses.replace(layer, k_bits=k, v_bits=v, residual=r, evicted_bits=e)
              for layer, (k, v, r), e in zip(cfg.layers, PRECISIONS[shift:] + PRECISIONS[:shift], tiers)]
    return dataclasses.replace(cfg, layers=tuple(layers))


def _per_head(cfg, shift=0):
    """Every layer's KV heads each at another precision (some at 16 bits), residual windows per layer."""
    rot = PRECISIONS[shift:] + PRECISIONS[:shift]
    heads = cfg.model.num_kv_heads
    layers = [dataclasses.replace(layer, residual=rot[i][2],
                                  head_bits=tuple(rot[(i + h) % len(rot)][:2] for h in range(heads)))
              for i, layer in enumerate(cfg.layers)]
    return dataclasses.replace(cfg, layers=tuple(layers))


def _assert_scores_as_generated(tiny, evaluator, prep, cfg, others=(), new_tokens=4):
    """``cfg`` scored on the shared prefill of ``prep`` (second in a batch after ``others[0]``, the rest
    after it) gives the log-probabilities ``evolkv.apply`` + ``generate`` gives, token for token."""
    prompt = torch.cat([evaluator._encode(prep.sample.context, True),
                        evaluator._encode("\n" + prep.sample.question, False)])[None].to(tiny.model.device)
    with torch.no_grad(), evolkv.apply(tiny.model, cfg, tokenizer=tiny.tokenizer):
        gen = tiny.model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True)
    tokens = gen.sequences[0, prompt.shape[1]:]
    teacher = dataclasses.replace(prep, feed=tokens[:-1], targets=tokens[1:])
    batch = [*others[:1], cfg, *others[1:]]
    fast = evaluator._logprobs(batch, teacher)[min(len(others), 1)]
    slow = torch.log_softmax(torch.stack(gen.logits[1:])[:, 0].float(), dim=-1)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("budget", ["10%", "30%", "30%-quantized", "100%-quantized", "30%-mikv", "30%-perhead"])
def test_fast_path_logits_equal_generate_with_config_applied(tiny, evaluator, budget, kernels, monkeypatch):
    if kernels == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("EVOLKV_KERNELS", kernels)  # the Triton kernel runs under TRITON_INTERPRET=1 on CPU
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    budget, quantized, mikv, heads = budget.split("-")[0], "-" in budget, budget.endswith("mikv"), budget.endswith("head")
    space = BudgetSpace(tiny.spec, Budget.parse(budget), per_head=True)
    cfg = space.decode(np.random.default_rng(0).uniform(-2, 2, space.n_var))
    others = [uniform_config(tiny.spec, Budget.parse("100%"))]
    if heads:  # per-head precisions, beside per-layer ones reading the same packed prefills and other mixes
        cfg, others = _per_head(cfg, 0), others + [_mixed(cfg, 1), _per_head(cfg, 1), _per_head(cfg, 3)]
    elif quantized:  # scored beside candidates reading other packed prefills of the same layers
        cfg, others = _mixed(cfg, 0, mikv), others + [_mixed(cfg, 1, mikv), _mixed(cfg, 2, mikv), _mixed(cfg, 2)]
    _assert_scores_as_generated(tiny, evaluator, prep, cfg, others, new_tokens=6)


def test_scores_full_is_zero_and_every_baseline_is_finite(tiny, evaluator):
    from evolkv.search.baselines import scorers_of

    evaluator.add_scorers(scorers_of(BASELINES, tiny.spec, ScorerSpec()))  # kvzip, expected_attention
    prepared = evaluator.prepare(_samples(tiny))
    configs = [baseline(name, tiny.spec, Budget.parse("10%"), ScorerSpec()) for name in BASELINES]
    scores = evaluator.score(configs, prepared)
    by_name = dict(zip(BASELINES, scores))
    assert by_name["full"].objective == pytest.approx(0.0, abs=1e-6)
    assert all(s.ok and s.objective >= 0 for s in scores)
    assert set(by_name["uniform"].metrics) >= {"kl", "nll", "top1", "passkey/kl"}
    accuracy = evaluator.exact_match(configs[:2], prepared)
    full_em = evaluator.exact_match([baseline("full", tiny.spec, Budget.parse("10%"), ScorerSpec())], prepared)[0]
    by_hand = [float(p.sample.answer.strip().lower() in text.lower())  # RULER's string match, recomputed
               for p in prepared for text in evaluator._greedy([baseline("full", tiny.spec, Budget.parse("10%"),
                                                                        ScorerSpec())], p)]
    assert full_em["em"] == pytest.approx(sum(by_hand) / len(by_hand))
    assert set(accuracy[0]) == {"em", "passkey/em", "sim", "passkey/sim", "per_sample"}
    assert accuracy[0]["per_sample"] and sum(accuracy[0]["per_sample"]) / len(accuracy[0]["per_sample"]) == \
        pytest.approx(accuracy[0]["em"])  # passkey's own metric is string match, per sample in sample order


def test_batch_composition_does_not_change_scores(tiny, evaluator):
    prepared = evaluator.prepare(_samples(tiny, 1))
    space = BudgetSpace(tiny.spec, Budget.parse("10%"))
    configs = [space.decode(x) for x in np.random.default_rng(2).uniform(-2, 2, (5, space.n_var))]
    together = evaluator.score(configs, prepared)
    alone = [evaluator.score([cfg], prepared)[0] for cfg in configs]
    for a, b in zip(together, alone):
        assert a.objective == pytest.approx(b.objective, rel=1e-4, abs=1e-6)


def test_query_agnostic_feeds_the_question(tiny):
    evaluator = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, SCORERS, query_aware=False)
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    assert prep.feed.numel() > prep.targets.numel() and prep.first_token is None
    assert evaluator.score([uniform_config(tiny.spec, Budget.parse("10%"))], [prep])[0].ok


def test_greedy_answers_of_a_quantized_config_equal_generate(tiny, evaluator):
    """Exact match decodes over the (dequantized-once) packed prefill as ``generate`` does with the config."""
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    cfg = _mixed(uniform_config(tiny.spec, Budget.parse("40%")), 1)
    texts = evaluator._greedy([uniform_config(tiny.spec, Budget.parse("100%")), cfg], prep)
    prompt = torch.cat([evaluator._encode(prep.sample.context, True),
                        evaluator._encode("\n" + prep.sample.question, False)])[None].to(tiny.model.device)
    with torch.no_grad(), evolkv.apply(tiny.model, cfg):
        out = tiny.model.generate(prompt, max_new_tokens=prep.answer_tokens + 4, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)  # exact match decodes past EOS too
    assert texts[1] == tiny.tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)


def test_a_candidate_that_raises_is_split_off_and_recorded_as_failed(tiny, evaluator, monkeypatch):
    """A batch that raises (a shape a kernel refuses, out of memory...) is retried one candidate at a time; a
    candidate that fails alone is recorded as failed with its reason, the others are scored as if nothing
    happened; out of memory alone is the card's state, not the candidate's: it stops the scoring (the search
    turns it into one line naming `evolkv resume --batch-size`)."""
    prepared = evaluator.prepare(_samples(tiny, 1))
    configs = [uniform_config(tiny.spec, Budget.parse(b)) for b in ("10%", "20%", "30%", "40%")]
    expected = evaluator.score(configs, prepared)
    bad = configs[2].hash()
    real = evaluator._logprobs

    error = RuntimeError("unsupported shapes for decode attention")

    def flaky(batch, prep):
        if any(cfg.hash() == bad for cfg in batch):
            raise error
        return real(batch, prep)

    monkeypatch.setattr(evaluator, "_logprobs", flaky)
    scores = evaluator.score(configs, prepared)
    assert [s.status for s in scores] == ["ok", "ok", "failed", "ok"]
    assert "unsupported shapes" in scores[2].reason and scores[2].objective == float("inf")
    for got, want in zip(scores[:2] + scores[3:], expected[:2] + expected[3:]):
        assert got.objective == pytest.approx(want.objective, rel=1e-4, abs=1e-6)  # as batch composition
    error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluator.score(configs, prepared)


def test_aggregate_takes_the_objective_it_is_told():
    from evolkv.evaluators.evaluator import SampleScores, aggregate

    scores = SampleScores([{"kl": [0.1, 0.3], "nll": [2.0, 4.0]}], {})
    assert aggregate(scores)[0].objective == pytest.approx(0.2)
    assert aggregate(scores, "nll")[0].objective == pytest.approx(3.0)
    failed = aggregate(scores, "task")[0]
    assert not failed.ok and "no task" in failed.reason


@pytest.mark.parametrize("name", sorted(ALL_SCORERS))
def test_every_registered_scorer_scores_in_the_evaluator_as_generate_applies_it(tiny, name):
    """Each scorer's config scored on the shared prefill gives the logits `evolkv.apply` + `generate` gives."""
    spec = ScorerSpec(name)
    evaluator = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, [spec], query_aware=True)
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    cfg = dataclasses.replace(uniform_config(tiny.spec, Budget.parse("20%")), scorer=spec)
    _assert_scores_as_generated(tiny, evaluator, prep, cfg)


def test_a_config_with_a_scorer_per_layer_scores_as_generate_applies_it(tiny):
    """Layers ranked by different scorers (the --scorers gene), beside a one-scorer candidate in the batch."""
    names = ["snapkv", "tova", "criticalkv"]
    evaluator = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, [ScorerSpec(n) for n in names], query_aware=True)
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    space = BudgetSpace(tiny.spec, Budget.parse("20%"), ScorerSpec(), per_head=True,
                        choices=tuple(ScorerSpec(n) for n in names))
    genes = np.random.default_rng(0).uniform(-1, 1, space.n_var)
    genes[space.budget_vars:] = np.resize([-2.5, 0.0, 2.5], tiny.spec.num_layers)  # snapkv, tova, criticalkv, ...
    cfg = space.decode(genes)
    assert len(cfg.scorers()) == min(3, tiny.spec.num_layers)
    _assert_scores_as_generated(tiny, evaluator, prep, cfg, [uniform_config(tiny.spec, Budget.parse("20%"))])


@pytest.mark.parametrize("allocation", ["globaltopk", "prefixkv", "cake", "dynamickv"])
def test_a_per_prompt_allocation_scores_as_generate_applies_it(tiny, evaluator, allocation):
    """The allocators read every layer's ranking: the runtime compresses after the last layer's prefill, the
    evaluator from the captured rankings; both keep the same tokens."""
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    cfg = dataclasses.replace(baseline("uniform", tiny.spec, Budget.parse("15%"), ScorerSpec()),
                              allocation=allocation)
    _assert_scores_as_generated(tiny, evaluator, prep, cfg, [evaluator.full])


def test_kvzip_with_a_global_allocation_scores_as_generate_applies_it(tiny):
    """KVzip's own pairing: its replayed scores, spent over all layers and heads at once (globaltopk); the
    evaluator replays once per sample at prepare, the runtime after the prefill of ``generate``."""
    spec = ScorerSpec("kvzip", params={"chunk": 16})
    evaluator = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, [ScorerSpec(), spec], query_aware=True)
    prep = evaluator.prepare(_samples(tiny, 1))[0]
    cfg = dataclasses.replace(uniform_config(tiny.spec, Budget.parse("15%")), scorer=spec, allocation="globaltopk")
    _assert_scores_as_generated(tiny, evaluator, prep, cfg, [evaluator.full])


@pytest.mark.parametrize("name", [n for n in BASELINES if n != "full"])
def test_every_baseline_is_a_point_of_its_arm_of_the_policy_space(tiny, name):
    """The policy space holds every method: each baseline's arm (its scorer and rule) decodes the baseline's
    genes to a config that keeps exactly the baseline's tokens, layer by layer and head by head, and scores the
    same. The search starts each arm there."""
    from evolkv.search.space import Arm, PolicySpace

    budget = Budget.parse("15%")
    base = baseline(name, tiny.spec, budget, ScorerSpec())
    specs = list({s.key: s for s in [ScorerSpec(), base.scorer]}.values())
    if base.scorer.name == "kvzip":
        specs = [ScorerSpec(), dataclasses.replace(base.scorer, params=(("chunk", 16),))]
        base = dataclasses.replace(base, scorer=specs[1])
    evaluator = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, specs, query_aware=True)
    prepared = evaluator.prepare(_samples(tiny, 2))
    arm = Arm.of(base)
    view = PolicySpace(BudgetSpace(tiny.spec, budget, context=300), arm)
    point = view.decode(view.encode(base))
    assert arm.scorer == base.scorer and point.scorer == base.scorer
    assert evaluator.head_counts([point], prepared) == evaluator.head_counts([base], prepared)
    assert [s.objective for s in evaluator.score([point], prepared)] == \
        [s.objective for s in evaluator.score([base], prepared)]


@pytest.mark.parametrize("allocation", ["globaltopk", "cake", "dynamickv"])
def test_a_per_prompt_allocation_with_searched_priors_scores_as_generate_applies_it(tiny, evaluator, allocation):
    """A point of a per-prompt arm away from its baseline: layer priors and a static share."""
    from evolkv.search.space import Arm, PolicySpace

    prep = evaluator.prepare(_samples(tiny, 1))[0]
    view = PolicySpace(BudgetSpace(tiny.spec, Budget.parse("15%"), context=300), Arm(ScorerSpec(), allocation))
    genes = np.resize([2.0, -1.0, 0.5], view.n_var)
    genes[-1] = 1.5  # half of each head's planned tokens kept first
    cfg = view.decode(genes)
    assert cfg.prior and cfg.static == pytest.approx(0.5) and cfg.allocation == allocation
    _assert_scores_as_generated(tiny, evaluator, prep, cfg, [evaluator.full])
