"""KVzip's replay scores: the two-pass Triton kernels (``kernels.replay``) vs. the torch softmax
(``reference.replay_scores``), and the dispatch the replay pass takes."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels import reference  # noqa: E402
from evolkv.kernels.replay import replay_scores  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [  # batch, H_kv, group, queries, sinks, chunk, D
    (1, 2, 4, 37, 4, 50, 32),
    (2, 1, 3, 70, 0, 20, 16),
    (1, 3, 1, 5, 4, 130, 64),  # fewer queries than a block, a chunk over two key blocks
    (1, 2, 2, 9, 4, 12, 128),  # an 8B model's head size
]


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case):
    batch, num_kv, group, num_q, sink, count, dim = case
    gen = torch.Generator().manual_seed(num_q)
    query = torch.randn(batch, num_kv, group, num_q, dim, generator=gen) * 2
    keys = torch.randn(batch, num_kv, sink + count + num_q, dim, generator=gen)
    dtype = torch.float32 if DEVICE == "cpu" else torch.bfloat16
    query, keys = query.to(DEVICE, dtype), keys.to(DEVICE, dtype)
    out = replay_scores(query, keys, dim ** -0.5, sink, count)
    ref = reference.replay_scores(query, keys, dim ** -0.5, sink, count)
    assert out.shape == (batch, num_kv, count) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5 if dtype == torch.float32 else 2e-3, rtol=1e-4 if dtype ==
                               torch.float32 else 2e-2)


def test_a_query_block_sees_only_earlier_reconstruction_tokens():
    """A reconstruction query's own later tokens carry all the mass they would get, were they visible: the
    first query's probabilities then sum to one over the sinks, the chunk and itself."""
    dim, count = 16, 8
    query = torch.zeros(1, 1, 1, 3, dim)
    keys = torch.zeros(1, 1, count + 3, dim)
    keys[0, 0, -1] = 50.0  # the last reconstruction token: invisible to the first two queries
    query[..., :] = 1.0
    out = replay_scores(query.to(DEVICE), keys.to(DEVICE), 1.0, 0, count)
    torch.testing.assert_close(out.cpu(), torch.full((1, 1, count), 1.0 / (count + 1)))
