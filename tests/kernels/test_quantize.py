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
def test_key_pairs_hold_each_groups_scales_and_zero_points_as_fp16_pairs(bits):
    """``folded.key_pairs`` (``EVOLKV_PACKED_DECODE=pairs``): [r, g, k, w] packs channel 32 / bits * w + k (low half)
    and that + half (high half) of group g's scale (k < half) or zero point, bit for bit."""
    from evolkv.kernels.folded import key_pairs
    from evolkv.kernels.packed import pack

    gen = torch.Generator().manual_seed(bits)
    packed = pack(torch.randn(3, 200, 64, generator=gen), torch.randn(3, 200, 64, generator=gen), bits, bits, 64)
    pairs = key_pairs(packed)
    per_word, half = 32 // bits, 16 // bits
    words = 64 // per_word
    assert pairs.shape == (3, packed.k_scale.shape[1], 2 * half, words) and pairs.dtype == torch.int32
    lo = (pairs & 0xFFFF).to(torch.int16).view(torch.float16)
    hi = (pairs >> 16).to(torch.int16).view(torch.float16)
    for k in range(half):
        channels = torch.arange(words) * per_word + k
        for part, source in ((k, packed.k_scale), (half + k, packed.k_zero)):
            assert torch.equal(lo[:, :, part], source[..., channels].to(torch.float16))
            assert torch.equal(hi[:, :, part], source[..., channels + half].to(torch.float16))
    assert pairs.numel() * 4 == packed.k_scale.nbytes + packed.k_zero.nbytes  # the same bytes, rearranged
