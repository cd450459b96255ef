import pytest


def pytest_collection_modifyitems(items):
    """The kernel tests are GPU tests too: ``pytest -m gpu`` runs them on CUDA (on the CPU they run under
    ``TRITON_INTERPRET=1`` with the rest of the suite)."""
    for item in items:
        if "tests/kernels/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
