"""The folded packed-decode kernel's plane-by-plane form (``unpack=2``: the codes as the dots' register
operand) against dequantize-then-attend; on the CPU under ``TRITON_INTERPRET=1`` (no inline PTX, no bfloat16
dot), on CUDA as compiled."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels.folded import decode_attention_folded, supported  # noqa: E402
from evolkv.kernels.packed import attend_packed_ref  # noqa: E402
from tests.kernels.conftest import PACKED_DECODE_CASES, packed_decode_case  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("case", PACKED_DECODE_CASES + [(1, 2, 4, 128, 64, (2, 4), 64, None)])
def test_planes_match_dequantize_then_attend(case):
    query, packed, pos, query_pos, window = packed_decode_case(case, DEVICE)
    assert supported(query, packed)
    out, lse = decode_attention_folded(query, packed, pos, query_pos, 0.2, window, unpack=2, splits=3)
    ref_out, ref_lse = attend_packed_ref(query.float(), packed, pos, query_pos, 0.2, window)
    err = (out.float() - ref_out).norm() / ref_out.norm()
    assert err < 1e-2, err  # 3.4e-3 to 3.6e-3 under the interpreter (float16 operands)
    torch.testing.assert_close(lse, ref_lse, atol=1e-2, rtol=1e-2)


def test_the_environment_picks_the_unpacking(monkeypatch):
    from evolkv import kernels

    for mode, unpack in (("asm", 1), ("triton", 0), ("planes", 2)):
        monkeypatch.setenv("EVOLKV_PACKED_DECODE", mode)
        assert kernels.folded_unpack() == unpack
    monkeypatch.setenv("EVOLKV_PACKED_DECODE", "fast")
    with pytest.raises(ValueError, match="asm, triton, planes or plain"):
        kernels.packed_decode_mode()
