import pytest


def pytest_collection_modifyitems(items):
    """The kernel tests are GPU tests too: ``pytest -m gpu`` runs them on CUDA (on the CPU they run under
    ``TRITON_INTERPRET=1`` with the rest of the suite)."""
    for item in items:
        if "tests/kernels/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)


# decode over a packed cache: batch, H_kv, group, L, D, (k_bits, v_bits), key group, window
PACKED_DECODE_CASES = [
    (2, 2, 4, 300, 64, (4, 4), 64, None),
    (1, 3, 3, 200, 64, (2, 2), 64, None),
    (2, 1, 4, 256, 128, (4, 2), 128, 90),
    (1, 2, 4, 160, 128, (4, 4), 128, None),  # 4-bit values at head_dim 128 (a layout that once miscompiled)
]


def packed_decode_case(case, device):
    """(query, packed cache, positions with a row of empty slots, query position, window) of a case."""
    import torch

    from evolkv.kernels.packed import pack

    batch, num_kv, group, length, dim, (k_bits, v_bits), key_group, window = case
    gen = torch.Generator().manual_seed(length)
    rows = batch * num_kv
    keys = torch.randn(rows, length, dim, generator=gen) + torch.randn(1, 1, dim, generator=gen) * 3
    values = torch.randn(rows, length, dim, generator=gen)
    packed = pack(keys.to(device, torch.bfloat16), values.to(device, torch.bfloat16), k_bits, v_bits, key_group)
    pos = torch.stack([torch.randperm(400, generator=gen)[:length] for _ in range(rows)])
    pos[0, length // 2:] = -1  # a row with empty slots
    pos = pos.view(batch, num_kv, length).to(device)
    query = torch.randn(batch, num_kv * group, 1, dim, generator=gen).to(device, torch.bfloat16)
    return query, packed, pos, torch.tensor([380], device=device), window
