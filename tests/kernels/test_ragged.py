"""Decode attention over the serving cache's ragged rows (``kernels.ragged``) vs. ``reference.attend_ragged``,
and the reference against ``reference.attend`` over the same entries laid out per head."""

import pytest
import torch

triton = pytest.importorskip("triton")

from evolkv.kernels.ragged import ragged_decode_attention  # noqa: E402
from evolkv.kernels.reference import attend, attend_ragged  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: (2e-4, 2e-4), torch.bfloat16: (2e-2, 2e-2)}
DTYPES = [torch.float32] if DEVICE == "cpu" else list(TOL)
CASES = [  # batch, H_kv, group, most kept, room, step, D, window, splits
    (2, 2, 4, 150, 6, 3, 16, None, 3),
    (1, 3, 3, 97, 4, 0, 64, 40, None),
    (3, 1, 1, 64, 2, 1, 32, None, 1),
]


def _rows(batch, num_kv, most, room, step, dim, dtype, seed):
    """Rows of random lengths (one empty) packed back to back with ``room`` free slots each; positions
    < 300 in random order, the ``step`` decoded entries after them at 300, 301, ..."""
    gen = torch.Generator().manual_seed(seed)
    rows = batch * num_kv
    count = torch.randint(0, most + 1, (rows,), generator=gen)
    count[rows // 2] = 0
    slots = count + room
    start = torch.cumsum(slots, 0) - slots
    total = int(slots.sum())
    keys = torch.randn(total, dim, generator=gen).to(dtype)
    values = torch.randn(total, dim, generator=gen).to(dtype)
    pos = torch.full((total,), -1, dtype=torch.int32)
    for r in range(rows):
        n = int(count[r])
        pos[start[r]:start[r] + n] = torch.randperm(300, generator=gen)[:n].to(torch.int32)
        pos[start[r] + n:start[r] + n + step + 1] = torch.arange(300, 301 + step, dtype=torch.int32)
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return (to(keys), to(values), to(start.to(torch.int32)), to(count.to(torch.int32)),
            to(torch.tensor([step], dtype=torch.int32)), int(slots.max()), to(pos))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    batch, num_kv, group, most, room, step, dim, window, splits = case
    keys, values, start, count, step_t, capacity, pos = _rows(batch, num_kv, most, room, step, dim, dtype, most)
    query = torch.randn(batch, num_kv * group, 1, dim, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    query_pos = torch.tensor([300 + step], dtype=torch.int32, device=DEVICE)
    args = (query, keys, values, start, count, step_t, capacity, 0.3, pos, query_pos, window)
    out, lse = ragged_decode_attention(*args, splits=splits)
    ref_out, ref_lse = attend_ragged(*args)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref_out.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=atol, rtol=rtol)

    # the reference equals attention over the same entries in the runtime's per-head layout
    length = count + step + 1
    dense_k = torch.zeros(batch * num_kv, capacity, dim, dtype=dtype, device=DEVICE)
    dense_v, dense_pos = torch.zeros_like(dense_k), torch.full((batch * num_kv, capacity), -1, device=DEVICE)
    for r in range(batch * num_kv):
        a, n = int(start[r]), int(length[r])
        dense_k[r, :n], dense_v[r, :n], dense_pos[r, :n] = keys[a:a + n], values[a:a + n], pos[a:a + n]
    shape = (batch, num_kv, capacity)
    plain_out, plain_lse = attend(query, dense_k.view(*shape, dim), dense_v.view(*shape, dim),
                                  dense_pos.view(shape), query_pos.long(), 0.3, window)
    torch.testing.assert_close(ref_out.float(), plain_out.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ref_lse, plain_lse, atol=atol, rtol=rtol)
