"""Each scorer against a ranking worked out by hand on a tiny tensor (and ``rank`` itself)."""

import math

import pytest
import torch

from evolkv.errors import ConfigError
from evolkv.scorers import H2O, TOVA, CriticalKV, DefensiveKV, KeyDiff, KeyNorm, Observation, SnapKV, StreamingLLM, rank


def _obs(queries, keys, values=None, scaling=1.0, layer=0):
    """An observation whose window is the given queries (they are the prompt's last ones)."""
    return Observation(layer, queries, keys, keys if values is None else values, scaling)


def _order(scores, window=1, first_valid=0):
    return rank(scores, window, first_valid)[0][0, 0].tolist()


def test_keynorm_keeps_the_smallest_keys_first():
    keys = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])[None, None]  # norms 3 1 2 5 1.41
    scores = KeyNorm().score(_obs(torch.zeros(1, 1, 1, 2), keys))
    assert scores.shape == (1, 1, 5)
    assert _order(scores) == [4, 1, 2, 0, 3]  # the window (last token), then norms 1 < 2 < 3 < 5


def test_streaming_keeps_sinks_then_the_most_recent():
    scores = StreamingLLM(sinks=2).score(_obs(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 8, 4)))
    assert _order(scores) == [7, 0, 1, 6, 5, 4, 3, 2]


def test_snapkv_is_the_windows_attention_summed_then_pooled():
    # one KV head, two query heads of its group, a window of two queries, keys on a line: k_t = t (D = 1)
    keys = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1)
    queries = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).view(1, 2, 2, 1)  # [B, H_q, w, D]
    got = SnapKV(window=2, kernel=1).score(_obs(queries, keys))[0, 0]
    expected = [0.0] * 6
    for head in range(2):
        for i, position in enumerate((4, 5)):  # the window's queries sit at positions 4 and 5 (causal)
            q = queries[0, head, i, 0].item()
            logits = [q * t for t in range(position + 1)]
            norm = sum(math.exp(v) for v in logits)
            for t, v in enumerate(logits):
                expected[t] += math.exp(v) / norm / 2  # summed over the window, averaged over the group
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    pooled = SnapKV(window=2, kernel=3).score(_obs(queries, keys))[0, 0]
    by_hand = [sum(expected[max(t - 1, 0):t + 2]) / len(expected[max(t - 1, 0):t + 2]) for t in range(6)]
    assert torch.allclose(pooled, torch.tensor(by_hand), atol=1e-6)  # average pool, edges without padding
    body = sorted(range(4), key=lambda t: -expected[t])
    assert _order(got[None, None], window=2) == [5, 4, *body]


def test_rank_puts_tokens_outside_a_sliding_window_last():
    scores = torch.tensor([[[9.0, 8.0, 1.0, 2.0, 0.0]]])
    order, sorted_scores = rank(scores, window=1, first_valid=2)
    assert order[0, 0].tolist() == [4, 3, 2, 0, 1]
    assert math.isinf(sorted_scores[0, 0, 0]) and sorted_scores[0, 0, -1] == float("-inf")


def test_tova_is_the_last_querys_attention_averaged_over_the_group():
    keys = torch.arange(5, dtype=torch.float32).view(1, 1, 5, 1)
    queries = torch.tensor([[9.0, 1.0], [9.0, -0.5]]).view(1, 2, 2, 1)  # two query heads; the last query matters
    got = TOVA(window=2).score(_obs(queries, keys))[0, 0]
    expected = []
    for t in range(5):
        per_head = [math.exp(q * t) / sum(math.exp(q * s) for s in range(5)) for q in (1.0, -0.5)]
        expected.append(sum(per_head) / 2)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert _order(got[None, None], window=1) == [4, *sorted(range(4), key=lambda t: -expected[t])]


def test_the_attention_is_computed_once_per_window_and_shared():
    obs = _obs(torch.randn(1, 2, 6, 4), torch.randn(1, 1, 6, 4))
    first = obs.attention(3)
    assert obs.attention(3) is first and first.shape == (1, 1, 2, 3, 6)
    assert torch.allclose(first.sum(-1), torch.ones(1, 1, 2, 3))
    assert obs.attention(50).shape[3] == 6  # a window longer than the prompt is the whole prompt


def test_a_new_scorer_is_one_class_and_one_registration(tmp_path, monkeypatch):
    """What README's "Adding a scorer" says: a file with a registered ``Scorer`` subclass that may use the
    layer's values and its own parameters; nothing else changes, and configs and baselines can name it."""
    import dataclasses
    import sys

    from evolkv.config import ScorerSpec
    from evolkv.scorers import SCORERS, Scorer, register

    (tmp_path / "vnorm_scorer.py").write_text(
        "from dataclasses import dataclass\n"
        "from evolkv.scorers import Scorer, register\n\n"
        "@register('vnorm-test')\n@dataclass\nclass VNorm(Scorer):\n    power: float = 1.0\n\n"
        "    def score(self, obs):\n        return obs.values.float().norm(dim=-1) ** self.power\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(SCORERS, "vnorm-test", raising=False)
    import importlib
    module = importlib.import_module("vnorm_scorer")
    try:
        spec = ScorerSpec("vnorm-test", window=1, params={"power": 2.0})
        scorer = spec.build()
        assert dataclasses.asdict(scorer)["power"] == 2.0 and isinstance(scorer, Scorer)
        values = torch.tensor([[1.0], [3.0], [2.0], [0.5]])[None, None]
        assert _order(scorer.score(_obs(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 4, 1), values))) == [3, 1, 2, 0]
        assert spec.to_dict()["params"] == {"power": 2.0} and "power=2" in spec.key
    finally:
        SCORERS.pop("vnorm-test", None)
        sys.modules.pop(module.__name__, None)


def test_scorer_parameters_are_checked_and_absent_from_default_json():
    import pytest

    from evolkv.config import ScorerSpec
    from evolkv.errors import ConfigError

    assert ScorerSpec().to_dict() == {"name": "snapkv", "window": 8, "kernel": 5}  # old configs hash the same
    assert ScorerSpec("streaming", params={"sinks": 2}).build().sinks == 2
    with pytest.raises(ConfigError, match="has no parameter 'sink'.*sinks"):
        ScorerSpec("streaming", params={"sink": 2})


def test_every_scorer_a_baseline_names_is_prepared():
    from evolkv.config import ModelSpec, ScorerSpec
    from evolkv.search.baselines import scorers_of

    spec = ModelSpec("m", "llama", 2, 4, 2, 16, ("full_attention",) * 2)
    keys = [s.key for s in scorers_of(["full", "uniform", "streaming", "adakv"], spec, ScorerSpec("keynorm"))]
    assert keys == ["keynorm:8:5", "streaming:8:1"]  # the run's own first, each once


def test_h2o_is_the_windows_attention_summed_without_pooling():
    keys = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1)
    queries = torch.tensor([0.5, 1.0]).view(1, 1, 2, 1)  # the window: queries at positions 2 and 3
    got = H2O(window=2).score(_obs(queries, keys))[0, 0]
    first = [math.exp(0.5 * t) / sum(math.exp(0.5 * s) for s in range(3)) for t in range(3)] + [0.0]  # causal
    second = [math.exp(1.0 * t) / sum(math.exp(1.0 * s) for s in range(4)) for t in range(4)]
    assert torch.allclose(got, torch.tensor([a + b for a, b in zip(first, second)]), atol=1e-6)


def test_keydiff_keeps_the_keys_least_like_the_mean_first():
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, -0.1], [-1.0, 0.0]])[None, None]
    mean = (keys[0, 0] / keys[0, 0].norm(dim=-1, keepdim=True)).mean(0)  # the anchor: the mean unit key
    expected = [-float(torch.dot(k, mean) / (k.norm() * mean.norm())) for k in keys[0, 0]]
    got = KeyDiff(window=1).score(_obs(torch.zeros(1, 1, 1, 2), keys))[0, 0]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert _order(got[None, None], window=1)[:2] == [4, 2]  # the window (last token), then the odd one out


def test_criticalkv_weighs_attention_by_the_values_norm():
    keys = torch.zeros(1, 1, 3, 1)  # equal logits: every token gets a third of each query's attention
    values = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 4.0]])[None, None]
    got = CriticalKV(window=1).score(_obs(torch.ones(1, 1, 1, 1), keys, values))[0, 0]
    assert torch.allclose(got, (1 / 3 + 1e-4) * torch.tensor([1.0, 4.0, 5.0]), atol=1e-6)


def test_criticalkv_projected_takes_the_l1_norm_through_the_output_projection():
    """Two query heads share one KV head; each projects the value through its own slice of W_o, and the
    group's mean of the L1 norms weighs the (equal) attention."""
    keys = torch.zeros(1, 1, 2, 2)
    values = torch.tensor([[1.0, 0.0], [0.0, 2.0]])[None, None]  # [B, H_kv, T, D]
    w_o = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, -3.0, 0.0, 1.0]])  # [hidden 2, H_q 2 * D 2]
    obs = Observation(0, torch.ones(1, 2, 1, 2), keys, values, 1.0, out_proj=w_o)
    got = CriticalKV(window=1, projected=True).score(obs)[0, 0]
    # head 0: v0 -> (1, 0) |.|=1, v1 -> (0, -6) |.|=6; head 1: v0 -> (2, 0) = 2, v1 -> (0, 2) = 2
    assert torch.allclose(got, (0.5 + 1e-4) * torch.tensor([1.5, 4.0]), atol=1e-6)
    with pytest.raises(ConfigError, match="o_proj"):
        CriticalKV(window=1, projected=True).score(_obs(torch.ones(1, 1, 1, 2), keys, values))


def test_h2o_average_divides_by_the_queries_that_see_each_token():
    """kvpress's ObservedAttention: every prompt query observes; a token's sum over the T - t queries at or
    after it, divided by that count."""
    keys = torch.arange(4, dtype=torch.float32).view(1, 1, 4, 1)
    queries = torch.tensor([0.3, 0.5, 0.7, 1.0]).view(1, 1, 4, 1)
    obs = _obs(queries, keys)
    summed = obs.attention(4)[0, 0, 0].sum(0)
    got = H2O(window=1, queries=4, average=True).score(obs)[0, 0]
    assert torch.allclose(got, summed / torch.tensor([4.0, 3.0, 2.0, 1.0]), atol=1e-6)
    last_two = H2O(window=1, queries=2, average=True).score(obs)[0, 0]  # only the last 2 observe
    assert torch.allclose(last_two, obs.attention(2)[0, 0, 0].sum(0) / torch.tensor([2.0, 2.0, 2.0, 1.0]))


def test_defensivekv_takes_the_worst_case_over_the_window():
    """Token 0 matters to one window query only, token 1 a little to four: the mean ranks token 1 first, the
    worst case (the largest attention any window query gives) token 0."""
    keys = torch.tensor([[3.0, 0.0], [0.0, 1.5]] + [[0.0, 0.0]] * 6)[None, None]
    queries = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 4)[None, None]  # the window: positions 3 to 7
    attention = _obs(queries, keys).attention(5)[0, 0, 0]  # [w, T]
    got = DefensiveKV(window=5).score(_obs(queries, keys))[0, 0]
    assert torch.allclose(got, attention.amax(dim=0), atol=1e-6)
    mean = H2O(window=5).score(_obs(queries, keys))[0, 0] / 5
    assert got[0] > got[1] and mean[0] < mean[1]


def test_rkv_is_importance_minus_redundancy_and_drops_the_duplicate_key():
    """Tokens 0 and 1 share one key and the window's attention; token 2 is unlike every other key: R-KV keeps
    it ahead of the duplicates even though it receives a little less attention."""
    from evolkv.scorers import RKV

    keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.7, 0.7]])[None, None]
    queries = torch.tensor([[2.0, 1.6]])[None, None]  # the window: the last query
    obs = _obs(queries, keys)
    votes = obs.attention(1).sum(dim=3).mean(dim=2)[0, 0]
    unit = keys[0, 0] / keys[0, 0].norm(dim=-1, keepdim=True)
    similarity = torch.tensor([float(sum(torch.dot(u, v) for v in unit) / 5) for u in unit])
    expected = 0.1 * votes / votes.sum() - 0.9 * similarity.softmax(dim=0)
    got = RKV(window=1, kernel=1).score(obs)[0, 0]
    assert torch.allclose(got, expected, atol=1e-6)
    assert votes[2] < votes[0] and got[2] > got[0]


def test_mixkv_weighs_diversity_by_the_heads_redundancy():
    """Two heads: one whose keys all point one way (redundant: diversity weighs in), one whose keys are
    orthogonal (no redundancy: importance alone)."""
    from evolkv.scorers import MixKV
    from evolkv.scorers.rkv import importance

    redundant = torch.tensor([[1.0, 0.0], [1.0, 0.2], [1.0, -0.2], [1.0, 0.0]])
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # unit keys cancel: r = 0
    keys = torch.stack([redundant, spread])[None]  # [1, 2, 4, 2]
    obs = _obs(torch.tensor([[0.3, 0.9], [0.5, 0.5]]).view(1, 2, 1, 2), keys)
    got = MixKV(window=1, kernel=1).score(obs)[0]
    imp = importance(obs, 1, 1)[0]
    assert torch.allclose(got[1], imp[1], atol=1e-6)  # no redundancy: importance alone
    unit = redundant / redundant.norm(dim=-1, keepdim=True)
    centre = unit.mean(0)
    r = float(centre.dot(centre))
    diversity = 1 - unit @ centre / centre.norm()
    expected = (1 - r) * imp[0] + r * diversity / diversity.sum()
    assert 0.9 < r < 1 and torch.allclose(got[0], expected, atol=1e-6)


def test_compresskv_ranks_every_head_by_the_retrieval_heads_votes():
    """Head 1 looks far back (to token 0); head 0 only at the recent tokens: both heads are ranked by head 1's
    attention."""
    from evolkv.scorers import CompressKV

    keys = torch.zeros(1, 2, 6, 1)
    keys[0, 1, 0, 0] = 5.0  # head 1: token 0 stands out to a positive query
    keys[0, 0, 4:, 0] = 5.0  # head 0: the recent tokens stand out
    queries = torch.ones(1, 2, 2, 1)  # window of 2 queries, one query head per KV head
    obs = _obs(queries, keys)
    got = CompressKV(window=2, kernel=1, retrieval=1).score(obs)[0]
    head1 = obs.attention(2).sum(dim=3).mean(dim=2)[0, 1]
    assert torch.allclose(got[0], head1) and torch.allclose(got[1], head1)
    assert _order(got[None, 0:1], window=2)[2] == 0  # after the window, token 0 first


def test_expected_attention_is_the_softmax_of_the_gaussian_logit_times_the_value_norm():
    from evolkv.scorers import ExpectedAttention

    torch.manual_seed(0)
    keys, values = torch.randn(1, 1, 7, 4), torch.randn(1, 1, 7, 4)
    queries = torch.randn(1, 2, 7, 4)  # two query heads share the KV head
    got = ExpectedAttention(statistics=5, sinks=1).score(_obs(queries, keys, values, scaling=0.5))[0, 0]
    expected = torch.zeros(6)
    for head in range(2):
        q = queries[0, head, -5:].double()
        mu, cov = q.mean(0), torch.cov(q.T, correction=0)
        k = keys[0, 0, 1:].double()
        logits = 0.5 * k @ mu + 0.5 * 0.25 * torch.einsum("td,de,te->t", k, cov, k)
        expected += (logits.softmax(0) / 2).float()
    expected *= values[0, 0, 1:].norm(dim=-1)
    assert torch.allclose(got[1:], expected, atol=1e-5)
    assert got[0] == expected.max() + 1  # the sink scores above every other token
    plain = ExpectedAttention(statistics=5, sinks=1, covariance=False).score(_obs(queries, keys, values, scaling=0.5))
    assert not torch.allclose(plain[0, 0], got)


def test_expected_attention_undoes_rope_and_averages_it_over_the_future():
    """With the layer's RoPE known, the statistics are those of the queries before rotation, rotated by RoPE's
    mean matrix over the next ``future`` positions: rotating the queries by any RoPE first changes nothing."""
    from evolkv.scorers import ExpectedAttention
    from evolkv.scorers.base import rotate_half
    from evolkv.scorers.expected_attention import _mean_rotation

    torch.manual_seed(1)
    dim, length = 4, 9
    freqs = torch.tensor([1.0, 0.1])

    def rotary(positions):
        angles = positions[:, None].float() * freqs[None]
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    keys, values = torch.randn(1, 1, length, dim), torch.randn(1, 1, length, dim)
    raw = torch.randn(1, 1, length, dim)
    cos, sin = rotary(torch.arange(length))
    rotated = raw * cos + rotate_half(raw) * sin
    scorer = ExpectedAttention(sinks=2, future=16)
    got = scorer.score(Observation(0, rotated, keys, values, 1.0, rotary=rotary))[0, 0]
    r = _mean_rotation(*rotary(torch.arange(length, length + 16)))
    q = raw[0, 0, 2:]
    mu, cov = q.mean(0) @ r.T, r @ torch.cov(q.T, correction=0) @ r.T
    k = keys[0, 0, 2:]
    want = (k @ mu + 0.5 * torch.einsum("td,de,te->t", k, cov, k)).softmax(0) * values[0, 0, 2:].norm(dim=-1)
    assert torch.allclose(got[2:], want, atol=1e-5)
    cos_f, sin_f = rotary(torch.tensor([3]))
    assert torch.allclose(_mean_rotation(cos_f, sin_f) @ raw[0, 0, 0], (raw * cos_f + rotate_half(raw) * sin_f)[0, 0, 0],
                          atol=1e-6)  # one position's matrix is RoPE itself
