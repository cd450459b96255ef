"""KIVI quantize/pack and dequantize kernels against the torch reference (TRITON_INTERPRET=1 on CPU)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels.quantize import dequantize, quantize  # noqa: E402
from evolkv.kernels.reference import dequantize_ref, quantize_ref  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [  # rows, tokens, head_dim, group
    (3, 64, 64, 32),
    (2, 128, 128, 64),
    (1, 128, 128, 128),
]


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("per_channel", [True, False], ids=["keys", "values"])
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference_and_error_bound(case, bits, per_channel):
    rows, length, dim, group = case
    if not per_channel:
        length += 5  # values: any token count, including one that is no multiple of the block
    x = torch.randn(rows, length, dim, generator=torch.Generator().manual_seed(bits)).to(DEVICE)
    packed, scale, zero = quantize(x, bits, group, per_channel)
    ref_packed, ref_scale, ref_zero = quantize_ref(x, bits, group, per_channel)
    torch.testing.assert_close(scale, ref_scale)
    torch.testing.assert_close(zero, ref_zero)
    mismatched = (packed != ref_packed).float().mean().item()
    assert mismatched <= 1e-3  # a code may differ at an exact .5 tie between division implementations
    restored = dequantize(packed, scale, zero, bits, group, per_channel)
    torch.testing.assert_close(restored, dequantize_ref(packed, scale, zero, bits, group, per_channel))
    dim_of_groups = 1 if per_channel else 2
    bound = scale.repeat_interleave(group, dim=dim_of_groups) / 2 + 1e-5
    assert ((restored - x).abs() <= bound).all()


def test_constant_groups_are_exact():
    x = torch.full((1, 32, 64), 0.75, device=DEVICE)
    packed, scale, zero = quantize(x, 2, 32, per_channel=True)
    assert (scale == 0).all()
    torch.testing.assert_close(dequantize(packed, scale, zero, 2, 32, True), x)


@pytest.mark.parametrize("bad", [dict(bits=3), dict(group_size=48), dict(per_channel=True, length=40)])
def test_rejects_bad_arguments(bad):
    args = dict(bits=4, group_size=32, per_channel=False, length=32)
    args.update(bad)
    x = torch.randn(1, args.pop("length"), 64, device=DEVICE)
    with pytest.raises(ValueError):
        quantize(x, **args)


@pytest.mark.parametrize("bits", [4, 2])
def test_a_cache_keeps_its_key_scales_as_fp16_pairs_in_the_same_bytes(bits):
    """``PackedKV.keep_key_pairs`` (``EVOLKV_PACKED_DECODE=pairs``): [r, g, k, w] packs channel 32 / bits * w + k
    (low half) and that + half (high half) of group g's scale (k < half) or zero point, bit for bit; the fp16
    tensors go, the bytes stay, and ``key_scales``, ``unpack``, ``narrow`` and ``select`` read the pairs."""
    from evolkv.kernels.packed import pack, unpack

    gen = torch.Generator().manual_seed(bits)
    packed = pack(torch.randn(3, 200, 64, generator=gen), torch.randn(3, 200, 64, generator=gen), bits, bits, 64)
    scale, zero, size = packed.k_scale.clone(), packed.k_zero.clone(), packed.nbytes()
    keys, values = unpack(packed, torch.float32)
    part, rows = packed.narrow(64, 100), packed.select(torch.tensor([2, 0]))
    pairs = packed.keep_key_pairs()
    per_word, half = 32 // bits, 16 // bits
    words = 64 // per_word
    assert pairs.shape == (3, scale.shape[1], 2 * half, words) and pairs.dtype == torch.int32
    lo = (pairs & 0xFFFF).to(torch.int16).view(torch.float16)
    hi = (pairs >> 16).to(torch.int16).view(torch.float16)
    for k in range(half):
        channels = torch.arange(words) * per_word + k
        for at, source in ((k, scale), (half + k, zero)):
            assert torch.equal(lo[:, :, at], source[..., channels])
            assert torch.equal(hi[:, :, at], source[..., channels + half])
    assert packed.k_scale is None and packed.nbytes() == size and packed.keep_key_pairs() is pairs
    assert all(torch.equal(a, b) for a, b in zip(packed.key_scales(), (scale, zero)))
    assert all(torch.equal(a, b) for a, b in zip(unpack(packed, torch.float32), (keys, values)))
    for before, after in ((part, packed.narrow(64, 100)), (rows, packed.select(torch.tensor([2, 0])))):
        assert all(torch.equal(a, b) for a, b in zip(unpack(after, torch.float32), unpack(before, torch.float32)))
