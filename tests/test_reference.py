"""The torch reference attention against transformers' own attention on a dense cache, and the gather."""

import pytest
import torch
import torch.nn.functional as F

from evolkv.kernels.reference import attend, gather_kv

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("window", [None, 7])
def test_dense_attend_matches_sdpa(dtype, group, window):
    torch.manual_seed(0)
    b, h_kv, t, d = 2, 2, 23, 16
    q = torch.randn(b, h_kv * group, t, d, dtype=dtype)
    k, v = torch.randn(b, h_kv, t, d, dtype=dtype), torch.randn(b, h_kv, t, d, dtype=dtype)
    pos = torch.arange(t).expand(b, h_kv, t)
    out, lse = attend(q, k, v, pos, torch.arange(t), d ** -0.5, window)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None]
    mask = (j <= i) & ((j > i - window) if window else True)
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(group, 1),
                                         v.float().repeat_interleave(group, 1), attn_mask=mask)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)
    assert torch.isfinite(lse).all()


def test_gather_keeps_ranking_prefix_and_pads_with_minus_one():
    t, d = 10, 4
    keys = torch.arange(t, dtype=torch.float32)[None, None, :, None].expand(1, 2, t, d)
    order = torch.stack([torch.arange(t), torch.arange(t).flip(0)])[None]  # [1, 2, T]
    counts = torch.tensor([[3, 1], [0, 2]])  # two candidates
    k, v, pos = gather_kv(keys, keys, order, counts)
    assert k.shape == (2, 2, 3, d)
    assert pos[0, 0].tolist() == [0, 1, 2] and pos[0, 1].tolist() == [9, -1, -1]
    assert pos[1, 0].tolist() == [-1, -1, -1] and pos[1, 1].tolist() == [9, 8, -1]
    assert k[0, 1, 0, 0] == 9


def test_empty_head_attends_only_to_new_tokens():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    pos = torch.tensor([[[-1, -1, 5]]])  # only the new token itself is visible
    out, _ = attend(q, k, v, pos, torch.tensor([5]), 0.3)
    torch.testing.assert_close(out, v[:, :, 2:3].expand(1, 2, 1, 8))
