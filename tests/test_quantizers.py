"""The quantizer interface: KIVI behind it, and a second quantizer added as one registered class."""

import pytest
import torch

from evolkv.allocation import head_bytes, kv_bytes
from evolkv.config import KVConfig, LayerSpec, uniform_config, Budget
from evolkv.errors import ConfigError
from evolkv.kernels.packed import pack, unpack
from evolkv.kernels.reference import dequantize_ref, quantize_ref
from evolkv.quantizers import QUANTIZERS, register
from evolkv.quantizers.kivi import KIVI


def test_kivi_is_the_default_and_packs_as_the_reference():
    torch.manual_seed(0)
    keys, values = torch.randn(3, 64, 32), torch.randn(3, 64, 32)
    packed = pack(keys, values, 4, 2, 32)
    assert packed.quantizer == "kivi"
    codes, scale, zero = quantize_ref(keys, 4, 32, True)
    k, _ = unpack(packed, torch.float32)
    want = dequantize_ref(codes, scale.half().float(), zero.half().float(), 4, 32, True, torch.float32)
    assert torch.allclose(k, want, atol=1e-6)


def test_head_bytes_by_hand():
    layer = LayerSpec(1.0, k_bits=4, v_bits=2, group_size=32, residual=8)
    # 40 kept: 8 full (keys and values at 2 bytes x 64), 32 packed: keys 32*64/2 B + one group's scale/zero per
    # channel (64 * 2 * 2 B), values 32*64/4 B + per entry 2 groups of 32 channels * 2 * 2 B
    by_hand = 2 * 8 * 64 * 2 + 32 * 64 // 2 + 64 * 4 + 32 * 64 // 4 + 32 * 2 * 4
    assert head_bytes(40, layer, 64) == by_hand
    assert head_bytes(40, LayerSpec(1.0), 64) == 2 * 40 * 64 * 2


def test_a_second_quantizer_is_one_registered_class(loaded):
    """A quantizer that stores what KIVI stores but counts one more byte per head: the config names it, the
    JSON keeps it, ``kv_bytes`` counts through it, and packing dispatches to it."""
    calls = []

    @register("kivi-test")
    class Counting(KIVI):
        def pack(self, keys, values, k_bits, v_bits, group):
            calls.append(k_bits)
            return super().pack(keys, values, k_bits, v_bits, group)

        def head_bytes(self, *args, **kwargs):
            return super().head_bytes(*args, **kwargs) + 1

    try:
        spec = loaded["llama"].spec
        base = uniform_config(spec, Budget("fraction", 0.5))
        kivi = KVConfig(spec, base.budget, base.scorer,
                        tuple(LayerSpec(0.5, k_bits=4, v_bits=4) for _ in range(spec.num_layers)))
        other = KVConfig(spec, base.budget, base.scorer,
                         tuple(LayerSpec(0.5, k_bits=4, v_bits=4, quantizer="kivi-test")
                               for _ in range(spec.num_layers)))
        assert "quantizer" not in kivi.to_dict()["layers"][0]
        assert KVConfig.from_dict(other.to_dict()) == other and other.hash() != kivi.hash()
        heads = spec.num_layers * spec.num_kv_heads
        assert kv_bytes(other, 100) == kv_bytes(kivi, 100) + heads
        from evolkv.press import pack_kept
        packed = pack_kept(torch.randn(2, 40, spec.head_dim), torch.randn(2, 40, spec.head_dim),
                           torch.arange(40).expand(2, 40), other.layers[0], 4)
        assert calls == [4] and packed.quantizer == "kivi-test" and packed.length == 36
    finally:
        QUANTIZERS.pop("kivi-test", None)
    with pytest.raises(ConfigError, match="unknown quantizer 'kivi-test'"):
        LayerSpec(0.5, k_bits=4, quantizer="kivi-test")
