"""Packed decode attention with the scales folded out (``kernels.folded``) vs. dequantize-then-attend."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels.folded import decode_attention_folded, supported  # noqa: E402
from evolkv.kernels.packed import attend_packed_ref, pack  # noqa: E402
from tests.kernels.conftest import PACKED_DECODE_CASES, packed_decode_case  # noqa: E402

if not torch.cuda.is_available():  # inline PTX needs the GPU, and the interpreter's dot misreads bfloat16
    pytest.skip("the folded packed-decode kernel runs on CUDA only", allow_module_level=True)  # bitcasts
DEVICE = "cuda"


@pytest.mark.parametrize("case", PACKED_DECODE_CASES)
def test_matches_dequantize_then_attend(case):
    query, packed, pos, query_pos, window = packed_decode_case(case, DEVICE)
    assert supported(query, packed)
    out, lse = decode_attention_folded(query, packed, pos, query_pos, 0.2, window, splits=3)
    ref_out, ref_lse = attend_packed_ref(query.float(), packed, pos, query_pos, 0.2, window)
    err = (out.float() - ref_out).norm() / ref_out.norm()
    assert err < 1e-2, err
    torch.testing.assert_close(lse, ref_lse, atol=3e-2, rtol=3e-2)


def test_one_merge_over_a_ragged_part_and_a_packed_tier():
    """The serving cache's quantized layers: full-precision ragged rows and a packed tier filling one
    ``Partials`` and merged once equal attention over the union of their entries."""
    from evolkv.kernels.reference import attend
    from evolkv.kernels.packed import unpack
    from evolkv.kernels.decode_attention import Partials, plan_splits
    from evolkv.kernels.ragged import ragged_decode_attention
    from evolkv.kernels.folded import splits_for

    gen = torch.Generator().manual_seed(7)
    batch, num_kv, group, dim, length, fresh = 2, 2, 4, 128, 256, 5
    rows = batch * num_kv
    packed = pack(torch.randn(rows, length, dim, generator=gen).to(DEVICE, torch.bfloat16),
                  torch.randn(rows, length, dim, generator=gen).to(DEVICE, torch.bfloat16), 4, 2, 128)
    packed_pos = torch.arange(length, device=DEVICE, dtype=torch.int32).expand(batch, num_kv, length).contiguous()
    keys = torch.randn(rows * fresh, dim, generator=gen).to(DEVICE, torch.bfloat16)  # row r: fresh entries
    values = torch.randn(rows * fresh, dim, generator=gen).to(DEVICE, torch.bfloat16)
    start = (torch.arange(rows) * fresh).to(DEVICE, torch.int32)
    count = torch.full((rows,), fresh - 1, dtype=torch.int32, device=DEVICE)
    step = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    query = torch.randn(batch, num_kv * group, 1, dim, generator=gen).to(DEVICE, torch.bfloat16)
    query_pos = torch.tensor([length + fresh], dtype=torch.int32, device=DEVICE)
    parts = Partials(query, plan_splits(fresh, rows, 64, DEVICE)[0] + splits_for(packed, rows, DEVICE))
    ragged_decode_attention(query, keys, values, start, count, step, fresh, 0.1, partials=parts)
    decode_attention_folded(query, packed, packed_pos, query_pos, 0.1, partials=parts)
    out, lse = parts.merge()
    pk, pv = unpack(packed, torch.float32)
    all_k = torch.cat([pk, keys.float().view(rows, fresh, dim)], 1).view(batch, num_kv, -1, dim)
    all_v = torch.cat([pv, values.float().view(rows, fresh, dim)], 1).view(batch, num_kv, -1, dim)
    pos = torch.arange(length + fresh, device=DEVICE).expand(batch, num_kv, -1)
    ref, ref_lse = attend(query.float(), all_k, all_v, pos, query_pos.long(), 0.1)
    assert float((out.float() - ref).norm() / ref.norm()) < 1e-2
    torch.testing.assert_close(lse, ref_lse, atol=3e-2, rtol=3e-2)
    # the same in one launch: the ragged rows as the folded kernel's first splits
    ragged = dict(keys=keys, values=values, start=start, count=count, step=step, capacity=fresh, pos=None)
    fused, fused_lse = decode_attention_folded(query, packed, packed_pos, query_pos, 0.1, ragged=ragged)
    torch.testing.assert_close(fused, out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(fused_lse, lse, atol=1e-4, rtol=1e-4)
