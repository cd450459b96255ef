"""Split-sequence decode attention over per-head variable-length caches vs. ``reference.attend``."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels.decode_attention import decode_attention  # noqa: E402
from evolkv.kernels.reference import attend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = [torch.float32] if DEVICE == "cpu" else list(TOL)
CASES = [  # batch, H_kv, group, L, T_q, D, window, splits
    (2, 2, 4, 150, 1, 16, None, 3),
    (1, 1, 8, 97, 2, 32, 40, None),
    (3, 2, 1, 64, 1, 64, None, 1),
]


def _cache(batch, num_kv, length, dim, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(batch, num_kv, length, dim, generator=gen).to(DEVICE, dtype)
    values = torch.randn(batch, num_kv, length, dim, generator=gen).to(DEVICE, dtype)
    # per head: a random subset of positions < 300 in random order, padded with -1 (heads keep different counts)
    pos = torch.full((batch, num_kv, length), -1, dtype=torch.long)
    for b in range(batch):
        for h in range(num_kv):
            kept = int(torch.randint(0, length + 1, (1,), generator=gen))
            pos[b, h, :kept] = torch.randperm(300, generator=gen)[:kept]
    return keys, values, pos.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    batch, num_kv, group, length, t_q, dim, window, splits = case
    keys, values, pos = _cache(batch, num_kv, length, dim, dtype, seed=length)
    query = torch.randn(batch, num_kv * group, t_q, dim, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    query_pos = torch.arange(300, 300 + t_q)
    pos[..., -t_q:] = query_pos.to(DEVICE)  # the new tokens themselves are always there
    out, lse = decode_attention(query, keys, values, pos, query_pos, dim ** -0.5, window, splits, block_n=16)
    ref, ref_lse = attend(query, keys, values, pos, query_pos, dim ** -0.5, window)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=atol, rtol=rtol)


@pytest.mark.parametrize("compact", [True, False], ids=["compact-scales", "per-element-scales"])
@pytest.mark.parametrize("block_n", [16, 64], ids=["block-in-group", "block-over-groups"])
@pytest.mark.parametrize("bits", [(2, 2), (4, 8), (16, 2), (4, 16)])
def test_packed_cache_matches_dequantized_reference(bits, compact, block_n):
    """The runtime's quantized part: B * H_kv rows packed, read and dequantized inside the kernel."""
    from evolkv.kernels.decode_attention import decode_attention_packed
    from evolkv.kernels.packed import attend_packed_ref, pack

    batch, num_kv, group, length, dim = 2, 2, 4, 90, 32
    keys, values, pos = _cache(batch, num_kv, length, dim, torch.float32, seed=sum(bits))
    packed = pack(keys.flatten(0, 1), values.flatten(0, 1), *bits, group=32)
    query = torch.randn(batch, num_kv * group, 1, dim, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    query_pos = torch.tensor([400])
    out, lse = decode_attention_packed(query, packed, pos, query_pos, dim ** -0.5, splits=2, block_n=block_n,
                                       compact_scales=compact)
    ref, ref_lse = attend_packed_ref(query, packed, pos, query_pos, dim ** -0.5)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("splits", [1, 3])
def test_nothing_visible_gives_zero_output(splits):
    keys, values, pos = _cache(1, 2, 48, 16, torch.float32, seed=9)
    pos = torch.full_like(pos, -1)
    query = torch.randn(1, 4, 1, 16).to(DEVICE)
    out, lse = decode_attention(query, keys, values, pos, torch.tensor([60]), 0.25, None, splits, block_n=16)
    ref, ref_lse = attend(query, keys, values, pos, torch.tensor([60]), 0.25)
    torch.testing.assert_close(out, ref)
    assert torch.isneginf(lse).all() and torch.isneginf(ref_lse).all()


def test_the_environment_picks_the_packed_decode_kernel(monkeypatch):
    from evolkv import kernels

    monkeypatch.delenv("EVOLKV_PACKED_DECODE", raising=False)
    assert kernels.packed_decode_mode() == "gluon"  # the default (folded's pairs behind it)
    for mode in ("pairs", "plain", "gluon"):
        monkeypatch.setenv("EVOLKV_PACKED_DECODE", mode)
        assert kernels.packed_decode_mode() == mode
    with kernels.for_graph():  # the serving path's warm-up and capture: the kernels a graph replays
        assert kernels._FOR_GRAPH
    assert not kernels._FOR_GRAPH
    monkeypatch.setenv("EVOLKV_PACKED_DECODE", "asm")
    with pytest.raises(ValueError, match="gluon, pairs, plain"):
        kernels.packed_decode_mode()
