"""The gathered-attention Triton kernel against its torch reference (on CPU under TRITON_INTERPRET=1)."""

import pytest
import torch

triton = pytest.importorskip("triton")  # conftest sets TRITON_INTERPRET=1 on machines without CUDA

from evolkv.kernels.gathered_attention import gathered_attention, gathered_attention_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}
DTYPES = [torch.float32] if DEVICE == "cpu" else list(TOL)


def _inputs(cands, num_kv, group, context, t_q, dim, dtype, counts=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE, dtype)  # noqa: E731
    q = rand(cands, num_kv * group, t_q, dim)
    keys, values = rand(num_kv, context, dim), rand(num_kv, context, dim)
    new_k, new_v = rand(cands, num_kv, t_q, dim), rand(cands, num_kv, t_q, dim)
    order = torch.stack([torch.randperm(context, generator=gen) for _ in range(num_kv)])[None].to(DEVICE)
    if counts is None:
        counts = torch.randint(0, context + 1, (cands, num_kv), generator=gen)
    return q, keys, values, order, counts.to(DEVICE), new_k, new_v


CASES = [  # cands, H_kv, group, context, T_q, head_dim, window
    (3, 2, 1, 50, 5, 16, None),
    (2, 2, 4, 37, 3, 32, None),
    (2, 1, 8, 70, 4, 16, 20),
    (4, 2, 4, 20, 1, 64, None),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    cands, num_kv, group, context, t_q, dim, window = case
    args = _inputs(cands, num_kv, group, context, t_q, dim, dtype)
    out, lse = gathered_attention(*args, dim ** -0.5, window, block_m=16, block_n=16)
    ref, ref_lse = gathered_attention_ref(*args, dim ** -0.5, window)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=atol, rtol=rtol)


@pytest.mark.parametrize("budget", ["none", "full"])
def test_budgets_zero_and_full(budget):
    cands, num_kv, context = 2, 2, 33
    counts = torch.zeros(cands, num_kv, dtype=torch.long) if budget == "none" else torch.full((cands, num_kv), context)
    args = _inputs(cands, num_kv, 2, context, 3, 16, torch.float32, counts=counts, seed=1)
    out, _ = gathered_attention(*args, 0.25, block_m=16, block_n=16)
    ref, _ = gathered_attention_ref(*args, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)


def test_queries_after_earlier_new_tokens():
    """Greedy decoding: 4 tokens already appended after the prefill, one query (the last)."""
    q, keys, values, order, counts, new_k, new_v = _inputs(2, 2, 4, 40, 5, 16, torch.float32, seed=3)
    out, lse = gathered_attention(q[:, :, -1:], keys, values, order, counts, new_k, new_v, 0.25, 16,
                                  block_m=16, block_n=16)
    ref, ref_lse = gathered_attention_ref(q[:, :, -1:], keys, values, order, counts, new_k, new_v, 0.25, 16)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-4, rtol=2e-4)


def test_every_output_is_written():
    args = _inputs(3, 2, 4, 29, 5, 16, torch.float32, seed=2)
    poisoned = torch.full_like(args[0], float("nan")), torch.full(args[0].shape[:3], float("nan"), device=DEVICE)
    out, lse = gathered_attention(*args, 0.25, block_m=16, block_n=16, out=poisoned[0], lse=poisoned[1])
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


def test_rejects_bad_shapes():
    q, keys, values, order, counts, new_k, new_v = _inputs(2, 2, 2, 10, 2, 16, torch.float32)
    with pytest.raises(ValueError):
        gathered_attention(q[:, :3], keys, values, order, counts, new_k, new_v, 0.25)
    with pytest.raises(ValueError):
        gathered_attention(q, keys, values, order, counts[:1], new_k, new_v, 0.25)


PACKED_CASES = [  # cands, H_kv, group, context, T_q, head_dim, window, k_bits, v_bits, group_size, residual
    (3, 2, 4, 70, 3, 32, None, 2, 2, 32, 0),
    (2, 2, 1, 100, 2, 64, None, 4, 2, 32, 32),
    (2, 1, 8, 75, 4, 16, 30, 8, 4, 32, 17),  # a residual inside a group: groups start there
    (2, 2, 2, 80, 2, 32, None, 4, 2, 32, 5),
    (3, 2, 4, 90, 2, 32, None, 16, 2, 64, 0),
    (2, 2, 2, 45, 3, 32, None, 2, 16, 32, 32),
]


@pytest.mark.parametrize("compact", [True, False], ids=["compact-scales", "per-element-scales"])
@pytest.mark.parametrize("case", PACKED_CASES)
def test_packed_cache_matches_dequantized_reference(case, compact):
    """Ranks >= residual read from the packed cache (dequantized in the kernel) equal attention over the
    dequantized dense copy; counts anywhere in [0, T], including inside the residual and mid-group."""
    from evolkv.kernels.packed import gathered_attention_packed_ref, pack_ranked

    cands, num_kv, group, context, t_q, dim, window, k_bits, v_bits, group_size, residual = case
    q, keys, values, order, counts, new_k, new_v = _inputs(cands, num_kv, group, context, t_q, dim, torch.float32,
                                                           seed=k_bits + v_bits)
    counts[0, 0] = min(residual, context) // 2  # inside the residual window
    packed = pack_ranked(keys, values, order[0], k_bits, v_bits, group_size, start=residual)
    out, lse = gathered_attention(q, keys, values, order, counts, new_k, new_v, dim ** -0.5, window,
                                  block_m=16, block_n=16, packed=packed, residual=residual, compact_scales=compact)
    ref, ref_lse = gathered_attention_packed_ref(q, keys, values, order, counts, new_k, new_v, dim ** -0.5,
                                                 window, packed=packed, residual=residual)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-4, rtol=2e-4)
    plain, _ = gathered_attention_ref(q, keys, values, order, counts, new_k, new_v, dim ** -0.5, window)
    if k_bits < 16 and counts.max() > residual:
        assert not torch.allclose(out, plain, atol=1e-3)  # the quantized entries were really used


def test_packed_cache_rejects_another_ranking():
    from evolkv.kernels.packed import pack_ranked

    q, keys, values, order, counts, new_k, new_v = _inputs(2, 2, 2, 64, 2, 32, torch.float32)
    packed = pack_ranked(keys, values, order[0], 4, 4, 32)
    other = torch.stack([order[0], order[0].flip(-1)])
    with pytest.raises(ValueError):
        gathered_attention(q, keys, values, other, counts, new_k, new_v, 0.2, packed=packed)
    with pytest.raises(ValueError):
        gathered_attention(q, keys, values, order, counts, new_k, new_v, 0.2, packed=packed, residual=16)


def test_densified_packed_cache_gives_the_same_attention():
    """Dequantize-once (what the evaluator does for a population) equals dequantize-on-the-fly."""
    from evolkv.kernels.packed import densify, pack_ranked

    q, keys, values, order, counts, new_k, new_v = _inputs(3, 2, 4, 70, 3, 32, torch.float32, seed=4)
    packed = pack_ranked(keys, values, order[0], 4, 2, 32, start=32)
    dense = densify(packed, torch.float32)
    assert dense.k_bits == dense.v_bits == 16 and dense.k.shape == (2, 38, 32)
    args = (q, keys, values, order, counts, new_k, new_v, 32 ** -0.5)
    out, lse = gathered_attention(*args, block_m=16, block_n=16, packed=packed, residual=32)
    out2, lse2 = gathered_attention(*args, block_m=16, block_n=16, packed=dense, residual=32)
    torch.testing.assert_close(out2, out, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse2, lse, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("packed_bits", [None, 2])
def test_prefix_without_new_tokens_merges_into_the_whole(packed_bits):
    """``include_new=False`` (the MiKV tier): the evicted ranks read in tail-first order, merged by
    log-sum-exp with the kept prefix and new tokens, give attention over every entry (the evicted ones
    dequantized); a head that evicts nothing sees nothing there (output 0, lse -inf)."""
    from evolkv.kernels.packed import gathered_attention_packed_ref, pack_ranked, tail_first

    cands, num_kv, group, context, t_q, dim = 3, 2, 4, 70, 3, 32
    q, keys, values, order, counts, new_k, new_v = _inputs(cands, num_kv, group, context, t_q, dim, torch.float32,
                                                           seed=5)
    counts[0, 0] = context  # evicts nothing
    tail, evicted = tail_first(order, context), context - counts
    packed = None if packed_bits is None else pack_ranked(keys, values, tail[0], packed_bits, packed_bits, 32)
    args = (q, keys, values, tail, evicted, new_k, new_v, dim ** -0.5)
    out_e, lse_e = gathered_attention(*args, block_m=16, block_n=16, packed=packed, include_new=False)
    ref_e, ref_lse_e = gathered_attention_packed_ref(*args, packed=packed, include_new=False)
    torch.testing.assert_close(out_e, ref_e, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse_e, ref_lse_e, atol=2e-4, rtol=2e-4)
    assert (out_e[0, :group] == 0).all() and torch.isneginf(lse_e[0, :group]).all()

    out_k, lse_k = gathered_attention(q, keys, values, order, counts, new_k, new_v, dim ** -0.5, block_m=16,
                                      block_n=16)
    total = torch.logaddexp(lse_k, lse_e)
    merged = out_k * (lse_k - total).exp()[..., None] + out_e * (lse_e - total).exp()[..., None]
    from evolkv.kernels.packed import unpack

    everything = torch.full((1, num_kv), context, device=DEVICE)
    deq = unpack(packed, torch.float32) if packed is not None else (None, None)
    for c in range(cands):  # per candidate: its evicted entries (and only those) as the tier stores them
        whole_k, whole_v = keys.clone(), values.clone()
        for h in range(num_kv):
            gone = tail[0, h, :int(evicted[c, h])].long()
            if packed is not None:
                whole_k[h, gone], whole_v[h, gone] = deq[0][h, :gone.numel()], deq[1][h, :gone.numel()]
        ref, ref_lse = gathered_attention_ref(q[c:c + 1], whole_k, whole_v, order, everything, new_k[c:c + 1],
                                              new_v[c:c + 1], dim ** -0.5)
        torch.testing.assert_close(merged[c:c + 1], ref, atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(total[c:c + 1], ref_lse, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("residual", [0, 7])
def test_blocks_spanning_several_key_groups(residual):
    """Compact scales with BLOCK_N > group: one scale row per group covered, broadcast in registers."""
    from evolkv.kernels.packed import gathered_attention_packed_ref, pack_ranked

    q, keys, values, order, counts, new_k, new_v = _inputs(2, 2, 2, 150, 2, 32, torch.float32, seed=6)
    packed = pack_ranked(keys, values, order[0], 4, 2, 32, start=residual)
    args = (q, keys, values, order, counts, new_k, new_v, 32 ** -0.5)
    out, lse = gathered_attention(*args, block_m=16, block_n=64, packed=packed, residual=residual)
    ref, ref_lse = gathered_attention_packed_ref(*args, packed=packed, residual=residual)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-4, rtol=2e-4)
