"""Each scorer against a ranking worked out by hand on a tiny tensor (and ``rank`` itself)."""

import math

import torch

from evolkv.evaluators.scorers import KeyNorm, SnapKV, StreamingLLM, rank


def _order(scores, window=1, first_valid=0):
    return rank(scores, window, first_valid)[0][0, 0].tolist()


def test_keynorm_keeps_the_smallest_keys_first():
    keys = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])[None, None]  # norms 3 1 2 5 1.41
    scores = KeyNorm().score(torch.zeros(1, 2, 1, 2), keys, 1.0)
    assert scores.shape == (1, 1, 5)
    assert _order(scores) == [4, 1, 2, 0, 3]  # the window (last token), then norms 1 < 2 < 3 < 5


def test_streaming_keeps_sinks_then_the_most_recent():
    scores = StreamingLLM(sinks=2).score(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 8, 4), 1.0)
    assert _order(scores) == [7, 0, 1, 6, 5, 4, 3, 2]


def test_snapkv_is_the_windows_attention_summed_then_pooled():
    # one KV head, two query heads of its group, a window of two queries, keys on a line: k_t = t (D = 1)
    keys = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1)
    queries = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).view(1, 2, 2, 1)  # [B, H_q, w, D]
    got = SnapKV(window=2, kernel=1).score(queries, keys, scaling=1.0)[0, 0]
    expected = [0.0] * 6
    for head in range(2):
        for i, position in enumerate((4, 5)):  # the window's queries sit at positions 4 and 5 (causal)
            q = queries[0, head, i, 0].item()
            logits = [q * t for t in range(position + 1)]
            norm = sum(math.exp(v) for v in logits)
            for t, v in enumerate(logits):
                expected[t] += math.exp(v) / norm / 2  # summed over the window, averaged over the group
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    pooled = SnapKV(window=2, kernel=3).score(queries, keys, scaling=1.0)[0, 0]
    by_hand = [sum(expected[max(t - 1, 0):t + 2]) / len(expected[max(t - 1, 0):t + 2]) for t in range(6)]
    assert torch.allclose(pooled, torch.tensor(by_hand), atol=1e-6)  # average pool, edges without padding
    body = sorted(range(4), key=lambda t: -expected[t])
    assert _order(got[None, None], window=2) == [5, 4, *body]


def test_rank_puts_tokens_outside_a_sliding_window_last():
    scores = torch.tensor([[[9.0, 8.0, 1.0, 2.0, 0.0]]])
    order, sorted_scores = rank(scores, window=1, first_valid=2)
    assert order[0, 0].tolist() == [4, 3, 2, 0, 1]
    assert math.isinf(sorted_scores[0, 0, 0]) and sorted_scores[0, 0, -1] == float("-inf")
