"""Contract every optimiser backend must pass (optuna's BasicSamplerTestCase in spirit)."""

import numpy as np
import pytest

from evolkv.errors import ConfigError
from evolkv.search.optimizers import OPTIMIZERS, make_optimizer

N = 5
LOWER, UPPER = -3 * np.ones(N), 3 * np.ones(N)


def _run(name, seed, generations=4, fail_first=False, disturb=False):
    opt = make_optimizer(name, N, LOWER, UPPER, population=6, seed=seed)
    history = []
    for _ in range(generations):
        if disturb:  # other code drawing from numpy's global RNG must not change the candidates
            np.random.rand(3)
        X = opt.ask()
        F = ((X - 1.0) ** 2).sum(axis=1)
        if fail_first:
            F[0] = np.inf
        opt.tell(X, F)
        history.append(X.copy())
    return opt, history


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_asks_within_bounds(name):
    _, history = _run(name, 0)
    for X in history:
        assert X.ndim == 2 and X.shape[1] == N
        assert (X >= LOWER).all() and (X <= UPPER).all()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_candidates(name, seed):
    _, a = _run(name, seed)
    _, b = _run(name, seed, disturb=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_failed_evaluations_do_not_stop_the_search(name):
    opt, history = _run(name, 1, generations=5, fail_first=True)
    assert len(history) == 5 and np.isfinite(opt.best_f)
    assert (opt.best_x >= LOWER).all() and (opt.best_x <= UPPER).all()


def test_unknown_optimizer():
    with pytest.raises(ConfigError):
        make_optimizer("nope", N, LOWER, UPPER, 4, 0)
