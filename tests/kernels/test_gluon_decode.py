"""Packed decode attention with the MMA operands built in registers (``kernels.gluon_decode``, Gluon) against
dequantize-then-attend."""

import pytest
import torch

pytest.importorskip("triton")

if not torch.cuda.is_available():  # inline PTX and Gluon need the GPU
    pytest.skip("the Gluon packed-decode kernel runs on CUDA only", allow_module_level=True)

from evolkv.kernels.decode_attention import Partials  # noqa: E402
from evolkv.kernels.gluon_decode import decode_attention_gluon, splits_for, supported  # noqa: E402
from evolkv.kernels.packed import attend_packed_ref, pack  # noqa: E402

DEVICE = "cuda"


@pytest.mark.parametrize("bits", [(4, 4), (2, 2), (4, 2), (2, 4)])
@pytest.mark.parametrize("batch,num_kv,group,length,key_group", [
    (2, 2, 4, 300, 128),   # a partial last block and group
    (1, 3, 8, 1000, 256),  # 8 query heads per KV head, key groups of two blocks
    (3, 1, 1, 129, 128),   # one query head, one entry past a block
    (1, 2, 4, 2600, 128),  # rounds of 4 key groups (a warp's each), a split of several, a partial last round
])
def test_matches_dequantize_then_attend(batch, num_kv, group, length, key_group, bits):
    gen = torch.Generator().manual_seed(length)
    rows = batch * num_kv
    keys = torch.randn(rows, length, 128, generator=gen) + torch.randn(1, 1, 128, generator=gen) * 3
    values = torch.randn(rows, length, 128, generator=gen)
    packed = pack(keys.to(DEVICE, torch.bfloat16), values.to(DEVICE, torch.bfloat16), *bits, key_group)
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


def test_fills_shared_partials_beside_another_launch():
    """Two caches' splits in one ``Partials`` (as the serving path puts the full-precision rows beside a packed
    tier): the merge equals attention over both at once."""
    gen = torch.Generator().manual_seed(7)
    batch, num_kv, group, length = 2, 2, 4, 520
    rows = batch * num_kv
    caches = []
    for bits, offset in (((2, 2), 0), ((4, 4), length)):
        keys = torch.randn(rows, length, 128, generator=gen).to(DEVICE, torch.float16)
        values = torch.randn(rows, length, 128, generator=gen).to(DEVICE, torch.float16)
        pos = (torch.arange(length) + offset).repeat(rows, 1).view(batch, num_kv, length).to(DEVICE)
        caches.append((pack(keys, values, *bits, 128), pos))
    query = torch.randn(batch, num_kv * group, 1, 128, generator=gen).to(DEVICE, torch.float16)
    query_pos = torch.tensor([2 * length], device=DEVICE)
    parts = Partials(query, sum(splits_for(packed, rows, DEVICE) for packed, _ in caches))
    for packed, pos in caches:
        assert decode_attention_gluon(query, packed, pos, query_pos, 0.1, partials=parts) is None
    out, lse = parts.merge()
    (o1, l1), (o2, l2) = (attend_packed_ref(query.float(), packed, pos, query_pos, 0.1) for packed, pos in caches)
    ref_lse = torch.logaddexp(l1, l2)
    ref = o1 * (l1 - ref_lse).exp()[..., None] + o2 * (l2 - ref_lse).exp()[..., None]
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
    torch.testing.assert_close(lse, ref_lse, atol=3e-2, rtol=3e-2)


def test_says_what_it_does_not_serve():
    packed = pack(torch.randn(2, 64, 64, device=DEVICE), torch.randn(2, 64, 64, device=DEVICE), 4, 4, 128)
    query = torch.randn(1, 4, 1, 64, device=DEVICE, dtype=torch.bfloat16)
    assert not supported(query, packed)  # head_dim 64
    assert not supported(query.new_zeros(1, 2, 1, 128), pack(*[torch.randn(2, 64, 128, device=DEVICE)] * 2, 8, 8, 128))
    with pytest.raises(ValueError, match="does not serve"):
        decode_attention_gluon(query, packed, torch.zeros(1, 2, 64, dtype=torch.int32, device=DEVICE),
                               torch.tensor([70], device=DEVICE), 0.1)
