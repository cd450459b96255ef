"""Packed decode attention with the MMA operands built in registers (``kernels.gluon_decode``, Gluon) against
dequantize-then-attend."""

import pytest
import torch

pytest.importorskip("triton")

if not torch.cuda.is_available():  # inline PTX and Gluon need the GPU
    pytest.skip("the Gluon packed-decode kernel runs on CUDA only", allow_module_level=True)

from evolkv.kernels.gluon_decode import decode_attention_gluon, supported  # noqa: E402
from evolkv.kernels.packed import attend_packed_ref, pack  # noqa: E402

DEVICE = "cuda"


@pytest.mark.parametrize("batch,num_kv,group,length,key_group", [
    (2, 2, 4, 300, 128),   # a partial last block and group
    (1, 3, 8, 1000, 256),  # 8 query heads per KV head, key groups of two blocks
    (3, 1, 1, 129, 128),   # one query head, one entry past a block
])
def test_matches_dequantize_then_attend(batch, num_kv, group, length, key_group):
    gen = torch.Generator().manual_seed(length)
    rows = batch * num_kv
    keys = torch.randn(rows, length, 128, generator=gen) + torch.randn(1, 1, 128, generator=gen) * 3
    values = torch.randn(rows, length, 128, generator=gen)
    packed = pack(keys.to(DEVICE, torch.bfloat16), values.to(DEVICE, torch.bfloat16), 4, 4, key_group)
    pos = torch.stack([torch.randperm(2 * length, generator=gen)[:length] for _ in range(rows)])
    pos[0, length // 2:] = -1  # a row with empty slots
    pos = pos.view(batch, num_kv, length).to(DEVICE)
    query = torch.randn(batch, num_kv * group, 1, 128, generator=gen).to(DEVICE, torch.bfloat16)
    query_pos = torch.tensor([2 * length - 20], device=DEVICE)
    assert supported(query, packed)
    out, lse = decode_attention_gluon(query, packed, pos, query_pos, 0.2, splits=3)
    ref, ref_lse = attend_packed_ref(query.float(), packed, pos, query_pos, 0.2)
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 1e-2, err
    torch.testing.assert_close(lse, ref_lse, atol=3e-2, rtol=3e-2)


def test_says_what_it_does_not_serve():
    packed = pack(torch.randn(2, 64, 64, device=DEVICE), torch.randn(2, 64, 64, device=DEVICE), 4, 4, 128)
    query = torch.randn(1, 4, 1, 64, device=DEVICE, dtype=torch.bfloat16)
    assert not supported(query, packed)  # head_dim 64
    with pytest.raises(ValueError, match="does not serve"):
        decode_attention_gluon(query, packed, torch.zeros(1, 2, 64, dtype=torch.int32, device=DEVICE),
                               torch.tensor([70], device=DEVICE), 0.1)
